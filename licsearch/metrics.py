"""Quality metrics, defined once: PSNR, MS-SSIM, recall overlap of rankings and hit@k of searches.

Used by the parity gate, the canary, evaluation and training. Only the standard library is imported here at module
level (numpy and torch load inside the functions), so the gate never pulls in evaluation's plotting stack.

- **PSNR** is on the 8-bit RGB pixels, peak 255. Identical images have no finite PSNR; they get
  :data:`PSNR_IDENTICAL_DB` (100 dB, above any lossy codec's figure), so averages stay finite and an exact round trip
  reads as such rather than as an arbitrary huge number.
- **MS-SSIM** is Wang et al. 2003 on RGB with a data range of 255: an 11-tap Gaussian window (sigma 1.5), constants
  K = (0.01, 0.03), five scales with the weights :data:`MS_SSIM_WEIGHTS`, 2x2 average pooling between scales, and the
  per-channel results averaged. It comes from ``pytorch_msssim`` (the package CompressAI itself uses) when that is
  installed, else from :func:`ms_ssim_reference`, a plain re-implementation of the same definition that the tests hold
  to ``pytorch_msssim``. With five scales and an 11-pixel window, MS-SSIM is defined only for images whose shorter
  side exceeds :data:`MS_SSIM_MIN_SIDE` pixels; smaller images get NaN (written ``null`` in JSON).
- **Recall overlap**: how far the top-k neighbour lists of every item under two sets of embeddings agree.
- **hit@k**: the fraction of queries with a relevant gallery item among their top k.
- **mAP@R** (Musgrave et al. 2020, "A Metric Learning Reality Check"): each item queries all the others; with R the
  number of other items of its label, the mean over ranks i <= R of precision@i at the relevant ranks, divided by R.
  **recall@k** of a labelled set: the fraction of queries with an item of their label among their k nearest others.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

PSNR_IDENTICAL_DB = 100.0
HIT_KS = (1, 5)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images of one shape; :data:`PSNR_IDENTICAL_DB` for identical images."""
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_IDENTICAL_DB if mse == 0 else 10 * math.log10(255.0**2 / mse)


def recall_overlap(ref: np.ndarray, cand: np.ndarray, k: int = 10) -> float:
    """Mean overlap of each item's top-k neighbours (itself excluded) under two sets of unit embeddings.

    k shrinks to n - 1 for fewer than k + 1 items; a single item overlaps fully.
    """
    import numpy as np

    n = ref.shape[0]
    if n < 2:
        return 1.0
    k = min(k, n - 1)
    total = 0.0
    rs, cs = ref @ ref.T, cand @ cand.T
    np.fill_diagonal(rs, -np.inf)
    np.fill_diagonal(cs, -np.inf)
    for i in range(n):
        a = set(np.argsort(-rs[i], kind="stable")[:k].tolist())
        b = set(np.argsort(-cs[i], kind="stable")[:k].tolist())
        total += len(a & b) / k
    return total / n


def hits_at_k(
    queries: np.ndarray, gallery: np.ndarray, relevant: Sequence[set[int]], ks: Sequence[int] = HIT_KS
) -> dict[int, float]:
    """Fraction of queries with a relevant gallery item among their top k, for each k (cosine of unit vectors)."""
    return hits_from_scores(queries @ gallery.T, relevant, ks)


def hits_from_scores(scores: np.ndarray, relevant: Sequence[set[int]], ks: Sequence[int] = HIT_KS) -> dict[int, float]:
    """:func:`hits_at_k` from a (queries, gallery) score matrix, higher is nearer."""
    import numpy as np

    order = np.argsort(-scores, axis=1, kind="stable")
    return {k: float(np.mean([bool(rel & set(order[i, :k].tolist())) for i, rel in enumerate(relevant)])) for k in ks}


def _ranked_labels(embeddings: np.ndarray, labels: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
    """(is-same-label matrix in each query's order of the other items, their counts); the query itself is excluded."""
    import numpy as np

    lab = np.asarray([str(x) for x in labels])
    sims = embeddings @ embeddings.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :-1]  # the query sorts last; drop it
    same = lab[order] == lab[:, None]
    return same, same.sum(axis=1)


def map_at_r(embeddings: np.ndarray, labels: Sequence[object]) -> float:
    """mAP@R of unit embeddings with class labels (module docstring); queries alone in their class are skipped."""
    import numpy as np

    same, counts = _ranked_labels(embeddings, labels)
    scores = []
    for row, r in zip(same, counts, strict=True):
        if r == 0:
            continue
        hits = row[:r]
        precision = np.cumsum(hits) / np.arange(1, r + 1)
        scores.append(float((precision * hits).sum() / r))
    return float(np.mean(scores)) if scores else math.nan


def labelled_recall_at_k(embeddings: np.ndarray, labels: Sequence[object], ks: Sequence[int]) -> dict[int, float]:
    """recall@k of a labelled set (module docstring) for each k; queries alone in their class are skipped."""

    same, counts = _ranked_labels(embeddings, labels)
    keep = counts > 0
    if not keep.any():
        return {k: math.nan for k in ks}
    return {k: float(same[keep, :k].any(axis=1).mean()) for k in ks}


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW, SIGMA, K1, K2 = 11, 1.5, 0.01, 0.03
MS_SSIM_MIN_SIDE = (WINDOW - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1)  # 160


def _tensor(pixels: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in 0..255."""
    import numpy as np
    import torch

    return torch.from_numpy(np.ascontiguousarray(pixels).copy()).permute(2, 0, 1).unsqueeze(0).to(dtype)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Runs torch on one intra-op thread for the duration.

    The many small grouped convolutions of MS-SSIM gain nothing from threads and, on a busy machine, lose up to
    30x to thread contention (measured: 0.04 s on one thread against 0.6-1.8 s on two, for a 176 px image).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM of two (H, W, 3) uint8 images, in 0..1 (1 for identical images); NaN when they are too small."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} and {b.shape}")
    if min(a.shape[:2]) <= MS_SSIM_MIN_SIDE:
        return math.nan
    try:
        from pytorch_msssim import ms_ssim as _library_ms_ssim
    except ImportError:
        return ms_ssim_reference(a, b)
    import torch

    with torch.inference_mode(), _one_thread():  # float32, as CompressAI evaluates
        x, y = _tensor(a, torch.float32), _tensor(b, torch.float32)
        return float(_library_ms_ssim(x, y, data_range=255.0, size_average=True))


def ms_ssim_db(value: float) -> float:
    """MS-SSIM on a decibel scale, ``-10 log10(1 - value)``, as RD plots and BD figures use it."""
    if math.isnan(value):
        return math.nan
    return math.inf if value >= 1.0 else -10.0 * math.log10(1.0 - value)


def _blur(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter per channel, 'valid' borders (no padding)."""
    import torch.nn.functional as F

    channels = x.shape[1]
    x = F.conv2d(x, window.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, window.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _ssim_and_contrast(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean SSIM and mean contrast-structure term at one scale."""
    c1, c2 = (K1 * 255.0) ** 2, (K2 * 255.0) ** 2
    mu_x, mu_y = _blur(x, window), _blur(y, window)
    var_x = _blur(x * x, window) - mu_x**2
    var_y = _blur(y * y, window) - mu_y**2
    cov = _blur(x * y, window) - mu_x * mu_y
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


def ms_ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM by the definition in the module docstring, without ``pytorch_msssim``."""
    import torch

    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} and {b.shape}")
    if min(a.shape[:2]) <= MS_SSIM_MIN_SIDE:
        return math.nan
    coords = torch.arange(WINDOW, dtype=torch.float64) - WINDOW // 2
    window = torch.exp(-(coords**2) / (2 * SIGMA**2))
    window /= window.sum()
    with _one_thread():
        return _ms_ssim_levels(_tensor(a, torch.float64), _tensor(b, torch.float64), window)


def _ms_ssim_levels(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor) -> float:
    import torch
    import torch.nn.functional as F

    factors = []
    for level in range(len(MS_SSIM_WEIGHTS)):
        ssim, cs = _ssim_and_contrast(x, y, window)
        if level < len(MS_SSIM_WEIGHTS) - 1:
            factors.append(torch.relu(cs))
            pad = [s % 2 for s in x.shape[2:]]  # odd sides: pad so that the last row and column are kept
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    factors.append(torch.relu(ssim))
    weights = torch.tensor(MS_SSIM_WEIGHTS, dtype=torch.float64).view(-1, 1, 1)
    return float(torch.prod(torch.stack(factors) ** weights, dim=0).mean())
