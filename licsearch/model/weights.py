"""Loading and fingerprinting weights without running pickled code.

A weights source is one of ``pretrained`` (the upstream download), ``random`` (seeded, for tests and
offline demos; always labelled), ``shipped:NAME`` (a file trained by this project and shipped inside the
package, under ``licsearch/shipped/``; the source stays valid wherever the package is installed) or a local file
path. Local files are read with ``safetensors`` or with ``torch.load(weights_only=True)``, which refuses arbitrary
pickled objects.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelError

if TYPE_CHECKING:
    import torch

PRETRAINED = "pretrained"
RANDOM = "random"
SHIPPED_PREFIX = "shipped:"


def shipped_dir() -> Path:
    """The folder of the weights this project trained and ships (``licsearch/shipped``)."""
    return Path(__file__).resolve().parent.parent / "shipped"


def resolve_source(source: str | Path) -> Path:
    """The file a path or ``shipped:NAME`` source names."""
    text = str(source)
    if not text.startswith(SHIPPED_PREFIX):
        return Path(text)
    name = text[len(SHIPPED_PREFIX) :]
    root = shipped_dir()
    path = (root / name).resolve()
    if not name or root not in path.parents:
        raise ModelError(
            f"bad shipped weights name {text!r}",
            hint="write shipped:PRESET/FILE, e.g. shipped:offline/codec-q3.safetensors",
        )
    return path


def normalise_source(source: str) -> str:
    """A weights source as a store records it: ``pretrained``, ``random`` and ``shipped:NAME`` as they are (resolved
    where they are loaded), a path made absolute."""
    if source in (PRETRAINED, RANDOM) or source.startswith(SHIPPED_PREFIX):
        return source
    return str(Path(source).expanduser().resolve())


def is_path_source(source: str) -> bool:
    """True when a weights source names a file rather than ``pretrained`` or ``random``."""
    return source not in (PRETRAINED, RANDOM)


def load_state_dict_file(path: str | Path, *, what: str) -> dict[str, torch.Tensor]:
    """Reads a state dict from ``.safetensors`` or a torch checkpoint, never executing pickled code.

    Torch checkpoints may hold the state dict at the top level or under ``state_dict`` / ``model``.

    Args:
        path: the checkpoint file.
        what: what the weights are for, used in messages ("codec").
    """
    import torch

    p = resolve_source(path)
    if not p.is_file():
        raise ModelError(f"{what} weights file not found: {p}", hint="give an existing file, or 'random'")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(p)))
        obj: Any = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(
            f"cannot read {what} weights from {p}: {e}",
            hint="expected a .safetensors file or a torch checkpoint holding only tensors",
        ) from e
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{p} does not hold a state dict of tensors", hint=f"save the {what} with save_state_dict()")
    return {str(k): v for k, v in obj.items()}


def save_state_dict(
    state: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str] | None = None
) -> None:
    """Writes tensors as ``.safetensors`` (contiguous CPU copies), atomically."""
    import os

    from safetensors.torch import save_file

    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp), metadata=dict(metadata or {}))
    os.replace(tmp, p)


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """A fingerprint of the weights: sha256 over sorted names, dtypes, shapes and raw bytes."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Runs the block with torch's global RNG seeded, restoring the caller's RNG state afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
