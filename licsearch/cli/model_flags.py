"""Model flags (``--codec``, ``--clip``, the weights flags, ``--seed``) and their one translation into a
:class:`~licsearch.config.ModelsConfig`, for every command that names models (init, export, encode, decode, bench,
eval, train).
"""

from __future__ import annotations

import argparse

from .. import defaults
from ..config import AdapterConfig, ClipConfig, CodecConfig, ModelsConfig

MODEL_FLAGS = ("codec", "codec_weights", "clip", "clip_weights", "adapter_weights", "seed")
"""Destinations of the flags that name models; a parser records those it declared (``model_flags``)."""


def add_model_flags(
    p: argparse.ArgumentParser,
    *,
    title: str = "models",
    seed: bool = True,
    adapter_weights: str | None = "adapter weights (default random)",
    adapter_shape: bool = False,
    clip_help: str = "open_clip model",
) -> None:
    """Declares the model flags in a group ``title``.

    Args:
        p: the subcommand's parser.
        title: the group's heading in ``--help``.
        seed: declare ``--seed`` here (a command with its own ``--seed`` passes False).
        adapter_weights: help of ``--adapter-weights``, or None to leave the flag out.
        adapter_shape: also declare ``--adapter-width`` and ``--adapter-hidden``.
        clip_help: what ``--clip`` is for.
    """
    g = p.add_argument_group(title)
    g.add_argument("--codec", metavar="ARCH:QUALITY", help=f"CompressAI codec (default {defaults.CODEC})")
    g.add_argument("--codec-weights", metavar="pretrained|random|PATH", help="codec weights (default pretrained)")
    g.add_argument("--clip", metavar="MODEL[:TAG]", help=f"{clip_help} (default {defaults.CLIP})")
    g.add_argument("--clip-weights", metavar="pretrained|random|PATH", help="CLIP weights (default pretrained)")
    names = ["codec", "codec_weights", "clip", "clip_weights"]
    if adapter_weights is not None:
        g.add_argument("--adapter-weights", metavar="random|PATH", help=adapter_weights)
        names.append("adapter_weights")
    if seed:
        g.add_argument("--seed", type=int, help=f"seed of random weights (default {defaults.SEED})")
        names.append("seed")
    if adapter_shape:
        w, h = AdapterConfig.width, AdapterConfig.hidden
        g.add_argument("--adapter-width", type=int, help=f"channels of the adapter's strided branches (default {w})")
        g.add_argument("--adapter-hidden", type=int, help=f"width of the adapter's MLP hidden layer (default {h})")
    p.set_defaults(model_flags=tuple(names))


def given_model_flags(args: argparse.Namespace) -> list[str]:
    """The model flags given on the command line, as ``--flag`` names."""
    names = getattr(args, "model_flags", MODEL_FLAGS)
    return ["--" + f.replace("_", "-") for f in names if getattr(args, f, None) is not None]


def models_from_flags(args: argparse.Namespace) -> ModelsConfig | None:
    """The models the flags name (defaults for the flags not given), or None when no model flag was given."""
    return models_with_defaults(args) if given_model_flags(args) else None


def models_with_defaults(args: argparse.Namespace) -> ModelsConfig:
    """The models the flags name, with the defaults for every flag not given (``init``'s defaults)."""
    from ..model.codec import parse_codec
    from ..model.text import parse_clip

    arch, quality = parse_codec(args.codec or defaults.CODEC)
    clip_name, tag = parse_clip(args.clip or defaults.CLIP_MODEL)
    seed = args.seed if getattr(args, "seed", None) is not None else defaults.SEED
    clip_weights = resolve_weights(args.clip_weights, defaults.CLIP_WEIGHTS)
    if tag is None and clip_name == defaults.CLIP_MODEL and clip_weights == "pretrained":
        tag = defaults.CLIP_TAG
    width = getattr(args, "adapter_width", None) or AdapterConfig.width
    hidden = getattr(args, "adapter_hidden", None) or AdapterConfig.hidden
    return ModelsConfig(
        codec=CodecConfig(
            arch=arch, quality=quality, weights=resolve_weights(args.codec_weights, defaults.CODEC_WEIGHTS), seed=seed
        ),
        clip=ClipConfig(model=clip_name, tag=tag, weights=clip_weights, seed=seed),
        adapter=AdapterConfig(
            weights=resolve_weights(getattr(args, "adapter_weights", None), defaults.ADAPTER_WEIGHTS),
            seed=seed,
            width=width,
            hidden=hidden,
        ),
    )


def resolve_weights(value: str | None, default: str) -> str:
    """A weights flag: ``pretrained``, ``random`` and ``shipped:NAME`` as they are, a path made absolute (it is
    recorded in the store config and in provenance), ``default`` when the flag was not given."""
    from ..model.weights import normalise_source

    return default if value is None else normalise_source(value)
