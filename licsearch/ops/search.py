"""Search by text, by image or like a stored point; fetch and decode stored images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..query_views import query_views
from ..spaces import ADAPTER_KIND
from ..storage.index import FieldFilter, Hit
from ..storage.store import Store

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class SearchResult:
    """Hits best first, the space searched and its kind (``adapter`` or ``pixels``), and what a caller should be told
    about the query."""

    hits: list[Hit]
    space_id: str
    notices: list[str] = field(default_factory=list)
    kind: str = ADAPTER_KIND

    def to_dict(self) -> dict[str, Any]:
        return {
            "hits": [{"id": h.id, "score": h.score, "payload": h.payload} for h in self.hits],
            "space_id": self.space_id,
            "kind": self.kind,
            "notices": self.notices,
        }


def query_vector(
    store: Store,
    *,
    text: str | None = None,
    image: str | Path | None = None,
    like: str | None = None,
    space: str | None = None,
) -> tuple[list[float], list[str]]:
    """The query's vector in ``space`` (default: the store's active space), and notices (e.g. text truncated).

    A space other than the active one is embedded by the models recorded for it, and must be complete. A text runs
    on the models' cached text graph where they may use one (:func:`~licsearch.bundle.text_cache.embed_queries`), an
    image on their cached codec and adapter (:func:`~licsearch.bundle.codec_cache.embed_image`).
    """
    given = [x is not None for x in (text, image, like)]
    if sum(given) != 1:
        raise InputError("give exactly one of --text, --image, --like")
    space_id = space or store.space_id
    models = _space_models(store, space_id)
    if text is not None:
        from ..bundle.text_cache import embed_queries

        emb = embed_queries(models, [text])
        notices = list(emb.notices)
        if emb.truncated[0]:
            ctx = emb.context_length  # 0 when the encoder runs on a server that does not say
            notices.append(f"text truncated to the encoder's {ctx} tokens" if ctx else "text truncated")
        return list(emb.vectors[0].tolist()), notices
    if image is not None:
        from ..bundle.codec_cache import embed_image

        return embed_image(models, _query_pixels(store, image)), []
    assert like is not None
    rec = store.index.retrieve([like], with_vectors=[space_id])
    if not rec:
        raise InputError(f"no stored image with id {like}", hint="ids are listed by `licsearch search --json`")
    vec = rec[0][2].get(space_id)
    if vec is None:
        raise InputError(f"image {like} has no vector in space {space_id}")
    return vec, []


def search(
    store: Store,
    *,
    text: str | None = None,
    image: str | Path | None = None,
    like: str | None = None,
    top_k: int = 10,
    filters: Sequence[FieldFilter] = (),
    space: str | None = None,
) -> SearchResult:
    """Nearest stored images to a text, an image file or a stored image (which is left out of its own hits).

    The search runs in one embedding space only: ``space``, or by default the store's active space. A space that
    is still building is refused (:class:`~licsearch.ops.spaces.SpaceNotReadyError`) with its progress.
    """
    if not 1 <= top_k <= 1000:
        raise InputError(f"top-k {top_k} is out of range", hint="use 1..1000")
    space_id = space or store.space_id
    if image is not None and text is None and like is None:
        return _image_search(store, image, top_k, filters, space_id)
    vector, notices = query_vector(store, text=text, image=image, like=like, space=space_id)
    k = min(top_k + 1, 1000) if like else top_k
    hits = store.index.search(space_id, vector, top_k=k, filters=filters)
    if like:
        hits = [h for h in hits if h.id != _norm(like)][:top_k]
    from .spaces import space_kind

    return SearchResult(hits=hits, space_id=space_id, notices=notices, kind=space_kind(store, space_id))


def merge_hits(lists: Sequence[Sequence[Hit]], top_k: int) -> list[Hit]:
    """Hits of several views of one query, each point at its best score, best first."""
    best: dict[str, Hit] = {}
    for hits in lists:
        for h in hits:
            if h.id not in best or h.score > best[h.id].score:
                best[h.id] = h
    return sorted(best.values(), key=lambda h: -h.score)[:top_k]


def _image_search(
    store: Store, image: str | Path, top_k: int, filters: Sequence[FieldFilter], space_id: str
) -> SearchResult:
    """An image query: as given, and in an ``adapter`` space also its shift views and, against larger stored images,
    its thumbnail view (:mod:`licsearch.query_views`), each stored image at its best score."""
    from ..bundle.codec_cache import embed_image
    from .spaces import space_kind

    models = _space_models(store, space_id)
    kind = space_kind(store, space_id)
    pixels = _query_pixels(store, image)
    lists = [store.index.search(space_id, embed_image(models, pixels), top_k=top_k, filters=filters)]
    if kind == ADAPTER_KIND:

        def wider(width: int) -> list[FieldFilter]:
            return [*filters, FieldFilter("width", "gte", width)] if width else list(filters)

        # The thumbnail view only where some stored image is wide enough: a payload-index count, not a scan.
        for view in query_views(pixels, store.config.max_pixels, lambda w: store.index.count(wider(w)) > 0):
            vector = embed_image(models, view.pixels)
            lists.append(store.index.search(space_id, vector, top_k=top_k, filters=wider(view.min_width)))
    return SearchResult(hits=merge_hits(lists, top_k), space_id=space_id, kind=kind)


def _query_pixels(store: Store, image: str | Path) -> np.ndarray:
    """An image query's pixels, held to the store's pixel limit (Pillow: imported for image queries only)."""
    from ..imageio import load_image

    return load_image(image, max_pixels=store.config.max_pixels).pixels


def _space_models(store: Store, space_id: str) -> Any:
    """The models embedding queries into ``space_id``: the store's, or those recorded for another complete space."""
    if space_id == store.space_id:
        return store.models
    from .spaces import check_queryable, plane_for_space

    check_queryable(store, space_id)
    return plane_for_space(store, space_id)


def fetch_bitstream(store: Store, image_id: str) -> tuple[bytes, dict[str, Any]]:
    """The stored ``.lics`` bytes of a point and its payload."""
    rec = store.index.retrieve([image_id])
    if not rec:
        raise InputError(f"no stored image with id {image_id}")
    payload = rec[0][1]
    return store.blobs.get(str(payload["blob"])), payload


def decode_stored(store: Store, image_id: str) -> np.ndarray:
    """Decodes a stored image to pixels on demand, on the models' cached codec where they may use one
    (:func:`~licsearch.bundle.codec_cache.decode`: no torch)."""
    from ..bundle.codec_cache import decode

    data, _ = fetch_bitstream(store, image_id)
    return decode(store.models, data)


def _norm(i: str) -> str:
    import uuid

    try:
        return str(uuid.UUID(i))
    except ValueError:
        return i
