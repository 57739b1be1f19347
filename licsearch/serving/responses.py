"""One reply per request: a body, a content type and an HTTP status; errors become 4xx/5xx JSON bodies.

Client errors are :class:`~licsearch.errors.InputError` and its subclasses; the few that are not a plain
400 carry their own status here. Anything else is a server error (500) whose details go to the log only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from ..errors import InputError, LicsearchError

logger = logging.getLogger(__name__)

JSON = "application/json"


class PayloadTooLarge(InputError):
    """The request body is over the endpoint's byte limit (HTTP 413)."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class UnsupportedMediaType(InputError):
    """The body's content type is not one the endpoint reads (HTTP 415)."""

    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class NotAcceptable(InputError):
    """No representation the endpoint makes is in the request's ``Accept`` header (HTTP 406)."""

    status = HTTPStatus.NOT_ACCEPTABLE


@dataclass(frozen=True)
class Reply:
    """What one request gets back.

    Attributes:
        body: the response bytes (JSON is serialised here, not by TorchServe).
        content_type: the response's ``Content-Type``.
        status: HTTP status code.
        error_type: the error's class name for a failed request (a metrics label), else empty.
    """

    body: bytes
    content_type: str
    status: int = 200
    error_type: str = ""

    @property
    def phrase(self) -> str:
        return HTTPStatus(self.status).phrase

    @property
    def ok(self) -> bool:
        return self.status < 400


def json_reply(doc: dict[str, Any]) -> Reply:
    """A 200 reply with a compact JSON body."""
    return Reply(json.dumps(doc, separators=(",", ":")).encode("utf-8"), JSON)


def status_of(error: BaseException) -> int:
    """400 for input errors unless the class names another 4xx; 500 for everything else."""
    if isinstance(error, InputError):
        return int(getattr(error, "status", HTTPStatus.BAD_REQUEST))
    return int(HTTPStatus.INTERNAL_SERVER_ERROR)


def error_reply(error: BaseException) -> Reply:
    """``{"error": {"type", "message"}}`` with the error's status.

    Input errors tell the client what to fix; other errors are logged with their traceback and answered
    with a generic message (their text may name server paths).
    """
    status = status_of(error)
    if isinstance(error, InputError):
        kind, message = type(error).__name__, str(error)
    elif isinstance(error, LicsearchError):
        logger.error("request failed: %s", error)
        kind, message = type(error).__name__, "the model server could not handle this request (see its log)"
    else:
        logger.error("request failed with an unexpected error", exc_info=error)
        kind, message = "InternalError", "the model server could not handle this request (see its log)"
    body = json.dumps({"error": {"type": kind, "message": message}}).encode("utf-8")
    return Reply(body, JSON, status, kind)
