"""One request of a TorchServe batch: its payload, options and headers, read the same way by every endpoint.

TorchServe (0.12) hands a handler, per request, a dict from parameter name to value: ``body`` for a raw body,
one entry per field of a ``multipart/form-data`` or urlencoded form. URL query parameters are *not* passed
on, so options travel as multipart fields (``format``), JSON fields or headers (``Accept``). A value is
``bytes``/``bytearray``, except that TorchServe already decodes ``application/json`` bodies (to a dict or
list, or leaves the bytes when they are not valid JSON) and ``text/*`` bodies (to ``str``).

Request headers come through the context with their names as the client sent them; they are matched here
case-insensitively. Each parameter's own content type sits under the parameter's name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from .responses import NotAcceptable, UnsupportedMediaType

DATA_FIELDS = ("body", "data", "file", "image", "bitstream")
"""Parameter names that may carry the payload, in order of preference."""

OPTION_FIELDS = ("format",)
"""Multipart fields read as options rather than as the payload."""


@dataclass(frozen=True)
class Part:
    """The payload of a request: a raw body or one multipart field."""

    name: str
    value: Any
    content_type: str

    @property
    def is_json(self) -> bool:
        """Sent as JSON (TorchServe has parsed it when it could)."""
        ct = self.content_type.split(";")[0].strip().lower()
        return ct == "application/json" or ct.endswith("+json") or isinstance(self.value, dict | list)

    @property
    def is_text(self) -> bool:
        """Sent as JSON or text (TorchServe may have decoded it already)."""
        ct = self.content_type.split(";")[0].strip().lower()
        return self.is_json or ct.startswith("text/") or not _is_binary(self.value)

    def binary(self, what: str) -> bytes:
        """The payload as bytes; JSON or text is refused (415), an empty body is a 400."""
        if self.is_text:
            raise UnsupportedMediaType(
                f"{what} must be sent as binary data, not as {self.content_type or type(self.value).__name__}",
                hint="send the file's bytes with Content-Type: application/octet-stream (curl --data-binary @FILE) "
                "or as a multipart file field",
            )
        data = bytes(self.value)
        if not data:
            raise InputError(f"empty request body: expected {what}", hint="send the file's bytes as the body")
        return data

    def json(self) -> Any:
        """The payload parsed as JSON (TorchServe's own parse when it made one)."""
        if not _is_binary(self.value):
            return json.loads(self.value) if isinstance(self.value, str) else self.value
        try:
            return json.loads(bytes(self.value).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise InputError(f"invalid JSON body: {e}", hint='send e.g. {"text": "a red car"}') from None


@dataclass(frozen=True)
class Request:
    """One request: its parameters, their content types, and the request headers (lower-cased names)."""

    fields: dict[str, Any]
    content_types: dict[str, str]
    headers: dict[str, str]
    request_id: str | None = None

    @classmethod
    def from_torchserve(cls, item: dict[str, Any], context: Any, idx: int) -> Request:
        """Reads item ``idx`` of the batch TorchServe passed to ``handle``."""
        raw: dict[str, Any] = {}
        if getattr(context, "request_processor", None):
            raw = context.get_all_request_header(idx) or {}
        headers = {str(k).lower(): v for k, v in raw.items() if isinstance(v, str)}
        types = {str(k): str(v.get("content-type") or "") for k, v in raw.items() if isinstance(v, dict)}
        rid = context.get_request_id(idx) if hasattr(context, "get_request_id") else None
        return cls(dict(item or {}), types, headers, rid)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def received_bytes(self) -> int:
        """Bytes the client sent: ``Content-Length`` when given, else the size of the parameters."""
        length = self.header("content-length")
        if length and length.strip().isdigit():
            return int(length)
        return sum(_size(v) for v in self.fields.values())

    def payload(self) -> Part:
        """The part that carries the data: the raw body, or the one data field of a form."""
        ct = (self.header("content-type") or "").lower()
        if ct.startswith("application/x-www-form-urlencoded"):
            raise UnsupportedMediaType(
                "a form-urlencoded body cannot carry binary data",
                hint="use curl --data-binary @FILE -H 'Content-Type: application/octet-stream', or -F data=@FILE",
            )
        names = [n for n in self.fields if n not in OPTION_FIELDS]
        if len(names) > 1:
            names = [n for n in DATA_FIELDS if n in names][:1] or names
        if len(names) != 1:
            fields = ", ".join(self.fields) or "none"
            raise InputError(
                f"cannot tell which form field holds the data (fields: {fields})",
                hint=f"send the raw body, or one field named one of {', '.join(DATA_FIELDS[1:])}",
            )
        name = names[0]
        return Part(name, self.fields[name], self.content_types.get(name) or ct)

    def option(self, name: str) -> str | None:
        """A multipart option field as text."""
        value = self.fields.get(name)
        if value is None:
            return None
        if _is_binary(value):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"form field {name!r} is not UTF-8 text") from None
        return str(value).strip()


def negotiate(accept: str | None, offers: Sequence[str]) -> str:
    """The first of ``offers`` (in the client's order of preference) that ``accept`` admits.

    A missing or empty header admits the first offer. ``type/*`` and ``*/*`` ranges are understood;
    ``q=0`` excludes a range.
    """
    if not accept or not accept.strip():
        return offers[0]
    ranges: list[tuple[float, int, str]] = []
    for i, item in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for p in params:
            key, _, value = p.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media and q > 0:
            ranges.append((-q, i, media.lower()))
    for _, _, media in sorted(ranges):
        for offer in offers:
            if media in ("*/*", offer) or (media.endswith("/*") and offer.startswith(media[:-1])):
                return offer
    raise NotAcceptable(f"cannot answer with {accept}", hint=f"accept one of {', '.join(offers)}")


def _is_binary(value: Any) -> bool:
    return isinstance(value, bytes | bytearray | memoryview)


def _size(value: Any) -> int:
    if _is_binary(value):
        return len(value)
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    return len(json.dumps(value))
