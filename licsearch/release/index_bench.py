"""``licsearch bench --index``: every vector setting on Qdrant Edge, beside qdrant-client's local mode.

For each setting of :mod:`licsearch.storage.vectors` (the quantized ones rescored on the originals, with their
oversampling) the bench builds a fresh index of the same points through :class:`~licsearch.storage.index.VectorIndex`
and measures: upsert rate (batches of 1,000), the HNSW build, open time (a cold open of the folder and the first
count), query p50/p99 of top-10 with and without a keyword filter, recall@10 against exact float search (NumPy
brute force on the float32 vectors), disk bytes per vector (the folder's files) and RAM bytes per vector (what the
setting keeps in RAM for search: the float vectors, or the quantized codes with the originals on disk for rescoring;
the process's resident-set growth is reported beside it).

Synthetic vectors are clustered like real embeddings, not uniform on the sphere: ``N / 1000`` (at least 16) random
unit centres, each point a centre plus isotropic Gaussian noise of norm about 1 (cosine to its centre about 0.7),
normalised; queries are drawn the same way and are not in the index. With ``store`` the bench also runs on the real
vectors of a store's active space (queries: 100 of its points, each excluded from its own ground truth by asking
for 11 and dropping it). Local mode runs the same measurements on float32 up to :data:`LOCAL_MODE_MAX_POINTS`
points: beyond that an upsert alone takes minutes (exhaustive NumPy scans, the whole collection pickled).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..storage.index import FieldFilter, VectorIndex
from ..storage.points import Point
from ..storage.vectors import VECTOR_CHOICES, vector_setting

SCHEMA = 1
LOCAL_MODE_MAX_POINTS = 20_000
"""Largest point count local mode is run at (qdrant-client warns above 20,000 points and opens slowly)."""
QUERIES = 100
TOP_K = 10
TAGS = 10
_SPACE = "bench"
_BATCH = 1000
RESULT_KEYS = (
    "engine",
    "vectors",
    "points",
    "recall_at_10",
    "upsert_per_s",
    "optimize_s",
    "open_s",
    "query_p50_ms",
    "query_p99_ms",
    "filtered_p50_ms",
    "filtered_p99_ms",
    "disk_bytes_per_vector",
    "ram_bytes_per_vector",
    "rss_growth_bytes",
)
"""The keys of every row of ``results`` in the JSON document (documented in the README, checked by a test)."""


@dataclass(frozen=True)
class IndexBenchOptions:
    """What ``bench --index`` runs.

    Attributes:
        points: synthetic points.
        dim: their dimension.
        settings: vector settings to measure.
        local_mode: also run qdrant-client's local mode (float32) when ``points`` allows.
        seed: of the synthetic data.
    """

    points: int = 100_000
    dim: int = 512
    settings: tuple[str, ...] = VECTOR_CHOICES
    local_mode: bool = True
    seed: int = 0


def clustered_unit_vectors(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """``n`` unit vectors around ``centres`` (see the module docstring)."""
    which = rng.integers(0, len(centres), n)
    noise = rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
    out = centres[which] + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out.astype(np.float32)


def synthetic(options: IndexBenchOptions) -> tuple[np.ndarray, np.ndarray]:
    """The index vectors and the query vectors."""
    rng = np.random.default_rng(options.seed)
    k = max(16, options.points // 1000)
    centres = rng.standard_normal((k, options.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return clustered_unit_vectors(options.points, options.dim, rng, centres), clustered_unit_vectors(
        QUERIES, options.dim, rng, centres
    )


def exact_top(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` most similar rows of ``data`` per query (exact, float32 dot products of unit vectors)."""
    out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), 16):
        scores = queries[start : start + 16] @ data.T
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.take_along_axis(scores, part, 1).argsort(axis=1)[:, ::-1]
        out[start : start + 16] = np.take_along_axis(part, order, 1)
    return out


def _ids(n: int) -> list[str]:
    import uuid

    return [str(uuid.UUID(int=i + 1)) for i in range(n)]


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def ram_bytes(setting_name: str, dim: int) -> float:
    """Bytes per vector the setting keeps in RAM for search (codes with ``always_ram``; floats otherwise)."""
    setting = vector_setting(setting_name)
    if setting.quantization == "scalar":
        return float(dim)
    if setting.quantization == "binary":
        return dim / 8
    if setting.quantization == "product":
        return dim * 4 / 16
    return float(dim * (2 if setting.datatype == "float16" else 4))


def _percentiles(times: list[float]) -> tuple[float, float]:
    arr = np.array(times) * 1000
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def run_one(
    engine: str,
    setting: str,
    data: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    folder: Path,
    *,
    exclude_self: Sequence[int] | None = None,
) -> dict[str, Any]:
    """One index of ``data`` under ``setting`` on ``engine`` (``edge`` or ``client``), measured."""
    n, dim = data.shape
    ids = _ids(n)
    rss0 = _rss()
    index = VectorIndex(path=folder, engine=engine, vectors={_SPACE: setting})  # type: ignore[arg-type]
    index.ensure_collection({_SPACE: dim}, {_SPACE: setting})
    t0 = time.perf_counter()
    for start in range(0, n, _BATCH):
        chunk = data[start : start + _BATCH]
        index.upsert(
            [
                Point(ids[start + i], {_SPACE: row.tolist()}, {"codec_profile": f"t{(start + i) % TAGS}"})
                for i, row in enumerate(chunk)
            ]
        )
    upsert_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if engine == "edge":
        index.optimize()
    optimize_s = time.perf_counter() - t0
    index.close()
    t0 = time.perf_counter()
    index = VectorIndex(path=folder, engine=engine, vectors={_SPACE: setting})  # type: ignore[arg-type]
    index.count()
    open_s = time.perf_counter() - t0
    position = {pid: i for i, pid in enumerate(ids)}
    plain: list[float] = []
    filtered: list[float] = []
    hits_found = 0
    flt = [FieldFilter("codec_profile", "eq", "t3")]
    for q, query in enumerate(queries):
        extra = 1 if exclude_self is not None else 0
        t0 = time.perf_counter()
        hits = index.search(_SPACE, query.tolist(), top_k=TOP_K + extra)
        plain.append(time.perf_counter() - t0)
        found = [position[h.id] for h in hits]
        if exclude_self is not None:
            found = [i for i in found if i != exclude_self[q]][:TOP_K]
        hits_found += len(set(found) & set(truth[q].tolist()))
        t0 = time.perf_counter()
        index.search(_SPACE, query.tolist(), top_k=TOP_K, filters=flt)
        filtered.append(time.perf_counter() - t0)
    rss = _rss() - rss0
    index.close()
    p50, p99 = _percentiles(plain)
    f50, f99 = _percentiles(filtered)
    return {
        "engine": "edge" if engine == "edge" else "local-mode",
        "vectors": setting,
        "points": n,
        "recall_at_10": hits_found / (len(queries) * TOP_K),
        "upsert_per_s": n / upsert_s,
        "optimize_s": optimize_s,
        "open_s": open_s,
        "query_p50_ms": p50,
        "query_p99_ms": p99,
        "filtered_p50_ms": f50,
        "filtered_p99_ms": f99,
        "disk_bytes_per_vector": _disk(folder) / n,
        "ram_bytes_per_vector": ram_bytes(setting, dim),
        "rss_growth_bytes": rss,
    }


def _rows(
    data: np.ndarray,
    queries: np.ndarray,
    options: IndexBenchOptions,
    log: Callable[[str], None],
    exclude_self: Sequence[int] | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    truth_k = TOP_K + (1 if exclude_self is not None else 0)
    truth = exact_top(data, queries, truth_k)
    if exclude_self is not None:
        truth = np.array([[i for i in row if i != exclude_self[q]][:TOP_K] for q, row in enumerate(truth)])
    rows = []
    runs = [("edge", s) for s in options.settings]
    skipped = None
    if options.local_mode and len(data) <= LOCAL_MODE_MAX_POINTS:
        runs.append(("client", "float32"))
    elif options.local_mode:
        skipped = f"local mode left out above {LOCAL_MODE_MAX_POINTS:,} points (it would take many minutes)"
    else:
        skipped = "local mode not asked for"
    for engine, setting in runs:
        folder = Path(tempfile.mkdtemp(prefix="licsearch-index-bench-"))
        try:
            log(f"bench --index: {engine} {setting} on {len(data):,} points")
            rows.append(run_one(engine, setting, data, queries, truth, folder / "index", exclude_self=exclude_self))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return rows, skipped


def store_vectors(root: Path) -> np.ndarray:
    """The vectors of the active space of the store at ``root``."""
    from ..storage.store import Store

    with Store.open(root) as store:
        space = store.space_id
        ids = [pid for pid, _ in store.index.iter_points()]
        rows = store.index.retrieve(ids, with_vectors=[space])
    return np.array([r[2][space] for r in rows if space in r[2]], np.float32)


def run_index_bench(
    options: IndexBenchOptions, *, store: Path | None = None, log: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """The whole bench as one JSON document (``schema``, ``options``, ``synthetic`` and, with a store, ``store``)."""
    data, queries = synthetic(options)
    rows, skipped = _rows(data, queries, options, log)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "options": {"points": options.points, "dim": options.dim, "queries": QUERIES, "top_k": TOP_K},
        "data": "clustered synthetic unit vectors (N/1000 centres, cosine ~0.7 to their centre)",
        "local_mode": skipped or f"run on float32 (up to {LOCAL_MODE_MAX_POINTS:,} points)",
        "results": rows,
    }
    if store is not None:
        real = store_vectors(store)
        rng = np.random.default_rng(options.seed)
        chosen = rng.choice(len(real), size=min(QUERIES, len(real)), replace=False)
        real_rows, _ = _rows(real, real[chosen], options, log, exclude_self=chosen.tolist())
        doc["store"] = {"path": str(store), "points": len(real), "dim": int(real.shape[1]), "results": real_rows}
    return doc


def format_index_report(doc: dict[str, Any]) -> str:
    """The human table of :func:`run_index_bench`'s document."""
    head = (
        f"{'engine':<10} {'vectors':<8} {'recall@10':>9} {'upsert/s':>9} {'open s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'filt p50':>8} {'disk B/v':>9} {'RAM B/v':>8}"
    )
    lines = [f"index bench: {doc['options']['points']:,} points, dim {doc['options']['dim']} ({doc['data']})"]
    sections = [("synthetic", doc["results"])]
    if "store" in doc:
        sections.append((f"store {doc['store']['path']} ({doc['store']['points']:,} points)", doc["store"]["results"]))
    for title, rows in sections:
        lines += [title, head]
        for r in rows:
            lines.append(
                f"{r['engine']:<10} {r['vectors']:<8} {r['recall_at_10']:>9.3f} {r['upsert_per_s']:>9,.0f} "
                f"{r['open_s']:>7.2f} {r['query_p50_ms']:>7.1f} {r['query_p99_ms']:>7.1f} {r['filtered_p50_ms']:>8.1f} "
                f"{r['disk_bytes_per_vector']:>9,.0f} {r['ram_bytes_per_vector']:>8,.0f}"
            )
    lines.append(f"local mode: {doc['local_mode']}")
    return "\n".join(lines)
