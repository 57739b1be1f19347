"""Semantic fidelity: does the adapter, reading compressed latents, stand in for CLIP's image tower?

The teacher is the CLIP image tower (open_clip ``encode_image`` after open_clip's own eval preprocessing) on the
original pixels; it is what the adapter is trained to imitate. Measured per codec quality:

- **cosine** between the adapter's embedding of an image's latent and the teacher's embedding of the image;
- **recall@10 overlap**: how far the image-to-image neighbour lists under the adapter agree with the teacher's
  (:func:`licsearch.metrics.recall_overlap`; k shrinks to n - 1 for fewer than 11 images);
- **text-to-image hit@k** with captions: each distinct caption is a query over the captioned images, and is a hit
  when an image with that caption is among the top k. Three image sides are compared: the adapter on the
  compressed latents (what a store searches), the CLIP image tower on the decoded pixels (decode, then embed),
  and the CLIP image tower on the original pixels (no compression: the seed's hit rate, the same at every
  quality, given per quality for side-by-side reading);
- **near-duplicate recall** under common edits (:data:`EDITS`): the edited image is compressed and embedded by
  the adapter and searched among the adapter embeddings of the originals; a hit at k when its original is in the
  top k. The teacher on edited versus original pixels gives the reference figure. ``near_duplicate_search`` ranks
  the edited image as ``search --image`` does, with its thumbnail view too (:mod:`licsearch.query_views`).

Every figure is over a handful of images in a small run; with random weights they are only a smoke test.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..defaults import MAX_PIXELS
from ..errors import InputError
from ..metrics import HIT_KS, hits_from_scores, recall_overlap
from ..query_views import QueryView, best_of_views, query_views
from ..registry import Registry

if TYPE_CHECKING:
    import numpy as np

EDITS: Registry[Callable[[np.ndarray], np.ndarray]] = Registry("near-duplicate edit")


@EDITS.decorator("jpeg_q50")
def _jpeg_q50(pixels: np.ndarray) -> np.ndarray:
    """Re-encoded as JPEG at quality 50 (Pillow defaults otherwise)."""
    from .baselines import PILLOW_CODECS

    jpeg = PILLOW_CODECS.get("JPEG")
    return jpeg.decode(jpeg.encode(pixels, 50))


@EDITS.decorator("center_crop_90")
def _center_crop_90(pixels: np.ndarray) -> np.ndarray:
    """The central 90 % of each side."""
    h, w = pixels.shape[:2]
    ch, cw = round(0.9 * h), round(0.9 * w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return pixels[top : top + ch, left : left + cw].copy()


@EDITS.decorator("resize_50")
def _resize_50(pixels: np.ndarray) -> np.ndarray:
    """Half the width and height, bicubic."""
    import numpy as np
    from PIL import Image

    h, w = pixels.shape[:2]
    small = Image.fromarray(pixels).resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BICUBIC)
    return np.asarray(small).copy()


class Teacher:
    """The CLIP image tower of an open_clip model, with open_clip's eval preprocessing."""

    def __init__(self, clip_model: Any) -> None:
        import open_clip

        self.model = clip_model
        self.preprocess = open_clip.image_transform(clip_model.visual.image_size, is_train=False)

    def embed(self, images: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """Unit vectors (N, D) of (H, W, 3) uint8 images."""
        import numpy as np
        import torch
        from PIL import Image

        out = []
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                x = torch.stack([self.preprocess(Image.fromarray(px)) for px in images[i : i + batch_size]])
                out.append(self.model.encode_image(x, normalize=True).float().numpy())
        return np.concatenate(out).astype(np.float32)


@dataclass(frozen=True)
class CaptionQueries:
    """Distinct captions as queries over a gallery of captioned images.

    Attributes:
        texts: the distinct captions.
        relevant: for each text, the gallery positions of the images it describes.
        gallery: positions, in the evaluated image list, of the captioned images.
    """

    texts: list[str]
    relevant: list[set[int]]
    gallery: list[int]


def load_captions(path: Path) -> dict[str, str]:
    """``captions.jsonl`` lines ``{"file", "caption", ...}`` -> {file: caption} (files relative to its folder)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InputError(f"cannot read --captions {path}: {e.strerror or e}") from e
    out: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            out[str(item["file"])] = str(item["caption"])
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(
                f"{path}:{n}: not a captions line ({type(e).__name__}: {e})",
                hint='each line is {"file": NAME, "caption": TEXT}, as `licsearch samples` writes',
            ) from e
    if not out:
        raise InputError(f"{path} holds no captions")
    return out


def caption_queries(image_paths: Sequence[Path], captions: dict[str, str], root: Path) -> CaptionQueries:
    """Matches images to captions by path relative to ``root`` (the captions file's folder), else by file name."""
    by_name: dict[str, str | None] = {}
    for f, c in captions.items():
        name = Path(f).name
        by_name[name] = None if name in by_name else c  # a name that repeats cannot identify an image
    gallery, texts = [], []
    for i, p in enumerate(image_paths):
        try:
            rel = p.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            rel = None
        text = captions.get(rel) if rel is not None else None
        text = text if text is not None else by_name.get(p.name)
        if text is not None:
            gallery.append(i)
            texts.append(text)
    if not gallery:
        raise InputError(
            "no evaluated image has a caption",
            hint="--captions must list the files of --images (paths relative to the captions file's folder)",
        )
    distinct = sorted(set(texts))
    relevant = [{g for g, t in enumerate(texts) if t == q} for q in distinct]
    return CaptionQueries(distinct, relevant, gallery)


def near_duplicate_recall(
    originals: np.ndarray, edited: np.ndarray, ks: Sequence[int] = HIT_KS, *, views: SearchViews | None = None
) -> dict[str, float]:
    """Edited image ``i`` searched among the originals: hit at k when original ``i`` is in the top k.

    With ``views``, each edited image is ranked as ``search --image`` ranks it: also by its extra views, each among
    the originals it is compared with (:func:`licsearch.query_views.best_of_views`).
    """
    scores = edited @ originals.T
    if views is not None and views.views:
        rows = [(i, min_width, vec @ originals.T) for i, min_width, vec in views.views]
        scores = best_of_views(scores, rows, views.stored_widths)
    res = hits_from_scores(scores, [{i} for i in range(len(edited))], ks)
    return {f"recall_at_{k}": v for k, v in res.items()}


@dataclass(frozen=True)
class SearchViews:
    """The extra views ``search --image`` searches a set of edited images with, embedded: (query row, the view's
    ``min_width``, its vector) each, and the originals' widths (:func:`search_views`)."""

    views: list[tuple[int, int, np.ndarray]]
    stored_widths: np.ndarray


def search_view_images(
    edited: Sequence[np.ndarray], originals: Sequence[np.ndarray], max_pixels: int = MAX_PIXELS
) -> list[tuple[int, QueryView]]:
    """(query row, view) of every extra view :func:`licsearch.query_views.query_views` gives each edited image, with
    the originals as the stored images."""
    widest = max(px.shape[1] for px in originals)
    return [(i, v) for i, px in enumerate(edited) for v in query_views(px, max_pixels, lambda w: widest >= w)]


def search_views(
    edited: Sequence[np.ndarray],
    originals: Sequence[np.ndarray],
    embed: Callable[[list[np.ndarray]], np.ndarray],
    max_pixels: int = MAX_PIXELS,
) -> SearchViews:
    """:func:`search_view_images` embedded by ``embed`` (images -> unit vectors, one row each)."""
    import numpy as np

    views = search_view_images(edited, originals, max_pixels)
    vectors: list[np.ndarray] = list(embed([v.pixels for _, v in views])) if views else []
    rows = [(i, v.min_width, vec) for (i, v), vec in zip(views, vectors, strict=True)]
    return SearchViews(rows, np.array([px.shape[1] for px in originals]))


def agreement(adapter: np.ndarray, teacher: np.ndarray) -> dict[str, Any]:
    """Cosine of paired unit vectors (mean, min) and recall@10 overlap of the image-to-image rankings."""
    import numpy as np

    cos = (adapter * teacher).sum(axis=1)
    k = min(10, len(adapter) - 1)
    return {
        "cos_mean": float(np.mean(cos)),
        "cos_min": float(np.min(cos)),
        "recall_overlap": recall_overlap(teacher, adapter, k=10),
        "recall_overlap_k": max(k, 0),
    }
