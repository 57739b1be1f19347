"""``licsearch bench --index``: the JSON schema, recall against exact search, and the real vectors of a store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from licsearch.errors import InputError
from licsearch.release.index_bench import (
    RESULT_KEYS,
    SCHEMA,
    IndexBenchOptions,
    bench_options,
    exact_top,
    ram_bytes,
    run_index_bench,
    synthetic,
)
from licsearch.storage.vectors import HNSW_EF_MIN, VECTOR_CHOICES, search_ef, vector_setting
from tests.conftest import make_image, run_cli, write_png


def test_synthetic_vectors_are_clustered_unit_vectors() -> None:
    data, queries = synthetic(IndexBenchOptions(points=2000, dim=64))
    assert np.allclose(np.linalg.norm(data, axis=1), 1, atol=1e-5) and queries.shape == (100, 64)
    nearest = (queries @ data.T).max(axis=1)
    assert nearest.mean() > 0.5  # clustered: each query has close neighbours; uniform 64-d would give ~0.4


def test_uniform_vectors_are_not_clustered() -> None:
    data, queries = synthetic(IndexBenchOptions(points=2000, dim=64), "uniform")
    assert np.allclose(np.linalg.norm(data, axis=1), 1, atol=1e-5) and queries.shape == (100, 64)
    assert (queries @ data.T).max(axis=1).mean() < 0.6
    with pytest.raises(ValueError, match="uniform"):
        synthetic(IndexBenchOptions(points=200, dim=8), "gaussian")


def test_each_index_is_searched_at_every_ef_and_oversampling() -> None:
    options = bench_options(300, 16, vectors="float32,binary", hnsw_ef="16,64", oversampling="1,8")
    doc = run_index_bench(options)
    rows = doc["results"]
    assert all(tuple(r) == RESULT_KEYS for r in rows)
    grid = [(r["engine"], r["vectors"], r["hnsw_ef"], r["oversampling"]) for r in rows]
    assert grid == [
        ("edge", "float32", 16, None),
        ("edge", "float32", 64, None),
        ("edge", "binary", 16, 1.0),
        ("edge", "binary", 64, 1.0),
        ("edge", "binary", 16, 8.0),
        ("edge", "binary", 64, 8.0),
        ("local-mode", "float32", None, None),
    ]
    binary = {r["oversampling"]: r["recall_at_10"] for r in rows if r["vectors"] == "binary"}
    # 300 points are searched exactly: more candidates rescored can only find more of the true top 10
    assert binary[8.0] >= binary[1.0] and binary[8.0] > 0.5
    assert all(r["recall_at_10"] >= 0.99 for r in rows if r["vectors"] == "float32")


def test_default_ef_is_derived_from_the_candidates() -> None:
    assert search_ef(vector_setting("float32"), 10) == HNSW_EF_MIN
    binary = vector_setting("binary")
    assert search_ef(binary, 1000) == 1000 * binary.oversampling and search_ef(binary, 10, 40) == 40


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"data": "gaussian"}, "--data"),
        ({"vectors": "int4"}, "--vectors"),
        ({"hnsw_ef": "64,abc"}, "--ef"),
        ({"hnsw_ef": "0"}, "--ef"),
        ({"oversampling": "0.5"}, "--oversampling"),
    ],
)
def test_bad_sweep_flags_are_refused(flags: dict[str, str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        bench_options(1000, 16, **flags)


def test_exact_top_is_brute_force() -> None:
    rng = np.random.default_rng(1)
    data = rng.standard_normal((300, 16)).astype(np.float32)
    top = exact_top(data, data[:5], 3)
    assert top[:, 0].tolist() == [0, 1, 2, 3, 4] or np.all((data[:5] @ data.T).argmax(axis=1) == top[:, 0])
    assert ram_bytes("float32", 512) / ram_bytes("binary", 512) == 32


@pytest.mark.slow
def test_cli_json_schema_and_store_vectors(tiny_store_template: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(tiny_store_template, root)
    for i in range(12):
        write_png(tmp_path / "images" / f"{i}.png", make_image(200 + i, 64, 64))
    run_cli("ingest", "--store", str(root), str(tmp_path / "images"), "--no-progress", "--json", check=True)
    proc = run_cli("bench", "--index", "--points", "1000", "--dim", "32", "--store", str(root), "--json", check=True)
    doc = json.loads(proc.stdout)
    assert doc["schema"] == SCHEMA and doc["options"]["points"] == 1000
    rows = doc["results"]
    assert [r["vectors"] for r in rows if r["engine"] == "edge"] == list(VECTOR_CHOICES)
    assert [r["engine"] for r in rows].count("local-mode") == 1
    for row in rows + doc["store"]["results"]:
        assert tuple(row) == RESULT_KEYS
    exact = {r["engine"]: r for r in rows if r["vectors"] == "float32"}
    assert exact["edge"]["recall_at_10"] >= 0.99 and exact["local-mode"]["recall_at_10"] >= 0.99
    assert doc["store"]["points"] == 12 and len(doc["store"]["results"]) == len(rows)


def test_bad_points_refused() -> None:
    proc = run_cli("bench", "--index", "--points", "5", "--json")
    assert proc.returncode == 2 and "--points" in json.loads(proc.stdout)["error"]["message"]
