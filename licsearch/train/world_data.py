"""Rendered splits of the procedural world (:mod:`licsearch.world`) for CLIP training, cached on disk.

A split is a function of (split, n, seed, image size) and of the world's code: the cache key holds a hash of
``world.py``, so a change to the drawing code never serves stale images.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import world
from ..world import Split, render, sample_specs


@dataclass(frozen=True)
class WorldSplit:
    """Rendered scenes and their captions.

    Attributes:
        images: (N, size, size, 3) uint8.
        captions: one caption per image.
        name: what the split is, for reports (``train``, ``val``, ``test``).
    """

    images: np.ndarray
    captions: list[str]
    name: str

    def __len__(self) -> int:
        return len(self.captions)


def world_split(
    name: str, split: Split, n: int, *, seed: int, size: int, cache: Path | None, progress: bool | None = None
) -> WorldSplit:
    """Renders (or reads from ``cache``) ``n`` scenes of ``split`` drawn with ``seed`` at ``size`` x ``size``."""
    from tqdm import tqdm

    specs = sample_specs(n, seed=seed, split=split)
    captions = [s.caption() for s in specs]
    path = None
    if cache is not None:
        code = hashlib.sha256(Path(world.__file__).read_bytes()).hexdigest()[:12]
        path = Path(cache) / f"world-{split}-n{n}-seed{seed}-{size}px-{code}.npy"
        if path.is_file():
            images = np.load(path, allow_pickle=False)
            if images.shape == (n, size, size, 3):
                return WorldSplit(images, captions, name)
    images = np.empty((n, size, size, 3), np.uint8)
    bar = tqdm(specs, desc=f"rendering {name}", disable=None if progress is None else not progress, leave=False)
    for i, spec in enumerate(bar):
        images[i] = render(spec, (size, size))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
        np.save(tmp, images, allow_pickle=False)
        os.replace(tmp, path)
        path.with_suffix(".json").write_text(json.dumps(captions), encoding="utf-8")
    return WorldSplit(images, captions, name)
