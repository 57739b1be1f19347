"""``licsearch backup`` and ``restore``: a round trip bit-exact in bitstreams and point-exact in the index, and faults.

Real stores (tiny random-weight models, generated images ingested through the CLI), real tar archives, a real
SIGKILL of a backup in a child process.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from licsearch.ops.backup import MANIFEST, read_manifest
from licsearch.storage.store import Store
from tests.conftest import run_cli

from .conftest import MakeDir


@pytest.fixture(scope="module")
def stocked(module_tmp: MakeDir, tiny_store_template: Path) -> Path:
    """A tiny store holding the six images of ``images_dir`` (made once per module; tests copy it)."""
    from tests.conftest import make_image, write_png

    base = module_tmp("backup")
    for i in range(6):
        write_png(base / "images" / f"img{i}.png", make_image(100 + i, 64 + 16 * (i % 2), 96))
    root = base / "store"
    shutil.copytree(tiny_store_template, root)
    run_cli("ingest", "--store", str(root), str(base / "images"), "--no-progress", "--json", check=True)
    return root


def _snapshot(root: Path) -> tuple[dict[str, bytes], list[tuple[str, dict[str, object], dict[str, list[float]]]]]:
    blobs = {p.relative_to(root).as_posix(): p.read_bytes() for p in (root / "blobs" / "objects").rglob("*.lics")}
    with Store.open(root) as store:
        ids = [pid for pid, _ in store.index.iter_points()]
        points = sorted(store.index.retrieve(ids, with_vectors=True))
    return blobs, points


def _search(root: Path, image: Path) -> list[tuple[str, float]]:
    proc = run_cli("search", "--store", str(root), "--image", str(image), "--json", check=True)
    return [(hit["id"], round(hit["score"], 6)) for hit in json.loads(proc.stdout)["hits"]]


def test_round_trip_is_bit_and_point_exact(stocked: Path, tmp_path: Path) -> None:
    archive = tmp_path / "store.tar"
    proc = run_cli("backup", "--store", str(stocked), "--out", str(archive), "--json", check=True)
    doc = json.loads(proc.stdout)
    assert doc["points"] == 6 and doc["credentials"] is False
    assert archive.is_file() and not (tmp_path / "store.tar.partial").exists()
    manifest = read_manifest(archive)
    assert "store.json" in manifest["members"] and not any("lock" in name for name in manifest["members"])
    target = tmp_path / "restored"
    proc = run_cli("restore", str(archive), "--store", str(target), "--json", check=True)
    restored = json.loads(proc.stdout)
    assert restored["points"] == 6 and restored["fsck"]["ok"] and not restored["fsck"]["orphans"]
    assert not (tmp_path / "restored.partial").exists()
    files = [p.stat() for p in target.rglob("*") if p.is_file()]
    allocated, size = sum(st.st_blocks * 512 for st in files), sum(st.st_size for st in files)
    assert allocated < size / 10, (allocated, size)  # Edge's preallocated zeros restored as holes
    before, after = _snapshot(stocked), _snapshot(target)
    assert before[0] == after[0] and len(before[0]) == 6  # bitstreams bit-exact
    assert before[1] == after[1]  # ids, payloads, every vector of every space
    image = stocked.parent / "images" / "img2.png"
    assert _search(stocked, image) == _search(target, image)


def test_round_trip_of_a_local_mode_store(stocked: Path, tmp_path: Path) -> None:
    from tests.legacy_store import make_legacy

    old = make_legacy(stocked, tmp_path / "old")
    archive = tmp_path / "old.tar"
    run_cli("backup", "--store", str(old), "--out", str(archive), check=True)
    assert read_manifest(archive)["engine"] == "client"
    proc = run_cli("restore", str(archive), "--store", str(tmp_path / "back"), "--json", check=True)
    assert json.loads(proc.stdout)["fsck"]["ok"]
    assert _snapshot(old) == _snapshot(tmp_path / "back") and (tmp_path / "back" / "qdrant").is_dir()


def test_credentials_left_out_unless_asked(stocked: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(stocked, store)
    (store / "credentials.json").write_text('{"qdrant_api_key": "secret"}')
    run_cli("backup", "--store", str(store), "--out", str(tmp_path / "a.tar"), check=True)
    assert "credentials.json" not in read_manifest(tmp_path / "a.tar")["members"]
    run_cli("backup", "--store", str(store), "--out", str(tmp_path / "b.tar"), "--include-credentials", check=True)
    assert "credentials.json" in read_manifest(tmp_path / "b.tar")["members"]


def test_sigkill_during_backup_leaves_no_complete_looking_file(stocked: Path, tmp_path: Path) -> None:
    archive = tmp_path / "killed.tar"
    env = {**os.environ, "LICSEARCH_CRASH_AT": "backup-member:3"}
    proc = subprocess.run(
        [sys.executable, "-m", "licsearch", "backup", "--store", str(stocked), "--out", str(archive)],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -9
    assert not archive.exists()
    partial = tmp_path / "killed.tar.partial"
    if partial.exists():  # what the killed process left: never taken for a backup
        proc = run_cli("restore", str(partial), "--store", str(tmp_path / "r"))
        assert proc.returncode == 2 and "not a usable licsearch backup" in proc.stderr
        assert not (tmp_path / "r").exists()
    run_cli("backup", "--store", str(stocked), "--out", str(archive), check=True)  # the lock was released
    assert read_manifest(archive)["points"] == 6


@pytest.fixture(scope="module")
def archive_bytes(stocked: Path, module_tmp: MakeDir) -> bytes:
    out = module_tmp("archive") / "good.tar"
    run_cli("backup", "--store", str(stocked), "--out", str(out), check=True)
    return out.read_bytes()


def _flip_in_bitstream(data: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".lics"))
        at = member.offset_data + member.size // 2
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d[: len(d) // 2], "not a usable licsearch backup"),
        (_flip_in_bitstream, "fails its sha256 checksum"),
        (lambda d: b"not a tar at all" * 100, "not a readable tar archive"),
    ],
    ids=["truncated", "flipped-byte-in-bitstream", "foreign"],
)
def test_damaged_archive_refused_nothing_created(archive_bytes: bytes, tmp_path: Path, damage, message: str) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(damage(archive_bytes))
    target = tmp_path / "restored"
    proc = run_cli("restore", str(bad), "--store", str(target), "--json")
    assert proc.returncode == 2, proc.stderr
    assert message in json.loads(proc.stdout)["error"]["message"]
    assert "Traceback" not in proc.stderr
    assert not target.exists() and not (tmp_path / "restored.partial").exists()


def test_restore_onto_non_empty_store_refused(archive_bytes: bytes, stocked: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.tar"
    good.write_bytes(archive_bytes)
    target = tmp_path / "store"
    shutil.copytree(stocked, target)
    before = sorted(p.relative_to(target).as_posix() for p in target.rglob("*"))
    proc = run_cli("restore", str(good), "--store", str(target))
    assert proc.returncode == 2 and "is not empty" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == before
    assert MANIFEST not in before


def test_backup_refuses_existing_out_and_store_in_use(stocked: Path, tmp_path: Path) -> None:
    out = tmp_path / "exists.tar"
    out.write_bytes(b"keep me")
    proc = run_cli("backup", "--store", str(stocked), "--out", str(out))
    assert proc.returncode == 2 and "exists already" in proc.stderr
    assert out.read_bytes() == b"keep me"
    with Store.open(stocked):  # this process holds the writer lock
        proc = run_cli("backup", "--store", str(stocked), "--out", str(tmp_path / "held.tar"))
    assert proc.returncode == 1 and str(os.getpid()) in proc.stderr, proc.stderr
    assert not (tmp_path / "held.tar").exists() and not (tmp_path / "held.tar.partial").exists()
