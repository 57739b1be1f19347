"""The store's running totals (storage/totals.py): ``stats`` reads them instead of every payload, every change keeps
them equal to a full count, a killed writer or an older store makes the next reader count once, and fsck checks
them against its scan."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from licsearch.ops.ingest import ingest
from licsearch.ops.maintenance import count_totals, fsck, stats
from licsearch.storage.store import Store
from licsearch.storage.totals import TOTALS_FILE, Totals, read_totals

from .conftest import run_cli


def _counted(root: Path) -> Totals:
    with Store.open(root) as store:
        return count_totals(store)


def test_new_store_starts_with_zero_totals(tiny_store: Path) -> None:
    assert read_totals(tiny_store / TOTALS_FILE) == Totals()
    with Store.open(tiny_store) as store:
        doc = stats(store)
    assert (doc["images"], doc["bytes"], doc["totals"]) == (0, 0, "kept")


def test_ingest_and_deletes_keep_the_totals_equal_to_a_full_count(tiny_store: Path, images_dir: Path) -> None:
    with Store.open(tiny_store) as store:
        ingest(store, [images_dir / "sub"], progress=False)
        assert json.loads((tiny_store / TOTALS_FILE).read_text())["writing"] is True  # marked while the writer works
        live = stats(store)
        assert live["totals"] == "kept" and live["images"] == 2
    kept = read_totals(tiny_store / TOTALS_FILE)
    assert kept is not None and kept == _counted(tiny_store)
    assert kept.points == 2 and kept.blob_files == 2 and kept.bytes == kept.blob_bytes > 0

    with Store.open(tiny_store) as store:
        ingest(store, [images_dir], progress=False)  # two already stored: skipped, not counted twice
        first = next(pid for pid, _ in store.index.iter_points())
        payload = store.index.retrieve([first])[0][1]
        store.index.set_payload([first], {"bytes": int(payload["bytes"]) + 10, "bpp": 1.5})
        store.index.delete([first, first, "00000000-0000-0000-0000-000000000000"])  # repeated and absent ids
        store.blobs.delete(str(payload["blob"]))
        doc = stats(store)
    after = read_totals(tiny_store / TOTALS_FILE)
    assert after is not None and after == _counted(tiny_store)
    assert (after.points, after.blob_files) == (5, 5)
    assert doc["images"] == 5 and doc["bytes"] == after.bytes and doc["blob_bytes_on_disk"] == after.blob_bytes
    assert doc["mean_bpp"] == pytest.approx(after.bpp_sum / 5)
    with Store.open(tiny_store) as store:
        report = fsck(store)
    assert report.ok and not report.totals_wrong and report.totals_kept == report.totals_counted == after


def test_a_store_without_totals_counts_once_and_saves(tiny_store: Path, images_dir: Path) -> None:
    with Store.open(tiny_store) as store:
        ingest(store, [images_dir / "sub"], progress=False)
    (tiny_store / TOTALS_FILE).unlink()  # as an older licsearch left it
    with Store.open(tiny_store) as store:
        assert stats(store)["totals"] == "counted, saved"
    with Store.open(tiny_store) as store:
        doc = stats(store)
    assert doc["totals"] == "kept" and doc["images"] == 2
    assert read_totals(tiny_store / TOTALS_FILE) == _counted(tiny_store)


def test_totals_that_disagree_with_the_exact_count_are_counted_again(tiny_store: Path, images_dir: Path) -> None:
    with Store.open(tiny_store) as store:
        ingest(store, [images_dir / "sub"], progress=False)
    doc = json.loads((tiny_store / TOTALS_FILE).read_text())
    (tiny_store / TOTALS_FILE).write_text(json.dumps({**doc, "points": 7}))
    with Store.open(tiny_store) as store:
        assert stats(store)["totals"] == "counted, saved"
    assert read_totals(tiny_store / TOTALS_FILE) == _counted(tiny_store)


def test_fsck_finds_wrong_totals_and_repair_saves_the_scan(tiny_store: Path, images_dir: Path) -> None:
    with Store.open(tiny_store) as store:
        ingest(store, [images_dir / "sub"], progress=False)
    doc = json.loads((tiny_store / TOTALS_FILE).read_text())
    (tiny_store / TOTALS_FILE).write_text(json.dumps({**doc, "bytes": doc["bytes"] + 1, "blob_bytes": 3}))
    with Store.open(tiny_store) as store:
        found = fsck(store)
    assert found.totals_wrong and not found.ok and not found.totals_saved
    assert found.to_dict()["totals"]["wrong"] is True
    with Store.open(tiny_store) as store:
        fixed = fsck(store, repair=True)
    assert fixed.ok and fixed.totals_saved
    assert read_totals(tiny_store / TOTALS_FILE) == _counted(tiny_store)


def test_fsck_repair_of_a_missing_bitstream_keeps_the_totals(tiny_store: Path, images_dir: Path) -> None:
    with Store.open(tiny_store) as store:
        ingest(store, [images_dir / "sub"], progress=False)
        ref = str(next(iter(store.index.iter_points()))[1]["blob"])
        path = store.blobs.path(ref)
    path.unlink()  # behind the store's back: the kept totals still count it
    with Store.open(tiny_store) as store:
        report = fsck(store, repair=True)
    assert report.missing and report.totals_wrong and report.ok
    with Store.open(tiny_store) as store:
        assert stats(store)["totals"] == "kept"
    kept = read_totals(tiny_store / TOTALS_FILE)
    assert kept is not None and kept == _counted(tiny_store) and kept.points == 1


@pytest.mark.slow
def test_a_writer_killed_mid_ingest_leaves_totals_that_are_counted_again(tiny_store: Path, images_dir: Path) -> None:
    args = ("ingest", "--store", str(tiny_store), str(images_dir), "--no-progress", "--batch-size", "2")
    killed = run_cli(*args, env={"LICSEARCH_CRASH_AT": "after_upsert:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert read_totals(tiny_store / TOTALS_FILE) is None  # still marked: nobody may trust them
    proc = run_cli("stats", "--store", str(tiny_store), "--json", check=True)
    doc = json.loads(proc.stdout)
    counted = _counted(tiny_store)
    assert doc["totals"] == "counted, saved" and doc["images"] == counted.points == 4
    assert doc["bytes"] == counted.bytes and doc["blob_bytes_on_disk"] == counted.blob_bytes
    assert read_totals(tiny_store / TOTALS_FILE) == counted
    check = json.loads(run_cli("fsck", "--store", str(tiny_store), "--json").stdout)
    assert check["ok"] and check["totals"]["kept"] == check["totals"]["counted"]
