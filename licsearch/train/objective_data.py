"""Training data of the retrieval objectives (:mod:`.objectives`): labelled source images, their views, cached latents.

Sources are world train scenes (labelled by scene class, :func:`licsearch.eval.retrieval.scene_class`) and natural
images (each its own class); every source comes with random near-duplicate views (JPEG re-encoding, crops,
downscales) that share its instance label. Latents come from :meth:`Codec.compress_batch`, exactly as a bitstream
holds them, and are computed once per (codec, CLIP, sources, views) and cached.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..eval.retrieval import scene_class

if TYPE_CHECKING:
    import torch

    from ..model.codec import Codec
    from .objectives import ObjectiveOptions

DATA_FORMAT = 1


def _view(pixels: np.ndarray, rng: np.random.Generator, kind: int) -> np.ndarray:
    """A random near-duplicate of an image: JPEG re-encoding, a crop, or a downscale (``kind`` 0, 1, 2)."""
    from PIL import Image

    image = Image.fromarray(pixels)
    h, w = pixels.shape[:2]
    if kind == 0:
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=int(rng.integers(30, 76)))
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).copy()
    if kind == 1:
        f = float(rng.uniform(0.75, 0.95))
        ch, cw = max(32, round(h * f)), max(32, round(w * f))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        return pixels[top : top + ch, left : left + cw].copy()
    f = float(rng.uniform(0.4, 0.75))
    size = (max(32, round(w * f)), max(32, round(h * f)))
    return np.asarray(image.resize(size, Image.Resampling.BICUBIC)).copy()


def _square(pixels: np.ndarray, side: int) -> np.ndarray:
    """The image resized so that its shorter side is ``side``, centre-cropped to a square."""
    from PIL import Image

    h, w = pixels.shape[:2]
    f = side / min(h, w)
    image = Image.fromarray(pixels).resize((max(side, round(w * f)), max(side, round(h * f))), Image.Resampling.BICUBIC)
    a = np.asarray(image)
    top, left = (a.shape[0] - side) // 2, (a.shape[1] - side) // 2
    return a[top : top + side, left : left + side].copy()


@dataclass
class ObjectiveData:
    """Training items (source images and their views) with latents, labels and pseudo-captions.

    Attributes:
        latents: y_hat of every item, by latent shape.
        where: (shape key, row) of each item in ``latents``.
        source: the source image of each item (views share their source's teacher embedding and captions).
        classes, instances: label of each item in the two ArcMargin heads.
        teacher: CLIP image tower embeddings of each source's pixels.
        captions: each source's true caption (world scenes) or None.
        pool: the caption pool; ``pseudo``: each source's pseudo-caption indexes into it.
    """

    latents: dict[str, torch.Tensor]
    where: list[tuple[str, int]]
    source: list[int]
    classes: list[int]
    instances: list[int]
    teacher: np.ndarray
    captions: list[str | None]
    pool: list[str] = field(default_factory=list)
    pseudo: list[tuple[int, ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.where)


def build_data(
    codec: Codec, teacher: Any, sources: Sequence[tuple[np.ndarray, str, str | None]], *, views: int, seed: int
) -> ObjectiveData:
    """Latents of every source and of ``views`` random near-duplicates of each, with their labels.

    Args:
        codec: the frozen codec (latents come from :meth:`Codec.compress_batch`, exactly as a bitstream holds them).
        teacher: the CLIP image tower (:class:`.teacher.ClipTeacher`).
        sources: (pixels, class name, caption or None) of each source image.
        views: near-duplicates per source (cycling through JPEG, crop and downscale).
        seed: seed of the views.
    """
    import torch

    items: list[tuple[np.ndarray, int]] = []
    for s, (pixels, _, _) in enumerate(sources):
        rng = np.random.default_rng([seed, s, 0x71E5])
        items.append((pixels, s))
        items += [(_view(pixels, rng, (s + v) % 3), s) for v in range(views)]
    by_shape: dict[str, list[int]] = {}
    for i, (px, _) in enumerate(items):
        by_shape.setdefault(f"{px.shape[0]}x{px.shape[1]}", []).append(i)
    latents: dict[str, torch.Tensor] = {}
    where: list[tuple[str, int]] = [("", 0)] * len(items)
    for key, idx in by_shape.items():
        ys = []
        for k in range(0, len(idx), 16):
            ys += [c.y_hat for c in codec.compress_batch([items[i][0] for i in idx[k : k + 16]])]
        latents[key] = torch.cat(ys)
        for row, i in enumerate(idx):
            where[i] = (key, row)
    names = sorted({name for _, name, _ in sources})
    class_of = {name: c for c, name in enumerate(names)}
    x = torch.stack([torch.from_numpy(px).permute(2, 0, 1).float().div(255) for px, _, _ in sources])
    teacher_emb = torch.cat([teacher(x[k : k + 64]) for k in range(0, len(x), 64)]).cpu().numpy()
    return ObjectiveData(
        latents=latents,
        where=where,
        source=[s for _, s in items],
        classes=[class_of[sources[s][1]] for _, s in items],
        instances=[s for _, s in items],
        teacher=teacher_emb.astype(np.float32),
        captions=[c for _, _, c in sources],
    )


def world_sources(n: int, seed: int, side: int) -> list[tuple[np.ndarray, str, str | None]]:
    """``n`` scenes of the world's train split: pixels, scene class and caption."""
    from ..world import render, sample_specs

    out: list[tuple[np.ndarray, str, str | None]] = []
    for spec in sample_specs(n, seed=seed, split="train"):
        out.append((render(spec, (side, side)).copy(), scene_class(spec), spec.caption()))
    return out


def photo_sources(folder: Path, n: int, side: int) -> list[tuple[np.ndarray, str, str | None]]:
    """The first ``n`` images of a folder (sorted), each its own class, resized and centre-cropped to ``side``."""
    from ..imageio import iter_image_files, load_image

    out: list[tuple[np.ndarray, str, str | None]] = []
    for path, err in iter_image_files([folder]):
        if len(out) >= n:
            break
        if err is not None:
            raise err
        out.append((_square(load_image(path).pixels, side), f"photo:{path.name}", None))
    return out


def load_or_build_data(options: ObjectiveOptions, codec: Codec, teacher: Any) -> tuple[ObjectiveData, dict[str, Any]]:
    """The training data, read from the cache when an identical build is there."""
    import torch

    b = options.base
    key = {
        "format": DATA_FORMAT,
        "codec": codec.weights_sha256,
        "clip": teacher.weights_sha256,
        "world": [options.world_scenes, options.world_seed, b.crop],
        "photos": [str(b.images.resolve()), options.photos] if options.photos else None,
        "views": [options.views, b.seed],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache = options.cache if options.cache is not None else b.out.parent / "objective-cache"
    path = Path(cache) / f"objective-data-{digest}.pt"
    if path.is_file():
        return ObjectiveData(**torch.load(path, weights_only=False)), {"cache": str(path), "cached": True, **key}
    sources = world_sources(options.world_scenes, options.world_seed, b.crop) if options.world_scenes else []
    if options.photos:
        sources += photo_sources(b.images, options.photos, b.crop)
    data = build_data(codec, teacher, sources, views=options.views, seed=b.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(data.__dict__, tmp)
    tmp.replace(path)
    return data, {"cache": str(path), "cached": False, **key}
