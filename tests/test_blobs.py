"""Contract of the content-addressed bitstream store: round trips, reference checks, corruption and crashes."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from licsearch.errors import InputError, StoreError
from licsearch.storage.blobs import BlobStore, parse_ref

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def test_creates_layout(tmp_path: Path) -> None:
    BlobStore(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b" / "objects").is_dir()
    assert (tmp_path / "a" / "b" / "tmp").is_dir()


def test_root_that_is_a_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(StoreError, match="cannot create the blob store"):
        BlobStore(tmp_path / "file")


def test_put_get_round_trip(store: BlobStore) -> None:
    data = b"\x00LICS" + os.urandom(1000)
    ref = store.put(data)
    assert ref == "sha256:" + hashlib.sha256(data).hexdigest()
    assert store.get(ref) == data
    assert store.exists(ref)
    assert store.size(ref) == len(data)
    digest = ref.removeprefix("sha256:")
    assert store.path(ref) == store.root / "objects" / digest[:2] / f"{digest[2:]}.lics"
    assert store.path(ref).stat().st_mode & 0o222 == 0, "objects are read-only"


def test_empty_bytes_round_trip(store: BlobStore) -> None:
    assert store.get(store.put(b"")) == b""


def test_put_is_idempotent(store: BlobStore) -> None:
    ref = store.put(b"same bytes")
    mtime = store.path(ref).stat().st_mtime_ns
    time.sleep(0.01)
    assert store.put(b"same bytes") == ref
    assert store.path(ref).stat().st_mtime_ns == mtime, "an existing object is not rewritten"
    assert list(store.iter_refs()) == [ref]
    assert list((store.root / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    "ref",
    [
        "md5:" + "a" * 64,
        "a" * 64,
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "g" * 64,
        "sha256:../" + "a" * 61,
        "sha256:" + "a" * 2 + "/../../" + "a" * 55,
        "sha256:../../../../etc/passwd",
        "sha256:" + "a" * 64 + "\n",
        "sha256: " + "a" * 64,
        "",
    ],
)
def test_bad_refs_are_rejected(store: BlobStore, ref: str) -> None:
    with pytest.raises(InputError, match="invalid bitstream reference"):
        parse_ref(ref)
    for method in (store.get, store.exists, store.delete, store.path, store.size):
        with pytest.raises(InputError):
            method(ref)


def test_non_string_ref_is_rejected() -> None:
    with pytest.raises(InputError):
        parse_ref(b"sha256:" + b"a" * 64)  # type: ignore[arg-type]


def test_parse_ref_returns_hex() -> None:
    assert parse_ref("sha256:" + "0f" * 32) == "0f" * 32


def test_corrupt_object_is_detected(store: BlobStore) -> None:
    ref = store.put(b"precious bitstream bytes")
    path = store.path(ref)
    path.chmod(0o644)
    raw = bytearray(path.read_bytes())
    raw[3] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="corrupt bitstream") as info:
        store.get(ref)
    assert "fsck" in str(info.value)


def test_missing_object_mentions_fsck(store: BlobStore) -> None:
    ref = "sha256:" + "ab" * 32
    with pytest.raises(StoreError, match="missing bitstream") as info:
        store.get(ref)
    assert "licsearch fsck --repair" in str(info.value)
    with pytest.raises(StoreError, match="missing bitstream"):
        store.size(ref)
    assert not store.exists(ref)


def test_delete(store: BlobStore) -> None:
    ref = store.put(b"to delete")
    assert store.delete(ref) is True
    assert store.delete(ref) is False
    assert not store.exists(ref)
    assert list(store.iter_refs()) == []


def test_iter_refs_and_total_bytes(store: BlobStore) -> None:
    blobs = [os.urandom(n) for n in (1, 10, 100, 1000)]
    refs = {store.put(b) for b in blobs}
    # stray files are not objects
    (store.root / "objects" / "zz").mkdir()
    (store.root / "objects" / "zz" / ("0" * 62 + ".lics")).write_bytes(b"x")
    sub = next(p for p in (store.root / "objects").iterdir() if p.name != "zz")
    (sub / "notes.txt").write_bytes(b"x")
    (sub / ("0" * 62 + ".lics.bak")).write_bytes(b"x")
    assert set(store.iter_refs()) == refs
    assert list(store.iter_refs()) == sorted(refs)
    assert store.total_bytes() == sum(len(b) for b in blobs)


def test_clean_tmp(store: BlobStore) -> None:
    tmp = store.root / "tmp"
    old = tmp / "deadbeef.abc.part"
    new = tmp / "cafebabe.def.part"
    old.write_bytes(b"partial")
    new.write_bytes(b"partial")
    past = time.time() - 3600
    os.utime(old, (past, past))
    assert list(store.iter_refs()) == [], "temp files are never objects"
    assert store.clean_tmp(older_than_s=600) == 1
    assert not old.exists() and new.exists()
    assert store.clean_tmp() == 1
    assert list(tmp.iterdir()) == []
    assert store.clean_tmp() == 0


_WRITER = """
import os, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from licsearch.storage.blobs import BlobStore
store = BlobStore(Path(sys.argv[2]))
rng_seed = int(sys.argv[3])
i = 0
while True:
    store.put(rng_seed.to_bytes(4, "big") + i.to_bytes(4, "big") + os.urandom(256 * 1024 + 4096 * (i % 64)))
    if i == 0:
        print("ready", flush=True)
    i += 1
"""


def test_sigkill_during_puts_never_leaves_a_partial_object(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    rng = random.Random(1234)
    for round_ in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(REPO_ROOT), str(root), str(round_)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.01, 0.15))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
        assert child.returncode == -signal.SIGKILL

    store = BlobStore(root)
    refs = list(store.iter_refs())
    assert len(refs) >= 6
    for ref in refs:
        store.get(ref)  # verifies the hash
    # nothing else sits under objects/: every file at a final path is a complete object
    files = [p for p in (root / "objects").rglob("*") if p.is_file()]
    assert sorted(str(store.path(ref)) for ref in refs) == sorted(str(p) for p in files)
    store.clean_tmp()
    assert list((root / "tmp").iterdir()) == []
