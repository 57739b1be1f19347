"""The model plane over HTTP: a client of the ``encode``, ``decode`` and ``embed`` endpoints.

:class:`RemoteModelPlane` answers the same calls as the in-process model planes (``encode``/``encode_batch``,
``decode``, ``embed_bitstream``, ``embed_texts``, ``parse``), so the store operations (ingest, search, get) run
against a TorchServe started with ``licsearch serve`` while blobs and Qdrant stay in the calling process. Before
its first answer is used, the server's codec profile and space id are checked against the store's: vectors from
another space or bitstreams from another codec are refused, never mixed in.

Errors: an unreachable server or a 5xx is a :class:`~licsearch.errors.LicsearchError` naming the URL; a 4xx JSON
error from the endpoint is an :class:`~licsearch.errors.InputError` carrying the server's message.

Retries: every endpoint is a pure function of its input, so a request the server could not answer for a passing
reason is sent again, a bounded number of times with exponential backoff (:class:`RetryPolicy`): a 502/503/504 (a
proxy without upstream, TorchServe's full job queue) and TorchServe's own 500 or 507 for the requests of a worker
that died ("Worker died."); a new request waits in TorchServe's queue until the replacement worker is up.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..bitstream import Bitstream
from ..errors import BitstreamError, ConfigMismatchError, InputError, LicsearchError
from ..model.models import Encoded, ModelPlane
from .routing import ROUTING_ENV, pick_version

if TYPE_CHECKING:
    import numpy as np

    from ..config import ModelsConfig, StoreConfig
    from ..model.text import TextEmbedding

TOKEN_ENV = "LICSEARCH_SERVER_TOKEN"  # noqa: S105 (a variable name, not a secret)
"""Environment variable holding the inference token (TorchServe's ``key_file.json`` inference key)."""

DEFAULT_TIMEOUT_S = 120.0
OCTET = "application/octet-stream"
JSON = "application/json"


class ServerUnavailable(LicsearchError):
    """The model server cannot be reached, timed out, refused the token, or failed (5xx)."""


@dataclass(frozen=True)
class Answer:
    """An endpoint's successful answer."""

    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class RetryPolicy:
    """When and how often an (idempotent) request is sent again.

    Attributes:
        attempts: tries in all, the first included (1: no retry).
        backoff_s: wait before the first retry; doubled for each further one.
        max_backoff_s: longest wait between two tries (also caps a server's ``Retry-After``).
        statuses: HTTP statuses that are retried whatever the body says.
        worker_gone: phrases of TorchServe's answer to the requests of a worker that died or is restarting (a 500,
            or 507 when the frontend already saw the worker exit with 137, i.e. SIGKILL, as by the OOM killer).
    """

    attempts: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 4.0
    statuses: tuple[int, ...] = (502, 503, 504)
    worker_gone: tuple[str, ...] = ("Worker died", "worker is not ready", "no worker")

    def retryable(self, status: int, body: bytes) -> bool:
        if status in self.statuses:
            return True
        text = body[:500].decode("utf-8", "replace").lower()
        return status >= 500 and any(p.lower() in text for p in self.worker_gone)

    def delay_s(self, retry: int, retry_after: str | None = None) -> float:
        """The wait before retry number ``retry`` (1-based)."""
        wait = self.backoff_s * 2 ** (retry - 1)
        if retry_after and retry_after.strip().isdigit():
            wait = max(wait, float(retry_after))
        return min(wait, self.max_backoff_s)


NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class Routing:
    """Canary routing of bare model names, by the file ``licsearch rollout --canary`` writes.

    The file's format and its reading are :mod:`licsearch.serving.routing`'s.

    Attributes:
        path: the routing file; None routes nothing.
    """

    path: Path | None = None

    @classmethod
    def from_env(cls) -> Routing:
        """The routing file named by ``$LICSEARCH_ROUTING_FILE``, if any."""
        env = os.environ.get(ROUTING_ENV)
        return cls(Path(env) if env else None)

    def target(self, model: str) -> str:
        """``model``, or ``model/VERSION`` while a canary routes this request to a candidate version."""
        if self.path is None or "/" in model:
            return model
        version = pick_version(model, path=str(self.path))
        return f"{model}/{version}" if version else model


class ServingClient:
    """HTTP calls to ``/predictions/<model>`` on one TorchServe inference address.

    Args:
        url: the inference address, e.g. ``http://127.0.0.1:8080``.
        token: inference key sent as ``Authorization: Bearer``; default ``$LICSEARCH_SERVER_TOKEN``.
        timeout_s: per request (connect and read).
        routing: canary routing of bare model names; default :meth:`Routing.from_env`, read once here.
        retry: what is retried and how often (``NO_RETRY`` to send each request once).

    Attributes:
        retried: retries made so far, by the HTTP status that caused them (thread-safe; for reports and tests).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        routing: Routing | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputError(f"bad server URL {url!r}", hint="give e.g. --server http://127.0.0.1:8080")
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.timeout_s = timeout_s
        self.routing = routing if routing is not None else Routing.from_env()
        self.retry = retry or RetryPolicy()
        self.retried: Counter[int] = Counter()
        self._lock = threading.Lock()

    def post(self, model: str, body: bytes, content_type: str, accept: str = JSON) -> Answer:
        """POSTs ``body`` to ``model`` (``NAME`` or ``NAME/VERSION``); raises on anything but a 2xx.

        A bare ``NAME`` may go to a candidate version while a rollout's canary routes traffic (:attr:`routing`).
        Temporary failures are retried by :attr:`retry`; the last one is raised.
        """
        headers = {"Content-Type": content_type, "Accept": accept}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        endpoint = f"{self.url}/predictions/{self.routing.target(model)}"
        attempt = 1
        while True:
            req = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")  # noqa: S310 (http/https checked)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:  # noqa: S310
                    return Answer(r.headers.get("Content-Type", ""), r.read())
            except urllib.error.HTTPError as e:
                payload = e.read()
                if attempt >= self.retry.attempts or not self.retry.retryable(e.code, payload):
                    raise _http_error(endpoint, e.code, payload) from None
                with self._lock:
                    self.retried[e.code] += 1
                time.sleep(self.retry.delay_s(attempt, e.headers.get("Retry-After")))
                attempt += 1
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                reason = getattr(e, "reason", e)
                raise ServerUnavailable(
                    f"cannot reach the model server at {endpoint}: {reason}",
                    hint="start one with `licsearch serve`, or check --server and the port",
                ) from None

    def post_json(self, model: str, doc: dict[str, Any]) -> Any:
        return self.post(model, json.dumps(doc).encode("utf-8"), JSON).json()


def _http_error(endpoint: str, status: int, body: bytes) -> LicsearchError:
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    message = str(err.get("message")) if isinstance(err, dict) else str((doc or {}).get("message") or body[:200])
    if status in (401, 403):
        return ServerUnavailable(
            f"the model server at {endpoint} refused the request ({status}): {message}",
            hint=f"pass the inference key from the server's key_file.json with --token or ${TOKEN_ENV}",
        )
    if status == 404:
        return ServerUnavailable(
            f"the model server has no model at {endpoint}: {message}",
            hint="serve the encode, decode and embed models with `licsearch serve`",
        )
    if 400 <= status < 500:
        return InputError(f"the model server refused the request ({status}): {message}")
    return ServerUnavailable(f"the model server at {endpoint} failed ({status}): {message}", hint="see its log")


@dataclass(frozen=True)
class RemoteCodec:
    """What callers read of a codec when the codec runs on the server."""

    profile_id: str


@dataclass(frozen=True)
class RemoteText:
    """What callers read of a text encoder when it runs on the server (its context length is not sent: 0)."""

    context_length: int = 0


def codec_profile_of(models: ModelsConfig) -> str | None:
    """The codec profile a store's (fingerprinted) models make, without loading them; None if not fingerprinted."""
    c = models.codec
    return f"{c.arch}:q{c.quality}:{c.sha256[:12]}" if c.sha256 else None


class RemoteModelPlane(ModelPlane):
    """The model plane of a TorchServe server, checked against the space and codec profile a caller expects.

    Args:
        client: the HTTP client.
        space_id: the expected embedding space (a store's), or None to accept the server's.
        profile_id: the expected codec profile, or None to accept the server's.
        models: the store's models, for labelling random weights; None when unknown.
        concurrency: requests in flight at once for ``encode_batch`` (the server batches them).
    """

    def __init__(
        self,
        client: ServingClient,
        *,
        space_id: str | None = None,
        profile_id: str | None = None,
        models: ModelsConfig | None = None,
        concurrency: int = 8,
    ) -> None:
        self.client = client
        self.expected_space = space_id
        self.expected_profile = profile_id
        self.models = models
        self.concurrency = concurrency

    @classmethod
    def for_store(cls, url: str, config: StoreConfig, *, token: str | None = None) -> RemoteModelPlane:
        """The server at ``url``, which must serve the store's space and codec."""
        return cls(
            ServingClient(url, token=token),
            space_id=config.space_id,
            profile_id=codec_profile_of(config.models),
            models=config.models,
        )

    def random_components(self) -> list[str]:
        if self.models is None:
            return []
        pairs = (("codec", self.models.codec.weights), ("clip", self.models.clip.weights))
        return [n for n, w in (*pairs, ("adapter", self.models.adapter.weights)) if w == "random"]

    # -- the server's identity, probed once and checked ---------------------------------------------------

    @cached_property
    def codec(self) -> RemoteCodec:  # type: ignore[override]
        """The server's codec profile, from encoding a small probe image (checked against the expected one)."""
        import numpy as np

        self._encode_one(_png(np.full((64, 64, 3), 128, np.uint8)))
        return RemoteCodec(self._seen_profile or "")

    @property
    def adapter(self) -> Any:
        return self.codec  # the adapter runs on the server; probing the codec checks the space too

    @cached_property
    def text(self) -> RemoteText:  # type: ignore[override]
        return RemoteText()

    _seen_profile: str | None = None

    def _check(self, *, space_id: str | None, profile_id: str | None = None) -> None:
        where = self.client.url
        if self.expected_space is not None and space_id != self.expected_space:
            raise ConfigMismatchError(
                f"the model server at {where} embeds into space {space_id!r}, this store's space is "
                f"{self.expected_space!r}",
                hint="serve an archive of the bundle this store was made with, or drop --server",
            )
        if profile_id is not None:
            if self.expected_profile is not None and profile_id != self.expected_profile:
                raise ConfigMismatchError(
                    f"the model server at {where} runs codec profile {profile_id}, this store's is "
                    f"{self.expected_profile}",
                    hint="serve an archive of the bundle this store was made with, or drop --server",
                )
            self._seen_profile = profile_id

    # -- the model plane ----------------------------------------------------------------------------------

    def _encode_one(self, image: bytes) -> Encoded:
        import base64

        doc = self.client.post("encode", image, OCTET).json()
        self._check(space_id=doc.get("space_id"), profile_id=doc.get("codec_profile"))
        data = base64.b64decode(doc["bitstream"])
        return Encoded(data, [float(x) for x in doc["embedding"]], int(doc["width"]), int(doc["height"]))

    def encode_batch(self, images: list[np.ndarray]) -> list[Encoded]:
        """One request per image, up to ``concurrency`` at once (TorchServe batches them)."""
        bodies = [_png(p) for p in images]
        if len(bodies) <= 1:
            return [self._encode_one(b) for b in bodies]
        with ThreadPoolExecutor(min(self.concurrency, len(bodies))) as pool:
            return list(pool.map(self._encode_one, bodies))

    def encode_bitstream(self, pixels: np.ndarray) -> bytes:
        return self.encode(pixels).data

    def parse(self, data: bytes) -> Bitstream:
        bs = Bitstream.from_bytes(data)
        if self.expected_profile is not None and bs.profile_id != self.expected_profile:
            raise BitstreamError(
                f"bitstream was made by codec profile {bs.profile_id}, this store's is {self.expected_profile}",
                hint="decode it with the store or server that encoded it",
            )
        return bs

    def decode(self, data: bytes) -> np.ndarray:
        """``.lics`` bytes -> pixels, decoded by the server and sent back as PNG (lossless)."""
        import numpy as np
        from PIL import Image

        self.parse(data)
        answer = self.client.post("decode", data, OCTET, accept="image/png")
        with Image.open(io.BytesIO(answer.body)) as im:
            return np.asarray(im.convert("RGB"))

    def embed_bitstream(self, data: bytes) -> list[float]:
        self.parse(data)
        doc = self.client.post("embed", data, OCTET).json()
        self._check(space_id=doc.get("space_id"))
        return [float(x) for x in doc["vectors"][0]]

    def embed_texts(self, texts: list[str]) -> TextEmbedding:
        import torch

        from ..model.text import TextEmbedding

        doc = self.client.post_json("embed", {"texts": list(texts)})
        self._check(space_id=doc.get("space_id"))
        return TextEmbedding(torch.tensor(doc["vectors"], dtype=torch.float32), tuple(doc["truncated"]))


def _png(pixels: np.ndarray) -> bytes:
    """Lossless transport of pixels: the server decodes exactly the array the caller loaded."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
