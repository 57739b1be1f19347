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
of that range falls back to the reference.

The integerised ``h_s`` differs from the float one by ~2**-10 per activation: a negligible change in rate,
and none in correctness because both ends use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
        weight: float64 tensor of integers (weight * 2**WEIGHT_BITS, rounded).
        bias: float64 tensor of integers at the accumulator's scale.
        stride, padding, output_padding: as in the float layer.
        activation: the activation after the layer.
        leaky_num: the LeakyReLU slope times 2**LEAKY_BITS.
        l1_max: the largest per-output-channel L1 norm of ``weight``, for the exactness bound.
        bias_max: the largest magnitude in ``bias``, for the same bound.
    """

    kind: Literal["conv", "deconv"]
    weight: torch.Tensor
    bias: torch.Tensor
    stride: int
    padding: int
    output_padding: int
    activation: Activation
    leaky_num: int
    l1_max: float
    bias_max: float


class IntegerHyperSynthesis:
    """``h_s`` of a CompressAI hyperprior model, evaluated exactly in fixed point.

    Args:
        h_s: the float ``nn.Sequential`` of Conv2d / ConvTranspose2d / ReLU / LeakyReLU layers.
    """

    def __init__(self, h_s: nn.Sequential) -> None:
        import torch
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
            w = torch.round(m.weight.detach().to(torch.float64) * 2**WEIGHT_BITS)
            b = (
                m.bias.detach()
                if m.bias is not None
                else torch.zeros(w.shape[1 if isinstance(m, nn.ConvTranspose2d) else 0])
            )
            b = torch.round(b.to(torch.float64) * 2 ** (WEIGHT_BITS + ACT_BITS))
            # Conv2d weights are (out, in, k, k); ConvTranspose2d weights are (in, out, k, k).
            per_out = w.abs().sum(dim=(1, 2, 3)) if isinstance(m, nn.Conv2d) else w.abs().sum(dim=(0, 2, 3))
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
                    bias_max=float(b.abs().max()),
                )
            )
            i += 1
        self.layers = tuple(layers)
        self.int8 = tuple(Int8Conv.build(la, shift=WEIGHT_BITS, leaky_bits=LEAKY_BITS) for la in layers)

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
    if layer.kind == "conv":
        acc = F.conv2d(xt, layer.weight, layer.bias, stride=layer.stride, padding=layer.padding)
    else:
        acc = F.conv_transpose2d(
            xt,
            layer.weight,
            layer.bias,
            stride=layer.stride,
            padding=layer.padding,
            output_padding=layer.output_padding,
        )
    out = acc.numpy()
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
        h_s: the model's float hyper-synthesis transform.
        z_medians: the entropy bottleneck's per-channel medians, shape (C,).
        scale_table: the Gaussian conditional's scale table.
        has_means: True for mean-scale models, whose h_s emits scales then means.
    """

    def __init__(
        self, h_s: nn.Sequential, z_medians: torch.Tensor, scale_table: torch.Tensor, *, has_means: bool
    ) -> None:
        import torch

        self.h_s = IntegerHyperSynthesis(h_s)
        self.has_means = has_means
        self.z_medians_fixed = torch.round(z_medians.detach().to(torch.float64) * 2**ACT_BITS).view(1, -1, 1, 1)
        # Scales below the first entry share index 0, as in CompressAI's GaussianConditional.build_indexes;
        # the last entry is never compared against (it is the top bucket).
        self.thresholds = scale_table.detach().to(torch.float64)[:-1]

    @property
    def thresholds(self) -> torch.Tensor:
        """The scale thresholds (float64): a scale's CDF index is the number of thresholds below it."""
        return self._thresholds

    @thresholds.setter
    def thresholds(self, value: torch.Tensor) -> None:
        self._thresholds = value.contiguous()
        self.index_table = _index_table(self._thresholds)

    def __call__(self, z_symbols: torch.Tensor, clock: Clock | None = None) -> EntropyParams:
        """Computes y's entropy parameters from integer z symbols (float tensor of integers, (B, C, h, w)).

        Args:
            z_symbols: the symbols.
            clock: called at the end of each stage (every layer of h_s, then ``index``), for profiling.
        """
        import numpy as np
        import torch

        x = z_symbols.to(torch.float64).numpy() * 2**ACT_BITS + self.z_medians_fixed.numpy()
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
            scales = torch.from_numpy(np.ascontiguousarray(scales_fixed.transpose(0, 3, 1, 2) / 2**ACT_BITS))
            indexes = torch.searchsorted(self.thresholds, scales.reshape(-1), right=False).reshape(scales.shape).numpy()
        params = EntropyParams(
            indexes=torch.from_numpy(np.ascontiguousarray(indexes, dtype=np.int32)), means=torch.from_numpy(means)
        )
        if clock is not None:
            clock("index")
        return params


def _index_table(thresholds: torch.Tensor) -> np.ndarray | None:
    """The CDF index of every fixed-point scale ``k`` (scale ``k / 2**ACT_BITS``) up to the last threshold, or None.

    ``t < k / 2**ACT_BITS`` holds exactly when ``floor(t * 2**ACT_BITS) + 1 <= k`` (both sides exact in float64), so
    the count of thresholds below a scale is a lookup instead of a binary search. Scales past the table's end (and
    below zero) clamp to its ends, which count every threshold (none). None for an unsorted table or one too large
    to tabulate; the caller then searches.
    """
    import torch

    if len(thresholds) == 0 or bool((thresholds[1:] < thresholds[:-1]).any()) or float(thresholds.min()) < 0:
        return None
    first = torch.floor(thresholds * 2**ACT_BITS).to(torch.int64) + 1
    top = int(first.max())
    if top > INDEX_TABLE_LIMIT:
        return None
    return torch.searchsorted(first, torch.arange(top + 1, dtype=torch.int64), right=True).to(torch.int32).numpy()


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
