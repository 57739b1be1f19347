"""The ``licsearch eval`` command: arguments, which models to evaluate, and output.

Models: model flags as in ``init`` (``--codec ARCH:Q`` and the weights flags), else the store's models (read from
its config; Qdrant is not opened), plus any ``--bundle``. With only ``--bundle``, just the bundles. ``--qualities``
evaluates several qualities of the eager codec; how each quality finds its weights is documented in
:mod:`licsearch.eval.planes`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from .base import Command, Result, note, warn_random
from .model_flags import add_model_flags, models_from_flags
from .options import add_store_flags, store_dir

if TYPE_CHECKING:
    from ..eval.planes import EvalPlane
    from ..eval.retrieval import RetrievalOptions


def configure_eval(p: argparse.ArgumentParser) -> None:
    from ..eval.baselines import PILLOW_CODECS
    from ..eval.bdrate import METHODS

    add_store_flags(p)
    add_model_flags(p)
    p.add_argument("--images", metavar="DIR", help="images to evaluate (default: the --captions file's folder)")
    p.add_argument("--bundle", action="append", default=[], metavar="DIR", help="bundle to evaluate (repeatable)")
    p.add_argument(
        "--qualities",
        metavar="Q,Q,...",
        help="codec qualities, e.g. 1,2,3,4 or 1-4; with PATH weights use a pattern PATH{q} or a folder of q{q}.*",
    )
    p.add_argument("--captions", metavar="FILE", help="captions.jsonl (licsearch samples): text-to-image hit rates")
    p.add_argument(
        "--anchors", metavar="DIR", help="published curves to compare with, e.g. shared/anchors/compressai-kodak"
    )
    p.add_argument("--plots", metavar="DIR", help="write PNG figures here")
    p.add_argument("--max-images", type=int, default=24, metavar="N", help="evaluate at most N images (default 24)")
    p.add_argument(
        "--baselines",
        default=",".join(PILLOW_CODECS.names()),
        metavar="NAMES",
        help=f"Pillow codecs to sweep, comma-separated, or 'none' (default: {','.join(PILLOW_CODECS.names())})",
    )
    p.add_argument("--bd-method", choices=METHODS, default="cubic", help="BD fit: cubic polynomial or pchip")
    r = p.add_argument_group("image-to-image retrieval (--retrieval; licsearch/eval/retrieval.py)")
    r.add_argument("--retrieval", action="store_true", help="add mAP@R, recall@k and near-duplicate search")
    r.add_argument(
        "--retrieval-adapter",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another adapter (a training run folder or weights file) over the same codec (repeatable)",
    )
    r.add_argument("--retrieval-world", type=int, default=200, metavar="N", help="held-out world scenes (0: none)")
    r.add_argument(
        "--retrieval-images",
        action="append",
        default=[],
        metavar="DIR",
        help="image set for near-duplicate search (repeatable; default: --images)",
    )


def cmd_eval(args: argparse.Namespace) -> Result:
    from ..eval.baselines import PILLOW_CODECS
    from ..eval.report import EvalOptions, json_safe, run_eval
    from ..eval.table import format_report
    from ..extras import need

    if args.plots:  # before the evaluation, not after it
        need("matplotlib", "eval", "plots (--plots)")
    planes = eval_planes(args)
    baselines = () if args.baselines.strip() == "none" else tuple(b.strip() for b in args.baselines.split(",") if b)
    for b in baselines:
        PILLOW_CODECS.get(b)
    options = EvalOptions(
        images=Path(args.images) if args.images else None,
        max_images=args.max_images,
        captions=Path(args.captions) if args.captions else None,
        anchors=Path(args.anchors) if args.anchors else None,
        plots=Path(args.plots) if args.plots else None,
        baselines=baselines,
        bd_method=args.bd_method,
        retrieval=_retrieval_options(args),
    )
    warn_random(sorted({c for p in planes for c in p.plane.random_components()}))
    doc = json_safe(run_eval(planes, options, log=note))
    return Result(doc, format_report(doc))


def _retrieval_options(args: argparse.Namespace) -> RetrievalOptions | None:
    from ..eval.retrieval import RetrievalOptions, parse_entry

    if not args.retrieval:
        if args.retrieval_adapter or args.retrieval_images:
            raise InputError("--retrieval-adapter and --retrieval-images need --retrieval", hint="add --retrieval")
        return None
    sets = args.retrieval_images or ([args.images] if args.images else [])
    return RetrievalOptions(
        entries=tuple(parse_entry(e) for e in args.retrieval_adapter),
        world_scenes=args.retrieval_world,
        sets=tuple(Path(s) for s in sets),
        max_images=args.max_images,
    )


def eval_planes(args: argparse.Namespace) -> list[EvalPlane]:
    """The model planes to evaluate: the flags' or the store's models (each of ``--qualities``), and the bundles."""
    from ..config import StoreConfig
    from ..eval.planes import bundle_planes, eager_planes, parse_qualities

    qualities = parse_qualities(args.qualities) if args.qualities else None
    planes: list[EvalPlane] = []
    flags = models_from_flags(args)
    if flags is not None:
        planes += eager_planes(flags, qualities)
    elif args.store or not args.bundle:
        cfg = StoreConfig.load(store_dir(args))
        if cfg.bundle:
            if qualities:
                raise InputError("this store runs from a bundle of one quality; --qualities needs eager models")
            planes += bundle_planes([Path(cfg.bundle)])
        else:
            planes += eager_planes(cfg.models, qualities)
    elif qualities:
        raise InputError("--qualities applies to eager models", hint="give model flags or --store, or drop it")
    planes += bundle_planes([Path(b) for b in args.bundle])
    return planes


COMMANDS = (
    Command(
        "eval", "rate-distortion, BD-rate and semantic fidelity of the codec and adapter", configure_eval, cmd_eval
    ),
)
