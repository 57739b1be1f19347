"""Crash safety of ingest with a real SIGKILL at chosen crash points.

A CLI ingest of six images in batches of two kills itself (``LICSEARCH_CRASH_AT``); fsck then sees only
orphan bitstreams, never a point without its bitstream; a rerun (one image per batch, so an orphan is
adopted only if encoding does not depend on batching) completes the store to exactly six decodable images.
Each case costs two model-loading subprocesses (~20 s), so the cases are the three crash points that leave
different states behind (after_blob:1 leaves the same state as before_upsert:1, with one orphan fewer), one of
them repaired by fsck before the rerun.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest

from licsearch.imageio import load_image
from licsearch.ops.maintenance import stats
from licsearch.ops.search import decode_stored
from licsearch.storage.store import Store, point_id

from .conftest import run_cli

pytestmark = pytest.mark.slow

N_IMAGES = 6


def _fsck(store: Path, *extra: str) -> dict:
    proc = run_cli("fsck", "--store", str(store), "--json", *extra)
    doc = json.loads(proc.stdout)
    assert proc.returncode == (0 if doc["ok"] else 1), proc.stderr
    assert "Traceback" not in proc.stderr
    return doc


@pytest.mark.parametrize(
    ("crash_at", "points_left", "orphans_left", "repair_first"),
    [
        # killed in the second batch, after its first bitstream: the first batch is complete, one orphan
        ("after_blob:3", 2, 1, False),
        # killed with the first batch's two bitstreams written, before their points; fsck --repair removes
        # the orphans before the rerun (after_blob:3 leaves its orphan for the rerun to adopt)
        ("before_upsert:1", 0, 2, True),
        # killed right after the first batch's points were written: nothing is left dangling
        ("after_upsert:1", 2, 0, False),
    ],
    ids=["after_blob:3", "before_upsert:1-repaired-first", "after_upsert:1"],
)
def test_ingest_killed_and_rerun_completes_without_duplicates(
    tiny_store: Path,
    images_dir: Path,
    crash_at: str,
    points_left: int,
    orphans_left: int,
    repair_first: bool,
) -> None:
    args = ("ingest", "--store", str(tiny_store), str(images_dir), "--no-progress", "--json")
    killed = run_cli(*args, "--batch-size", "2", env={"LICSEARCH_CRASH_AT": crash_at})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert killed.stdout == ""

    after_crash = _fsck(tiny_store)
    assert after_crash["missing"] == after_crash["corrupt"] == []  # a point never precedes its bitstream
    assert after_crash["points"] == points_left
    assert len(after_crash["orphans"]) == orphans_left
    if repair_first:
        repaired = _fsck(tiny_store, "--repair")
        assert repaired["repaired"] and repaired["ok"]
        assert sorted(repaired["orphans"]) == sorted(after_crash["orphans"])
        clean = _fsck(tiny_store)
        assert clean["ok"] and clean["orphans"] == []
        assert (clean["points"], clean["bitstreams"]) == (points_left, points_left)

    rerun = run_cli(*args, "--batch-size", "1")
    assert rerun.returncode == 0, rerun.stderr
    doc = json.loads(rerun.stdout)
    assert (doc["ingested"], doc["skipped"], doc["failed"]) == (N_IMAGES - points_left, points_left, 0)

    final = _fsck(tiny_store)
    assert final["ok"]
    assert (final["points"], final["bitstreams"]) == (N_IMAGES, N_IMAGES)
    assert final["missing"] == final["corrupt"] == final["orphans"] == []

    sources = {point_id(img.pixels_sha256()): img for img in map(load_image, sorted(images_dir.rglob("*.png")))}
    with Store.open(tiny_store) as store:
        assert stats(store)["images"] == N_IMAGES
        assert sorted(pid for pid, _ in store.index.iter_points()) == sorted(sources) == sorted(doc["ids"])
        for pid, src in sources.items():
            pixels = decode_stored(store, pid)
            assert pixels.shape == src.pixels.shape
            assert pixels.dtype == np.uint8
