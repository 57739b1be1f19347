"""The batch loop every endpoint shares: one reply per request, and a bad request fails only itself.

TorchServe calls ``initialize(context)`` once per worker and ``handle(batch, context)`` per batch. Here a batch
goes through three steps, each per item unless it can be batched: ``parse`` (read and validate one request:
the ``preprocess`` stage), ``compute`` (the model plane, batched where shapes allow, falling back to one item
at a time so that one failure cannot take its neighbours with it) and ``reply`` (serialise one result: the
``postprocess`` stage). Each request gets its own status, content type and body through the context.

The batch in hand is journalled (:mod:`licsearch.serving.inflight`), so that if the worker dies under it, the next
worker of the model counts its requests as errors.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from .. import defaults
from ..errors import BitstreamError, ModelError
from .inflight import JOURNAL_DIR, WORKER_DIED, WORKER_DIED_STATUS, InflightJournal
from .metrics import (
    BATCH_SIZE,
    ERRORS,
    RECEIVED_BYTES,
    REQUEST_LATENCY,
    REQUESTS,
    SENT_BYTES,
    STAGE_LATENCY,
    Recorder,
)
from .request import Part, Request
from .responses import PayloadTooLarge, Reply, error_reply
from .timing import Stopwatch, TimedPlane

if TYPE_CHECKING:
    from ..bitstream import Bitstream
    from ..bundle.runtime import BundleModelSet

logger = logging.getLogger(__name__)

BUNDLE_DIR = "bundle"
"""Where the bundle sits inside a model archive (``licsearch archive`` puts it there)."""

T = TypeVar("T")
R = TypeVar("R")
X = TypeVar("X")
Y = TypeVar("Y")


@dataclass(frozen=True)
class Limits:
    """What one request may ask of a worker; kept in the archive's ``model-config.yaml`` under ``handler``.

    Attributes:
        max_bytes: largest request payload (image or bitstream), in bytes; larger is a 413.
        max_pixels: largest image accepted for encoding, or claimed by a bitstream for decoding.
        max_texts: most texts in one embed request.
    """

    max_bytes: int = defaults.MAX_REQUEST_BYTES
    max_pixels: int = defaults.MAX_PIXELS
    max_texts: int = defaults.MAX_TEXTS_PER_REQUEST

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Limits:
        known = {f.name for f in fields(cls)}
        unknown = set(cfg) - known
        if unknown:
            raise ModelError(f"unknown handler settings {sorted(unknown)} in model-config.yaml", hint=f"use {known}")
        values = {k: cfg[k] for k in known if k in cfg}
        for k, v in values.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ModelError(f"handler setting {k} must be a positive integer, got {v!r}")
        return cls(**values)


class Endpoint(Generic[T, R]):
    """Base of the TorchServe handlers: ``T`` is a parsed request, ``R`` a model-plane result.

    Subclasses name the endpoint, the model components it needs (loaded at initialisation, so that a broken
    bundle fails the model's registration instead of its first request), and implement ``parse``, ``compute``
    and ``reply``.
    """

    name: ClassVar[str]
    components: ClassVar[tuple[str, ...]]

    def __init__(self) -> None:
        self.initialized = False
        self.clock = Stopwatch()
        self.limits = Limits()
        self.recorder = Recorder(None, "", "")
        self.journal: InflightJournal | None = None

    # -- TorchServe's interface ---------------------------------------------------------------------------

    def initialize(self, context: Any) -> None:
        """Loads the bundle extracted from the archive, with ONNX Runtime settings from the environment."""
        from ..bundle.runtime import BundleModelSet, RuntimeOptions
        from ..model.rans import warm_up

        root = Path(context.system_properties["model_dir"]) / BUNDLE_DIR
        cfg = getattr(context, "model_yaml_config", None) or {}
        self.limits = Limits.from_config(cfg.get("handler") or {})
        options = RuntimeOptions.from_env()
        self.bundle: BundleModelSet = BundleModelSet(root, options)
        self.plane = TimedPlane(self.bundle, self.clock)
        for component in self.components:
            getattr(self.plane, component)
        warm_up()  # the entropy coder's JIT, paid here rather than by the first request
        model = (getattr(context, "manifest", None) or {}).get("model", {})
        version = str(model.get("modelVersion") or "unknown")
        self.recorder = Recorder(getattr(context, "metrics", None), context.model_name, version)
        self.journal = InflightJournal(Path(context.system_properties["model_dir"]) / JOURNAL_DIR)
        self._count_orphans(self.journal)
        self.initialized = True
        logger.info(
            "licsearch %s: bundle %s (%s, space %s), version %s, ONNX Runtime threads=%s (LICSEARCH_ORT_THREADS=%s), "
            "limits %s",
            self.name,
            root,
            self.bundle.manifest.precision,
            self.bundle.space_id,
            version,
            options.threads or "default",
            os.environ.get("LICSEARCH_ORT_THREADS", "unset"),
            self.limits,
        )

    def handle(self, data: list[dict[str, Any]] | None, context: Any) -> list[bytes]:
        """One body per request of the batch; statuses and content types are set per request."""
        if not data:
            return []
        started = perf_counter()
        self.clock.reset()
        requests = [Request.from_torchserve(item, context, i) for i, item in enumerate(data)]
        if self.journal:
            self.journal.begin([r.request_id for r in requests])
        replies = self.run(requests)
        elapsed = perf_counter() - started
        for i, reply in enumerate(replies):
            context.set_response_status(reply.status, reply.phrase, i)
            context.set_response_content_type(i, reply.content_type)
        self._record(requests, replies, elapsed)
        if self.journal:
            self.journal.end()
        return [r.body for r in replies]

    # -- the batch loop -----------------------------------------------------------------------------------

    def run(self, requests: list[Request]) -> list[Reply]:
        """Parses, computes and replies; every failure is caught and answered for its own request."""
        replies: dict[int, Reply] = {}
        inputs: dict[int, T] = {}
        with self.clock.stage("preprocess"):
            for i, request in enumerate(requests):
                try:
                    inputs[i] = self.parse(request)
                except Exception as e:
                    replies[i] = error_reply(e)
        try:
            results = self.compute(inputs) if inputs else {}
        except Exception as e:  # compute answers per item; this is a bug in it, reported for each of its items
            results = dict.fromkeys(inputs, e)
        with self.clock.stage("postprocess"):
            for i, result in results.items():
                try:
                    replies[i] = error_reply(result) if isinstance(result, Exception) else self.reply(inputs[i], result)
                except Exception as e:
                    replies[i] = error_reply(e)
        return [replies.get(i) or error_reply(RuntimeError(f"no result for item {i}")) for i in range(len(requests))]

    def parse(self, request: Request) -> T:
        raise NotImplementedError

    def compute(self, inputs: dict[int, T]) -> dict[int, R | Exception]:
        raise NotImplementedError

    def reply(self, item: T, result: R) -> Reply:
        raise NotImplementedError

    # -- helpers for subclasses ---------------------------------------------------------------------------

    @staticmethod
    def each(items: dict[int, X], fn: Callable[[X], Y]) -> dict[int, Y | Exception]:
        """``fn`` on every item; an exception is the result of its own item only."""
        out: dict[int, Y | Exception] = {}
        for i, x in items.items():
            try:
                out[i] = fn(x)
            except Exception as e:
                out[i] = e
        return out

    @classmethod
    def batched(cls, items: dict[int, X], fn: Callable[[list[X]], Sequence[Y]]) -> dict[int, Y | Exception]:
        """``fn`` on all items at once; if that fails, one at a time, so that only the culprit fails."""
        keys = list(items)
        try:
            results = fn([items[k] for k in keys])
            if len(results) != len(keys):
                raise RuntimeError(f"batch of {len(keys)} gave {len(results)} results")
            return dict(zip(keys, results, strict=True))
        except Exception as e:
            if len(keys) == 1:
                return {keys[0]: e}
            logger.warning("batch of %d failed; retrying its items one by one", len(keys), exc_info=True)
            return cls.each(items, lambda x: fn([x])[0])

    def binary(self, part: Part, what: str) -> bytes:
        """The payload's bytes, within the size limit."""
        data = part.binary(what)
        if len(data) > self.limits.max_bytes:
            raise PayloadTooLarge(
                f"request body of {len(data)} bytes is over the limit of {self.limits.max_bytes}",
                hint="send a smaller file, or archive the model with a larger --max-bytes",
            )
        return data

    def bitstream(self, data: bytes) -> Bitstream:
        """Parses a ``.lics`` container for this codec and refuses one that claims too many pixels."""
        bs = self.plane.parse(data)
        if bs.width * bs.height > self.limits.max_pixels:
            raise BitstreamError(
                f"bitstream claims a {bs.width}x{bs.height} image, over the limit of {self.limits.max_pixels} pixels",
                hint="decode it offline with `licsearch decode`",
            )
        return bs

    def _count_orphans(self, journal: InflightJournal) -> None:
        """Counts the requests of this model's workers that died under them (TorchServe answered them with 500)."""
        lost = journal.orphans()
        if not lost:
            return
        logger.warning(
            "%d request(s) were in flight when a worker of %s died; counted as %s errors",
            len(lost),
            self.name,
            WORKER_DIED_STATUS,
        )
        status = str(WORKER_DIED_STATUS)
        try:
            for rid in lost:
                self.recorder.add(REQUESTS, 1, status, request_id=rid)
                self.recorder.add(ERRORS, 1, status, WORKER_DIED, request_id=rid)
        except Exception:  # metrics must never cost the worker its start
            logger.warning("could not record the dead worker's requests", exc_info=True)

    def _record(self, requests: list[Request], replies: list[Reply], elapsed: float) -> None:
        try:
            m = self.recorder
            m.add(BATCH_SIZE, len(requests))
            for stage, seconds in self.clock.totals.items():
                m.add(STAGE_LATENCY, seconds, stage)
            for request, reply in zip(requests, replies, strict=True):
                rid = request.request_id
                m.add(REQUESTS, 1, str(reply.status), request_id=rid)
                if not reply.ok:
                    m.add(ERRORS, 1, str(reply.status), reply.error_type or "unknown", request_id=rid)
                m.add(REQUEST_LATENCY, elapsed, request_id=rid)
                m.add(RECEIVED_BYTES, request.received_bytes, request_id=rid)
                m.add(SENT_BYTES, len(reply.body), request_id=rid)
        except Exception:  # metrics must never cost a request its answer
            logger.warning("could not record metrics", exc_info=True)
