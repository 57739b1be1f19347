"""Rate-distortion points and curves: measured on images, or loaded from published anchors.

A point is one codec setting (a quality level) over a set of images: the mean over the images of each image's
bits per pixel, PSNR and MS-SSIM, the convention of CompressAI's published results (``compressai.utils.eval_model``
and the files in ``shared/anchors/compressai-kodak``), so measured curves and anchors can be compared directly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import InputError
from ..metrics import ms_ssim, ms_ssim_db, psnr

if TYPE_CHECKING:
    import numpy as np

    from .baselines import PillowCodec

CurveKind = Literal["codec", "baseline", "anchor"]


@dataclass(frozen=True)
class RDPoint:
    """One setting of a codec over a set of images (means over the images).

    Attributes:
        bpp: bits per pixel of the whole file or container.
        psnr: dB, RGB.
        ms_ssim: 0..1, RGB; NaN when undefined (images too small) or not published.
        quality: the codec's quality setting, when it has one.
        bpp_streams: for the learned codec, the entropy-coded streams alone (no container header), which is
            what CompressAI's anchors count.
        images: how many images were averaged.
    """

    bpp: float
    psnr: float
    ms_ssim: float = math.nan
    quality: int | None = None
    bpp_streams: float | None = None
    images: int = 0

    @property
    def ms_ssim_db(self) -> float:
        return ms_ssim_db(self.ms_ssim)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"quality": self.quality, "bpp": self.bpp, "psnr": self.psnr, "ms_ssim": self.ms_ssim}
        if self.bpp_streams is not None:
            d["bpp_streams"] = self.bpp_streams
        d["images"] = self.images
        return d


@dataclass
class RDCurve:
    """A codec's points, sorted by rate.

    Attributes:
        label: what the legend and the tables call it.
        kind: ``codec`` (ours), ``baseline`` (measured classical codec) or ``anchor`` (published).
        description: how the points were made.
        random_weights: components with random weights (the curve means nothing then).
        source: for anchors, the file they came from.
    """

    label: str
    kind: CurveKind
    points: list[RDPoint]
    description: str = ""
    random_weights: list[str] = field(default_factory=list)
    source: str | None = None

    def __post_init__(self) -> None:
        self.points.sort(key=lambda p: p.bpp)

    def rates(self) -> list[float]:
        return [p.bpp for p in self.points]

    def metric(self, name: str) -> list[float]:
        """``psnr`` or ``ms_ssim_db`` of every point."""
        return [float(getattr(p, name)) for p in self.points]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kind": self.kind,
            "description": self.description,
            "random_weights": self.random_weights,
            "source": self.source,
            "points": [p.to_dict() for p in self.points],
        }


@dataclass(frozen=True)
class ImageResult:
    """One image through one codec setting."""

    bits: int
    pixels: int
    psnr: float
    ms_ssim: float
    stream_bits: int | None = None


def measure(original: np.ndarray, decoded: np.ndarray, nbytes: int, stream_bytes: int | None = None) -> ImageResult:
    """Distortion of ``decoded`` against ``original`` and the rate of ``nbytes``."""
    if decoded.shape != original.shape:
        raise InputError(f"decoded image has shape {decoded.shape}, the original {original.shape}")
    h, w = original.shape[:2]
    stream_bits = None if stream_bytes is None else 8 * stream_bytes
    return ImageResult(8 * nbytes, h * w, psnr(original, decoded), ms_ssim(original, decoded), stream_bits)


def mean_point(results: Sequence[ImageResult], quality: int | None = None) -> RDPoint:
    """Means over images of per-image bpp, PSNR and MS-SSIM (NaN MS-SSIM when any image has none)."""
    if not results:
        raise InputError("no images to average")
    n = len(results)
    streams = [r.stream_bits / r.pixels for r in results if r.stream_bits is not None]
    return RDPoint(
        bpp=sum(r.bits / r.pixels for r in results) / n,
        psnr=sum(r.psnr for r in results) / n,
        ms_ssim=sum(r.ms_ssim for r in results) / n,
        quality=quality,
        bpp_streams=sum(streams) / n if len(streams) == n else None,
        images=n,
    )


def sweep_pillow(
    codec: PillowCodec, images: Sequence[np.ndarray], *, progress: Callable[[str], None] | None = None
) -> RDCurve:
    """Encodes and decodes every image at every quality setting of ``codec``."""
    points = []
    for q in codec.qualities:
        results = []
        for px in images:
            data = codec.encode(px, q)
            results.append(measure(px, codec.decode(data), len(data)))
        points.append(mean_point(results, q))
        if progress:
            progress(f"{codec.name} q{q}: {points[-1].bpp:.3f} bpp, {points[-1].psnr:.2f} dB")
    return RDCurve(codec.name, "baseline", points, description=codec.describe())


def load_anchor(path: Path) -> RDCurve:
    """A published curve in CompressAI's results format (``{"name", "description", "results": {"bpp",
    "psnr-rgb", "ms-ssim-rgb"?}}``); MS-SSIM is NaN where the file has none."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        res = doc["results"]
        bpp, ps = [float(x) for x in res["bpp"]], [float(x) for x in res["psnr-rgb"]]
        ms = [float(x) for x in res.get("ms-ssim-rgb", [math.nan] * len(bpp))]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(
            f"{path} is not an anchor results file ({type(e).__name__}: {e})",
            hint='expected CompressAI\'s format: {"name", "results": {"bpp": [...], "psnr-rgb": [...]}}',
        ) from e
    if not (len(bpp) == len(ps) == len(ms)) or not bpp:
        raise InputError(f"{path}: bpp, psnr-rgb and ms-ssim-rgb must be lists of one non-zero length")
    points = [RDPoint(b, p, m) for b, p, m in zip(bpp, ps, ms, strict=True)]
    name = str(doc.get("name", path.stem))
    return RDCurve(path.stem, "anchor", points, description=f"{name}: {doc.get('description', '')}", source=str(path))


def load_anchors(directory: Path) -> list[RDCurve]:
    """Every ``*.json`` anchor in ``directory``, labelled by file stem (names repeat across devices)."""
    if not directory.is_dir():
        raise InputError(f"--anchors {directory}: not a folder", hint="e.g. ../shared/anchors/compressai-kodak")
    curves = [load_anchor(p) for p in sorted(directory.glob("*.json"))]
    if not curves:
        raise InputError(f"no *.json anchor files in {directory}")
    return curves
