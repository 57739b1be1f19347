"""Training images: a folder of images, sampling that is a function of (seed, step), and augmentations.

Item ``p`` of the run (the ``j``-th of step ``s`` is ``p = s * batch + j``) is image ``perm_e[p mod n]`` of the
epoch ``e = p div n``, where ``perm_e`` is a permutation seeded by (seed, e), and its augmentation draws from an
RNG seeded by (seed, p). Nothing depends on what ran before, so a run resumed at step ``s`` sees exactly the
batches the uninterrupted run would have seen, with or without loader workers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from ..errors import InputError
from ..imageio import iter_image_files, load_image

if TYPE_CHECKING:
    import torch

CropMode = Literal["random", "resized", "center"]
SmallPolicy = Literal["pad", "skip"]


class ImageFolder:
    """The images under a folder (recursively, as ``licsearch ingest`` finds them).

    Args:
        root: the folder.
        min_side: images whose shorter side is below this are skipped when ``small`` is ``"skip"``.
        small: ``"pad"`` keeps small images (the crop pads them by edge replication), ``"skip"`` drops them.
        cache_bytes: decoded images (uint8) are kept in memory up to this many bytes, so that an epoch over a
            small folder decodes each PNG once instead of once per crop (on a CPU, decoding a 1 MP PNG costs about
            as much as a training crop's forward pass). 0 disables the cache.
    """

    def __init__(
        self, root: str | Path, *, min_side: int = 0, small: SmallPolicy = "pad", cache_bytes: int = 1 << 30
    ) -> None:
        from PIL import Image

        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root} is not a folder", hint="pass a folder of training images as --images")
        files = [p for p, err in iter_image_files([self.root]) if err is None]
        self.skipped_small = 0
        if small == "skip" and min_side > 0:
            kept = []
            for p in files:
                with Image.open(p) as im:
                    if min(im.size) >= min_side:
                        kept.append(p)
            self.skipped_small = len(files) - len(kept)
            files = kept
        if not files:
            raise InputError(
                f"no usable images in {self.root}"
                + (f" ({self.skipped_small} smaller than the crop)" if self.skipped_small else ""),
                hint="add images (.png, .jpg, ...) or lower --crop",
            )
        self.files = files
        self.cache_bytes = cache_bytes
        self._cache: dict[int, np.ndarray] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> torch.Tensor:
        """Image ``index`` as a (3, H, W) float tensor in [0, 1]."""
        import torch

        pixels = self._cache.get(index)
        if pixels is None:
            pixels = load_image(self.files[index]).pixels
            if self._cached_bytes + pixels.nbytes <= self.cache_bytes:
                self._cache[index] = pixels
                self._cached_bytes += pixels.nbytes
        return torch.from_numpy(pixels).permute(2, 0, 1).float().div(255.0)


@dataclass(frozen=True)
class Augment:
    """Turns an image into a square training crop.

    Attributes:
        crop: side of the output in pixels.
        mode: ``random`` (a crop at scale 1, padded when the image is smaller), ``resized`` (a random area and
            aspect ratio resized to ``crop``, as CLIP training does) or ``center`` (shorter side resized to
            ``crop``, centre crop: no randomness).
        flip: random horizontal flips.
        jitter: strength of colour jitter (brightness, contrast and saturation factors in 1 ± jitter, hue
            shift ± jitter / 5); 0 for none.
        scale: range of the crop's area as a fraction of the image, for ``resized``.
    """

    crop: int
    mode: CropMode = "random"
    flip: bool = True
    jitter: float = 0.0
    scale: tuple[float, float] = (0.35, 1.0)

    @property
    def random(self) -> bool:
        """Whether two draws of one image may differ."""
        return self.mode != "center" or self.flip or self.jitter > 0

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        import torchvision.transforms.v2.functional as TF

        if self.mode == "random":
            x = _random_crop(x, self.crop, rng)
        elif self.mode == "resized":
            top, left, h, w = _resized_crop_box(x.shape[-2], x.shape[-1], self.scale, rng)
            x = TF.resized_crop(x, top, left, h, w, [self.crop, self.crop], antialias=True)
        else:
            x = TF.center_crop(TF.resize(x, [self.crop], antialias=True), [self.crop, self.crop])
        if self.flip and rng.random() < 0.5:
            x = TF.horizontal_flip(x)
        if self.jitter > 0:
            j = self.jitter
            x = TF.adjust_brightness(x, float(rng.uniform(1 - j, 1 + j)))
            x = TF.adjust_contrast(x, float(rng.uniform(1 - j, 1 + j)))
            x = TF.adjust_saturation(x, float(rng.uniform(1 - j, 1 + j)))
            x = TF.adjust_hue(x, float(rng.uniform(-j / 5, j / 5)))
        return x.clamp(0.0, 1.0).contiguous()


def _random_crop(x: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    if h < size or w < size:
        x = F.pad(x, (0, max(0, size - w), 0, max(0, size - h)), mode="replicate")
        h, w = x.shape[-2:]
    top, left = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    return x[:, top : top + size, left : left + size]


def _resized_crop_box(
    h: int, w: int, scale: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, left, height, width) drawn as torchvision's RandomResizedCrop does, from ``rng``."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1)), ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def item_rng(seed: int, position: int) -> np.random.Generator:
    """The augmentation RNG of item ``position`` of a run."""
    return np.random.default_rng([seed, position, 0x5EED])


@functools.lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0xE90C]).permutation(n)


def item_keys(n: int, batch: int, seed: int, step: int) -> list[tuple[int, int]]:
    """(image index, item position) of every item of ``step``."""
    keys = []
    for j in range(batch):
        p = step * batch + j
        epoch, k = divmod(p, n)
        keys.append((int(_permutation(n, seed, epoch)[k]), p))
    return keys


def default_workers(device: torch.device) -> int:
    """Loader processes: none on CPU (the model needs the cores), up to 8 when a GPU does the model."""
    import os

    return 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)


class _Items:
    """The loader's dataset: a key (image index, item position) gives the augmented image (picklable for workers)."""

    def __init__(self, folder: ImageFolder, augment: Augment, seed: int) -> None:
        self.folder, self.augment, self.seed = folder, augment, seed

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        index, position = key
        return self.augment(self.folder.load(index), item_rng(self.seed, position))


class _Keys:
    """The loader's sampler: the keys of steps ``start`` to ``steps - 1``, in order, generated lazily."""

    def __init__(self, n: int, batch: int, seed: int, start: int, steps: int) -> None:
        self.n, self.batch, self.seed, self.start, self.steps = n, batch, seed, start, steps

    def __len__(self) -> int:
        return (self.steps - self.start) * self.batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for s in range(self.start, self.steps):
            yield from item_keys(self.n, self.batch, self.seed, s)


def batches(
    folder: ImageFolder,
    augment: Augment,
    *,
    seed: int,
    batch: int,
    start: int,
    steps: int,
    workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[torch.Tensor]:
    """(B, 3, crop, crop) batches for steps ``start`` to ``steps - 1``."""
    import torch
    from torch.utils.data import DataLoader

    loader: Any = DataLoader(
        cast(Any, _Items(folder, augment, seed)),
        batch_size=batch,
        sampler=cast(Any, _Keys(len(folder), batch, seed, start, steps)),
        num_workers=workers,
        pin_memory=pin_memory,
        # A generator of its own: the loader draws worker seeds from it, and must not advance the global RNG
        # (which the training noise uses) at a step that depends on where the run was resumed.
        generator=torch.Generator().manual_seed(seed),
    )
    return iter(loader)


def batch_source(
    folder: ImageFolder, augment: Augment, *, seed: int, batch: int, steps: int, workers: int, device: torch.device
) -> Callable[[int], Iterator[torch.Tensor]]:
    """What a trainer calls for its batches from a given step on (0 at the start, the checkpoint's on resume)."""
    pin = device.type == "cuda"

    def from_step(start: int) -> Iterator[torch.Tensor]:
        return batches(
            folder, augment, seed=seed, batch=batch, start=start, steps=steps, workers=workers, pin_memory=pin
        )

    return from_step


# -- views as ingest sees them ------------------------------------------------------------------------------------

VIEW_SCALES = ((1.0, 0.4), (0.75, 0.2), (0.5, 0.4))
"""(factor, probability) of the resize a view gets: native size, 3/4 and the 50 % downscale of near-duplicates."""
VIEW_TARGETS = ("view", "original")
"""What the teacher embeds for a view of :class:`ViewStream`: the view as ingested, or the image a near-duplicate was
edited from (:meth:`IngestView.edit`)."""
PHOTO_SIDES = (128, 192, 256, 320)
"""Shorter sides a photo view is resized to before the view's own resize (photos are far larger than scenes)."""


@dataclass(frozen=True)
class IngestView:
    """A random edit of an image as a collection holds it: crop, resize, flip and JPEG re-encoding, uint8 in and out.

    Near-duplicate search (a JPEG q50 copy, a 90 % crop, a 50 % resize) asks the adapter to give an edited copy the
    embedding of its original; the teacher embeds every view as ingested, so training on these views teaches the
    adapter what the teacher does with them.

    Attributes:
        crop_p: probability of a crop that keeps 80-95 % of each side (``resized_p`` more: a random resized crop of
            30-100 % of the area, as CLIP training does); otherwise the whole image.
        jpeg_p: probability of JPEG re-encoding at a quality drawn from ``jpeg_quality``.
        min_side: no view is smaller than this on its shorter side.
    """

    crop_p: float = 0.3
    resized_p: float = 0.25
    jpeg_p: float = 0.35
    jpeg_quality: tuple[int, int] = (30, 90)
    min_side: int = 64

    def __call__(self, pixels: np.ndarray, rng: np.random.Generator, *, base_side: int | None = None) -> np.ndarray:
        """The edited view of ``pixels``; ``base_side`` first resizes the shorter side to it (photos)."""
        return self.edit(pixels, rng, base_side=base_side)[0]

    def edit(
        self, pixels: np.ndarray, rng: np.random.Generator, *, base_side: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        """(view, original, near-duplicate): the edited view, the image it was edited from (``pixels`` after the
        ``base_side`` resize), and whether the view is a near-duplicate of it (every edit but a random resized crop,
        which shows other content). The same ``rng`` draws give the same view as :meth:`__call__`."""
        import io

        from PIL import Image

        image = Image.fromarray(pixels)
        if base_side is not None:
            image = _shorter_side(image, base_side)
        original = np.asarray(image.convert("RGB")).copy()
        w, h = image.size
        u = rng.random()
        near = not (self.crop_p <= u < self.crop_p + self.resized_p)
        if u < self.crop_p:
            f = float(rng.uniform(0.8, 0.95))
            cw, ch = max(1, round(w * f)), max(1, round(h * f))
            left, top = int(rng.integers(w - cw + 1)), int(rng.integers(h - ch + 1))
            image = image.crop((left, top, left + cw, top + ch))
        elif u < self.crop_p + self.resized_p:
            top, left, ch, cw = _resized_crop_box(h, w, (0.3, 1.0), rng)
            image = image.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BICUBIC)
        factors, probs = zip(*VIEW_SCALES, strict=True)
        f = float(rng.choice(factors, p=probs))
        w, h = image.size
        f = max(f, self.min_side / min(w, h))
        if f < 1.0:
            image = image.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < self.jpeg_p:
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1)))
            image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        return np.asarray(image.convert("RGB")).copy(), original, near


def _shorter_side(image: Any, side: int) -> Any:
    from PIL import Image

    w, h = image.size
    f = side / min(w, h)
    return image.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class ViewStream:
    """Training views generated on the fly: world train scenes and photos, edited by :class:`IngestView`.

    View ``p`` of the run is a function of (seed, p) only: with probability ``photo_share`` an edited photo of
    ``photos`` (drawn at random, resized to a side of :data:`PHOTO_SIDES`), else an edit of world train scene ``p``
    (a new scene for every view: :func:`licsearch.world.sample_specs` with ``world_seed``; never the test split).
    Chunk ``c`` holds views ``c * chunk`` to ``(c + 1) * chunk - 1``.
    """

    photos: ImageFolder | None
    chunk: int
    seed: int
    world_seed: int
    scene_side: int = 256
    photo_share: float = 0.25
    edit: IngestView = IngestView()

    def views(self, c: int, specs: list[Any]) -> list[np.ndarray]:
        """The uint8 views of chunk ``c``; ``specs`` are the world scenes of the run (at least ``(c + 1) * chunk``)."""
        return [view for view, _, _ in self.edits(c, specs)]

    def edits(self, c: int, specs: list[Any]) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        """(view, original, near-duplicate) of each view of chunk ``c`` (:meth:`IngestView.edit`)."""
        from ..world import render

        out = []
        for p in range(c * self.chunk, (c + 1) * self.chunk):
            rng = np.random.default_rng([self.seed, p, 0x1E57])
            if self.photos is not None and rng.random() < self.photo_share:
                i = int(rng.integers(len(self.photos)))
                pixels = (self.photos.load(i).permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
                out.append(self.edit.edit(pixels, rng, base_side=int(rng.choice(PHOTO_SIDES))))
            else:
                out.append(self.edit.edit(render(specs[p], (self.scene_side, self.scene_side)), rng))
        return out
