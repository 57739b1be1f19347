"""What ``licsearch bench`` runs for each backend: the eager baseline and a bundle, stage by stage.

Each runner measures the same operations on the same image (analysis, entropy coding, adapter, synthesis,
entropy decoding, text queries, vector search, and the end-to-end flows); :mod:`licsearch.release.bench` interleaves
them image by image and summarises the timings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..bundle.runtime import BundleModelSet
    from ..model.codec import Transforms
    from ..model.models import ModelSet
    from ..storage.index import VectorIndex

T = TypeVar("T")
Timings = dict[str, float]
SHORT_QUERY = "a red circle"
LONG_QUERY = (
    "a large red circle on the left and two small blue squares at the bottom of a striped background, "
    "with a green triangle in the center, a yellow star at the top and a purple ring on the right"
)
TOP_K = 10
_SPACE = "bench"


def _timed(out: Timings, key: str, fn: Callable[[], T]) -> T:
    t0 = time.perf_counter()
    result = fn()
    out[key] = time.perf_counter() - t0
    return result


def _tensor(pixels: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(pixels).permute(2, 0, 1).float().div(255.0).unsqueeze(0)


def _pixels(x_hat: torch.Tensor, width: int, height: int) -> np.ndarray:
    """A decoded (1, 3, H', W') float image cropped to (height, width, 3) uint8, as ``Codec.synthesize`` does."""
    return x_hat[0, :, :height, :width].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).contiguous().numpy()


def _analysis(tr: Transforms, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = tr.g_a(x).float()
    return y, tr.h_a(y).float()


class SearchIndex:
    """A local-mode index of random unit vectors, queried the way a search queries a store."""

    def __init__(self, root: Path, dim: int, points: int) -> None:
        import numpy as np

        from ..storage.index import Point, VectorIndex

        self.index: VectorIndex = VectorIndex(path=root)
        self.index.ensure_collection({_SPACE: dim})
        v = np.random.default_rng(0).standard_normal((points, dim))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        ids = [str(i.to_bytes(16, "big").hex()) for i in range(1, points + 1)]
        self.index.upsert([Point(i, {_SPACE: row.tolist()}, {}) for i, row in zip(ids, v, strict=True)])

    def query(self, vector: list[float]) -> None:
        self.index.search(_SPACE, vector, top_k=TOP_K)


class Runner(Protocol):
    name: str

    def run(self, pixels: np.ndarray) -> tuple[Timings, int]:
        """Times every stage and end-to-end operation on one image; returns the times and bitstream bytes."""
        ...


class BaselineRunner:
    """CompressAI's and open_clip's own eager paths."""

    name = "baseline"

    def __init__(self, ms: ModelSet, search: SearchIndex) -> None:
        import open_clip

        self.codec = ms.codec
        self.clip = ms.text.model
        self.tokenizer = ms.text.tokenizer
        self.preprocess = open_clip.image_transform(self.clip.visual.image_size, is_train=False)
        self.search = search

    def _image_embedding(self, pixels: np.ndarray) -> torch.Tensor:
        from PIL import Image

        return self.clip.encode_image(self.preprocess(Image.fromarray(pixels)).unsqueeze(0), normalize=True)

    def run(self, pixels: np.ndarray) -> tuple[Timings, int]:
        import torch

        t: Timings = {}
        h, w = pixels.shape[:2]
        model, tr = self.codec.model, self.codec.transforms
        x = self.codec._pad(_tensor(pixels))
        with torch.inference_mode():
            y, _ = _timed(t, "analysis", lambda: _analysis(tr, x))
            _timed(t, "synthesis", lambda: tr.g_s(torch.round(y)))
            t0 = time.perf_counter()
            out = model.compress(x)
            t1 = time.perf_counter()
            self._image_embedding(pixels)
            t2 = time.perf_counter()
            t["compress"], t["image_tower"], t["ingest"] = t1 - t0, t2 - t1, t2 - t0
            t0 = time.perf_counter()
            x_hat = model.decompress(out["strings"], out["shape"])["x_hat"]
            t1 = time.perf_counter()
            _pixels(x_hat, w, h)
            t2 = time.perf_counter()
            t["decompress"], t["decode"] = t1 - t0, t2 - t0
            decompress = model.decompress
            _timed(t, "reembed", lambda: self._image_embedding(_pixels(decompress(**out)["x_hat"], w, h)))
            text = _timed(t, "text_short", lambda: self.clip.encode_text(self.tokenizer([SHORT_QUERY]), normalize=True))
            _timed(t, "text_long", lambda: self.clip.encode_text(self.tokenizer([LONG_QUERY]), normalize=True))
            _timed(t, "search", lambda: self.search.query(text[0].tolist()))
        t["text"] = t["text_short"]
        return t, sum(len(s[0]) for s in out["strings"])


class BundleRunner:
    """A bundle's model plane, stage by stage and through its public operations."""

    def __init__(self, name: str, plane: BundleModelSet, search: SearchIndex) -> None:
        self.name = name
        self.plane = plane
        self.search = search

    def run(self, pixels: np.ndarray) -> tuple[Timings, int]:
        import torch

        t: Timings = {}
        plane, codec = self.plane, self.plane.codec
        h, w = pixels.shape[:2]
        x = codec._pad(_tensor(pixels))
        with torch.inference_mode():
            y, z = _timed(t, "analysis", lambda: _analysis(codec.transforms, x))
            comp = _timed(t, "entropy_encode", lambda: codec._code_one(y, z, w, h))
            _timed(t, "adapter", lambda: plane.adapter.embed(comp.y_hat))
            _timed(t, "synthesis", lambda: codec.transforms.g_s(comp.y_hat))
        enc = _timed(t, "ingest", lambda: plane.encode(pixels))
        _timed(t, "entropy_decode", lambda: plane.entropy_decode(enc.data))
        _timed(t, "reembed", lambda: plane.embed_bitstream(enc.data))
        _timed(t, "decode", lambda: plane.decode(enc.data))
        text = _timed(t, "text_short", lambda: plane.embed_texts([SHORT_QUERY]))
        _timed(t, "text_long", lambda: plane.embed_texts([LONG_QUERY]))
        _timed(t, "search", lambda: self.search.query(text.vectors[0].tolist()))
        t["text"] = t["text_short"]
        return t, len(enc.data)


# -- inputs -----------------------------------------------------------------------------------------------
