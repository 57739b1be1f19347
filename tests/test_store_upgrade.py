"""``licsearch store upgrade``: a local-mode store (made before Edge) moves to Qdrant Edge point-exactly, resumably."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from licsearch.storage.index import Point, VectorIndex
from licsearch.storage.upgrade import same_payload
from tests.conftest import run_cli
from tests.legacy_store import make_legacy

N_EXTRA = 2500  # three batches of the upgrade


@pytest.fixture
def legacy(tiny_store: Path, tmp_path: Path) -> Path:
    """An old store holding N_EXTRA synthetic points (random unit vectors, payloads with every filter type)."""
    root = make_legacy(tiny_store, tmp_path / "legacy")
    rng = np.random.default_rng(0)
    with VectorIndex(path=root / "qdrant", engine="client") as local:
        (space, dim), *_ = local.spaces().items()
        vectors = rng.normal(size=(N_EXTRA, dim))
        local.upsert(
            [
                Point(
                    str(uuid.UUID(int=i + 1)),
                    {space: vectors[i].tolist()},
                    {"width": i, "bpp": i / 7, "codec_profile": f"q{i % 3}", "flag": i % 2 == 0},
                )
                for i in range(N_EXTRA)
            ]
        )
    return root


def _points(index: VectorIndex) -> dict[str, tuple[dict, dict]]:
    ids = [pid for pid, _ in index.iter_points()]
    return {pid: (payload, vectors) for pid, payload, vectors in index.retrieve(ids, with_vectors=True)}


def _assert_same(before: dict[str, tuple[dict, dict]], after: dict[str, tuple[dict, dict]]) -> None:
    assert set(before) == set(after) and len(after) == N_EXTRA
    for pid, (payload, vectors) in before.items():
        assert same_payload(after[pid][0], payload)  # floats to 1e-12: Edge 0.9 may round the last digit
        for space, vec in vectors.items():
            a = np.asarray(vec) / np.linalg.norm(vec)
            assert np.allclose(after[pid][1][space], a, atol=1e-6)


def _assert_fsck_sees_the_synthetic_points(code: int, doc: dict) -> None:
    """The upgrade's fsck ran on the new index: it counts every point, and finds no bitstream for the synthetic
    ones (made without images), so it exits 1 naming exactly them."""
    assert code == 1 and doc["fsck"]["points"] == N_EXTRA
    assert len(doc["fsck"]["missing"]) == N_EXTRA and not doc["fsck"]["corrupt"]


@pytest.mark.slow
def test_old_store_opens_read_only_with_a_notice_then_upgrades(legacy: Path) -> None:
    with VectorIndex(path=legacy / "qdrant", engine="client") as local:
        before = _points(local)
    proc = run_cli("stats", "--store", str(legacy), "--json")
    assert proc.returncode == 0 and "store upgrade" in proc.stderr
    assert json.loads(proc.stdout)["images"] == N_EXTRA
    refused = run_cli("fsck", "--repair", "--store", str(legacy))
    assert refused.returncode == 1 and "store upgrade" in refused.stderr and "Traceback" not in refused.stderr
    proc = run_cli("store", "upgrade", "--store", str(legacy), "--json")
    doc = json.loads(proc.stdout)
    assert doc["state"] == "upgraded" and doc["points"] == N_EXTRA
    _assert_fsck_sees_the_synthetic_points(proc.returncode, doc)
    config = json.loads((legacy / "store.json").read_text())
    assert config["qdrant"]["engine"] == "edge" and not (legacy / "qdrant").exists()
    with VectorIndex(path=legacy / "edge", engine="edge") as edge:
        _assert_same(before, _points(edge))
    again = run_cli("store", "upgrade", "--store", str(legacy), "--json")
    assert json.loads(again.stdout)["state"] == "already"
    stats = json.loads(run_cli("stats", "--store", str(legacy), "--json").stdout)
    assert stats["index"]["engine"] == "edge" and stats["index"]["points"] == N_EXTRA


_KILLER = """
import os, signal, sys
from pathlib import Path
from licsearch.storage.upgrade import upgrade

def stop(batches):
    if batches == 2:
        os.kill(os.getpid(), signal.SIGKILL)

upgrade(Path(sys.argv[1]), after_batch=stop)
"""


@pytest.mark.slow
def test_sigkill_during_upgrade_then_resume(legacy: Path) -> None:
    with VectorIndex(path=legacy / "qdrant", engine="client") as local:
        before = _points(local)
    killed = subprocess.run([sys.executable, "-c", _KILLER, str(legacy)], capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert (legacy / "upgrade.json").exists() and (legacy / "edge").exists()
    config = json.loads((legacy / "store.json").read_text())
    assert "engine" not in config["qdrant"]  # not switched: the store still opens on its old index
    with VectorIndex(path=legacy / "edge", engine="edge") as partial:
        assert 0 < partial.count() < N_EXTRA  # two batches acknowledged and kept by the WAL
    proc = run_cli("store", "upgrade", "--store", str(legacy), "--json")
    doc = json.loads(proc.stdout)
    assert doc["resumed"] is True and doc["copied"] == N_EXTRA - 2000
    _assert_fsck_sees_the_synthetic_points(proc.returncode, doc)
    assert not (legacy / "upgrade.json").exists()
    with VectorIndex(path=legacy / "edge", engine="edge") as edge:
        _assert_same(before, _points(edge))


def test_an_unexpected_edge_folder_is_not_overwritten(legacy: Path) -> None:
    (legacy / "edge").mkdir()
    (legacy / "edge" / "mine.txt").write_text("keep")
    proc = run_cli("store", "upgrade", "--store", str(legacy))
    assert proc.returncode == 1 and "no upgrade" in proc.stderr and "Traceback" not in proc.stderr
    assert (legacy / "edge" / "mine.txt").read_text() == "keep"
    assert (legacy / "qdrant").exists()
    shutil.rmtree(legacy / "edge")
    assert os.listdir(legacy / "qdrant")


def test_a_damaged_marker_after_a_finished_upgrade_is_named(tiny_store: Path) -> None:
    (tiny_store / "upgrade.json").write_bytes(b'{"from": "qdr')  # an Edge store with a marker left, cut short
    proc = run_cli("store", "upgrade", "--store", str(tiny_store))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "upgrade.json is damaged: it is not valid JSON" in proc.stderr and "delete" in proc.stderr
    assert (tiny_store / "upgrade.json").exists()  # nothing removed on a guess
