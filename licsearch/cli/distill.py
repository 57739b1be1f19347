"""``licsearch distill``: train the store's adapter from its own pixels space and bitstreams, then build its space.

::

    licsearch distill [--store DIR] [--holdout 0.1] [--steps N] [--texts FILE] [--recall-min 0.9] [--activate]
        [--force] [--json]

The library side is :mod:`licsearch.ops.distill`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import defaults
from ..errors import InputError
from .base import Command, Result
from .options import add_store_flags, store_dir


def configure_distill(p: argparse.ArgumentParser) -> None:
    add_store_flags(p)
    p.add_argument(
        "--holdout",
        type=float,
        default=defaults.DISTILL_HOLDOUT,
        help=f"fraction of points held out, by id, to measure the adapter (default {defaults.DISTILL_HOLDOUT})",
    )
    p.add_argument(
        "--steps", type=int, default=defaults.DISTILL_STEPS, help=f"training steps ({defaults.DISTILL_STEPS})"
    )
    p.add_argument("--batch-size", type=int, default=defaults.DISTILL_BATCH, help="pairs per step")
    p.add_argument("--lr", type=float, default=defaults.DISTILL_LR, help="peak learning rate (cosine decay)")
    p.add_argument(
        "--flip",
        type=float,
        default=defaults.DISTILL_FLIP,
        help=f"chance that a training pair's latent is mirrored left to right (default {defaults.DISTILL_FLIP})",
    )
    p.add_argument("--seed", type=int, default=defaults.SEED, help="seed of the adapter's initialisation and batches")
    p.add_argument(
        "--texts", metavar="FILE", help="text queries, one a line (default: words of the CLIP tokenizer's vocabulary)"
    )
    p.add_argument(
        "--recall-min",
        type=float,
        default=defaults.ADAPTER_RECALL_OVERLAP_MIN,
        help=f"least held-out recall@10 overlap to activate (default {defaults.ADAPTER_RECALL_OVERLAP_MIN})",
    )
    p.add_argument("--cos-min", type=float, default=0.0, help="least held-out mean cosine to activate (default 0)")
    p.add_argument("--text-min", type=float, default=0.0, help="least held-out text top-10 agreement (default 0)")
    p.add_argument("--activate", action="store_true", help="switch queries and ingest to the space if it passes")
    p.add_argument("--force", action="store_true", help="with --activate, activate even when a threshold fails")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads of PyTorch (default: its own choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_distill(args: argparse.Namespace) -> Result:
    from ..ops.distill import DistillOptions, Thresholds, TrainOptions, distill
    from ..storage.store import Store

    if args.force and not args.activate:
        raise InputError("--force only overrides the thresholds of --activate", hint="add --activate")
    if args.steps < 1 or args.batch_size < 1:
        raise InputError("--steps and --batch-size must be positive")
    if not 0.0 <= args.flip <= 1.0:
        raise InputError(f"--flip {args.flip} is not a probability", hint="give a number from 0 to 1, e.g. 0.5")
    progress = False if args.no_progress else None
    texts = _read_texts(Path(args.texts)) if args.texts else None
    options = DistillOptions(
        holdout=args.holdout,
        train=TrainOptions(
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, progress=progress, flip=args.flip
        ),
        texts=texts,
        thresholds=Thresholds(recall_min=args.recall_min, cos_min=args.cos_min, text_min=args.text_min),
        activate=args.activate,
        force=args.force,
        progress=progress,
        threads=args.threads,
    )
    with Store.open(store_dir(args)) as store:
        report = distill(store, options)
    h = report.heldout
    human = (
        f"space {report.space_id}: {report.state}; held-out ({h.points} points): cos {h.cos_mean:.4f}, recall@10 "
        f"overlap {h.recall_at_10_overlap:.4f}, text top-10 agreement {h.text_top10_agreement:.4f}; "
        f"{'activated' if report.activated else 'not activated: ' + '; '.join(report.reasons)} "
        f"({report.seconds:.1f} s)"
    )
    code = 1 if args.activate and not report.activated else 0
    return Result(report.to_dict(), human, code)


def _read_texts(path: Path) -> tuple[str, ...]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read --texts {path}: {e}", hint="give a UTF-8 text file, one query a line") from None
    texts = tuple(t.strip() for t in lines if t.strip())
    if not texts:
        raise InputError(f"--texts {path} holds no query", hint="write one query a line")
    return texts


COMMANDS = (
    Command(
        "distill",
        "train the store's adapter from its pixels space and bitstreams; build (and activate) its space",
        configure_distill,
        cmd_distill,
    ),
)
