"""``licsearch train codec|adapter|joint|clip``: the trainers' flags and their translation into options.

The adapter and joint trainers name their models with the same flags as ``init`` (:mod:`.model_flags`), or take
them from ``--store``; ``--seed`` seeds initialisation, data order and augmentations as well as random weights.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import defaults
from ..errors import InputError
from ..model.threads import torch_threads
from .base import Command, Result, add_json_flag
from .model_flags import add_model_flags, given_model_flags, models_with_defaults, resolve_weights

if TYPE_CHECKING:
    from ..config import ModelsConfig
    from ..train.loop import TrainReport

DEFAULT_OUT = Path(".train-runs")


def configure_train(p: argparse.ArgumentParser) -> None:
    what = p.add_subparsers(dest="train_command", required=True, metavar="WHAT")
    subcommands = (
        ("codec", "rate-distortion training of a CompressAI codec (L = R + λ·255²·MSE)", _configure_codec),
        ("adapter", "distil CLIP's image tower into the adapter, codec frozen (Ds = 1 - cos)", _configure_adapter),
        ("joint", "fine-tune codec and adapter together: L = R + λ·D + λs·Ds", _configure_joint),
        ("clip", "train a small CLIP contrastively on the procedural world; report hit@k", _configure_clip),
    )
    for name, help_text, configure in subcommands:
        configure(what.add_parser(name, help=help_text))


def _configure_codec(c: argparse.ArgumentParser) -> None:
    _common(c, steps=100_000, batch=16, lr=1e-4)
    c.add_argument("--images", required=True, metavar="DIR", help="folder of training images (recursive)")
    c.add_argument("--arch", default=defaults.CODEC_ARCH, help="CompressAI architecture")
    c.add_argument(
        "--quality",
        type=int,
        default=defaults.CODEC_QUALITY,
        help="zoo quality: fixes the channel counts and the default λ",
    )
    c.add_argument("--lambda", dest="lmbda", type=float, help="rate-distortion λ (default: CompressAI's for --quality)")
    c.add_argument("--crop", type=int, default=256, help="square random crop side, a multiple of 64")
    c.add_argument("--aux-lr", type=float, default=1e-3, help="learning rate of the entropy bottleneck's quantiles")
    c.add_argument(
        "--schedule", choices=["constant", "cosine"], default="constant", help="learning-rate schedule after warm-up"
    )
    c.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    c.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm (0: no clipping)")
    c.add_argument("--init", default="random", metavar="random|pretrained|PATH", help="initial weights")
    c.add_argument("--small", choices=["pad", "skip"], default="pad", help="images smaller than the crop")
    c.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    c.add_argument("--eval-images", type=int, default=4, help="images round-tripped through bitstreams at the end")
    _workers(c)


def _configure_adapter(a: argparse.ArgumentParser) -> None:
    _common(a, steps=20_000, batch=32, lr=1e-3)
    a.add_argument("--images", required=True, metavar="DIR", help="folder of training images (recursive)")
    _models(a, adapter_weights=None)
    a.add_argument("--crop", type=int, default=256, help="side of the crop both codec and CLIP see, multiple of 64")
    a.add_argument("--weight-decay", type=float, default=0.01)
    a.add_argument("--warmup", type=int, help="warm-up steps (default: 2 %% of --steps)")
    a.add_argument("--no-augment", action="store_true", help="centre crops only (targets are then computed once)")
    a.add_argument("--jitter", type=float, default=0.1, help="colour jitter strength (0: none)")
    a.add_argument("--init", default="random", metavar="random|PATH", help="initial adapter weights")
    a.add_argument("--eval-images", type=int, default=64, help="images scored through bitstreams at the end")
    a.add_argument(
        "--world",
        action="store_true",
        help="views made on the fly: new world train scenes (seed --world-seed) and --images, edited as ingested",
    )
    a.add_argument("--chunk", type=int, default=256, help="with --world: views whose latents are computed together")
    a.add_argument("--reuse", type=int, default=8, help="with --world: times each view is used before it is replaced")
    a.add_argument("--photo-share", type=float, default=0.25, help="with --world: fraction of views that are photos")
    from ..train.data import VIEW_TARGETS

    a.add_argument(
        "--view-target",
        choices=VIEW_TARGETS,
        default="view",
        help="with --world: the teacher embeds each view (view) or, for a near-duplicate view, its original (original)",
    )
    _workers(a)
    _objective_flags(a)


def _objective_flags(a: argparse.ArgumentParser) -> None:
    from ..train.objectives import OBJECTIVES

    o = a.add_argument_group("retrieval objectives (Schall et al. 2024: 2SFT and MCIP; --images are the photos)")
    o.add_argument("--objective", choices=OBJECTIVES, default="distill", help="loss (default distill: 1 - cos)")
    o.add_argument("--world-scenes", type=int, default=1200, help="world train scenes, labelled by scene class")
    o.add_argument("--world-seed", type=int, default=0, help="seed of those scenes and of the world caption pool")
    o.add_argument("--photos", type=int, default=30, help="first N of --images, each an instance class (0: none)")
    o.add_argument("--views", type=int, default=3, help="augmented near-duplicate views per source image")
    o.add_argument("--arc-scale", type=float, default=defaults.ARC_MARGIN_SCALE, help="ArcMargin logit scale s")
    o.add_argument("--arc-margin", type=float, default=defaults.ARC_MARGIN_MARGIN, help="angular margin m, radians")
    o.add_argument("--captions", type=Path, metavar="FILE", help="MCIP caption pool (default: the world's grammar)")
    o.add_argument("--caption-pool", type=int, default=4000, help="world scenes whose captions form the pool")
    o.add_argument(
        "--caption-threshold",
        type=float,
        default=defaults.PSEUDO_CAPTION_THRESHOLD,
        help="least image-caption cosine of a pseudo-caption",
    )
    o.add_argument("--caption-count", type=int, default=defaults.PSEUDO_CAPTION_COUNT, help="most pseudo-captions")
    o.add_argument("--lambda-labels", type=float, default=defaults.MCIP_LAMBDA_LABELS, help="MCIP λ1 (ArcMargin)")
    o.add_argument("--lambda-captions", type=float, default=defaults.MCIP_LAMBDA_CAPTIONS, help="MCIP λ2 (MCArcMargin)")
    o.add_argument(
        "--lambda-distill",
        type=float,
        metavar="W",
        help="weight of 1 - cos to CLIP's image embedding beside the margin losses "
        f"(default: {defaults.MCIP_LAMBDA_DISTILL:g} for mcip, 0 for 2sft stage 1)",
    )
    o.add_argument("--text-steps", type=int, default=300, help="2SFT stage 2: text-tower re-alignment steps")
    o.add_argument("--text-lr", type=float, default=1e-4, help="2SFT stage 2 learning rate")
    o.add_argument("--cache", type=Path, metavar="DIR", help="cached latents (default: OUT/../objective-cache)")


def _configure_joint(j: argparse.ArgumentParser) -> None:
    _common(j, steps=10_000, batch=8, lr=1e-5)
    j.add_argument("--images", required=True, metavar="DIR", help="folder of training images (recursive)")
    _models(j, adapter_weights="initial adapter weights (default random)")
    j.add_argument(
        "--lambda", dest="lmbda", type=float, help="rate-distortion λ (default: CompressAI's for the quality)"
    )
    j.add_argument("--lambda-s", type=float, default=1.0, help="weight λs of the semantic loss Ds = 1 - cos")
    j.add_argument("--crop", type=int, default=256, help="square random crop side, a multiple of 64")
    j.add_argument("--adapter-lr", type=float, default=1e-4, help="learning rate of the adapter")
    j.add_argument("--aux-lr", type=float, default=1e-3, help="learning rate of the entropy bottleneck's quantiles")
    j.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm (0: no clipping)")
    j.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    j.add_argument("--eval-images", type=int, default=4, help="images round-tripped through bitstreams at the end")
    _workers(j)


def _configure_clip(k: argparse.ArgumentParser) -> None:
    _common(k, steps=5000, batch=256, lr=5e-4)
    k.add_argument("--world", action="store_true", required=True, help="train on the procedural captioned world")
    k.add_argument("--model", default="licsearch-world", help="open_clip config (licsearch/model_configs)")
    k.add_argument("--n-train", type=int, default=20000, help="scenes of the train split")
    k.add_argument("--n-eval", type=int, default=1000, help="scenes of each evaluation split (val, test)")
    k.add_argument("--image-size", type=int, help="render size; must be the model's input size (default: it)")
    k.add_argument("--world-seed", type=int, default=0, help="seed of the scenes (the same test set across runs)")
    k.add_argument("--weight-decay", type=float, default=0.1)
    k.add_argument("--warmup", type=int, help="warm-up steps (default: 5 %% of --steps, at most 500)")
    k.add_argument("--init", default="random", metavar="random|PATH", help="initial CLIP weights")
    k.add_argument("--cache", metavar="DIR", help="where rendered scenes are kept (default: OUT/world-cache)")
    k.add_argument("--eval-every", type=int, default=500, help="steps between evaluations (0: only at the end)")


def _common(p: argparse.ArgumentParser, *, steps: int, batch: int, lr: float) -> None:
    what = p.prog.split()[-1]
    p.add_argument("--out", type=Path, default=DEFAULT_OUT / what, metavar="DIR", help="output folder")
    p.add_argument("--steps", type=int, default=steps, help=f"optimisation steps (default {steps})")
    p.add_argument("--batch-size", type=int, default=batch, help=f"default {batch}")
    p.add_argument("--lr", type=float, default=lr, help=f"learning rate (default {lr:g})")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and augmentations")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for PyTorch (default: PyTorch's)")
    p.add_argument("--checkpoint-every", type=int, default=1000, metavar="K", help="steps between checkpoints")
    p.add_argument("--log-every", type=int, default=10, metavar="K", help="steps per line of OUT/log.jsonl")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_flag(p)


def _workers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, help="image loader processes (default: 0 on CPU, up to 8 with a GPU)")


def _models(p: argparse.ArgumentParser, *, adapter_weights: str | None) -> None:
    p.add_argument("--store", metavar="DIR", help="take codec, CLIP and adapter shape from this store's config")
    add_model_flags(
        p,
        title="models (or --store: the models of a store)",
        seed=False,
        adapter_weights=adapter_weights,
        adapter_shape=True,
        clip_help="teacher CLIP",
    )


def train_models(args: argparse.Namespace) -> ModelsConfig:
    """The models of ``--store`` (adapter shape overridable), or of the model flags with ``init``'s defaults."""
    import dataclasses

    from ..config import StoreConfig

    if not args.store:
        return models_with_defaults(args)
    given = given_model_flags(args)
    if given:
        raise InputError(f"--store and {', '.join(given)} exclude each other", hint="a store names its own models")
    models = StoreConfig.load(Path(args.store)).models
    adapter = models.adapter
    width, hidden = args.adapter_width, args.adapter_hidden
    if width is not None or hidden is not None:
        adapter = dataclasses.replace(adapter, width=width or adapter.width, hidden=hidden or adapter.hidden)
    return dataclasses.replace(models, adapter=adapter)


def _common_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options every trainer takes: output folder, loop, batch, learning rate, seed, device, resume."""
    from ..train.loop import LoopOptions

    loop = LoopOptions(
        steps=args.steps,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        progress=False if args.no_progress else None,
        eval_every=getattr(args, "eval_every", 0),
    )
    return {
        "out": args.out,
        "loop": loop,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "device": args.device,
        "resume": args.resume,
    }


def _train_codec(args: argparse.Namespace, common: dict[str, Any]) -> TrainReport:
    from ..train.codec import CodecTrainOptions, train_codec

    return train_codec(
        CodecTrainOptions(
            images=Path(args.images),
            arch=args.arch,
            quality=args.quality,
            lmbda=args.lmbda,
            crop=args.crop,
            schedule=args.schedule,
            warmup=args.warmup,
            aux_lr=args.aux_lr,
            clip_grad=args.clip_grad,
            init=resolve_weights(args.init, "random"),
            small=args.small,
            flip=not args.no_flip,
            eval_images=args.eval_images,
            workers=args.workers,
            **common,
        )
    )


def _train_adapter(args: argparse.Namespace, common: dict[str, Any]) -> TrainReport:
    from ..train.adapter import AdapterTrainOptions, train_adapter

    options = AdapterTrainOptions(
        images=Path(args.images),
        models=train_models(args),
        crop=args.crop,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        augment=not args.no_augment,
        jitter=args.jitter,
        init=resolve_weights(args.init, "random"),
        eval_images=args.eval_images,
        workers=args.workers,
        world=args.world,
        chunk=args.chunk,
        reuse=args.reuse,
        photo_share=args.photo_share,
        world_seed=args.world_seed,
        view_target=args.view_target,
        **common,
    )
    if args.objective == "distill":
        return train_adapter(options)
    from ..train.objectives import ObjectiveOptions, train_objective

    names: tuple[str, ...] = (
        "world_scenes",
        "world_seed",
        "photos",
        "views",
        "arc_scale",
        "arc_margin",
        "captions",
        "caption_pool",
    )
    names += (
        "caption_threshold",
        "caption_count",
        "lambda_labels",
        "lambda_captions",
        "text_steps",
        "text_lr",
        "cache",
        "lambda_distill",
    )
    return train_objective(ObjectiveOptions(options, args.objective, **{n: getattr(args, n) for n in names}))


def _train_joint(args: argparse.Namespace, common: dict[str, Any]) -> TrainReport:
    from ..train.joint import JointTrainOptions, train_joint

    return train_joint(
        JointTrainOptions(
            images=Path(args.images),
            models=train_models(args),
            lmbda=args.lmbda,
            lambda_s=args.lambda_s,
            crop=args.crop,
            adapter_lr=args.adapter_lr,
            aux_lr=args.aux_lr,
            clip_grad=args.clip_grad,
            flip=not args.no_flip,
            eval_images=args.eval_images,
            workers=args.workers,
            **common,
        )
    )


def _train_clip(args: argparse.Namespace, common: dict[str, Any]) -> TrainReport:
    from ..train.clip import ClipTrainOptions, train_clip

    return train_clip(
        ClipTrainOptions(
            model=args.model,
            n_train=args.n_train,
            n_eval=args.n_eval,
            image_size=args.image_size,
            world_seed=args.world_seed,
            weight_decay=args.weight_decay,
            warmup=args.warmup,
            init=resolve_weights(args.init, "random"),
            cache=Path(args.cache) if args.cache else None,
            **common,
        )
    )


TRAINERS: dict[str, Callable[[argparse.Namespace, dict[str, Any]], TrainReport]] = {
    "codec": _train_codec,
    "adapter": _train_adapter,
    "joint": _train_joint,
    "clip": _train_clip,
}


def cmd_train(args: argparse.Namespace) -> Result:
    """Runs the trainer named by ``args``; the report's figures and output files are the result."""
    if args.threads is not None and args.threads < 1:
        raise InputError("--threads must be at least 1")
    with torch_threads(args.threads):
        report = TRAINERS[args.train_command](args, _common_options(args))
    return train_result(args.train_command, report)


def train_result(what: str, report: TrainReport) -> Result:
    """The JSON document and human summary of a finished training run."""
    r = report.result
    doc = {
        "out": str(report.out),
        "outputs": report.outputs,
        "steps": r.step,
        "seconds": round(r.seconds, 3),
        "final_metrics": r.metrics,
        "evaluation": r.evaluation,
        "data": report.data,
    }
    files = ", ".join(o["path"] for o in report.outputs.values())
    figures = ", ".join(f"{k} {v:.4g}" for k, v in r.metrics.items() if k != "lr")
    human = f"trained {what} for {r.step} steps ({r.seconds:.1f} s): {figures}\nwrote {files}"
    if r.evaluation:
        human += f"\nevaluation: {_flat(r.evaluation)}"
    return Result(doc, human)


def _flat(doc: dict[str, Any], prefix: str = "") -> str:
    parts = []
    for k, v in doc.items():
        if isinstance(v, dict):
            parts.append(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, float):
            parts.append(f"{prefix}{k} {v:.4g}")
        else:
            parts.append(f"{prefix}{k} {v}")
    return ", ".join(parts)


COMMANDS = (
    Command(
        "train",
        "train the codec, the adapter, both jointly, or a small CLIP on the world",
        configure_train,
        cmd_train,
    ),
)
