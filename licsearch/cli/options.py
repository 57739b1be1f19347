"""Flags and argument helpers shared by command groups: the store, the model server, the thresholds of a gate,
the held-out activation of ``distill`` and ``migrate``, ``KEY=VALUE`` lists."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import defaults
from ..errors import InputError
from .base import add_json_flag

if TYPE_CHECKING:
    import numpy as np

    from ..ops.distill import Thresholds
    from ..storage.store import Store


def add_store_flags(p: argparse.ArgumentParser) -> None:
    """``--store DIR`` and ``--json``."""
    p.add_argument("--store", metavar="DIR", help="store directory (default: $LICSEARCH_STORE or ./licsearch-data)")
    add_json_flag(p)


def add_server_flags(p: argparse.ArgumentParser) -> None:
    """``--server URL`` and ``--token KEY``: run the models on a TorchServe."""
    g = p.add_argument_group("model server")
    g.add_argument("--server", metavar="URL", help="run the models on this TorchServe (`licsearch serve`)")
    g.add_argument("--token", metavar="KEY", help="the server's inference key (default $LICSEARCH_SERVER_TOKEN)")


def add_threshold_flags(p: Any, *, cos_help: str | None = None, recall_help: str | None = None) -> None:
    """The parity thresholds of ``gate`` and ``rollout``, on a parser or an argument group."""
    psnr, bpp = defaults.PSNR_DELTA_MIN_DB, defaults.BPP_DELTA_MAX_PCT
    p.add_argument("--psnr-delta-min", type=float, default=psnr, help=f"dB (default {psnr})")
    p.add_argument("--bpp-delta-max", type=float, default=bpp, help=f"percent (default {bpp})")
    p.add_argument("--cos-mean-min", type=float, default=defaults.COS_MEAN_MIN, help=cos_help)
    p.add_argument("--recall-overlap-min", type=float, default=defaults.RECALL_OVERLAP_MIN, help=recall_help)


def add_heldout_flags(p: argparse.ArgumentParser) -> None:
    """What ``distill`` and ``migrate`` measure a new adapter on and when they activate its space.

    ``--texts``, the held-out thresholds (``--recall-min``, ``--cos-min``, ``--text-min``), ``--activate``,
    ``--force``, ``--threads`` and ``--no-progress``; read back with :func:`heldout_thresholds` and
    :func:`read_texts`.
    """
    p.add_argument(
        "--texts", metavar="FILE", help="text queries, one a line (default: words of the CLIP tokenizer's vocabulary)"
    )
    r = defaults.ADAPTER_RECALL_OVERLAP_MIN
    p.add_argument(
        "--recall-min", type=float, default=r, help=f"least held-out recall@10 overlap to activate (default {r})"
    )
    p.add_argument("--cos-min", type=float, default=0.0, help="least held-out mean cosine to activate (default 0)")
    p.add_argument("--text-min", type=float, default=0.0, help="least held-out text top-10 agreement (default 0)")
    p.add_argument("--activate", action="store_true", help="switch queries and ingest to the new space if it passes")
    p.add_argument("--force", action="store_true", help="with --activate, activate even when a threshold fails")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads of PyTorch (default: its own choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def heldout_thresholds(args: argparse.Namespace) -> Thresholds:
    """The thresholds of :func:`add_heldout_flags`; ``--force`` without ``--activate`` is refused."""
    from ..ops.distill import Thresholds

    if args.force and not args.activate:
        raise InputError("--force only overrides the thresholds of --activate", hint="add --activate")
    return Thresholds(recall_min=args.recall_min, cos_min=args.cos_min, text_min=args.text_min)


def read_texts(path: str | Path) -> tuple[str, ...]:
    """The queries of a ``--texts`` file, one a line (blank lines skipped); an unreadable or empty file is refused."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read --texts {path}: {e}", hint="give a UTF-8 text file, one query a line") from None
    texts = tuple(t.strip() for t in lines if t.strip())
    if not texts:
        raise InputError(f"--texts {path} holds no query", hint="write one query a line")
    return texts


def store_dir(args: argparse.Namespace) -> Path:
    """``--store``, else the default store directory."""
    from ..storage.store import default_store_dir

    return Path(args.store) if args.store else default_store_dir()


def open_store(args: argparse.Namespace) -> Store:
    """Opens the store; with ``--server`` its models run on that server (blobs and Qdrant stay here)."""
    from ..storage.store import Store

    store = Store.open(store_dir(args))
    if getattr(args, "server", None):
        from ..serving.client import RemoteModelPlane

        store.models = RemoteModelPlane.for_store(args.server, store.config, token=args.token)
    return store


def parse_kv(items: Sequence[str], what: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs to a dict (values kept as strings unless they parse as int/float)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"bad {what} {item!r}", hint="write KEY=VALUE")
        out[key] = _scalar(value)
    return out


def _scalar(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def load_images(directory: str, limit: int = 64) -> list[np.ndarray]:
    """Pixels of up to ``limit`` images of ``directory`` (unreadable files skipped).

    Raises:
        InputError: no image could be read.
    """
    from ..imageio import iter_image_files, load_image

    out: list[np.ndarray] = []
    for path, err in iter_image_files([directory]):
        if err is None and len(out) < limit:
            out.append(load_image(path).pixels)
    if not out:
        raise InputError(f"no images found in {directory}")
    return out
