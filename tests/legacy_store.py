"""Stores as licsearch wrote them before the Edge engine: qdrant-client local mode in ``DIR/qdrant``.

:func:`make_legacy` turns a copy of a (new, Edge) store into such a store point for point, so tests of local-mode
damage, of reading old stores and of ``licsearch store upgrade`` start from what an old release left on disk.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from licsearch.storage.index import Point, VectorIndex


def make_legacy(source: Path, dst: Path) -> Path:
    """Copies the store ``source`` to ``dst`` with its index moved to local mode and ``store.json`` rewritten."""
    shutil.copytree(source, dst)
    doc = json.loads((dst / "store.json").read_text())
    with VectorIndex(path=dst / "edge", engine="edge") as edge:
        spaces = edge.spaces()
        ids = [pid for pid, _ in edge.iter_points()]
        rows = edge.retrieve(ids, with_vectors=True)
    with VectorIndex(path=dst / "qdrant", engine="client") as local:
        local.ensure_collection(spaces)
        local.upsert([Point(pid, vectors, payload) for pid, payload, vectors in rows])
    shutil.rmtree(dst / "edge")
    doc["qdrant"] = {"url": None, "path": "qdrant", "collection": doc["qdrant"]["collection"]}
    (dst / "store.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return dst
