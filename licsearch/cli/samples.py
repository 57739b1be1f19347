"""``licsearch samples``: procedurally generated captioned scenes (:mod:`licsearch.world`), the offline demo data."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .base import Command, Result, add_json_flag


def configure_samples(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("-n", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--split",
        choices=["all", "train", "test"],
        default="all",
        help="scenes of every combination, or only the train or held-out test combinations (the benchmark's split)",
    )
    p.add_argument("--size", default="320x240", metavar="WxH", help="image size in pixels (default 320x240)")
    add_json_flag(p)


def cmd_samples(args: argparse.Namespace) -> Result:
    from ..world import write_dataset

    out = Path(args.out)
    w, sep, h = str(args.size).lower().partition("x")
    if not (sep and w.isdigit() and h.isdigit()):
        raise InputError(f"bad --size {args.size!r}", hint="write WIDTHxHEIGHT, e.g. 256x256")
    captions = write_dataset(out, args.n, seed=args.seed, split=args.split, size=(int(w), int(h)))
    return Result({"out": str(out), "images": args.n, "captions": str(captions)}, f"wrote {args.n} images to {out}")


COMMANDS = (
    Command(
        "samples",
        "write procedurally generated captioned sample images (offline demo data)",
        configure_samples,
        cmd_samples,
    ),
)
