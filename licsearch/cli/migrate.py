"""The ``licsearch migrate`` command: move a store to another CLIP by decoding only a sample of its bitstreams.

::

    licsearch migrate --clip MODEL[:TAG] [--clip-weights W] --sample N [--holdout 0.2] [--activate] [--force]
                      [--json] [--store DIR]

The library side is :mod:`licsearch.ops.migrate`.
"""

from __future__ import annotations

import argparse

from .. import defaults
from ..errors import InputError
from .base import Command, Result
from .model_flags import add_model_flags, models_with_defaults
from .options import add_heldout_flags, add_store_flags, heldout_thresholds, read_texts, store_dir


def configure_migrate(p: argparse.ArgumentParser) -> None:
    add_store_flags(p)
    add_model_flags(p, title="the new CLIP", adapter_weights=None, clip_help="the CLIP to move to (required)")
    p.add_argument("--sample", type=int, required=True, metavar="N", help="bitstreams to decode as the teacher's set")
    h, s = defaults.MIGRATE_HOLDOUT, defaults.MIGRATE_STEPS
    p.add_argument("--holdout", type=float, default=h, help=f"fraction of the sample held out to measure (default {h})")
    p.add_argument(
        "--steps", type=int, default=s, help=f"training steps when the store has no adapter space to start from ({s})"
    )
    p.add_argument(
        "--anchor-texts",
        metavar="FILE",
        help="captions or typical queries, one per line: embedded by both text towers as extra pairs of the fit",
    )
    add_heldout_flags(p)


def cmd_migrate(args: argparse.Namespace) -> Result:
    from ..ops.distill import TrainOptions
    from ..ops.migrate import MigrateOptions, migrate

    if not args.clip:
        raise InputError("say which CLIP to move to", hint="give --clip MODEL[:TAG] (and --clip-weights W)")
    if args.codec or args.codec_weights:
        raise InputError(
            "migrate cannot change the codec: the stored bitstreams decode only with the store's",
            hint="drop --codec and --codec-weights; a new codec needs a new store (`licsearch init`)",
        )
    thresholds = heldout_thresholds(args)
    if args.steps < 1:
        raise InputError("--steps must be positive")
    progress = False if args.no_progress else None
    options = MigrateOptions(
        clip=models_with_defaults(args).clip,
        sample=args.sample,
        holdout=args.holdout,
        train=TrainOptions(steps=args.steps, progress=progress),
        thresholds=thresholds,
        texts=read_texts(args.texts) if args.texts else None,
        anchor_texts=read_texts(args.anchor_texts) if args.anchor_texts else None,
        activate=args.activate,
        force=args.force,
        progress=progress,
        threads=args.threads,
    )
    report = migrate(store_dir(args), options)
    c, h = report.cost, report.heldout
    lines = [
        f"space {report.space_id}: {report.state} ({report.method}); active space {report.active_space}",
        f"held-out ({h['points']} images): cos {h['cos_mean']:.3f}, recall@10 overlap "
        f"{h['recall_at_10_overlap']:.3f}, text top-10 agreement {h['text_top10_agreement']:.3f}",
        f"cost: {c['migrate_s']:.1f} s against {c['full_s']:.1f} s to decode and embed all {int(c['points'])} "
        f"images (speedup {c['speedup']:.1f}x)",
        *report.reasons,
    ]
    refused = args.activate and not report.activated
    return Result(report.to_dict(), "\n".join(lines), 1 if report.reindex["failed"] or refused else 0)


COMMANDS = (
    Command(
        "migrate",
        "move the store to another CLIP, decoding only a sample of its bitstreams",
        configure_migrate,
        cmd_migrate,
    ),
)
