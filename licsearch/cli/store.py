"""``licsearch init``, ``stats`` and ``fsck``: create a store, describe it, check and repair it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import defaults
from ..errors import InputError
from ..storage.vectors import add_vectors_flag
from .base import Command, Result, note, warn_random
from .model_flags import add_model_flags, models_from_flags
from .options import add_store_flags, open_store, store_dir


def configure_init(p: argparse.ArgumentParser) -> None:
    add_store_flags(p)
    add_model_flags(p)
    p.add_argument("--qdrant", metavar="URL", help="Qdrant server URL (default: an embedded Qdrant Edge shard)")
    p.add_argument("--api-key", metavar="KEY", help="Qdrant API key (kept in the store's credentials.json, 0600)")
    p.add_argument("--collection", default="licsearch", help="Qdrant collection name")
    add_vectors_flag(p)
    p.add_argument("--max-pixels", type=int, default=defaults.MAX_PIXELS, help="largest image accepted, in pixels")
    p.add_argument("--bundle", metavar="DIR", help="run the models from this exported bundle (ONNX Runtime)")
    p.add_argument(
        "--preset", metavar="NAME", help="a shipped model set: 'offline' (trained by this project, no network needed)"
    )


def init_kind(args: argparse.Namespace) -> str:
    """The active space's kind for ``init``: ``pixels`` when no adapter weights are named for the codec/CLIP pair
    (no ``--adapter-weights``, no preset, no bundle), so search is CLIP's own from the first ingest; else
    ``adapter``. ``--adapter-weights random`` keeps an adapter space (labelled random) for tests."""
    from ..spaces import ADAPTER_KIND, PIXELS_KIND

    named = args.preset or args.bundle or getattr(args, "adapter_weights", None) is not None
    return ADAPTER_KIND if named else PIXELS_KIND


def cmd_init(args: argparse.Namespace) -> Result:
    from ..config import ModelsConfig, QdrantConfig
    from ..spaces import PIXELS_KIND
    from ..storage.store import Store

    flags = models_from_flags(args)
    models = flags or ModelsConfig()
    if args.preset:
        from ..presets import preset_models

        if flags is not None or args.bundle:
            raise InputError(
                "--preset and model flags or --bundle exclude each other", hint="a preset names its models"
            )
        models = preset_models(args.preset)
    if args.max_pixels < 1:
        raise InputError("--max-pixels must be positive")
    qdrant = QdrantConfig(url=args.qdrant, collection=args.collection)
    root = store_dir(args)
    if args.bundle and flags is not None:
        raise InputError("--bundle and model flags exclude each other", hint="a bundle names its own models")
    bundle = Path(args.bundle) if args.bundle else None
    kind = init_kind(args)
    with Store.create(
        root,
        models,
        qdrant=qdrant,
        api_key=args.api_key,
        max_pixels=args.max_pixels,
        bundle=bundle,
        kind=kind,
        vectors=args.vectors,
    ) as store:
        rnd = warn_random(store.models.random_components())
        cfg = store.config
        doc = {
            "store": str(root),
            "space_id": cfg.space_id,
            "kind": cfg.kind,
            "models": cfg.to_dict()["models"],
            "random_weights": rnd,
            "engine": store.index.engine_kind,
        }
        if kind == PIXELS_KIND:
            note(
                "no adapter weights for this codec and CLIP: the active space is a pixels space (CLIP's image tower "
                f"on each ingested image); once images are in, `licsearch distill --store {root} --activate` trains "
                "the adapter from them"
            )
        human = f"initialised store {root} (space {cfg.space_id}, {cfg.kind}, {store.index.describe()})"
        return Result(doc, human)


def cmd_stats(args: argparse.Namespace) -> Result:
    from ..ops.maintenance import stats

    with open_store(args) as store:
        doc = stats(store)
    warn_random(doc["random_weights"])
    human = f"{doc['images']} images, {doc['bytes']} bytes, mean {doc['mean_bpp']:.4f} bpp, space {doc['space_id']}"
    return Result(doc, human)


def configure_fsck(p: argparse.ArgumentParser) -> None:
    add_store_flags(p)
    p.add_argument("--repair", action="store_true")
    p.add_argument("--no-verify", action="store_true", help="skip re-hashing every bitstream")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_fsck(args: argparse.Namespace) -> Result:
    from ..ops.maintenance import fsck

    with open_store(args) as store:
        rep = fsck(store, repair=args.repair, verify=not args.no_verify, progress=False if args.no_progress else None)
    d = rep.to_dict()
    human = (
        f"{d['points']} points, {d['bitstreams']} bitstreams: {len(rep.missing)} missing, {len(rep.corrupt)} "
        f"corrupt, {len(rep.orphans)} orphan" + (" (repaired)" if rep.repaired else "")
    )
    return Result(d, human, 0 if rep.ok else 1)


COMMANDS = (
    Command("init", "create a store for a codec, CLIP model and adapter", configure_init, cmd_init),
    Command("stats", "images, bytes, mean bpp and spaces of a store", add_store_flags, cmd_stats),
    Command("fsck", "check that points and bitstreams agree; --repair fixes them", configure_fsck, cmd_fsck),
)
