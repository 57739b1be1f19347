"""Int8 quantization of bundle graphs with ONNX Runtime's quantization tools, kept only where it pays.

- ``dynamic``: weight-only int8 for the MatMul-heavy graphs (text tower, adapter MLP); activations are
  quantized on the fly.
- ``static``: ``dynamic`` plus QDQ int8 convolutions in ``g_a``, ``h_a`` and ``g_s``, calibrated on images.

Every quantized graph is timed against its fp32 version on this machine, side by side, and its accuracy is
measured against the fp32 graph (:mod:`.accuracy`); where int8 is not faster, or is outside its accuracy bounds,
the fp32 graph is kept and the manifest says why. Whether the bundle as a whole may share the fp32 bundle's
embedding space is still the parity gate's question (``licsearch gate``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import accuracy
from .manifest import GraphInfo, Int8Bound

if TYPE_CHECKING:
    import numpy as np

    from ..model.codec import Codec

DYNAMIC_GRAPHS = ("text", "adapter")
STATIC_GRAPHS = ("g_a", "h_a", "g_s")
KEEP_IF_FASTER_BY = 0.95  # int8 must take at most 95 % of fp32's time to be kept
ACCURACY_IMAGES = 8  # calibration images the accuracy of the codec graphs is measured on


def quantize_bundle(root: Path, graphs: dict[str, GraphInfo], mode: str, calibration: list[np.ndarray], *,
                    codec: Codec) -> dict[str, GraphInfo]:  # fmt: skip
    """Quantizes graphs of the bundle being written in ``root`` in place; returns the updated graph infos.

    Every candidate int8 graph is timed and measured (:mod:`.accuracy`) while all fp32 graphs are still there, each
    against the others in fp32; then each is kept where it is faster and within its accuracy bounds, else dropped.
    """
    import numpy as np

    samples = _samples(root, graphs, calibration, codec.arch.downsampling)
    images = calibration[:ACCURACY_IMAGES] or [np.full((256, 384, 3), 128, np.uint8)]
    fp32 = {name: root / info.file for name, info in graphs.items()}
    names = DYNAMIC_GRAPHS + (STATIC_GRAPHS if mode == "static" else ())
    candidates: dict[str, tuple[Path, str, tuple[Int8Bound, ...], float, bool]] = {}
    for name in names:
        src = fp32[name]
        dst = src.with_name(src.stem + ".int8.onnx")
        if name in DYNAMIC_GRAPHS:
            _dynamic(src, dst)
        else:
            _static(src, dst, samples[name])
        t_fp32 = _latency(src, samples[name][0])
        t_int8 = _latency(dst, samples[name][0])
        ratio = t_int8 / t_fp32
        note = f"int8 {t_int8 * 1e3:.1f} ms vs fp32 {t_fp32 * 1e3:.1f} ms (ratio {ratio:.2f})"
        bounds = accuracy.bounds_for(name, accuracy.measure(name, fp32, dst, codec, images, samples[name]))
        candidates[name] = (dst, note, bounds, _max_deviation(src, dst, samples[name][0]), ratio <= KEEP_IF_FASTER_BY)
    out = dict(graphs)
    for name, (dst, note, bounds, dev, faster) in candidates.items():
        info, src = graphs[name], fp32[name]
        figures = ", ".join(f"{b.metric} {b.measured:.4g} (bound {b.bound:g})" for b in bounds)
        outside = [b.metric for b in bounds if not b.ok]
        if faster and not outside:
            # The int8 graph is held to its accuracy bounds, not to the fp32 graph's ONNX-vs-torch tolerance: its
            # recorded parity is its measured deviation from the fp32 graph, tolerance 0.
            src.unlink()
            dst.rename(src.with_name(src.stem + "_int8.onnx"))
            rel = str(Path(info.file).with_name(src.stem + "_int8.onnx"))
            out[name] = replace(
                info,
                file=rel,
                precision="int8",
                parity_max_abs=dev,
                parity_tolerance=0.0,
                int8_bounds=bounds,
                int8_note=f"kept int8: {note}; {figures}; max abs deviation from fp32 {dev:.3g}",
            )
            continue
        dst.unlink()
        why = "int8 not faster on this CPU" if not faster else f"int8 outside its accuracy bound ({', '.join(outside)})"
        out[name] = replace(info, int8_bounds=bounds, int8_note=f"kept fp32, {why}: {note}; {figures}")
    return out


def _dynamic(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])


class _Reader:
    """Feeds calibration inputs to ONNX Runtime's static quantizer."""

    def __init__(self, name: str, batches: list[Any]) -> None:
        self.name = name
        self._it: Iterator[Any] = iter(batches)

    def get_next(self) -> dict[str, Any] | None:
        x = next(self._it, None)
        return None if x is None else {self.name: x}


def _static(src: Path, dst: Path, batches: list[Any]) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    quantize_static(
        src,
        dst,
        _Reader(input_name, batches),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv", "ConvTranspose"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )


def _samples(
    root: Path, graphs: dict[str, GraphInfo], calibration: list[np.ndarray], factor: int
) -> dict[str, list[Any]]:
    """Inputs of every graph: images for g_a, their latents for h_a / g_s / adapter, tokens for text."""
    import numpy as np

    from .runtime import make_session

    imgs = []
    for im in calibration[:16] or [np.full((256, 384, 3), 128, np.uint8)]:
        h, w = im.shape[0] - im.shape[0] % factor or factor, im.shape[1] - im.shape[1] % factor or factor
        x = np.ascontiguousarray(im[:h, :w].transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
        imgs.append(x)
    g_a = make_session(root / graphs["g_a"].file)
    latents = [np.round(g_a.run(None, {g_a.get_inputs()[0].name: x})[0]) for x in imgs]
    rng = np.random.default_rng(0)
    tokens = [rng.integers(1, 49000, size=(1, 12)).astype(np.int64) for _ in range(4)]
    for t in tokens:
        t[0, 0], t[0, -1] = 49406, 49407  # start and end of text
    return {"g_a": imgs, "h_a": latents, "g_s": latents, "adapter": latents, "text": tokens}


def _max_deviation(fp32: Path, int8: Path, x: Any) -> float:
    import numpy as np

    from .runtime import make_session

    outs = []
    for path in (fp32, int8):
        sess = make_session(path)
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
    return float(np.abs(outs[0] - outs[1]).max())


def _latency(path: Path, x: Any, repeats: int = 5) -> float:
    from .runtime import make_session

    sess = make_session(path)
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t)
    return statistics.median(times)
