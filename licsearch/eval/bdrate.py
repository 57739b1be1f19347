"""Bjøntegaard delta rate and delta PSNR: how much rate a codec saves over a reference at equal quality.

BD-rate (Bjøntegaard, VCEG-M33, 2001): fit the log of the rate as a function of the quality metric (PSNR, or
MS-SSIM in dB) for each curve, integrate both fits over the metric interval where the curves overlap, and turn the
mean difference of the logs back into a ratio::

    BD-rate = (exp(mean over [lo, hi] of (log R_test(D) - log R_ref(D))) - 1) * 100 %

Negative is better: the test codec needs that many percent fewer bits for the same quality. BD-PSNR swaps the
axes (metric as a function of log rate, integrated over the overlapping log-rate interval) and is in dB; positive
is better.

Fits (``method``):

- ``cubic``: the original least-squares cubic polynomial (degree ``n - 1`` when a curve has fewer than four
  points, said in the note). It can overshoot when points are uneven.
- ``pchip``: piecewise cubic Hermite interpolation with Fritsch-Carlson monotone slopes (the piecewise-cubic
  variant of later VCEG/JVET practice), which passes through every point and never overshoots. Implemented here
  and checked in the tests against ``scipy.interpolate.PchipInterpolator``.

Curves whose metric ranges do not overlap have no BD figure: the result is NaN with a note giving both ranges.
A test curve of a single point (a codec evaluated at one quality) gets the degenerate case of the same idea: the
rate difference at that point's quality, read off the reference fit, again only inside the reference's range.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..errors import InputError

Method = Literal["cubic", "pchip"]
METHODS: tuple[Method, ...] = ("cubic", "pchip")


@dataclass(frozen=True)
class BDResult:
    """A BD figure, the interval it was integrated over, and anything the reader must know about it.

    Attributes:
        value: percent for BD-rate, dB for BD-PSNR; NaN when the curves do not allow one.
        interval: ``(lo, hi)`` of the integration (metric for BD-rate, natural log of bpp for BD-PSNR).
        note: empty, or why the value is NaN or how it was obtained (single point, lower-degree fit).
        method: the fit.
    """

    value: float
    interval: tuple[float, float] | None
    note: str
    method: Method

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "interval": self.interval, "note": self.note, "method": self.method}


class _Fit(Protocol):
    def __call__(self, x: float) -> float: ...
    def integral(self, lo: float, hi: float) -> float: ...


class _Polynomial:
    """Least-squares polynomial of degree ``min(3, n - 1)``."""

    def __init__(self, x: Sequence[float], y: Sequence[float]) -> None:
        import numpy as np

        self.degree = min(3, len(x) - 1)
        self.coef = np.polyfit(np.asarray(x, float), np.asarray(y, float), self.degree)
        self.antiderivative = np.polyint(self.coef)

    def __call__(self, x: float) -> float:
        import numpy as np

        return float(np.polyval(self.coef, x))

    def integral(self, lo: float, hi: float) -> float:
        import numpy as np

        return float(np.polyval(self.antiderivative, hi) - np.polyval(self.antiderivative, lo))


class _Pchip:
    """Piecewise cubic Hermite interpolant with Fritsch-Carlson (scipy-compatible) slopes; x strictly increasing."""

    def __init__(self, x: Sequence[float], y: Sequence[float]) -> None:
        self.x, self.y = [float(v) for v in x], [float(v) for v in y]
        self.d = _pchip_slopes(self.x, self.y)

    def _piece(self, t: float) -> int:
        for k in range(len(self.x) - 2, -1, -1):
            if t >= self.x[k]:
                return k
        return 0

    def _coefficients(self, k: int) -> tuple[float, float, float, float, float]:
        """``(x_k, a, b, c, e)`` with ``p(x) = a + b s + c s^2 + e s^3``, ``s = x - x_k`` on piece ``k``."""
        h = self.x[k + 1] - self.x[k]
        slope = (self.y[k + 1] - self.y[k]) / h
        d0, d1 = self.d[k], self.d[k + 1]
        return self.x[k], self.y[k], d0, (3 * slope - 2 * d0 - d1) / h, (d0 + d1 - 2 * slope) / h**2

    def __call__(self, x: float) -> float:
        x0, a, b, c, e = self._coefficients(self._piece(x))
        s = x - x0
        return a + s * (b + s * (c + s * e))

    def integral(self, lo: float, hi: float) -> float:
        """Integral over ``[lo, hi]``, which lies within the knots."""
        total = 0.0
        for k in range(len(self.x) - 1):
            a, b = max(lo, self.x[k]), min(hi, self.x[k + 1])
            if b > a:
                total += self._antiderivative(k, b) - self._antiderivative(k, a)
        return total

    def _antiderivative(self, k: int, t: float) -> float:
        x0, a, b, c, e = self._coefficients(k)
        s = t - x0
        return s * (a + s * (b / 2 + s * (c / 3 + s * e / 4)))


def _pchip_slopes(x: list[float], y: list[float]) -> list[float]:
    h = [x[k + 1] - x[k] for k in range(len(x) - 1)]
    m = [(y[k + 1] - y[k]) / h[k] for k in range(len(h))]
    if len(x) == 2:
        return [m[0], m[0]]
    d = [0.0] * len(x)
    for k in range(1, len(x) - 1):
        if m[k - 1] * m[k] > 0:  # same sign, neither zero: weighted harmonic mean
            w1, w2 = 2 * h[k] + h[k - 1], h[k] + 2 * h[k - 1]
            d[k] = (w1 + w2) / (w1 / m[k - 1] + w2 / m[k])
    d[0] = _edge_slope(h[0], h[1], m[0], m[1])
    d[-1] = _edge_slope(h[-1], h[-2], m[-1], m[-2])
    return d


def _edge_slope(h0: float, h1: float, m0: float, m1: float) -> float:
    """One-sided three-point slope at an end, kept shape-preserving."""
    d = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    if math.copysign(1, d) != math.copysign(1, m0) or d == 0 or m0 == 0:
        return 0.0
    if math.copysign(1, m0) != math.copysign(1, m1) and abs(d) > 3 * abs(m0):
        return 3 * m0
    return d


def _fit(x: list[float], y: list[float], method: Method) -> _Fit:
    if method == "cubic":
        return _Polynomial(x, y)
    if method == "pchip":
        return _Pchip(x, y)
    raise InputError(f"unknown BD fit {method!r}", hint=f"use one of: {', '.join(METHODS)}")


def _prepare(rate: Sequence[float], metric: Sequence[float], what: str) -> tuple[list[float], list[float]]:
    """(metric, log rate) sorted by metric; points with a non-finite value are dropped."""
    if len(rate) != len(metric):
        raise InputError(f"{what} curve has {len(rate)} rates but {len(metric)} metric values")
    pairs = sorted(
        (float(d), math.log(float(r)))
        for r, d in zip(rate, metric, strict=True)
        if math.isfinite(r) and r > 0 and math.isfinite(d)
    )
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _check(xs: list[float], what: str, method: Method) -> str:
    """Why a curve cannot be fitted, or ''."""
    if len(xs) < 2:
        return f"{what} curve needs at least 2 points with finite values, has {len(xs)}"
    if method == "pchip" and any(b <= a for a, b in itertools.pairwise(xs)):
        return f"{what} curve repeats an abscissa value, which piecewise interpolation cannot fit"
    return ""


def _delta(
    ref: tuple[list[float], list[float]],
    test: tuple[list[float], list[float]],
    method: Method,
    *,
    axis: str,
    unit: str,
) -> tuple[float, tuple[float, float] | None, str]:
    """Mean of ``test(x) - ref(x)`` over the overlap of the x ranges; x and y as prepared by the caller."""
    (rx, ry), (tx, ty) = ref, test
    problem = _check(rx, "reference", method)
    if problem:
        return math.nan, None, problem
    fit_ref = _fit(rx, ry, method)
    if len(tx) == 1:
        if not rx[0] <= tx[0] <= rx[-1]:
            return (
                math.nan,
                None,
                (
                    f"the single test point ({axis} {tx[0]:.3f}{unit}) lies outside the reference's range "
                    f"{rx[0]:.3f}-{rx[-1]:.3f}{unit}"
                ),
            )
        return ty[0] - fit_ref(tx[0]), (tx[0], tx[0]), "single test point: difference at equal " + axis
    problem = _check(tx, "test", method)
    if problem:
        return math.nan, None, problem
    lo, hi = max(rx[0], tx[0]), min(rx[-1], tx[-1])
    if hi <= lo:
        return (
            math.nan,
            None,
            (
                f"{axis} ranges do not overlap: reference {rx[0]:.3f}-{rx[-1]:.3f}{unit}, "
                f"test {tx[0]:.3f}-{tx[-1]:.3f}{unit}"
            ),
        )
    fit_test = _fit(tx, ty, method)
    notes = []
    for what, xs in (("reference", rx), ("test", tx)):
        if method == "cubic" and len(xs) < 4:
            notes.append(f"{what} fit of degree {len(xs) - 1} ({len(xs)} points)")
    mean = (fit_test.integral(lo, hi) - fit_ref.integral(lo, hi)) / (hi - lo)
    return mean, (lo, hi), "; ".join(notes)


def bd_rate(
    ref_rate: Sequence[float],
    ref_metric: Sequence[float],
    test_rate: Sequence[float],
    test_metric: Sequence[float],
    method: Method = "cubic",
) -> BDResult:
    """BD-rate of the test curve against the reference, in percent (negative: the test saves bits).

    Args:
        ref_rate, ref_metric: the reference's rates (e.g. bpp; any positive unit, the same for both curves) and
            quality (PSNR in dB, or MS-SSIM in dB), point by point.
        test_rate, test_metric: the same for the codec under test.
        method: ``cubic`` or ``pchip``; see the module docstring.
    """
    mean, interval, note = _delta(
        _prepare(ref_rate, ref_metric, "reference"),
        _prepare(test_rate, test_metric, "test"),
        method,
        axis="quality",
        unit=" dB",
    )
    return BDResult(math.expm1(mean) * 100 if math.isfinite(mean) else math.nan, interval, note, method)


def bd_psnr(
    ref_rate: Sequence[float],
    ref_metric: Sequence[float],
    test_rate: Sequence[float],
    test_metric: Sequence[float],
    method: Method = "cubic",
) -> BDResult:
    """BD-PSNR (or BD of any metric) of the test curve against the reference at equal rate, in the metric's unit."""

    def swap(xy: tuple[list[float], list[float]]) -> tuple[list[float], list[float]]:
        pairs = sorted(zip(xy[1], xy[0], strict=True))
        return [p[0] for p in pairs], [p[1] for p in pairs]

    mean, interval, note = _delta(
        swap(_prepare(ref_rate, ref_metric, "reference")),
        swap(_prepare(test_rate, test_metric, "test")),
        method,
        axis="log rate",
        unit="",
    )
    return BDResult(mean, interval, note, method)
