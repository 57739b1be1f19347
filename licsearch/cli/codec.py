"""``licsearch encode`` and ``decode``: an image file to a ``.lics`` bitstream and back, outside any store.

Models come from the model flags, from ``--server``, or from the store (its config only; Qdrant is not opened).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .. import defaults
from ..config import ModelsConfig
from ..errors import InputError
from .base import Command, Result, warn_random
from .model_flags import add_model_flags, models_from_flags
from .options import add_server_flags, add_store_flags, store_dir

if TYPE_CHECKING:
    from ..model.models import ModelPlane


def codec_models(args: argparse.Namespace) -> tuple[ModelPlane, int]:
    """Models and pixel limit from flags, ``--server`` or the store; with ``--store`` and model flags, the flags
    must name the store's models."""
    from ..config import StoreConfig
    from ..model.models import ModelSet
    from ..storage.store import check_models, model_plane_for

    flags = models_from_flags(args)
    if args.server:
        return _server_models(args, flags)
    if flags is not None and not args.store:
        return ModelSet(flags), defaults.MAX_PIXELS
    cfg = StoreConfig.load(store_dir(args))
    check_models(cfg, flags)
    return model_plane_for(cfg), cfg.max_pixels


def _server_models(args: argparse.Namespace, flags: ModelsConfig | None) -> tuple[ModelPlane, int]:
    """The server's models, checked against the store's when there is a store (``--store`` or the default)."""
    from ..config import CONFIG_FILE, StoreConfig
    from ..serving.client import RemoteModelPlane, ServingClient

    if flags is not None:
        raise InputError("--server and model flags exclude each other", hint="the server names its own models")
    root = store_dir(args)
    if args.store or (root / CONFIG_FILE).exists():
        cfg = StoreConfig.load(root)
        return RemoteModelPlane.for_store(args.server, cfg, token=args.token), cfg.max_pixels
    return RemoteModelPlane(ServingClient(args.server, token=args.token)), defaults.MAX_PIXELS


def _codec_random(models: ModelPlane) -> list[str]:
    return warn_random([c for c in models.random_components() if c == "codec"])


def configure_encode(p: argparse.ArgumentParser) -> None:
    add_store_flags(p)
    add_server_flags(p)
    add_model_flags(p)
    p.add_argument("image")
    p.add_argument("-o", "--output", required=True, metavar="FILE.lics")


def cmd_encode(args: argparse.Namespace) -> Result:
    from ..bitstream import Bitstream
    from ..fsutil import atomic_write
    from ..imageio import load_image

    models, max_pixels = codec_models(args)
    image = load_image(args.image, max_pixels=max_pixels)
    rnd = _codec_random(models)
    data = models.encode_bitstream(image.pixels)
    bs = Bitstream.from_bytes(data)
    atomic_write(Path(args.output), data)
    bpp = 8.0 * len(data) / (bs.width * bs.height)
    doc = {
        "output": args.output,
        "bytes": len(data),
        "bpp": bpp,
        "width": bs.width,
        "height": bs.height,
        "codec_profile": bs.profile_id,
        "random_weights": rnd,
    }
    return Result(doc, f"wrote {args.output}: {len(data)} bytes, {bpp:.4f} bpp")


def configure_decode(p: argparse.ArgumentParser) -> None:
    add_store_flags(p)
    add_server_flags(p)
    add_model_flags(p)
    p.add_argument("bitstream")
    p.add_argument("-o", "--output", required=True, metavar="IMAGE")


def cmd_decode(args: argparse.Namespace) -> Result:
    from ..bitstream import Bitstream
    from ..errors import BitstreamError
    from ..imageio import save_image

    models, max_pixels = codec_models(args)
    path = Path(args.bitstream)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from e
    bs = Bitstream.from_bytes(data)
    if bs.width * bs.height > max_pixels:
        raise BitstreamError(
            f"{path} claims a {bs.width}x{bs.height} image, over the limit of {max_pixels} pixels",
            hint="decode it with a store made with a larger `licsearch init --max-pixels`",
        )
    rnd = _codec_random(models)
    pixels = models.decode(data)
    save_image(pixels, args.output)
    h, w = pixels.shape[:2]
    return Result(
        {"output": args.output, "width": w, "height": h, "random_weights": rnd}, f"wrote {args.output} ({w}x{h})"
    )


COMMANDS = (
    Command("encode", "compress an image file to a .lics bitstream", configure_encode, cmd_encode),
    Command("decode", "decode a .lics bitstream to an image file", configure_decode, cmd_decode),
)
