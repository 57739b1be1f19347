"""Exact integer convolutions on int8 matrix products: the fast path of the canonical ``h_s``.

:class:`~licsearch.model.entropy.IntegerHyperSynthesis` defines every layer as an exact integer convolution, then a
floor division by a power of two and a fixed-point activation; its reference evaluates that in float64 (exact below
2**53). This module computes the same integers with ``torch._int_mm`` (int8 x int8 -> int32, on AMX or VNNI units
where the CPU has them), several times faster:

- every operand splits into two base-128 digits, ``v = hi * 128 + lo`` with ``lo = v & 127`` in [0, 127] and
  ``hi = v >> 7`` in [-128, 127]: exact for ``v`` in [-2**14, 2**14);
- a convolution is im2col then one ``_int_mm`` of the stacked input digits ``[x_hi; x_lo]`` (2M x K) by the stacked
  weight digits ``[w_hi | w_lo]`` (K x 2N), whose four blocks are the four digit products; each is a sum of ``K``
  products of at most 2**14 in magnitude, so int32 holds it while ``K * 2**14 < 2**31`` (checked when built);
- a numba kernel recombines the products exactly in int64, ``acc = (hh << 14) + ((hl + lh) << 7) + ll + bias``,
  then floor-divides and applies the activation, as the reference does;
- a transposed convolution of stride ``s`` is ``s * s`` stride-1 convolutions, one per output phase (the outputs
  ``s * m + r``), each over the taps its phase uses; the same kernel writes each phase in place.

An input outside the digits' range, or an ``_int_mm`` this torch cannot run, yields None and the caller takes the
float64 reference instead: the same integers, slower. On CPU, torch 2.14's ``_int_mm`` accepts any shape (its CUDA
kernel's constraints, more than 16 rows and multiples of 8, do not apply; every tensor here is on the CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from .jit import compile_kernel

if TYPE_CHECKING:
    import numpy as np

    from .entropy import IntegerLayer

DIGIT_BITS = 7
VALUE_MIN, VALUE_MAX = -(1 << (2 * DIGIT_BITS)), (1 << (2 * DIGIT_BITS)) - 1  # the range two digits hold
DIGIT_PRODUCT_MAX = 1 << (2 * DIGIT_BITS)  # |hi| <= 128 and |lo| <= 127: one digit product is at most 2**14
INT32_MAX = 2**31 - 1
ACTIVATIONS = {"none": 0, "relu": 1, "leaky_relu": 2}  # as the kernel takes them


@dataclass(frozen=True)
class Phase:
    """The outputs ``(s * my + ry, s * mx + rx)`` of a layer and the window taps they take.

    Attributes:
        ry, rx: the phase (0, 0 for a convolution).
        ty, tx: the first tap row and column of the window this phase uses.
        nty, ntx: how many it uses.
        weight: (nty * ntx * C, 2 * C') int8, the weight digits ``[hi | lo]``; rows ordered (tap row, tap column,
            input channel).
    """

    ry: int
    rx: int
    ty: int
    tx: int
    nty: int
    ntx: int
    weight: np.ndarray


@dataclass(frozen=True)
class Int8Conv:
    """One fixed-point layer (convolution or transposed convolution, rescaling, activation) on int8 products.

    Attributes:
        phases: one for a convolution, ``s * s`` for a transposed convolution of stride ``s``.
        bias: (C',) int64 at the accumulator's scale.
        window: taps of the window along each axis.
        stride: the window's stride (1 for a transposed convolution).
        padding: zeros before the input along each axis (a convolution's padding; for a transposed convolution,
            the taps that reach before the first input).
        step: the output's spacing between phases' outputs: ``s`` for a transposed convolution, 1 for a convolution.
        deconv: (kernel, padding, output_padding) of a transposed convolution, for its output size; None for a
            convolution.
        shift: the accumulator's floor division, as a power of two.
        activation: the activation's code in :data:`ACTIVATIONS`.
        leaky_num, leaky_bits: the LeakyReLU slope as ``leaky_num / 2**leaky_bits``.
    """

    phases: tuple[Phase, ...]
    bias: np.ndarray
    window: int
    stride: int
    padding: int
    step: int
    deconv: tuple[int, int, int] | None
    shift: int
    activation: int
    leaky_num: int
    leaky_bits: int

    @classmethod
    def build(cls, layer: IntegerLayer, *, shift: int, leaky_bits: int) -> Int8Conv | None:
        """The int8 form of an integer layer, or None when a weight needs more than two digits, a digit product's
        sum could leave int32, or a phase takes no tap."""
        import numpy as np

        w = layer.weight.astype(np.int64)
        if int(w.min()) < VALUE_MIN or int(w.max()) > VALUE_MAX:
            return None
        k, s, p = int(w.shape[-1]), layer.stride, layer.padding
        if layer.kind == "conv":
            # (out, in, kh, kw) -> rows (kh, kw, in), columns out.
            phases = [Phase(0, 0, 0, 0, k, k, _digits(w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])))]
            window, stride, pad, step, deconv = k, s, p, 1, None
        else:
            hi, lo = (k - 1 - p) // s, -((s - 1 + p) // s)  # the input offsets d any output phase reaches
            window, stride, pad, step, deconv = hi - lo + 1, 1, hi, s, (k, p, layer.output_padding)
            # Output s*m + r takes input m + t - hi through kernel tap s*(hi - t) + r + p, where that lies in [0, k).
            taps = [[t for t in range(window) if 0 <= s * (hi - t) + r + p < k] for r in range(s)]
            if not all(taps):
                return None
            phases = []
            for ry in range(s):
                for rx in range(s):
                    ty, tx = taps[ry], taps[rx]
                    ky = [s * (hi - t) + ry + p for t in ty]
                    kx = [s * (hi - t) + rx + p for t in tx]
                    # (in, out, kh, kw) -> rows (tap row, tap column, in), columns out.
                    mat = w[:, :, ky][:, :, :, kx].transpose(2, 3, 0, 1).reshape(-1, w.shape[1])
                    phases.append(Phase(ry, rx, ty[0], tx[0], len(ty), len(tx), _digits(mat)))
        if max(ph.weight.shape[0] for ph in phases) * DIGIT_PRODUCT_MAX > INT32_MAX:
            return None
        bias = layer.bias.astype(np.int64)
        act = ACTIVATIONS[layer.activation]
        return cls(tuple(phases), bias, window, stride, pad, step, deconv, shift, act, layer.leaky_num, leaky_bits)

    def __call__(self, x: np.ndarray) -> np.ndarray | None:
        """The layer's output (B, H', W', C') int64 for a C-contiguous int64 input (B, H, W, C); None to fall back.

        The caller checks that ``x`` lies in the digits' range (:meth:`fits`).
        """
        import numpy as np
        import torch

        b, h, w, c = x.shape
        s = self.step
        if self.deconv is None:
            pad = (self.padding,) * 4  # top, bottom, left, right
            oh = (h + 2 * self.padding - self.window) // self.stride + 1
            ow = (w + 2 * self.padding - self.window) // self.stride + 1
        else:
            k, p, op = self.deconv
            oh, ow = (h - 1) * s - 2 * p + k + op, (w - 1) * s - 2 * p + k + op
            # Phase row m reads padded rows m .. m + window - 1: pad after the input up to that extent.
            bottom = max(0, -(-oh // s) + self.window - 1 - self.padding - h)
            right = max(0, -(-ow // s) + self.window - 1 - self.padding - w)
            pad = (self.padding, bottom, self.padding, right)
        mh, mw = -(-oh // s), -(-ow // s)
        split, epilogue = _kernels()
        digits = np.zeros((2, b, h + pad[0] + pad[1], w + pad[2] + pad[3], c), dtype=np.int8)
        split(x, digits, pad[0], pad[2])
        out = np.empty((b, oh, ow, self.bias.shape[0]), dtype=np.int64)
        for ph in self.phases:
            cols = _im2col(digits, ph, self.stride, mh, mw)
            try:
                prod = torch._int_mm(torch.from_numpy(cols), torch.from_numpy(ph.weight)).numpy()
            except RuntimeError:
                return None
            epilogue(
                prod, self.bias, self.shift, self.activation, self.leaky_num, self.leaky_bits, s, ph.ry, ph.rx, out
            )
        return out

    @staticmethod
    def fits(lo: float, hi: float) -> bool:
        """True when input values in [lo, hi] split into two digits."""
        return lo >= VALUE_MIN and hi <= VALUE_MAX


def _digits(mat: np.ndarray) -> np.ndarray:
    """(K, N) int64 weights in range -> (K, 2N) int8 ``[hi | lo]``."""
    import numpy as np

    return np.ascontiguousarray(np.concatenate([mat >> DIGIT_BITS, mat & ((1 << DIGIT_BITS) - 1)], axis=1), np.int8)


def _im2col(digits: np.ndarray, ph: Phase, stride: int, mh: int, mw: int) -> np.ndarray:
    """(2, B, Hp, Wp, C) digits -> (2 * B * mh * mw, nty * ntx * C) rows of the phase's taps, ordered (ky, kx, c)."""
    import numpy as np

    d, b, _, _, c = digits.shape
    cols = np.empty((d, b, mh, mw, ph.nty, ph.ntx, c), dtype=np.int8)
    for i in range(ph.nty):
        for j in range(ph.ntx):
            ky, kx = ph.ty + i, ph.tx + j
            cols[:, :, :, :, i, j] = digits[:, :, ky : ky + stride * mh : stride, kx : kx + stride * mw : stride]
    return cols.reshape(d * b * mh * mw, ph.nty * ph.ntx * c)


@cache
def _kernels() -> tuple[Callable[..., None], Callable[..., None]]:
    """The compiled digit split and epilogue, compiled (or loaded from numba's cache) on first use (:mod:`.jit`)."""
    return compile_kernel(_split), compile_kernel(_epilogue)


def _split(x: Any, digits: Any, top: int, left: int) -> None:
    # x (B, H, W, C) int64 -> digits[0] = x >> 7, digits[1] = x & 127, placed at (top, left) of the padded frame.
    b, h, w, c = x.shape
    for i0 in range(b):
        for i1 in range(h):
            for i2 in range(w):
                for i3 in range(c):
                    v = x[i0, i1, i2, i3]
                    digits[0, i0, top + i1, left + i2, i3] = v >> DIGIT_BITS
                    digits[1, i0, top + i1, left + i2, i3] = v & ((1 << DIGIT_BITS) - 1)


def _epilogue(
    prod: Any, bias: Any, shift: int, act: int, leaky_num: int, leaky_bits: int, s: int, ry: int, rx: int, out: Any
) -> None:
    # prod (2M, 2C') int32 = [[hh, hl], [lh, ll]]; row i of M is (b, my, mx): output (b, s * my + ry, s * mx + rx, :),
    # those inside out's (B, H', W', C').
    b, oh, ow, n = out.shape
    m = prod.shape[0] // 2
    mh = -(-oh // s)
    mw = -(-ow // s)
    i = 0
    for bi in range(b):
        for my in range(mh):
            y = my * s + ry
            for mx in range(mw):
                x = mx * s + rx
                if y < oh and x < ow:
                    for j in range(n):
                        acc = (prod[i, j] << DIGIT_BITS) + prod[i, n + j] + prod[m + i, j]
                        acc = (acc << DIGIT_BITS) + prod[m + i, n + j] + bias[j]
                        v = acc >> shift  # floor division
                        if v < 0 and act == 1:
                            v = 0
                        elif v < 0 and act == 2:
                            v = (v * leaky_num) >> leaky_bits
                        out[bi, y, x, j] = v
                i += 1
