"""The views an image query is searched with in an ``adapter`` space, and the stored images each view is compared with.

An image query is embedded as given and, where it is small beside the stored images, also upscaled
THUMBNAIL_UPSCALE times; that view is compared only with stored images at least THUMBNAIL_MIN_RATIO times the
query's width, and each stored image keeps its better score. The adapter reads the codec's latent, whose grid follows
the image's size, so a thumbnail of a stored photo is found far more often at the stored photo's scale (measured on a
50 % resize: recall@1 0.54 -> 1.00 on world test scenes, 0.71 -> 1.00 on Kodak) while a query of about the stored
size (a crop, a re-encode) keeps its own ranking. CLIP's own tower resizes every input to its fixed size, so a
``pixels`` space needs no second view.

``search --image`` (:mod:`licsearch.ops.search`, on the vector index with a ``width`` filter) and ``licsearch eval``
(:func:`best_of_views`, on score matrices) both apply this rule from here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

THUMBNAIL_UPSCALE = 2
THUMBNAIL_MIN_RATIO = 1.5


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


def best_of_views(
    scores: np.ndarray,
    view_scores: dict[int, np.ndarray],
    query_widths: list[int],
    stored_widths: np.ndarray,
) -> np.ndarray:
    """Scores (queries, stored) of queries searched with their views, as ``search --image`` ranks them.

    Args:
        scores: each query as given against every stored image.
        view_scores: query row -> its thumbnail view's scores against every stored image (rows without a view: none).
        query_widths: each query's width in pixels.
        stored_widths: each stored image's width.
    """
    import numpy as np

    out = np.array(scores, dtype=np.float64, copy=True)
    for i, row in view_scores.items():
        wide = stored_widths >= thumbnail_min_width(query_widths[i])
        out[i, wide] = np.maximum(out[i, wide], row[wide])
    return out
