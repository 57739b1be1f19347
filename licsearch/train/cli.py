"""The ``licsearch train`` subcommands: arguments, and their translation into the trainers' options."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import InputError

DEFAULT_OUT = Path(".train-runs")
MODEL_FLAGS = ("codec", "codec_weights", "clip", "clip_weights", "adapter_weights")


def add_train_parser(sub: Any) -> None:
    """Adds ``train codec|adapter|joint|clip`` to the CLI's subcommands."""
    p = sub.add_parser("train", help="train the codec, the adapter, both jointly, or a small CLIP on the world")
    what = p.add_subparsers(dest="train_command", required=True, metavar="WHAT")

    c = what.add_parser("codec", help="rate-distortion training of a CompressAI codec (L = R + λ·255²·MSE)")
    _common(c, steps=100_000, batch=16, lr=1e-4)
    c.add_argument("--images", required=True, metavar="DIR", help="folder of training images (recursive)")
    c.add_argument("--arch", default="bmshj2018-hyperprior", help="CompressAI architecture")
    c.add_argument("--quality", type=int, default=3, help="zoo quality: fixes the channel counts and the default λ")
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

    a = what.add_parser("adapter", help="distil CLIP's image tower into the adapter, codec frozen (Ds = 1 - cos)")
    _common(a, steps=20_000, batch=32, lr=1e-3)
    a.add_argument("--images", required=True, metavar="DIR", help="folder of training images (recursive)")
    _models(a, adapter_weights=False)
    a.add_argument("--crop", type=int, default=256, help="side of the crop both codec and CLIP see, multiple of 64")
    a.add_argument("--weight-decay", type=float, default=0.01)
    a.add_argument("--warmup", type=int, help="warm-up steps (default: 2 %% of --steps)")
    a.add_argument("--no-augment", action="store_true", help="centre crops only (targets are then computed once)")
    a.add_argument("--jitter", type=float, default=0.1, help="colour jitter strength (0: none)")
    a.add_argument("--init", default="random", metavar="random|PATH", help="initial adapter weights")
    a.add_argument("--eval-images", type=int, default=64, help="images scored through bitstreams at the end")
    _workers(a)

    j = what.add_parser("joint", help="fine-tune codec and adapter together: L = R + λ·D + λs·Ds")
    _common(j, steps=10_000, batch=8, lr=1e-5)
    j.add_argument("--images", required=True, metavar="DIR", help="folder of training images (recursive)")
    _models(j, adapter_weights=True)
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

    k = what.add_parser("clip", help="train a small CLIP contrastively on the procedural world; report hit@k")
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
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def _workers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, help="image loader processes (default: 0 on CPU, up to 8 with a GPU)")


def _models(p: argparse.ArgumentParser, *, adapter_weights: bool) -> None:
    g = p.add_argument_group("models (or --store: the models of a store)")
    g.add_argument("--store", metavar="DIR", help="take codec, CLIP and adapter shape from this store's config")
    g.add_argument("--codec", metavar="ARCH:QUALITY", help="codec (default bmshj2018-hyperprior:3)")
    g.add_argument("--codec-weights", metavar="pretrained|random|PATH", help="codec weights (default pretrained)")
    g.add_argument("--clip", metavar="MODEL[:TAG]", help="teacher CLIP (default ViT-B-32:laion2b_s34b_b79k)")
    g.add_argument("--clip-weights", metavar="pretrained|random|PATH", help="CLIP weights (default pretrained)")
    if adapter_weights:
        g.add_argument("--adapter-weights", metavar="random|PATH", help="initial adapter weights (default random)")
    g.add_argument("--adapter-width", type=int, help="channels of the adapter's strided branches (default 256)")
    g.add_argument("--adapter-hidden", type=int, help="width of the adapter's MLP hidden layer (default 1024)")


def run_train(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Runs the trainer named by ``args``; returns the JSON document and the human summary."""
    from .loop import LoopOptions

    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise InputError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    loop = LoopOptions(
        steps=args.steps,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        progress=False if args.no_progress else None,
        eval_every=getattr(args, "eval_every", 0),
    )
    common = {"out": args.out, "loop": loop, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    common.update(device=args.device, resume=args.resume)
    what = args.train_command
    if what == "codec":
        from .codec import CodecTrainOptions, train_codec

        report = train_codec(
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
                init=_weights(args.init),
                small=args.small,
                flip=not args.no_flip,
                eval_images=args.eval_images,
                workers=args.workers,
                **common,
            )
        )
    elif what == "adapter":
        from .adapter import AdapterTrainOptions, train_adapter

        report = train_adapter(
            AdapterTrainOptions(
                images=Path(args.images),
                models=_models_config(args),
                crop=args.crop,
                weight_decay=args.weight_decay,
                warmup=args.warmup,
                augment=not args.no_augment,
                jitter=args.jitter,
                init=_weights(args.init),
                eval_images=args.eval_images,
                workers=args.workers,
                **common,
            )
        )
    elif what == "joint":
        from .joint import JointTrainOptions, train_joint

        report = train_joint(
            JointTrainOptions(
                images=Path(args.images),
                models=_models_config(args),
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
    else:
        from .clip import ClipTrainOptions, train_clip

        report = train_clip(
            ClipTrainOptions(
                model=args.model,
                n_train=args.n_train,
                n_eval=args.n_eval,
                image_size=args.image_size,
                world_seed=args.world_seed,
                weight_decay=args.weight_decay,
                warmup=args.warmup,
                init=_weights(args.init),
                cache=Path(args.cache) if args.cache else None,
                **common,
            )
        )
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
    return doc, human


def _models_config(args: argparse.Namespace) -> Any:
    """The models of ``--store``, or of the model flags (defaults and seeding as ``licsearch init``'s)."""
    import dataclasses

    from ..config import AdapterConfig, ClipConfig, CodecConfig, ModelsConfig, StoreConfig
    from ..model.codec import parse_codec
    from ..model.text import DEFAULT_CLIP, DEFAULT_TAG, parse_clip

    given = [f for f in MODEL_FLAGS if getattr(args, f, None) is not None]
    width, hidden = args.adapter_width, args.adapter_hidden
    if args.store:
        if given:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            raise InputError(f"--store and {flags} exclude each other", hint="a store names its own models")
        models = StoreConfig.load(Path(args.store)).models
        adapter = models.adapter
        if width is not None or hidden is not None:
            adapter = dataclasses.replace(adapter, width=width or adapter.width, hidden=hidden or adapter.hidden)
        return dataclasses.replace(models, adapter=adapter)
    arch, quality = parse_codec(args.codec or "bmshj2018-hyperprior:3")
    clip_name, tag = parse_clip(args.clip or DEFAULT_CLIP)
    clip_weights = _weights(args.clip_weights or "pretrained")
    seed = args.seed  # random codec / CLIP weights are seeded as `licsearch init --seed` seeds them
    if tag is None and clip_name == DEFAULT_CLIP and clip_weights == "pretrained":
        tag = DEFAULT_TAG
    return ModelsConfig(
        codec=CodecConfig(arch=arch, quality=quality, weights=_weights(args.codec_weights or "pretrained"), seed=seed),
        clip=ClipConfig(model=clip_name, tag=tag, weights=clip_weights, seed=seed),
        adapter=AdapterConfig(
            weights=_weights(getattr(args, "adapter_weights", None) or "random"),
            seed=seed,
            width=width or AdapterConfig.width,
            hidden=hidden or AdapterConfig.hidden,
        ),
    )


def _weights(value: str) -> str:
    """``pretrained`` and ``random`` as they are; a path made absolute (it is recorded in the provenance)."""
    if value in ("pretrained", "random") or value.startswith("shipped:"):
        return value
    return str(Path(value).expanduser().resolve())


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
