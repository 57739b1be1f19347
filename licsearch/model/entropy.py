"""The canonical entropy-parameter path: z symbols -> h_s -> Gaussian scales (and means) -> CDF indexes.

Why this exists: an entropy decoder must pick exactly the same CDF for every symbol as the encoder did.
In CompressAI the scales come from ``h_s`` run in floating point, so two backends (or two thread counts,
or two CPUs) that round one multiply-add differently can move a scale across a scale-table boundary and
the rest of the image decodes as garbage (CompressAI issues 279 and 309; Ballé et al. 2019, "Integer
networks for data compression with latent-variable models").

Here ``h_s`` is evaluated in exact integer arithmetic: weights and activations are fixed-point integers,
every product and sum is an integer far below 2**53, so float64 convolution computes it exactly in any
summation order, on any machine, with any thread count. After each layer the accumulator is rescaled by
a floor division by a power of two (exact), then the activation is applied in fixed point. Every encoder
and every decoder, whichever backend runs the heavy transforms, calls this one implementation. That float64
evaluation is the reference; where weights and activations fit two base-128 digits (every shipped codec), the same
integers come several times faster from int8 matrix products (:mod:`licsearch.model.int8_conv`), and anything out
of that range falls back to the reference. A decoder that runs without torch (``torch_free``: the CLI's cached
decoder) computes the same float64 convolutions in NumPy: one more evaluation of the same integers, held to the
reference by the tests, exact for the same reason.

The integerised ``h_s`` differs from the float one by ~2**-10 per activation: a negligible change in rate,
and none in correctness because both ends use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ModelError
from .int8_conv import Int8Conv
from .jit import compile_kernel

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

ACT_BITS = 10  # fractional bits of activations (resolution 1/1024)
WEIGHT_BITS = 14  # fractional bits of weights
LEAKY_BITS = 16  # fractional bits of the LeakyReLU slope
INDEX_TABLE_LIMIT = 1 << 22  # most fixed-point scales tabulated for the scale -> CDF index lookup (16 MiB)
EXACT_LIMIT = 2.0**52  # float64 represents every integer below 2**53 exactly; keep one bit of headroom

Activation = Literal["none", "relu", "leaky_relu"]
Clock = Callable[[str], None]  # called with a stage's name as each stage ends (``bench --profile``)


@dataclass
class StageClock:
    """Wall time by stage: each call charges the time since the previous call (or :meth:`start`) to a stage.

    Attributes:
        seconds: the time charged to each stage, in the order stages first ended.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.perf_counter)

    def start(self) -> None:
        self._last = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now


@dataclass(frozen=True)
class IntegerLayer:
    """One convolution of the integerised hyper-synthesis transform.

    Attributes:
        kind: "conv" or "deconv" (transposed convolution).
        weight: float64 array of integers (weight * 2**WEIGHT_BITS, rounded).
        bias: float64 array of integers at the accumulator's scale.
        stride, padding, output_padding: as in the float layer.
        activation: the activation after the layer.
        leaky_num: the LeakyReLU slope times 2**LEAKY_BITS.
        l1_max: the largest per-output-channel L1 norm of ``weight``, for the exactness bound.
        bias_max: the largest magnitude in ``bias``, for the same bound.
    """

    kind: Literal["conv", "deconv"]
    weight: np.ndarray
    bias: np.ndarray
    stride: int
    padding: int
    output_padding: int
    activation: Activation
    leaky_num: int
    l1_max: float
    bias_max: float


def _as_layers(h_s: nn.Sequential | Sequence[IntegerLayer]) -> tuple[IntegerLayer, ...]:
    """Integer layers as given, or those of a float ``h_s``."""
    if isinstance(h_s, (tuple, list)) and all(isinstance(la, IntegerLayer) for la in h_s):
        return tuple(h_s)
    return integer_layers(h_s)  # type: ignore[arg-type]


def integer_layers(h_s: nn.Sequential) -> tuple[IntegerLayer, ...]:
    """The fixed-point layers of a float ``h_s``: weights and biases rounded to integers at their scales."""
    import numpy as np
    from torch import nn

    layers: list[IntegerLayer] = []
    mods = list(h_s)
    i = 0
    while i < len(mods):
        m = mods[i]
        if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            raise ModelError(f"unsupported layer in h_s: {type(m).__name__}")
        act: Activation = "none"
        leaky_num = 0
        if i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU):
            act, i = "relu", i + 1
        elif i + 1 < len(mods) and isinstance(mods[i + 1], nn.LeakyReLU):
            act, i = "leaky_relu", i + 1
            leaky_num = round(float(getattr(mods[i], "negative_slope", 0.01)) * 2**LEAKY_BITS)
        w = np.round(m.weight.detach().double().numpy() * 2**WEIGHT_BITS)
        n_out = w.shape[1 if isinstance(m, nn.ConvTranspose2d) else 0]
        b = m.bias.detach().double().numpy() if m.bias is not None else np.zeros(n_out)
        b = np.round(b * 2 ** (WEIGHT_BITS + ACT_BITS))
        # Conv2d weights are (out, in, k, k); ConvTranspose2d weights are (in, out, k, k).
        per_out = np.abs(w).sum(axis=(1, 2, 3)) if isinstance(m, nn.Conv2d) else np.abs(w).sum(axis=(0, 2, 3))
        layers.append(
            IntegerLayer(
                kind="deconv" if isinstance(m, nn.ConvTranspose2d) else "conv",
                weight=w,
                bias=b,
                stride=int(m.stride[0]),
                padding=int(m.padding[0]),
                output_padding=int(m.output_padding[0]) if isinstance(m, nn.ConvTranspose2d) else 0,
                activation=act,
                leaky_num=leaky_num,
                l1_max=float(per_out.max()),
                bias_max=float(np.abs(b).max()),
            )
        )
        i += 1
    return tuple(layers)


class IntegerHyperSynthesis:
    """``h_s`` of a CompressAI hyperprior model, evaluated exactly in fixed point.

    Args:
        h_s: the float ``nn.Sequential`` of Conv2d / ConvTranspose2d / ReLU / LeakyReLU layers, or its integer layers
            (:func:`integer_layers`, or read back from a cache).
        torch_free: evaluate every layer in NumPy float64 (no torch import): the same integers, slower than int8.
    """

    def __init__(self, h_s: nn.Sequential | Sequence[IntegerLayer], *, torch_free: bool = False) -> None:
        self.layers = _as_layers(h_s)
        self.torch_free = torch_free
        self.int8 = (
            (None,) * len(self.layers)
            if torch_free
            else tuple(Int8Conv.build(la, shift=WEIGHT_BITS, leaky_bits=LEAKY_BITS) for la in self.layers)
        )
        # The NumPy path's phase kernels, built once (2 ms a decode when built per call).
        self.subpixel = tuple(_subpixel_kernel(la) if torch_free else None for la in self.layers)

    def __call__(self, x_fixed: torch.Tensor, clock: Clock | None = None) -> torch.Tensor:
        """Runs the layers on a float64 tensor of integers at scale 2**ACT_BITS; returns the same kind.

        Each layer runs on int8 matrix products (:mod:`licsearch.model.int8_conv`) when its weights and inputs fit
        two base-128 digits, else on the float64 :meth:`reference`; both give the same integers.

        Raises:
            ModelError: when an accumulator could reach 2**52 (the float64 reference would no longer be exact).
        """
        return _nchw(self.activations(x_fixed.numpy(), clock))

    def reference(self, x_fixed: torch.Tensor, clock: Clock | None = None) -> torch.Tensor:
        """The layers in float64 alone: the definition the int8 path is held to (and its fallback)."""
        return _nchw(self._run(x_fixed.numpy(), clock, int8=False))

    def activations(self, x_fixed: np.ndarray, clock: Clock | None = None) -> np.ndarray:
        """:meth:`__call__`'s integers as a (B, H, W, C) array: int64 when the last layer ran on int8 products, else
        a float64 view (no copy either way)."""
        return self._run(x_fixed, clock, int8=True)

    def _run(self, x: np.ndarray, clock: Clock | None, *, int8: bool) -> np.ndarray:
        """(B, C, H, W) float64 integers -> (B, H, W, C) integers: int64 while the layers run on int8 products."""
        import numpy as np

        nhwc = False
        int8 = int8 and bool(np.array_equal(np.floor(x), x))  # integers only (no NaN): the digits are exact
        for n, layer in enumerate(self.layers):
            lo, hi = float(x.min()), float(x.max())
            bound = max(-lo, hi) * layer.l1_max + layer.bias_max
            if bound >= EXACT_LIMIT:
                raise ModelError(
                    "hyperprior activations too large for exact integer evaluation",
                    hint="this codec's weights are out of the range the canonical entropy path supports",
                )
            conv = self.int8[n] if int8 else None
            out = None
            # The reference's LeakyReLU product is exact below 2**52: past that the int64 one could differ from it.
            leaky_exact = (bound / 2**WEIGHT_BITS + 1) * abs(layer.leaky_num) < EXACT_LIMIT
            if conv is not None and conv.fits(lo, hi) and leaky_exact:
                out = conv(x if nhwc else np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=np.int64))
            if out is not None:
                x, nhwc = out, True
            elif self.torch_free:
                x, nhwc = _numpy_layer(x.transpose(0, 3, 1, 2) if nhwc else x, layer, self.subpixel[n]), False
            else:
                x, nhwc = _float_layer(x.transpose(0, 3, 1, 2) if nhwc else x, layer), False
            if clock is not None:
                clock(f"h_s.{n}.{layer.kind}")
        return x if nhwc else x.transpose(0, 2, 3, 1)


def _nchw(x: np.ndarray) -> torch.Tensor:
    """(B, H, W, C) integers -> a contiguous (B, C, H, W) float64 tensor."""
    import numpy as np
    import torch

    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float64))


def _float_layer(x: np.ndarray, layer: IntegerLayer) -> np.ndarray:
    """One layer in float64: the convolution in torch (the caller's thread count), rescaling and activation in NumPy.

    NumPy, in place, for the element-wise steps: the same exact operations, without the thread-pool start of a torch
    element-wise op on tensors this small (on a loaded machine that costs more than the convolution).
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    w, b = torch.from_numpy(layer.weight), torch.from_numpy(layer.bias)
    if layer.kind == "conv":
        acc = F.conv2d(xt, w, b, stride=layer.stride, padding=layer.padding)
    else:
        acc = F.conv_transpose2d(
            xt, w, b, stride=layer.stride, padding=layer.padding, output_padding=layer.output_padding
        )
    return _rescale(acc.numpy(), layer)


def _numpy_layer(x: np.ndarray, layer: IntegerLayer, sub: tuple[np.ndarray, int] | None) -> np.ndarray:
    """:func:`_float_layer` without torch: the convolution as one float64 matrix product over the input's windows.

    Exact for the same reason as torch's float64 convolution: every product and partial sum is an integer below the
    bound :meth:`IntegerHyperSynthesis._run` checks, whatever order BLAS sums them in. A transposed convolution whose
    output is ``stride`` times its input (the hyperprior's) runs as one convolution at the input's resolution into
    ``stride**2`` phases of the output (``sub``, from :func:`_subpixel_kernel`), a quarter of the products of the
    general way: the convolution, with the flipped kernel, of the input spread out by its stride (zeros between the
    samples).
    """
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    b, c, h, w = x.shape
    k = layer.weight.shape[-1]
    if layer.kind == "conv":
        acc = _conv(_pad(x, layer.padding), layer.weight, layer.stride)  # weight (out, in, k, k)
    elif sub is not None:
        kernel, reach = sub
        s, co = layer.stride, layer.weight.shape[1]
        phases = _conv(_pad(x, reach), kernel, 1)  # (B, h, w, out * s * s): channel (co, rh, rw)
        acc = phases.reshape(b, h, w, co, s, s).transpose(0, 1, 4, 2, 5, 3).reshape(b, h * s, w * s, co)
    else:
        s, e = layer.stride, k - 1 - layer.padding
        if e < 0:
            raise ModelError("a transposed convolution with padding beyond its kernel is not supported")
        op = layer.output_padding
        padded = np.zeros((b, c, (h - 1) * s + 1 + 2 * e + op, (w - 1) * s + 1 + 2 * e + op))
        padded[:, :, e : e + (h - 1) * s + 1 : s, e : e + (w - 1) * s + 1 : s] = x
        acc = _conv(padded, layer.weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), 1)  # flipped (out, in, k, k)
    acc += layer.bias
    return _rescale(np.ascontiguousarray(acc.transpose(0, 3, 1, 2)), layer)


def _pad(x: np.ndarray, p: int) -> np.ndarray:
    import numpy as np

    b, c, h, w = x.shape
    padded = np.zeros((b, c, h + 2 * p, w + 2 * p))
    padded[:, :, p : p + h, p : p + w] = x
    return padded


def _conv(padded: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
    """(B, C, H, W) padded input, (out, C, k, k) kernel -> (B, oh, ow, out): one float64 matrix product over windows."""
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    k = kernel.shape[-1]
    # NumPy's stubs take one axis; the function takes a tuple of them.
    windows = sliding_window_view(padded, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]  # type: ignore[call-overload]  # (B, C, oh, ow, k, k)
    return np.tensordot(windows, kernel, axes=([1, 4, 5], [1, 2, 3]))


def _subpixel_kernel(layer: IntegerLayer) -> tuple[np.ndarray, int] | None:
    """:func:`subpixel_kernel` of an integer layer; None for a convolution."""
    if layer.kind != "deconv":
        return None
    return subpixel_kernel(layer.weight, layer.stride, layer.padding, layer.output_padding)


def subpixel_kernel(
    weight: np.ndarray, stride: int, padding: int, output_padding: int
) -> tuple[np.ndarray, int] | None:
    """A transposed convolution (``weight`` of shape ``(in, out, k, k)``) as a convolution into its output's phases:
    (kernel, reach), or None where the output is not ``stride`` times the input or the taps do not reach as far on
    both sides. Followed by a depth-to-space of block ``stride`` (PixelShuffle's channel order), with padding
    ``reach``, it gives the transposed convolution's output (the bundle's int8 ``g_s`` runs this way too).

    Output ``o = s*m + r`` of a transposed convolution sums input ``i = m + d`` times tap ``r + padding - s*d``; the
    kernel's channel ``(co, rh, rw)`` holds, at offset ``(dh, dw)`` in ``[-reach, reach]``, those taps (zero where a
    tap falls outside the kernel).
    """
    import numpy as np

    s, p, k = stride, padding, weight.shape[-1]
    if k - 2 * p + output_padding != s:
        return None
    offsets = [d for d in range(-k, k + 1) if any(0 <= r + p - s * d < k for r in range(s))]
    reach = max(offsets)
    if -min(offsets) != reach:
        return None
    ci, co = weight.shape[:2]
    n = 2 * reach + 1
    kernel = np.zeros((co, s, s, ci, n, n), dtype=weight.dtype)
    for rh in range(s):
        for rw in range(s):
            for dh in range(-reach, reach + 1):
                for dw in range(-reach, reach + 1):
                    th, tw = rh + p - s * dh, rw + p - s * dw
                    if 0 <= th < k and 0 <= tw < k:
                        kernel[:, rh, rw, :, dh + reach, dw + reach] = weight[:, :, th, tw].T
    return kernel.reshape(co * s * s, ci, n, n), reach


def _rescale(out: np.ndarray, layer: IntegerLayer) -> np.ndarray:
    """The accumulator's floor division by 2**WEIGHT_BITS and the fixed-point activation, in place where it can."""
    import numpy as np

    np.divide(out, 2**WEIGHT_BITS, out=out)
    np.floor(out, out=out)
    if layer.activation == "relu":
        np.maximum(out, 0.0, out=out)
    elif layer.activation == "leaky_relu":
        out = np.where(out >= 0, out, np.floor(out * layer.leaky_num / 2**LEAKY_BITS))
    return out


@dataclass(frozen=True)
class EntropyParams:
    """What the canonical path hands to the Gaussian conditional coder.

    Attributes:
        indexes: int32 CDF indexes, one per element of y.
        means: float32 means of y (zeros for scale-only models); y_hat = symbols + means.
    """

    indexes: torch.Tensor
    means: torch.Tensor


class CanonicalEntropyPath:
    """z symbols -> (CDF indexes, means) for y, identical on every backend and machine.

    Args:
        h_s: the model's float hyper-synthesis transform, or its integer layers (:func:`integer_layers`).
        z_medians: the entropy bottleneck's per-channel medians, shape (C,) (a tensor or an array).
        scale_table: the Gaussian conditional's scale table (a tensor or an array).
        has_means: True for mean-scale models, whose h_s emits scales then means.
        torch_free: run without torch (:class:`IntegerHyperSynthesis`); :meth:`params` is then the way in.
    """

    def __init__(
        self,
        h_s: nn.Sequential | Sequence[IntegerLayer],
        z_medians: torch.Tensor | np.ndarray,
        scale_table: torch.Tensor | np.ndarray,
        *,
        has_means: bool,
        torch_free: bool = False,
    ) -> None:
        import numpy as np

        self.h_s = IntegerHyperSynthesis(h_s, torch_free=torch_free)
        self.has_means = has_means
        medians = np.asarray(_array(z_medians), dtype=np.float64).reshape(1, -1, 1, 1)
        self.z_medians_fixed_array = np.round(medians * 2**ACT_BITS)
        # Scales below the first entry share index 0, as in CompressAI's GaussianConditional.build_indexes;
        # the last entry is never compared against (it is the top bucket).
        self.threshold_array = np.asarray(_array(scale_table), dtype=np.float64)[:-1]

    @property
    def z_medians_fixed(self) -> torch.Tensor:
        """The medians at the activations' fixed-point scale, (1, C, 1, 1) float64 (a tensor, for torch callers)."""
        import torch

        return torch.from_numpy(self.z_medians_fixed_array)

    @property
    def thresholds(self) -> torch.Tensor:
        """The scale thresholds (float64): a scale's CDF index is the number of thresholds below it."""
        import torch

        return torch.from_numpy(self._thresholds)

    @thresholds.setter
    def thresholds(self, value: torch.Tensor | np.ndarray) -> None:
        self.threshold_array = value

    @property
    def threshold_array(self) -> np.ndarray:
        """:attr:`thresholds` as a NumPy array."""
        return self._thresholds

    @threshold_array.setter
    def threshold_array(self, value: torch.Tensor | np.ndarray) -> None:
        import numpy as np

        self._thresholds = np.ascontiguousarray(_array(value), dtype=np.float64)
        self.index_table = _index_table(self._thresholds)

    def __call__(self, z_symbols: torch.Tensor, clock: Clock | None = None) -> EntropyParams:
        """Computes y's entropy parameters from integer z symbols (float tensor of integers, (B, C, h, w)).

        Args:
            z_symbols: the symbols.
            clock: called at the end of each stage (every layer of h_s, then ``index``), for profiling.
        """
        import torch

        indexes, means = self.params(z_symbols.to(torch.float64).numpy(), clock)
        return EntropyParams(indexes=torch.from_numpy(indexes), means=torch.from_numpy(means))

    def params(self, z_symbols: np.ndarray, clock: Clock | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`__call__` on NumPy: integer z symbols (B, C, h, w) -> (int32 CDF indexes, float32 means) of y."""
        import numpy as np

        x = np.asarray(z_symbols, dtype=np.float64) * 2**ACT_BITS + self.z_medians_fixed_array
        if clock is not None:
            clock("h_s.input")
        out = self.h_s.activations(x, clock)  # (B, H, W, C)
        b, h, w, c = out.shape
        if self.has_means:
            scales_fixed, means_fixed = out[..., : c // 2], out[..., c // 2 :]
            means = np.ascontiguousarray((means_fixed / 2**ACT_BITS).transpose(0, 3, 1, 2), dtype=np.float32)
        else:
            scales_fixed = out
            means = np.zeros((b, c, h, w), dtype=np.float32)
        # Equivalent to GaussianConditional.build_indexes: the index is the number of thresholds below the scale.
        if self.index_table is not None and out.dtype == np.int64:
            indexes = np.empty((b, scales_fixed.shape[-1], h, w), dtype=np.int32)
            _lookup_kernel()(scales_fixed, self.index_table, indexes)
        elif self.index_table is not None:
            top = len(self.index_table) - 1
            indexes = self.index_table[np.clip(scales_fixed, 0, top).astype(np.int64)].transpose(0, 3, 1, 2)
        else:
            scales = np.ascontiguousarray(scales_fixed.transpose(0, 3, 1, 2)) / 2**ACT_BITS
            indexes = np.searchsorted(self._thresholds, scales.reshape(-1), side="left").reshape(scales.shape)
        indexes = np.ascontiguousarray(indexes, dtype=np.int32)
        if clock is not None:
            clock("index")
        return indexes, means


def _array(value: Any) -> np.ndarray:
    """A tensor's values as a NumPy array (detached, on the CPU); an array as it is."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


def _index_table(thresholds: np.ndarray) -> np.ndarray | None:
    """The CDF index of every fixed-point scale ``k`` (scale ``k / 2**ACT_BITS``) up to the last threshold, or None.

    ``t < k / 2**ACT_BITS`` holds exactly when ``floor(t * 2**ACT_BITS) + 1 <= k`` (both sides exact in float64), so
    the count of thresholds below a scale is a lookup instead of a binary search. Scales past the table's end (and
    below zero) clamp to its ends, which count every threshold (none). None for an unsorted table or one too large
    to tabulate; the caller then searches.
    """
    import numpy as np

    if len(thresholds) == 0 or bool((thresholds[1:] < thresholds[:-1]).any()) or float(thresholds.min()) < 0:
        return None
    first = np.floor(thresholds * 2**ACT_BITS).astype(np.int64) + 1
    top = int(first.max())
    if top > INDEX_TABLE_LIMIT:
        return None
    return np.searchsorted(first, np.arange(top + 1, dtype=np.int64), side="right").astype(np.int32)


@cache
def _lookup_kernel() -> Callable[..., None]:
    """The compiled index lookup, compiled (or loaded from numba's cache) on first use (:mod:`.jit`)."""
    return compile_kernel(_lookup)


def _lookup(scales: Any, table: Any, out: Any) -> None:
    # scales (B, H, W, C) int64 fixed point -> out (B, C, H, W) int32 = table[clip(scales, 0, len(table) - 1)]: the
    # NumPy branch's clip and lookup, with the transposition to (B, C, H, W) in the same pass.
    b, h, w, c = scales.shape
    top = len(table) - 1
    for i0 in range(b):
        for i1 in range(h):
            for i2 in range(w):
                for i3 in range(c):
                    v = scales[i0, i1, i2, i3]
                    out[i0, i3, i1, i2] = table[min(max(v, 0), top)]
