"""A client of TorchServe's management API: versions of a model, registering, default switching, workers.

Only the calls a rollout needs: ``GET /models/NAME[/VERSION|/all]``, ``POST /models?url=...`` (synchronous, with its
own workers), ``PUT /models/NAME/VERSION/set-default`` and ``DELETE /models/NAME/VERSION``. An unreachable API is a
:class:`ManagementUnavailable` (the rollout stops and can be resumed); an HTTP error answer is a
:class:`ManagementRefused` carrying the status and TorchServe's message.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from ..errors import InputError, LicsearchError

TOKEN_ENV = "LICSEARCH_MANAGEMENT_TOKEN"  # noqa: S105 (a variable name, not a secret)
"""Environment variable holding TorchServe's management key (``key_file.json``), for token authorization."""

REGISTER_TIMEOUT_S = 600.0


class ManagementUnavailable(LicsearchError):
    """The management API cannot be reached or timed out."""


class ManagementRefused(LicsearchError):
    """The management API answered with an error status.

    Attributes:
        status: the HTTP status.
    """

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


@dataclass(frozen=True)
class Worker:
    """One worker process of a model version."""

    id: str
    pid: int | None
    status: str


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model, as ``GET /models/NAME/VERSION`` describes it."""

    name: str
    version: str
    url: str
    is_default: bool
    workers: tuple[Worker, ...]
    batch_size: int | None

    @property
    def ready(self) -> bool:
        return any(w.status == "READY" for w in self.workers)

    @property
    def pids(self) -> list[int]:
        return sorted(w.pid for w in self.workers if w.pid is not None)


class ManagementClient:
    """HTTP calls to one TorchServe management address.

    Args:
        url: e.g. ``http://127.0.0.1:8081``.
        token: management key sent as ``Authorization: Bearer``; default ``$LICSEARCH_MANAGEMENT_TOKEN``.
        timeout_s: per request, except registrations (which wait for the workers to load).
    """

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputError(f"bad management URL {url!r}", hint="give e.g. --management http://127.0.0.1:8081")
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, *, timeout_s: float | None = None) -> Any:
        req = urllib.request.Request(f"{self.url}{path}", method=method)  # noqa: S310 (http/https checked)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s) as r:  # noqa: S310
                body = r.read()
        except urllib.error.HTTPError as e:
            raise _refused(method, f"{self.url}{path}", e.code, e.read()) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            raise ManagementUnavailable(
                f"cannot reach TorchServe's management API at {self.url} ({method} {path}): {getattr(e, 'reason', e)}",
                hint="check --management and that the server runs; rerun the same command to resume",
            ) from None
        try:
            return json.loads(body) if body else None
        except ValueError:
            return body.decode("utf-8", "replace")

    def versions(self, name: str) -> list[ModelVersion]:
        """Every registered version of ``name`` (empty when the model is not registered)."""
        try:
            doc = self._call("GET", f"/models/{quote(name)}/all")
        except ManagementRefused as e:
            if e.status == 404:
                return []
            raise
        return [_version(d) for d in doc or []]

    def describe(self, name: str, version: str | None = None) -> ModelVersion | None:
        """The default version of ``name`` (or the given one); None when it is not registered."""
        path = f"/models/{quote(name)}" + (f"/{quote(version)}" if version else "")
        try:
            doc = self._call("GET", path)
        except ManagementRefused as e:
            if e.status == 404:
                return None
            raise
        return _version(doc[0]) if doc else None

    def default_version(self, name: str) -> ModelVersion:
        found = self.describe(name)
        if found is None:
            raise InputError(
                f"the server has no model {name!r}", hint="serve the encode, decode and embed models first"
            )
        return found

    def register(self, url: str, name: str, *, workers: int = 1) -> None:
        """Registers the archive ``url`` (a file in the server's model store) as a version of ``name``; waits for
        its workers."""
        query = urlencode({"url": url, "model_name": name, "initial_workers": workers, "synchronous": "true"})
        self._call("POST", f"/models?{query}", timeout_s=REGISTER_TIMEOUT_S)

    def set_default(self, name: str, version: str) -> None:
        self._call("PUT", f"/models/{quote(name)}/{quote(version)}/set-default")

    def unregister(self, name: str, version: str) -> bool:
        """Unregisters one version; False when it was not registered."""
        try:
            self._call("DELETE", f"/models/{quote(name)}/{quote(version)}", timeout_s=REGISTER_TIMEOUT_S)
        except ManagementRefused as e:
            if e.status == 404:
                return False
            raise
        return True


def _version(d: dict[str, Any]) -> ModelVersion:
    workers = tuple(
        Worker(str(w.get("id")), int(w["pid"]) if w.get("pid") not in (None, -1) else None, str(w.get("status")))
        for w in d.get("workers", [])
    )
    batch = d.get("batchSize")
    return ModelVersion(
        name=str(d.get("modelName")),
        version=str(d.get("modelVersion")),
        url=str(d.get("modelUrl")),
        is_default=bool(d.get("isDefault", d.get("isDefaultVersion", False))),
        workers=workers,
        batch_size=int(batch) if isinstance(batch, int) else None,
    )


def _refused(method: str, url: str, status: int, body: bytes) -> ManagementRefused:
    try:
        doc = json.loads(body)
        message = str(doc.get("message", doc)) if isinstance(doc, dict) else str(doc)
    except ValueError:
        message = body[:300].decode("utf-8", "replace")
    hint = None
    if status == 405 or "disabled" in message.lower():
        hint = "the server must allow model registration: enable_model_api=true in its config.properties"
    elif status in (401, 403):
        hint = f"pass the management key from the server's key_file.json with --management-token or ${TOKEN_ENV}"
    return ManagementRefused(f"{method} {url} failed ({status}): {message}", status=status, hint=hint)
