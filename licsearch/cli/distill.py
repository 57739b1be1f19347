"""``licsearch distill``: train the store's adapter from its own pixels space and bitstreams, then build its space.

::

    licsearch distill [--store DIR] [--holdout 0.1] [--steps N] [--init random|PATH] [--texts FILE]
        [--recall-min 0.9] [--activate] [--force] [--json]

The library side is :mod:`licsearch.ops.distill`.
"""

from __future__ import annotations

import argparse

from .. import defaults
from ..errors import InputError
from .base import Command, Result
from .options import add_heldout_flags, add_store_flags, heldout_thresholds, read_texts, store_dir


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
        "--init",
        default="random",
        metavar="random|PATH",
        help="adapter weights to start from (default random): e.g. an adapter for another quality of the same codec "
        "architecture (shipped:NAME or a file), or the store's earlier distilled adapter",
    )
    add_heldout_flags(p)


def cmd_distill(args: argparse.Namespace) -> Result:
    from ..ops.distill import DistillOptions, TrainOptions, distill
    from ..storage.store import Store
    from .model_flags import resolve_weights

    thresholds = heldout_thresholds(args)
    if args.steps < 1 or args.batch_size < 1:
        raise InputError("--steps and --batch-size must be positive")
    if not 0.0 <= args.flip <= 1.0:
        raise InputError(f"--flip {args.flip} is not a probability", hint="give a number from 0 to 1, e.g. 0.5")
    progress = False if args.no_progress else None
    texts = read_texts(args.texts) if args.texts else None
    options = DistillOptions(
        holdout=args.holdout,
        train=TrainOptions(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            init=resolve_weights(args.init, "random"),
            progress=progress,
            flip=args.flip,
        ),
        texts=texts,
        thresholds=thresholds,
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


COMMANDS = (
    Command(
        "distill",
        "train the store's adapter from its pixels space and bitstreams; build (and activate) its space",
        configure_distill,
        cmd_distill,
    ),
)
