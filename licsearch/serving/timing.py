"""Where a batch's time goes: preprocess, network (the ONNX graphs), entropy coding, postprocess.

A :class:`Stopwatch` keeps exclusive time per stage: a stage entered inside another pauses the outer one. The
model plane is wrapped (:class:`TimedPlane`) so that every graph call counts as ``network`` wherever it happens,
while the endpoint brackets the whole model-plane call as ``entropy_coding``; what remains of it is the
canonical entropy path, rANS coding and the container.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ..model.models import AdapterLike, ModelPlane, TextLike

if TYPE_CHECKING:
    import torch

    from ..bundle.runtime import BundleModelSet
    from ..model.codec import Codec, Transforms
    from ..model.text import TextEmbedding

STAGES = ("preprocess", "network", "entropy_coding", "postprocess")


class Stopwatch:
    """Exclusive seconds per stage, nested stages subtracted from their outer stage."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._stack: list[list[Any]] = []  # [stage, started]

    def reset(self) -> None:
        self.totals = {}
        self._stack = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        now = perf_counter()
        if self._stack:
            outer = self._stack[-1]
            self._add(outer[0], now - outer[1])
        self._stack.append([name, now])
        try:
            yield
        finally:
            end = perf_counter()
            self._add(name, end - self._stack.pop()[1])
            if self._stack:
                self._stack[-1][1] = end

    def _add(self, name: str, seconds: float) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + seconds


class TimedTransforms:
    """The codec's heavy transforms, each call counted as ``network``."""

    def __init__(self, inner: Transforms, clock: Stopwatch) -> None:
        self.inner = inner
        self.clock = clock

    def g_a(self, x: torch.Tensor) -> torch.Tensor:
        with self.clock.stage("network"):
            return self.inner.g_a(x)

    def h_a(self, y: torch.Tensor) -> torch.Tensor:
        with self.clock.stage("network"):
            return self.inner.h_a(y)

    def g_s(self, y_hat: torch.Tensor) -> torch.Tensor:
        with self.clock.stage("network"):
            return self.inner.g_s(y_hat)


class TimedAdapter:
    """The adapter graph counted as ``network``."""

    def __init__(self, inner: AdapterLike, clock: Stopwatch) -> None:
        self.inner = inner
        self.clock = clock
        self.weights_sha256 = inner.weights_sha256

    def embed(self, y_hat: torch.Tensor) -> torch.Tensor:
        with self.clock.stage("network"):
            return self.inner.embed(y_hat)


class TimedText:
    """The text encoder counted as ``network`` (tokenising a query is a small part of it)."""

    def __init__(self, inner: TextLike, clock: Stopwatch) -> None:
        self.inner = inner
        self.clock = clock
        self.weights_sha256 = inner.weights_sha256
        self.context_length = inner.context_length

    def embed(self, texts: list[str]) -> TextEmbedding:
        with self.clock.stage("network"):
            return self.inner.embed(texts)


class TimedPlane(ModelPlane):
    """A bundle's model plane with its graphs timed; the operations are the bundle's own, unchanged."""

    def __init__(self, bundle: BundleModelSet, clock: Stopwatch) -> None:
        self.bundle = bundle
        self.cfg = bundle.cfg
        self.clock = clock

    @cached_property
    def codec(self) -> Codec:
        codec = self.bundle.codec
        if not isinstance(codec.transforms, TimedTransforms):
            codec.transforms = TimedTransforms(codec.transforms, self.clock)
        return codec

    @cached_property
    def adapter(self) -> AdapterLike:
        return TimedAdapter(self.bundle.adapter, self.clock)

    @cached_property
    def text(self) -> TextLike:
        return TimedText(self.bundle.text, self.clock)
