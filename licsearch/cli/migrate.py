"""The ``licsearch migrate`` command: move a store to another CLIP by decoding only a sample of its bitstreams.

::

    licsearch migrate --clip MODEL[:TAG] [--clip-weights W] --sample N [--holdout 0.2] [--activate] [--force]
                      [--json] [--store DIR]

The library side is :mod:`licsearch.ops.migrate`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import defaults
from ..errors import InputError
from .base import Command, Result
from .model_flags import add_model_flags, models_with_defaults
from .options import add_store_flags, store_dir


def configure_migrate(p: argparse.ArgumentParser) -> None:
    add_store_flags(p)
    add_model_flags(p, title="the new CLIP", adapter_weights=None, clip_help="the CLIP to move to (required)")
    p.add_argument("--sample", type=int, required=True, metavar="N", help="bitstreams to decode as the teacher's set")
    h, s, r = defaults.MIGRATE_HOLDOUT, defaults.MIGRATE_STEPS, defaults.ADAPTER_RECALL_OVERLAP_MIN
    p.add_argument("--holdout", type=float, default=h, help=f"fraction of the sample held out to measure (default {h})")
    p.add_argument(
        "--steps", type=int, default=s, help=f"training steps when the store has no adapter space to start from ({s})"
    )
    p.add_argument("--texts", metavar="FILE", help="text queries, one a line (default: words of the CLIP's vocabulary)")
    p.add_argument("--recall-min", type=float, default=r, help=f"least held-out recall@10 overlap to activate ({r})")
    p.add_argument("--cos-min", type=float, default=0.0, help="least held-out mean cosine to activate (default 0)")
    p.add_argument("--text-min", type=float, default=0.0, help="least held-out text top-10 agreement (default 0)")
    p.add_argument("--activate", action="store_true", help="switch queries and ingest to the new space if it passes")
    p.add_argument("--force", action="store_true", help="with --activate, activate even when a threshold fails")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads of PyTorch (default: its own choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_migrate(args: argparse.Namespace) -> Result:
    from ..ops.distill import Thresholds, TrainOptions
    from ..ops.migrate import MigrateOptions, migrate

    if not args.clip:
        raise InputError("say which CLIP to move to", hint="give --clip MODEL[:TAG] (and --clip-weights W)")
    if args.codec or args.codec_weights:
        raise InputError(
            "migrate cannot change the codec: the stored bitstreams decode only with the store's",
            hint="drop --codec and --codec-weights; a new codec needs a new store (`licsearch init`)",
        )
    if args.force and not args.activate:
        raise InputError("--force only overrides the thresholds of --activate", hint="add --activate")
    if args.steps < 1:
        raise InputError("--steps must be positive")
    progress = False if args.no_progress else None
    options = MigrateOptions(
        clip=models_with_defaults(args).clip,
        sample=args.sample,
        holdout=args.holdout,
        train=TrainOptions(steps=args.steps, progress=progress),
        thresholds=Thresholds(recall_min=args.recall_min, cos_min=args.cos_min, text_min=args.text_min),
        texts=_read_texts(args.texts) if args.texts else None,
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


def _read_texts(path: str) -> tuple[str, ...]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InputError(f"cannot read --texts {path}: {e.strerror or e}") from e
    texts = tuple(t.strip() for t in lines if t.strip())
    if not texts:
        raise InputError(f"--texts {path} holds no text", hint="write one query a line")
    return texts


COMMANDS = (
    Command(
        "migrate",
        "move the store to another CLIP, decoding only a sample of its bitstreams",
        configure_migrate,
        cmd_migrate,
    ),
)
