"""Per-space vector operations on the collection, for re-indexing between embedding spaces.

A re-index adds a named vector to the existing collection (:meth:`VectorIndex.add_space`, Qdrant's
create-vector-name, which local mode and servers >= 1.18 support alike) and writes it onto the existing points
with Qdrant's update-vectors, which leaves the point's other vectors and its payload untouched. Which points
still lack a space's vector is asked of Qdrant itself (a ``has_vector`` filter), so progress survives any
interruption without a cursor of our own: a rerun continues with exactly the points that are missing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import StoreError
from .index import VectorIndex, _normalise_id

if TYPE_CHECKING:
    from qdrant_client import models as qm


def _lacking(space_id: str, exclude: Sequence[str] = ()) -> qm.Filter:
    from qdrant_client import models as qm

    must_not: list[qm.Condition] = [qm.HasVectorCondition(has_vector=space_id)]
    if exclude:
        must_not.append(qm.HasIdCondition(has_id=[_normalise_id(i) for i in exclude]))
    return qm.Filter(must_not=must_not)


def count_with(index: VectorIndex, space_id: str) -> int:
    """Exact number of points that carry a vector of ``space_id``."""
    from qdrant_client import models as qm

    flt = qm.Filter(must=[qm.HasVectorCondition(has_vector=space_id)])
    with index._calling(f"counting the points of space {space_id!r}"):
        return index.client.count(index.collection, count_filter=flt, exact=True).count


def count_lacking(index: VectorIndex, space_id: str, exclude: Sequence[str] = ()) -> int:
    """Exact number of points without a vector of ``space_id`` (``exclude``: ids left out of the count)."""
    with index._calling(f"counting the points missing space {space_id!r}"):
        return index.client.count(index.collection, count_filter=_lacking(space_id, exclude), exact=True).count


def iter_lacking(
    index: VectorIndex, space_id: str, *, batch: int, exclude: Sequence[str] = ()
) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Pages of ``(id, payload)`` of the points that lack a vector of ``space_id``, in id order.

    Pages continue from the last id seen, so vectors written while iterating do not shift later pages; points
    added behind the cursor meanwhile are found by the caller's next pass.
    """
    offset: Any = None
    flt = _lacking(space_id, exclude)
    while True:
        with index._calling(f"scrolling the points missing space {space_id!r}"):
            records, offset = index.client.scroll(
                index.collection, scroll_filter=flt, limit=batch, offset=offset, with_payload=True, with_vectors=False
            )
        if records:
            yield [(_normalise_id(r.id), dict(r.payload or {})) for r in records]
        if offset is None:
            return


def write_vectors(index: VectorIndex, space_id: str, vectors: Mapping[str, Sequence[float]]) -> None:
    """Writes one vector of ``space_id`` onto each existing point (durable on return); other vectors stay.

    Raises:
        StoreError: a point was deleted meanwhile (e.g. by ``fsck --repair``), or the space is missing.
    """
    from qdrant_client import models as qm

    index.require_writable(f"write vectors of space {space_id!r}")
    points = [
        qm.PointVectors(id=_normalise_id(pid), vector={space_id: index._check_vector(space_id, vec)})
        for pid, vec in vectors.items()
    ]
    try:
        with index._calling(f"writing {len(points)} vectors of space {space_id!r}"):
            index.client.update_vectors(index.collection, points=points, wait=True)
    except KeyError as exc:  # local mode: a point id the collection does not hold
        raise StoreError(
            f"point {exc.args[0]} disappeared while its vector of space {space_id!r} was written",
            hint="run the re-index again; it continues with the points that remain",
        ) from exc


def drop_space(index: VectorIndex, space_id: str) -> None:
    """Deletes the named vector ``space_id`` from the collection and from every point (a no-op if absent)."""
    if space_id not in index.spaces():
        return
    index.require_writable(f"remove embedding space {space_id!r}")
    with index._calling(f"removing embedding space {space_id!r}"):
        index.client.delete_vector_name(index.collection, space_id, wait=True)
    index._spaces = None
