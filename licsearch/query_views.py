"""The views an image query is searched with in an ``adapter`` space, and the stored images each view is compared with.

The adapter reads the codec's latent ŷ, one element per LATENT_GRID × LATENT_GRID pixels, so its embedding of an
image depends on where the image's content falls on that grid and at what scale. CLIP's own tower resizes and crops
every input to its fixed size, so a ``pixels`` space needs none of these views. Besides the query as given:

- **Shift views.** A crop moves the image against the grid by up to LATENT_GRID - 1 pixels in each direction, and ŷ
  is not invariant to such sub-grid shifts: the query is also embedded with its top, its left and both edges padded
  by SHIFT_PX (edges replicated), so that one of the four views lies within SHIFT_PX / 2 pixels of the stored
  image's grid in each direction. Compared with every stored image. Measured on 150 world test scenes (256 px) with
  the offline preset (q3, ``adapter-views-q3``): a centred 90 % crop found at recall@1 0.867 -> 0.927, random 75-95 %
  crops 0.853 -> 0.940, JPEG q50 copies 1.000 -> 0.993 (one of 150 lost to a shifted view's false match);
  sixteen views at every 4 pixels reached 0.980 and 0.947 at five times the cost. Only for queries of at most
  SHIFT_MAX_PIXELS: a shift matters less the more grid cells an image spans (Kodak's 768x512 crops are found at
  1.000 as given), while each view costs a whole analysis of the query.
- **The thumbnail view.** A small copy shows the adapter its objects at a smaller scale than it learnt them at: the
  query is also embedded upscaled THUMBNAIL_UPSCALE times and compared only with stored images at least
  THUMBNAIL_MIN_RATIO times the query's width, so a query of about the stored size (a crop, a re-encode) keeps its
  own ranking. Measured on a 50 % resize: recall@1 0.54 -> 1.00 on world test scenes, 0.71 -> 1.00 on Kodak.

Each stored image keeps its best score over the views. ``search --image`` (:mod:`licsearch.ops.search`, on the vector
index with a ``width`` filter) and ``licsearch eval`` (:func:`best_of_views`, on score matrices) both take their views
from :func:`query_views`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

LATENT_GRID = 16
"""Pixels per element of ŷ for every codec of :data:`licsearch.model.codec.CODEC_ARCHS` (``g_a``'s four stride-2
layers; tests/test_query_views.py holds it to each architecture's ``downsampling``)."""
SHIFT_PX = LATENT_GRID // 2
SHIFT_MAX_PIXELS = 512 * 512
THUMBNAIL_UPSCALE = 2
THUMBNAIL_MIN_RATIO = 1.5


@dataclass(frozen=True)
class QueryView:
    """One extra view of an image query: its pixels, and the narrowest stored image it is compared with (0: all)."""

    pixels: np.ndarray
    min_width: int = 0


def thumbnail_min_width(query_width: int) -> int:
    """The narrowest stored image the thumbnail view of a query this wide is compared with."""
    return math.ceil(THUMBNAIL_MIN_RATIO * query_width)


def thumbnail_view(pixels: np.ndarray, max_pixels: int) -> np.ndarray | None:
    """The query upscaled THUMBNAIL_UPSCALE times (bicubic), or None where that would exceed ``max_pixels``."""
    import numpy as np
    from PIL import Image

    h, w = pixels.shape[:2]
    size = (w * THUMBNAIL_UPSCALE, h * THUMBNAIL_UPSCALE)
    if size[0] * size[1] > max_pixels:
        return None
    return np.array(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC))


def shift_views(pixels: np.ndarray, max_pixels: int) -> list[np.ndarray]:
    """The query with its top, its left and both edges padded by SHIFT_PX (edges replicated), within ``max_pixels``;
    none for a query larger than SHIFT_MAX_PIXELS."""
    import numpy as np

    h, w = pixels.shape[:2]
    out: list[np.ndarray] = []
    if h * w > SHIFT_MAX_PIXELS:
        return out
    for top, left in ((SHIFT_PX, 0), (0, SHIFT_PX), (SHIFT_PX, SHIFT_PX)):
        if (h + top) * (w + left) <= max_pixels:
            out.append(np.pad(pixels, ((top, 0), (left, 0), (0, 0)), mode="edge"))
    return out


def query_views(pixels: np.ndarray, max_pixels: int, has_wider: Callable[[int], bool]) -> list[QueryView]:
    """The extra views of an image query in an ``adapter`` space (module docstring).

    Args:
        pixels: the query, (H, W, 3) uint8.
        max_pixels: no view is larger (the store's limit).
        has_wider: whether some stored image (under the query's filters) is at least this wide; the thumbnail view
            is made only where one is.
    """
    views = [QueryView(v) for v in shift_views(pixels, max_pixels)]
    wide = thumbnail_min_width(pixels.shape[1])
    if has_wider(wide):
        thumb = thumbnail_view(pixels, max_pixels)
        if thumb is not None:
            views.append(QueryView(thumb, wide))
    return views


def best_of_views(
    scores: np.ndarray, view_scores: Sequence[tuple[int, int, np.ndarray]], stored_widths: np.ndarray
) -> np.ndarray:
    """Scores (queries, stored) of queries searched with their views, as ``search --image`` ranks them.

    Args:
        scores: each query as given against every stored image.
        view_scores: (query row, the view's ``min_width``, the view's scores against every stored image), per view.
        stored_widths: each stored image's width.
    """
    import numpy as np

    out = np.array(scores, dtype=np.float64, copy=True)
    for i, min_width, row in view_scores:
        seen = stored_widths >= min_width
        out[i, seen] = np.maximum(out[i, seen], row[seen])
    return out
