"""Random crops of a folder of photos written as files: augmentation for precomputed distillation.

``licsearch train adapter --no-augment`` computes every image's latent and teacher embedding once, which is what
makes it affordable on a CPU, but then sees each image in one view only. Writing a few random resized crops of
each photo first gives the precomputed run several views of a small folder (the shipped offline adapter is
trained this way on ../shared/data/photos next to the procedural world). Usage::

    python -m licsearch.train.crops --images DIR --out DIR [--per-image 12] [--size 256] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from .data import Augment, ImageFolder, item_rng


def write_crops(images: Path, out: Path, *, per_image: int, size: int, seed: int) -> list[Path]:
    """Writes ``per_image`` random resized crops (``size`` square, flips) of every image under ``images``."""
    from PIL import Image

    if per_image < 1 or size < 16:
        raise InputError("--per-image must be at least 1 and --size at least 16")
    folder = ImageFolder(images, cache_bytes=0)
    augment = Augment(size, mode="resized", flip=True, scale=(0.25, 1.0))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, src in enumerate(folder.files):
        x = folder.load(i)
        for v in range(per_image):
            crop = augment(x, item_rng(seed, i * per_image + v))
            pixels = (crop.permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype("uint8")
            path = out / f"{src.stem}-{v:02d}.png"
            Image.fromarray(pixels).save(path)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m licsearch.train.crops", description=__doc__.split("\n")[0])
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--per-image", type=int, default=12)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        written = write_crops(args.images, args.out, per_image=args.per_image, size=args.size, seed=args.seed)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} crops to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
