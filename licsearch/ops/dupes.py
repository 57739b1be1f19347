"""Groups of near-duplicate images (re-encodes, crops, resizes) found from the stored embeddings.

Exact-pixel duplicates never become two points (a point's id is the hash of its decoded pixels, so ingest skips a
second copy and records its path in the point's ``duplicate_paths``); near-duplicates do. For each point its
neighbours above a cosine threshold are looked up in the active space, and the pairs are joined into groups with
union-find (Tarjan 1975), so a chain of close pairs is one group. The skipped copies join their point's group as
members flagged ``exact``, with the id and score of the point they copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..defaults import DUPES_THRESHOLD
from ..errors import InputError
from ..storage.store import Store

__all__ = ["DupeGroup", "find_duplicates"]

_NEIGHBOURS = 32  # neighbours looked up per point; a group larger than this is still joined through its chain
_BATCH = 64


@dataclass(frozen=True)
class DupeGroup:
    """One group of near-duplicates, its first member the one with the largest image (ties: smallest id).

    Attributes:
        ids: member point ids, the first member first, then by falling score; an exact copy repeats its point's id.
        scores: cosine similarity of each member to the first (1.0 for the first itself).
        exact: whether the member is an exact-pixel copy of the point before it, skipped by ingest.
        paths: each member's source path, as ingested (for an exact copy: the skipped file's path).
    """

    ids: tuple[str, ...]
    scores: tuple[float, ...]
    exact: tuple[bool, ...]
    paths: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The group as JSON: one entry per member."""
        members = zip(self.ids, self.scores, self.exact, self.paths, strict=True)
        return {"members": [{"id": i, "score": s, "exact": e, "path": p} for i, s, e, p in members]}


def find_duplicates(store: Store, threshold: float = DUPES_THRESHOLD) -> list[DupeGroup]:
    """Every group of two or more points whose embeddings are at least ``threshold`` apart in cosine similarity.

    Args:
        store: an open store (read-only is enough).
        threshold: least cosine similarity of a pair joined into a group, in (0, 1].

    Returns:
        The groups, largest first (ties: by first id).

    Raises:
        InputError: the threshold is not a number in (0, 1].
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold <= 1:
        raise InputError(f"the duplicate threshold must be a number in (0, 1], got {threshold!r}", hint="e.g. 0.9")
    space = store.space_id
    payloads = dict(store.index.iter_points())
    ids = sorted(payloads)
    parent = {i: i for i in ids}

    def find(i: str) -> str:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    vectors: dict[str, list[float]] = {}
    for start in range(0, len(ids), _BATCH):
        for pid, _, named in store.index.retrieve(ids[start : start + _BATCH], with_vectors=[space]):
            if space in named:
                vectors[pid] = named[space]
    for pid in ids:
        if pid not in vectors:
            continue
        for hit in store.index.search(space, vectors[pid], top_k=min(_NEIGHBOURS, max(1, len(ids)))):
            if hit.id != pid and hit.score >= threshold and hit.id in parent:
                a, b = find(pid), find(hit.id)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = {}
    for pid in ids:
        members.setdefault(find(pid), []).append(pid)
    groups = [
        _group(group, payloads, vectors)
        for group in members.values()
        if len(group) > 1 or payloads[group[0]].get("duplicate_paths")
    ]
    return sorted(groups, key=lambda g: (-len(g.ids), g.ids[0]))


def _group(ids: list[str], payloads: dict[str, dict[str, Any]], vectors: dict[str, list[float]]) -> DupeGroup:
    def area(pid: str) -> int:
        payload = payloads[pid]
        return int(payload.get("width", 0)) * int(payload.get("height", 0))

    first = min(ids, key=lambda pid: (-area(pid), pid))
    scores = {pid: _cosine(vectors[first], vectors[pid]) if pid in vectors else 0.0 for pid in ids}
    scores[first] = 1.0
    rows: list[tuple[str, float, bool, str]] = []
    for pid in sorted(ids, key=lambda pid: (pid != first, -scores[pid], pid)):
        payload = payloads[pid]
        rows.append((pid, round(scores[pid], 6), False, str(payload.get("source_path", ""))))
        rows.extend((pid, round(scores[pid], 6), True, str(copy)) for copy in payload.get("duplicate_paths") or [])
    ids_, scores_, exact, paths = zip(*rows, strict=True)
    return DupeGroup(ids=ids_, scores=scores_, exact=exact, paths=paths)


def _cosine(a: list[float], b: list[float]) -> float:
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))
