"""Which model planes ``licsearch eval`` measures: one per codec quality, eager or from exported bundles.

Each CompressAI quality level is a separate model. For eager models (model flags or a store), the qualities are
``--qualities`` (default: the configured one) and each gets its weights from the configured source:

- ``random`` and ``pretrained`` apply to every quality (random weights are seeded and always labelled);
- a path containing ``{q}`` is a pattern: ``ckpt/hyperprior-q{q}.safetensors`` gives quality 3 the file
  ``ckpt/hyperprior-q3.safetensors``;
- a directory holds one checkpoint per quality, named ``q{q}.safetensors`` (or ``.pth``, ``.pt``, ``.pth.tar``,
  ``.ckpt``), or for codecs CompressAI's zoo name ``{arch}-{q}-{hash}.pth.tar``;
- a single file holds one quality only, the configured one; other qualities need a pattern or a directory.

Adapter weights follow the same rules. An adapter file that holds one quality cannot embed the latents of other
qualities, so those qualities are measured for rate-distortion only and the report says why. CLIP is the same for
every quality.

A bundle is one plane at its own quality; bundles of the same architecture and precision form one curve.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import ModelsConfig
from ..errors import InputError
from ..model.codec import CODEC_ARCHS
from ..model.models import ModelPlane, ModelSet
from ..model.weights import is_path_source, resolve_source

CHECKPOINT_SUFFIXES = (".safetensors", ".pth.tar", ".pth", ".pt", ".ckpt")


@dataclass
class EvalPlane:
    """One codec quality to measure.

    Attributes:
        curve: label of the RD curve it belongs to.
        quality: the codec's quality level.
        plane: the models.
        backend: ``eager`` or ``onnx``.
        bundle: the bundle directory, for ONNX planes.
        semantic_note: why the adapter cannot be evaluated at this quality ('' when it can).
    """

    curve: str
    quality: int
    plane: ModelPlane
    backend: str
    bundle: str | None = None
    semantic_note: str = ""


def parse_qualities(text: str) -> list[int]:
    """``"1,2,3"`` or ``"1-4"`` (or a mix) -> sorted distinct qualities."""
    out: set[int] = set()
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            out.update(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise InputError(f"bad --qualities {text!r}", hint="write e.g. 1,2,3,4 or 1-4") from None
    if not out:
        raise InputError("--qualities is empty", hint="write e.g. 1,2,3,4")
    return sorted(out)


def weights_for_quality(source: str, arch: str, quality: int, base_quality: int, *, what: str) -> str | None:
    """The weights source of ``quality`` given the configured ``source`` (see the module docstring).

    Returns None when ``source`` is a single file holding another quality.
    """
    if not is_path_source(source):
        return source
    if "{q}" in source:
        return source.replace("{q}", str(quality))
    path = resolve_source(source)
    if path.is_dir():
        found = [p for p in sorted(path.iterdir()) if _names_quality(p.name, arch, quality, what)]
        if len(found) != 1:
            listing = ", ".join(p.name for p in sorted(path.iterdir())[:8]) or "nothing"
            raise InputError(
                f"{what} weights folder {path}: {len(found)} checkpoints for quality {quality}",
                hint=f"name exactly one q{quality}.safetensors (or .pth, .pt, .pth.tar, .ckpt); found {listing}",
            )
        return str(found[0])
    return source if quality == base_quality else None


def _names_quality(name: str, arch: str, quality: int, what: str) -> bool:
    if any(name == f"q{quality}{suffix}" for suffix in CHECKPOINT_SUFFIXES):
        return True
    return what == "codec" and name.startswith(f"{arch}-{quality}-") and name.endswith(".pth.tar")


def eager_planes(base: ModelsConfig, qualities: Sequence[int] | None = None) -> list[EvalPlane]:
    """Eager model sets for ``qualities`` (default: the configured one) of the configured codec."""
    c = base.codec
    arch = CODEC_ARCHS.get(c.arch)
    label = f"eager {c.arch}"
    out = []
    for q in qualities or [c.quality]:
        arch.check_quality(q)
        same = q == c.quality
        codec_w = weights_for_quality(c.weights, c.arch, q, c.quality, what="codec")
        if codec_w is None:
            raise InputError(
                f"codec weights {c.weights} hold quality {c.quality} only, not {q}",
                hint="give --codec-weights a pattern like PATH{q} or a folder of q1.safetensors, q2.safetensors, ...",
            )
        adapter_w = weights_for_quality(base.adapter.weights, c.arch, q, c.quality, what="adapter")
        note = ""
        if adapter_w is None:
            adapter_w = base.adapter.weights  # never run; RD only
            note = (
                f"adapter weights {base.adapter.weights} are for quality {c.quality}; "
                "give --adapter-weights PATH{q} to evaluate the adapter at every quality"
            )
        keep = same and codec_w == c.weights and adapter_w == base.adapter.weights
        cfg = ModelsConfig(
            codec=dataclasses.replace(c, quality=q, weights=codec_w, sha256=c.sha256 if keep else ""),
            clip=base.clip,
            adapter=dataclasses.replace(base.adapter, weights=adapter_w, sha256=base.adapter.sha256 if keep else ""),
        )
        out.append(EvalPlane(label, q, ModelSet(cfg), "eager", semantic_note=note))
    return out


def bundle_planes(paths: Sequence[Path]) -> list[EvalPlane]:
    """One plane per bundle; curves by architecture and precision, one bundle per quality in each."""
    from ..bundle.runtime import BundleModelSet

    out: list[EvalPlane] = []
    for path in paths:
        plane = BundleModelSet(path)
        cfg = plane.cfg.codec
        label = f"onnx-{plane.manifest.precision} {cfg.arch}"
        clash = next((p for p in out if p.curve == label and p.quality == cfg.quality), None)
        if clash is not None:
            raise InputError(
                f"bundles {clash.bundle} and {path} are both {label} at quality {cfg.quality}",
                hint="one curve holds one bundle per quality; compare two such bundles with `licsearch gate`",
            )
        out.append(EvalPlane(label, cfg.quality, plane, "onnx", bundle=str(path)))
    return out
