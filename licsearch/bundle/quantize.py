"""Int8 quantization of bundle graphs with ONNX Runtime's quantization tools, kept only where it pays.

- ``dynamic``: weight-only int8 for the MatMul-heavy graphs (text tower, adapter MLP); activations are
  quantized on the fly.
- ``static``: ``dynamic`` plus QDQ int8 convolutions in ``g_a``, ``h_a`` and ``g_s``, calibrated on images.
  ``g_s``'s transposed convolutions are first rewritten as convolutions into their output's phases plus a
  depth-to-space (:func:`subpixel_graph`): ONNX Runtime has int8 kernels for ``Conv`` but runs a quantized
  ``ConvTranspose`` in float between a dequantize and a quantize, so the int8 ``g_s`` was no faster than fp32.
  Its last layer, the one that writes pixels, stays float (measured on the offline q3 codec, 8 Kodak images it was not
  calibrated on: PSNR -0.10 dB mean, -0.14 dB worst with it int8, past the gate's -0.1 dB; -0.04 / -0.07 dB without;
  268 against 477 ms for the fp32 graph, side by side).

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
        elif name == "g_s":
            phased = src.with_name(src.stem + ".phased.onnx")
            try:
                phases = subpixel_graph(src, phased)
                _static(phased, dst, samples[name], exclude=phases[-1:])  # the layer writing pixels stays float
            finally:
                phased.unlink(missing_ok=True)
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


def subpixel_graph(src: Path, dst: Path) -> list[str]:
    """Writes ``src`` with each transposed convolution that :func:`~licsearch.model.entropy.subpixel_kernel` can
    rewrite as a ``Conv`` into its output's phases and a ``DepthToSpace`` (CRD: PixelShuffle's order); returns the new
    ``Conv`` nodes' names in graph order. The outputs agree with the original graph to float rounding.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from ..model.entropy import subpixel_kernel

    model = onnx.load(str(src))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes, rewritten = [], []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = (
            attrs.get("group", 1) == 1
            and set(attrs.get("dilations", [1, 1])) == {1}
            and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")  # explicit pads only
        )
        strides, pads = list(attrs.get("strides", [1, 1])), list(attrs.get("pads", [0, 0, 0, 0]))
        out_pad = list(attrs.get("output_padding", [0, 0]))
        if (
            node.op_type != "ConvTranspose"
            or not plain
            or len(set(strides)) != 1
            or len(set(pads)) != 1
            or len(set(out_pad)) != 1
            or node.input[1] not in inits
            or "output_shape" in attrs
        ):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        found = None
        if weight.shape[-1] == weight.shape[-2]:
            found = subpixel_kernel(weight.astype(np.float64), strides[0], pads[0], out_pad[0])
        if found is None:
            nodes.append(node)
            continue
        kernel, reach = found
        s = strides[0]
        name = f"{node.name or node.output[0]}_phases"
        w_name, b_name, mid = f"{name}.weight", f"{name}.bias", f"{name}_out"
        graph.initializer.append(numpy_helper.from_array(kernel.astype(weight.dtype), w_name))
        conv_inputs = [node.input[0], w_name]
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(inits[node.input[2]])
            graph.initializer.append(numpy_helper.from_array(np.repeat(bias, s * s), b_name))
            conv_inputs.append(b_name)
        nodes.append(helper.make_node("Conv", conv_inputs, [mid], name=name, pads=[reach] * 4, strides=[1, 1]))
        nodes.append(helper.make_node("DepthToSpace", [mid], [node.output[0]], name=f"{name}_d2s", blocksize=s,
                                      mode="CRD"))  # fmt: skip
        rewritten.append(name)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return rewritten


def _static(src: Path, dst: Path, batches: list[Any], exclude: list[str] | None = None) -> None:
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
        nodes_to_exclude=exclude or [],
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
