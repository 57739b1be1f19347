"""``licsearch bench --index``: every vector setting on Qdrant Edge, beside qdrant-client's local mode.

For each setting of :mod:`licsearch.storage.vectors` (the quantized ones rescored on the originals, with their
oversampling) the bench builds a fresh index of the same points through :class:`~licsearch.storage.index.VectorIndex`
and measures: upsert rate (batches of 1,000), the HNSW build, open time (a cold open of the folder and the first
count), query p50/p99 of top-10 with and without a keyword filter, recall@10 against exact float search (NumPy
brute force on the float32 vectors), disk bytes per vector (the folder's files) and RAM bytes per vector (what the
setting keeps in RAM for search: the float vectors, or the quantized codes with the originals on disk for rescoring;
the process's resident-set growth is reported beside it).

Synthetic vectors (``data``) are ``clustered`` like real embeddings by default: ``N / 1000`` (at least 16) random
unit centres, each point a centre plus isotropic Gaussian noise of norm about 1 (cosine to its centre about 0.7),
normalised; or ``uniform`` on the sphere, the hardest case for HNSW (every point nearly orthogonal to every other).
Queries are drawn the same way and are not in the index. Each index is built once and then searched at every HNSW
candidate list (``hnsw_ef``) and, for the quantized settings, every oversampling asked for: one row each.
With ``store`` the bench also runs on the real vectors of a store's active space (queries: 100 of its points, each
excluded from its own ground truth by asking for 11 and dropping it). Local mode runs the same measurements on
float32 up to :data:`LOCAL_MODE_MAX_POINTS` points, on the first data set only: beyond that an upsert alone takes
minutes (exhaustive NumPy scans, the whole collection pickled).
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

from ..errors import InputError
from ..storage.index import FieldFilter, VectorIndex
from ..storage.points import Point
from ..storage.vectors import VECTOR_CHOICES, search_ef, vector_setting

SCHEMA = 2
"""2: rows carry ``data``, ``hnsw_ef`` and ``oversampling`` (one row per search setting of one built index)."""
LOCAL_MODE_MAX_POINTS = 20_000
"""Largest point count local mode is run at (qdrant-client warns above 20,000 points and opens slowly)."""
QUERIES = 100
TOP_K = 10
TAGS = 10
_SPACE = "bench"
_BATCH = 1000
DATA_KINDS = {
    "clustered": "clustered synthetic unit vectors (N/1000 centres, cosine ~0.7 to their centre)",
    "uniform": "uniform random unit vectors",
}
"""The synthetic data sets, and what each is."""
RESULT_KEYS = (
    "engine",
    "data",
    "vectors",
    "hnsw_ef",
    "oversampling",
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
        data: synthetic data sets (:data:`DATA_KINDS`), each measured whole.
        hnsw_ef: HNSW candidate lists to search with (None: the default of each search).
        oversampling: oversamplings of the quantized settings (None: each setting's own).
    """

    points: int = 100_000
    dim: int = 512
    settings: tuple[str, ...] = VECTOR_CHOICES
    local_mode: bool = True
    seed: int = 0
    data: tuple[str, ...] = ("clustered",)
    hnsw_ef: tuple[int | None, ...] = (None,)
    oversampling: tuple[float | None, ...] = (None,)


def bench_options(
    points: int,
    dim: int,
    *,
    data: str | None = None,
    vectors: str | None = None,
    hnsw_ef: str | None = None,
    oversampling: str | None = None,
) -> IndexBenchOptions:
    """The options of ``bench --index`` from its flags (comma-separated lists; None: the default).

    Raises:
        InputError: a value out of range or not known, naming the flag and what it accepts.
    """
    if points < 100 or dim < 2:
        raise InputError(f"--points {points} / --dim {dim} is too small", hint="use --points >= 100 and --dim >= 2")
    defaults = IndexBenchOptions()
    kinds = _choices("--data", data, tuple(DATA_KINDS)) if data else defaults.data
    settings = _choices("--vectors", vectors, VECTOR_CHOICES) if vectors else defaults.settings
    efs: tuple[int | None, ...] = tuple(_numbers("--ef", hnsw_ef, int, 1)) if hnsw_ef else defaults.hnsw_ef
    overs: tuple[float | None, ...] = (
        tuple(_numbers("--oversampling", oversampling, float, 1)) if oversampling else defaults.oversampling
    )
    return IndexBenchOptions(points=points, dim=dim, settings=settings, data=kinds, hnsw_ef=efs, oversampling=overs)


def _choices(flag: str, text: str, known: tuple[str, ...]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(part.strip() for part in text.split(",")))
    unknown = [part for part in chosen if part not in known]
    if unknown:
        raise InputError(
            f"{flag} {unknown[0]!r} is not known", hint=f"use a comma-separated list of {', '.join(known)}"
        )
    return chosen


def _numbers(flag: str, text: str, kind: Callable[[str], Any], least: float) -> list[Any]:
    try:
        values = [kind(part) for part in text.split(",")]
    except ValueError:
        raise InputError(
            f"{flag} {text!r} is not a comma-separated list of numbers", hint=f"e.g. {flag} 64,128"
        ) from None
    if any(not value >= least for value in values):
        raise InputError(f"{flag} values must be at least {least:g}, got {text!r}")
    return list(dict.fromkeys(values))


def clustered_unit_vectors(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """``n`` unit vectors around ``centres`` (see the module docstring)."""
    which = rng.integers(0, len(centres), n)
    noise = rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
    out = centres[which] + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out.astype(np.float32)


def synthetic(options: IndexBenchOptions, kind: str = "clustered") -> tuple[np.ndarray, np.ndarray]:
    """The index vectors and the query vectors of the data set ``kind`` (:data:`DATA_KINDS`)."""
    rng = np.random.default_rng(options.seed)
    if kind == "uniform":
        both = rng.standard_normal((options.points + QUERIES, options.dim), dtype=np.float32)
        both /= np.linalg.norm(both, axis=1, keepdims=True)
        return both[: options.points], both[options.points :]
    if kind != "clustered":
        raise ValueError(f"unknown synthetic data {kind!r} (known: {', '.join(DATA_KINDS)})")
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


def _searches(engine: str, setting: str, options: IndexBenchOptions) -> list[tuple[int | None, float | None]]:
    """The (hnsw_ef, oversampling) pairs one index is searched with: local mode has neither, and only the quantized
    settings oversample."""
    if engine != "edge":
        return [(None, None)]
    quantized = vector_setting(setting).rescore
    return [(ef, ov) for ov in (options.oversampling if quantized else (None,)) for ef in options.hnsw_ef]


def run_one(
    engine: str,
    setting: str,
    data: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    folder: Path,
    *,
    exclude_self: Sequence[int] | None = None,
    searches: Sequence[tuple[int | None, float | None]] = ((None, None),),
    data_kind: str = "clustered",
    log: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """One index of ``data`` under ``setting`` on ``engine`` (``edge`` or ``client``), built once and measured at
    each of ``searches`` (hnsw_ef, oversampling; None: the default): a row each. ``log`` is told as each phase
    (upsert, HNSW build, open) ends, with its time: a million points take most of an hour."""
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
    log(f"  upserted {n:,} points in {upsert_s:.1f} s")
    t0 = time.perf_counter()
    if engine == "edge":
        index.optimize()
    optimize_s = time.perf_counter() - t0
    index.close()
    log(f"  HNSW build {optimize_s:.1f} s; index closed, opening it again")
    t0 = time.perf_counter()
    index = VectorIndex(path=folder, engine=engine, vectors={_SPACE: setting})  # type: ignore[arg-type]
    index.count()
    open_s = time.perf_counter() - t0
    log(f"  opened in {open_s:.2f} s; searching")
    position = {pid: i for i, pid in enumerate(ids)}
    flt = [FieldFilter("codec_profile", "eq", "t3")]
    extra = 1 if exclude_self is not None else 0
    measured = []
    for ef, ov in searches:
        plain: list[float] = []
        filtered: list[float] = []
        hits_found = 0
        for q, query in enumerate(queries):
            vector = query.tolist()
            t0 = time.perf_counter()
            hits = index.search(_SPACE, vector, top_k=TOP_K + extra, hnsw_ef=ef, oversampling=ov)
            plain.append(time.perf_counter() - t0)
            found = [position[h.id] for h in hits]
            if exclude_self is not None:
                found = [i for i in found if i != exclude_self[q]][:TOP_K]
            hits_found += len(set(found) & set(truth[q].tolist()))
            t0 = time.perf_counter()
            index.search(_SPACE, vector, top_k=TOP_K, filters=flt, hnsw_ef=ef, oversampling=ov)
            filtered.append(time.perf_counter() - t0)
        measured.append((ef, ov, hits_found, plain, filtered))
    rss = _rss() - rss0
    chosen = index.setting(_SPACE)
    index.close()
    rows = []
    for ef, ov, hits_found, plain, filtered in measured:
        p50, p99 = _percentiles(plain)
        f50, f99 = _percentiles(filtered)
        used = index.setting(_SPACE, oversampling=ov) if ov is not None else chosen
        rows.append(
            {
                "engine": "edge" if engine == "edge" else "local-mode",
                "data": data_kind,
                "vectors": setting,
                "hnsw_ef": search_ef(used, TOP_K + extra, ef) if engine == "edge" else None,
                "oversampling": used.oversampling if used.rescore and engine == "edge" else None,
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
        )
    return rows


def _rows(
    data: np.ndarray,
    queries: np.ndarray,
    options: IndexBenchOptions,
    log: Callable[[str], None],
    exclude_self: Sequence[int] | None = None,
    *,
    data_kind: str = "clustered",
    local_mode: bool = True,
) -> tuple[list[dict[str, Any]], str | None]:
    truth_k = TOP_K + (1 if exclude_self is not None else 0)
    truth = exact_top(data, queries, truth_k)
    if exclude_self is not None:
        truth = np.array([[i for i in row if i != exclude_self[q]][:TOP_K] for q, row in enumerate(truth)])
    rows = []
    runs = [("edge", s) for s in options.settings]
    skipped = None
    if not local_mode:
        skipped = "local mode run on the first data set only"
    elif options.local_mode and len(data) <= LOCAL_MODE_MAX_POINTS:
        runs.append(("client", "float32"))
    elif options.local_mode:
        skipped = f"local mode left out above {LOCAL_MODE_MAX_POINTS:,} points (it would take many minutes)"
    else:
        skipped = "local mode not asked for"
    for engine, setting in runs:
        folder = Path(tempfile.mkdtemp(prefix="licsearch-index-bench-"))
        try:
            log(f"bench --index: {engine} {setting} on {len(data):,} {data_kind} points")
            rows += run_one(
                engine,
                setting,
                data,
                queries,
                truth,
                folder / "index",
                exclude_self=exclude_self,
                searches=_searches(engine, setting, options),
                data_kind=data_kind,
                log=log,
            )
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
    """The whole bench as one JSON document (``schema``, ``options``, ``data``, ``results`` and, with a store,
    ``store``)."""
    rows: list[dict[str, Any]] = []
    skipped: str | None = None
    for number, kind in enumerate(options.data):
        data, queries = synthetic(options, kind)
        found, why = _rows(data, queries, options, log, data_kind=kind, local_mode=number == 0)
        rows += found
        skipped = why if number == 0 else skipped
        del data
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "options": {"points": options.points, "dim": options.dim, "queries": QUERIES, "top_k": TOP_K},
        "data": {kind: DATA_KINDS[kind] for kind in options.data},
        "local_mode": skipped or f"run on float32 (up to {LOCAL_MODE_MAX_POINTS:,} points)",
        "results": rows,
    }
    if store is not None:
        real = store_vectors(store)
        rng = np.random.default_rng(options.seed)
        chosen = rng.choice(len(real), size=min(QUERIES, len(real)), replace=False)
        real_rows, _ = _rows(real, real[chosen], options, log, exclude_self=chosen.tolist(), data_kind="store")
        doc["store"] = {"path": str(store), "points": len(real), "dim": int(real.shape[1]), "results": real_rows}
    return doc


def format_index_report(doc: dict[str, Any]) -> str:
    """The human table of :func:`run_index_bench`'s document."""
    head = (
        f"{'engine':<10} {'data':<9} {'vectors':<8} {'ef':>4} {'over':>4} {'recall@10':>9} {'upsert/s':>9} "
        f"{'build s':>7} {'open s':>7} {'p50 ms':>7} {'p99 ms':>7} {'filt p50':>8} {'disk B/v':>9} {'RAM B/v':>8}"
    )
    kinds = "; ".join(f"{kind}: {text}" for kind, text in doc["data"].items())
    lines = [f"index bench: {doc['options']['points']:,} points, dim {doc['options']['dim']} ({kinds})"]
    sections = [("synthetic", doc["results"])]
    if "store" in doc:
        sections.append((f"store {doc['store']['path']} ({doc['store']['points']:,} points)", doc["store"]["results"]))
    for title, rows in sections:
        lines += [title, head]
        for r in rows:
            ef = "-" if r["hnsw_ef"] is None else str(r["hnsw_ef"])
            over = "-" if r["oversampling"] is None else f"{r['oversampling']:g}"
            lines.append(
                f"{r['engine']:<10} {r['data']:<9} {r['vectors']:<8} {ef:>4} {over:>4} {r['recall_at_10']:>9.3f} "
                f"{r['upsert_per_s']:>9,.0f} {r['optimize_s']:>7.1f} {r['open_s']:>7.2f} {r['query_p50_ms']:>7.1f} "
                f"{r['query_p99_ms']:>7.1f} {r['filtered_p50_ms']:>8.1f} {r['disk_bytes_per_vector']:>9,.0f} "
                f"{r['ram_bytes_per_vector']:>8,.0f}"
            )
    lines.append(f"local mode: {doc['local_mode']}")
    return "\n".join(lines)
