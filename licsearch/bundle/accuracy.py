"""Per-graph int8 accuracy: how far each quantized graph moves what the model plane delivers, and its bound.

Each int8 graph is measured against its fp32 graph, the other graphs staying fp32, on the export's calibration
images (and their latents and token samples), by the figure the graph can move:

- ``adapter``, ``text``: ``cosine_min``, the least cosine between int8 and fp32 embeddings of any sample.
- ``g_a``, ``h_a``: ``bpp_delta_pct`` and ``psnr_delta_db``, the change of the real round trip (entropy-coded
  bitstream, fp32 synthesis) over the calibration images. ``h_a`` moves the rate through the hyperprior's scales;
  it moves PSNR only in mean-and-scale models (Minnen et al. 2018), where it also predicts the means.
- ``g_s``: ``psnr_vs_fp32_db``, PSNR of the int8 synthesis against the fp32 synthesis of the same latents.

The bounds (:data:`INT8_BOUNDS`) are the parity gate's budget (0.99 cosine, -0.1 dB PSNR, +1 % bpp; see
:class:`licsearch.release.gate.GateThresholds`), given to each graph whole: a graph outside them would fail the gate on
its own, so keeping it as int8 could only buy speed for a bundle that cannot replace its fp32 one. g_s gets 40 dB
against fp32 (an RMS difference of 2.55 grey levels, 255 / 10^2), below the distortion of the codec itself at the
qualities a store uses. A graph outside a bound is not kept as int8 (:mod:`.quantize`); figures and bounds are
recorded in the manifest, so that a test or an operator can measure again and compare.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..metrics import psnr
from .manifest import Int8Bound
from .runtime import OnnxTransforms, RuntimeOptions

if TYPE_CHECKING:
    import numpy as np

    from ..model.codec import Codec


INT8_BOUNDS: dict[str, dict[str, float]] = {
    "adapter": {"cosine_min": 0.99},
    "text": {"cosine_min": 0.99},
    "g_a": {"bpp_delta_pct": 1.0, "psnr_delta_db": -0.1},
    "h_a": {"bpp_delta_pct": 1.0, "psnr_delta_db": -0.1},
    "g_s": {"psnr_vs_fp32_db": 40.0},
}
"""Metric and bound of each int8 graph (see the module docstring for why these values)."""


def _transforms(files: dict[str, Path]) -> OnnxTransforms:
    """``g_a``, ``h_a`` and ``g_s`` from these ONNX files, on ONNX Runtime's default options."""
    return OnnxTransforms(files, RuntimeOptions())


def measure(
    name: str, fp32: dict[str, Path], int8: Path, codec: Codec, images: list[np.ndarray], samples: list[Any]
) -> dict[str, float]:
    """The accuracy figures of graph ``name`` when ``int8`` replaces its fp32 file (see the module docstring).

    Args:
        name: the graph.
        fp32: the fp32 files of every graph (the codec graphs are needed for a round trip).
        int8: the int8 file of ``name``.
        codec: the eager codec (its entropy models code the round trips).
        images: RGB uint8 images for the codec graphs.
        samples: inputs of the graph itself, for the adapter and the text tower.
    """
    if name in ("adapter", "text"):
        return {"cosine_min": _cosine_min(fp32[name], int8, samples)}
    if name == "g_s":
        return {"psnr_vs_fp32_db": _synthesis_psnr(fp32, int8, codec, images)}
    base = _round_trip(codec, _transforms(fp32), images)
    swapped = _round_trip(codec, _transforms({**fp32, name: int8}), images)
    return {
        "bpp_delta_pct": 100.0 * (swapped[0] - base[0]) / base[0],
        "psnr_delta_db": swapped[1] - base[1],
    }


def bounds_for(name: str, figures: dict[str, float]) -> tuple[Int8Bound, ...]:
    """The measured figures of graph ``name`` paired with their bounds."""
    return tuple(Int8Bound(metric, figures[metric], bound) for metric, bound in INT8_BOUNDS[name].items())


def _cosine_min(fp32: Path, int8: Path, samples: list[Any]) -> float:
    import numpy as np

    from .runtime import make_session

    out = []
    for path in (fp32, int8):
        sess = make_session(path)
        out.append(np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x})[0] for x in samples]))
    a, b = (v.astype(np.float64) for v in out)
    cos = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(cos.min())


def _codec_with(codec: Codec, transforms: OnnxTransforms) -> Codec:
    from ..model.codec import Codec

    return Codec(codec.model, codec.arch, codec.quality, codec.weights_sha256, transforms=transforms)


def _round_trip(codec: Codec, transforms: OnnxTransforms, images: list[np.ndarray]) -> tuple[float, float]:
    """(mean bpp of the entropy-coded streams, mean PSNR of the fp32-synthesised result) over ``images``."""
    c = _codec_with(codec, transforms)
    bpp, ps = [], []
    for img in images:
        comp = c.compress(img)
        bits = 8 * sum(len(s) for s in comp.streams.values())
        bpp.append(bits / (comp.width * comp.height))
        ps.append(psnr(img, c.synthesize(comp.y_hat, comp.width, comp.height)))
    return sum(bpp) / len(bpp), sum(ps) / len(ps)


def _synthesis_psnr(fp32: dict[str, Path], int8: Path, codec: Codec, images: list[np.ndarray]) -> float:
    """Mean PSNR of the int8 synthesis against the fp32 synthesis of the fp32 latents of ``images``."""
    ref = _codec_with(codec, _transforms(fp32))
    cand = _codec_with(codec, _transforms({**fp32, "g_s": int8}))
    ps = []
    for img in images:
        comp = ref.compress(img)
        a = ref.synthesize(comp.y_hat, comp.width, comp.height)
        b = cand.synthesize(comp.y_hat, comp.width, comp.height)
        ps.append(psnr(a, b))
    return sum(ps) / len(ps) if ps else math.nan
