"""``licsearch store upgrade``: move a store made before the Edge engine from qdrant-client's local mode to Edge.

The upgrade never leaves a store half-migrated. It writes ``DIR/upgrade.json`` (the marker) first, copies the points
in batches of ids from ``DIR/qdrant`` (local mode, only read) into a new Edge shard in ``DIR/edge``, verifies the
copy point for point (ids, payloads, every named vector), builds the HNSW index, and only then replaces
``store.json`` atomically with one whose engine is ``edge``; the old folder and the marker are removed last.

Killed at any moment (SIGKILL included), the store still opens on its old index until ``store.json`` flips, and a
rerun continues: the shard's write-ahead log keeps every batch it acknowledged, and the points already present in
the shard are skipped. After the flip a rerun only finishes the clean-up.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import CONFIG_FILE, QdrantConfig, StoreConfig
from ..errors import StoreError
from ..jsondoc import read_json_file, write_json
from ..readonly import is_writable, read_only_error
from .index import Point, VectorIndex

MARKER = "upgrade.json"
UPGRADE_BATCH = 1000
"""Points copied per batch (one scroll page of the old index, one upsert into the new)."""
_VECTOR_TOLERANCE = 1e-6


@dataclass
class UpgradeReport:
    """What an upgrade did: ``state`` is ``upgraded``, ``already`` (nothing to do) or ``server`` (nothing to do)."""

    store: str
    state: str
    points: int = 0
    copied: int = 0
    resumed: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def upgrade(
    root: Path, *, progress: Callable[[int, int], None] | None = None, after_batch: Callable[[int], None] | None = None
) -> UpgradeReport:
    """Upgrades the store at ``root`` to the Edge engine (see the module docstring).

    Args:
        root: the store.
        progress: called with (points copied, points in all) after each batch.
        after_batch: called with the number of batches copied so far (tests stop the process there).

    Raises:
        StoreError: the store is read-only or held by another process, its index is damaged, or the copy does not
            verify (nothing is switched then; the message names the first point that differs).
    """
    start = time.perf_counter()
    cfg = StoreConfig.load(root)
    marker = root / MARKER
    if cfg.qdrant.url is not None:
        return UpgradeReport(str(root), "server")
    if cfg.qdrant.engine == "edge":
        _clean_up(root, marker, keep=cfg.qdrant.path)
        return UpgradeReport(str(root), "already")
    if not is_writable(root):
        raise read_only_error(f"the store at {root}", "upgrade its vector index")
    old_path, new_path = root / cfg.qdrant.path, root / QdrantConfig.path
    resumed = marker.exists()
    if new_path.exists() and not resumed:
        raise StoreError(
            f"{new_path} exists, but no upgrade of the store at {root} was started ({marker} is absent)",
            hint="move that folder away if it is not needed, then run `licsearch store upgrade` again",
        )
    if not resumed:
        doc = {"from": str(old_path.name), "to": str(new_path.name), "started_at": time.time()}
        write_json(marker, doc)
    copied = 0
    with VectorIndex(path=old_path, engine="client", collection=cfg.qdrant.collection) as old:
        spaces = old.spaces()
        total = old.count()
        with VectorIndex(path=new_path, engine="edge", vectors=cfg.qdrant.vectors) as new:
            new.ensure_collection(spaces, cfg.qdrant.vectors)
            for batches, page in enumerate(old.scroll(batch=UPGRADE_BATCH), start=1):
                ids = [pid for pid, _ in page]
                present = new.existing(ids)
                wanted = [pid for pid in ids if pid not in present]
                if wanted:
                    rows = old.retrieve(wanted, with_vectors=True)
                    new.upsert([Point(pid, vectors, payload) for pid, payload, vectors in rows])
                    copied += len(rows)
                if progress is not None:
                    progress(min(batches * UPGRADE_BATCH, total), total)
                if after_batch is not None:
                    after_batch(batches)
            verify(old, new)
            new.optimize()
    upgraded = dataclasses.replace(cfg, qdrant=dataclasses.replace(cfg.qdrant, engine="edge", path=new_path.name))
    upgraded.save(root)  # the switch: atomic, and last
    _clean_up(root, marker, old_path, keep=new_path.name)
    return UpgradeReport(str(root), "upgraded", total, copied, resumed, time.perf_counter() - start)


def verify(old: VectorIndex, new: VectorIndex) -> None:
    """Checks that ``new`` holds exactly the points of ``old``: ids, payloads and every named vector.

    Raises:
        StoreError: naming the first point that differs.
    """
    import numpy as np

    if new.spaces() != old.spaces():
        raise _unverified(f"the spaces differ ({sorted(old.spaces())} against {sorted(new.spaces())})")
    if (n_old := old.count()) != (n_new := new.count()):
        raise _unverified(f"the old index has {n_old} points, the new one {n_new}")
    for page in old.scroll(batch=UPGRADE_BATCH):
        ids = [pid for pid, _ in page]
        theirs = {pid: (payload, vectors) for pid, payload, vectors in new.retrieve(ids, with_vectors=True)}
        for pid, payload, vectors in old.retrieve(ids, with_vectors=True):
            if pid not in theirs:
                raise _unverified(f"point {pid} is missing from the new index")
            new_payload, new_vectors = theirs[pid]
            if not same_payload(new_payload, payload):
                raise _unverified(f"the payload of point {pid} differs")
            if set(new_vectors) != set(vectors):
                raise _unverified(f"point {pid} has vectors of {sorted(new_vectors)}, not {sorted(vectors)}")
            for space, vector in vectors.items():
                a, b = np.asarray(vector), np.asarray(new_vectors[space])
                a = a / max(float(np.linalg.norm(a)), 1e-30)  # cosine: both engines keep unit vectors
                if a.shape != b.shape or float(np.max(np.abs(a - b))) > _VECTOR_TOLERANCE:
                    raise _unverified(f"the vector of space {space!r} of point {pid} differs")


def same_payload(a: object, b: object) -> bool:
    """Payload equality, floats within one part in 10^12: Qdrant Edge 0.9 may round a float's last digit."""
    import math

    if isinstance(a, float) or isinstance(b, float):
        both = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
        return both and math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)  # type: ignore[arg-type]
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_payload(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_payload(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _unverified(problem: str) -> StoreError:
    return StoreError(
        f"the upgraded index does not match the old one: {problem}; the store still uses its old index",
        hint=f"delete the store's edge/ folder and {MARKER}, then run `licsearch store upgrade` again",
    )


def _marker_doc(marker: Path) -> dict[str, Any]:
    """The marker's document (``from``, ``to``, ``started_at``), read to clean up after a finished upgrade."""
    hint = f"the upgrade itself is finished: delete {marker}, then the old local-mode folder (qdrant/) by hand"
    doc = read_json_file(marker, "an upgrade marker", hint=hint)
    if not isinstance(doc, dict):
        raise StoreError(f"{marker} is damaged: it must be a JSON object", hint=hint)
    return doc


def _clean_up(root: Path, marker: Path, old_path: Path | None = None, *, keep: str) -> None:
    """Removes the old local-mode folder (never ``keep``, the index in use) and then the marker."""
    if marker.exists():
        if old_path is None:
            old_path = root / Path(str(_marker_doc(marker).get("from", "qdrant"))).name
        if old_path.name != keep and old_path.exists() and (root / CONFIG_FILE).exists():
            shutil.rmtree(old_path)
        marker.unlink()
