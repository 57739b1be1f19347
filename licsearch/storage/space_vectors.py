"""Per-space vector operations on the collection, for re-indexing between embedding spaces.

A re-index adds a named vector to the existing collection (:meth:`VectorIndex.add_space`, Qdrant's
create-vector-name on a server or local mode, ``create_dense_vector`` on Edge) and writes it onto the existing points
with Qdrant's update-vectors, which leaves the point's other vectors and its payload untouched. Which points
still lack a space's vector is asked of Qdrant itself (a ``has_vector`` filter), so progress survives any
interruption without a cursor of our own: a rerun continues with exactly the points that are missing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .index import Selection, VectorIndex


def _lacking(space_id: str, exclude: Sequence[str] = ()) -> Selection:
    return Selection(without_vector=space_id, exclude=tuple(exclude))


def count_with(index: VectorIndex, space_id: str) -> int:
    """Exact number of points that carry a vector of ``space_id``."""
    return index.count(selection=Selection(with_vector=space_id))


def count_lacking(index: VectorIndex, space_id: str, exclude: Sequence[str] = ()) -> int:
    """Exact number of points without a vector of ``space_id`` (``exclude``: ids left out of the count)."""
    return index.count(selection=_lacking(space_id, exclude))


def iter_lacking(
    index: VectorIndex, space_id: str, *, batch: int, exclude: Sequence[str] = ()
) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Pages of ``(id, payload)`` of the points that lack a vector of ``space_id``, in id order.

    Pages continue from the last id seen, so vectors written while iterating do not shift later pages; points
    added behind the cursor meanwhile are found by the caller's next pass.
    """
    yield from index.scroll(_lacking(space_id, exclude), batch=batch)


def write_vectors(index: VectorIndex, space_id: str, vectors: Mapping[str, Sequence[float]]) -> None:
    """Writes one vector of ``space_id`` onto each existing point (durable on return); other vectors stay.

    Raises:
        StoreError: a point was deleted meanwhile (e.g. by ``fsck --repair``), or the space is missing.
    """
    index.update_vectors(space_id, vectors)


def drop_space(index: VectorIndex, space_id: str) -> None:
    """Deletes the named vector ``space_id`` from the collection and from every point (a no-op if absent)."""
    index.drop_space(space_id)
