"""Backup and restore of a store: one verified tar archive of its config, bitstreams, previews and index.

The archive is an uncompressed POSIX tar: bitstreams are entropy-coded and previews are WebP, so compressing them
again saves almost nothing and costs a core; plain tar also keeps the archive readable by any ``tar``. Members:

- the store's files, relative to the store folder: ``store.json``, ``blobs/objects/**``, ``previews/**`` and the
  embedded index folder (``edge/`` or a local-mode ``qdrant/``), lock files and temp files left out;
  ``credentials.json`` only with ``include_credentials`` (an archive is copied around; the API key is a secret the
  user keeps elsewhere);
- ``licsearch-points.jsonl``: every point (id, payload, vectors of every space) exported through the index
  interface, the whole index of a server-backed store (``qdrant.url``) and a cross-check of an embedded one;
- ``licsearch-backup.json`` (last): format, engine, point count and the sha256 and size of every other member.

Consistency: the store is opened for writing for the whole backup, so its one-writer lock keeps ingest out, and
the engine is flushed before its files are read. Atomicity: the archive is written to ``FILE.partial``, fsynced and
renamed, so a killed backup leaves no file that looks complete. Restore verifies every member against the manifest
while it extracts into ``DIR.partial`` and renames that folder only when all of them matched.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..config import CONFIG_FILE
from ..errors import InputError, StoreError
from ..faults import crash_point
from ..fsutil import fsync_dir
from ..storage.store import CREDENTIALS_FILE, Store

MANIFEST = "licsearch-backup.json"
POINTS = "licsearch-points.jsonl"
FORMAT = 1
KIND = "licsearch-backup"
_SKIPPED = {"licsearch.lock", ".lock"}
_TOP_LEVEL = ("blobs/objects", "previews")
_CHUNK = 1 << 20
_HOLE = 1 << 16
_ZEROS = bytes(_HOLE)


@dataclass
class BackupReport:
    """What a backup wrote."""

    archive: str
    engine: str
    points: int
    files: int
    bytes: int
    seconds: float
    credentials: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RestoreReport:
    """What a restore verified and created."""

    store: str
    engine: str
    points: int
    files: int
    seconds: float
    fsck: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _store_files(store: Store, *, include_credentials: bool) -> Iterator[Path]:
    root = store.root
    yield root / CONFIG_FILE
    if include_credentials and (root / CREDENTIALS_FILE).is_file():
        yield root / CREDENTIALS_FILE
    folders = [*_TOP_LEVEL]
    if store.config.qdrant.url is None:
        folders.append(store.config.qdrant.path)
    for folder in folders:
        base = root / folder
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                if name not in _SKIPPED and not name.endswith(".tmp"):
                    yield Path(dirpath) / name


def _points_jsonl(store: Store) -> bytes:
    lines = []
    for page in store.index.scroll(batch=512):
        ids = [pid for pid, _ in page]
        for pid, payload, vectors in store.index.retrieve(ids, with_vectors=True):
            lines.append(json.dumps({"id": pid, "payload": payload, "vectors": vectors}, sort_keys=True))
    return ("\n".join(lines) + ("\n" if lines else "")).encode()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def backup(root: Path, out: Path, *, include_credentials: bool = False) -> BackupReport:
    """Writes the archive of the store at ``root`` to ``out`` (atomically: ``out.partial``, fsync, rename).

    Raises:
        InputError: ``out`` exists already, or lies inside the store.
        StoreError: the store cannot be opened (in use by another process, damaged) or read.
    """
    start = time.perf_counter()
    out = out.absolute()
    if out.exists():
        raise InputError(f"{out} exists already", hint="choose another --out FILE, or remove the old archive first")
    if out.parent.resolve().is_relative_to(root.resolve()):
        raise InputError(f"{out} is inside the store at {root}", hint="write the archive outside the store folder")
    if not out.parent.is_dir():
        raise InputError(f"the folder of {out} does not exist", hint="create it, or choose another --out FILE")
    partial = out.with_name(out.name + ".partial")
    with Store.open(root) as store:
        # Open, a writable store holds the exclusive writer lock and a read-only one a shared lock: no writer runs.
        flush = getattr(store.index.engine, "flush", None)
        if flush is not None and store.config.qdrant.url is None and not store.read_only:
            flush()
        engine = store.index.engine_kind
        points = _points_jsonl(store)
        count = points.count(b"\n")
        members: dict[str, dict[str, Any]] = {}
        try:
            with partial.open("wb") as raw:
                with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for path in _store_files(store, include_credentials=include_credentials):
                        name = path.relative_to(store.root).as_posix()
                        members[name] = {"sha256": _sha256_file(path), "size": path.stat().st_size}
                        tar.add(path, arcname=name, recursive=False)
                        crash_point("backup-member")
                    members[POINTS] = {"sha256": hashlib.sha256(points).hexdigest(), "size": len(points)}
                    _add_bytes(tar, POINTS, points)
                    manifest = {
                        "kind": KIND,
                        "format": FORMAT,
                        "engine": engine,
                        "collection": store.config.qdrant.collection,
                        "points": count,
                        "credentials": include_credentials and (store.root / CREDENTIALS_FILE).is_file(),
                        "members": members,
                    }
                    _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(partial, out)
            fsync_dir(out.parent)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    size = out.stat().st_size
    return BackupReport(
        str(out), engine, count, len(members), size, time.perf_counter() - start, bool(manifest["credentials"])
    )


def _refuse(archive: Path, problem: str) -> InputError:
    return InputError(
        f"{archive} is not a usable licsearch backup: {problem}",
        hint="nothing was restored; use another copy of the archive (`licsearch backup --out FILE` makes one)",
    )


def read_manifest(archive: Path) -> dict[str, Any]:
    """The manifest of ``archive``.

    Raises:
        InputError: the file is missing, not a tar, truncated, or not a licsearch backup.
    """
    if not archive.is_file():
        raise InputError(f"no archive at {archive}", hint="give the path of a file `licsearch backup` wrote")
    try:
        with tarfile.open(archive, mode="r:") as tar:
            member = tar.getmember(MANIFEST)
            handle = tar.extractfile(member)
            doc = json.loads(handle.read()) if handle is not None else None
    except KeyError:
        raise _refuse(archive, f"it has no {MANIFEST} (truncated, or not made by `licsearch backup`)") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise _refuse(archive, f"it is not a readable tar archive ({exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _refuse(archive, f"its {MANIFEST} is not JSON") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND or not isinstance(doc.get("members"), dict):
        raise _refuse(archive, f"its {MANIFEST} is not a licsearch backup manifest")
    if doc.get("format") != FORMAT:
        raise _refuse(archive, f"format {doc.get('format')!r}; this licsearch reads format {FORMAT}")
    return doc


def _write_sparse(sink: BinaryIO, chunk: bytes) -> None:
    """Writes ``chunk``, leaving each 64 KiB of zeros as a hole (the caller truncates the file to its size).

    Qdrant Edge preallocates its WAL, vector chunks, payload pages and indexes as sparse files (a one-image store is
    about 1 MB on disk); written out whole, a restored store would take about 240 MB.
    """
    view = memoryview(chunk)
    for start in range(0, len(view), _HOLE):
        block = view[start : start + _HOLE]
        if block == _ZEROS[: len(block)]:
            sink.seek(len(block), os.SEEK_CUR)
        else:
            sink.write(block)


def _safe_name(name: str) -> bool:
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts


def restore(archive: Path, root: Path) -> RestoreReport:
    """Restores ``archive`` into the new store folder ``root``, verified member by member, then checks it with fsck.

    Raises:
        InputError: ``root`` holds files already, or the archive is damaged, truncated or foreign (nothing created).
        StoreError: a server-backed store's collection is not empty.
    """
    from .maintenance import fsck

    start = time.perf_counter()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise InputError(
            f"{root} is not empty", hint="restore into a new or empty folder (--store DIR); nothing was changed"
        )
    manifest = read_manifest(archive)
    expected: dict[str, dict[str, Any]] = manifest["members"]
    partial = root.with_name(root.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # a restore killed earlier: it never became visible
    seen: set[str] = set()
    try:
        partial.mkdir(parents=True)
        with tarfile.open(archive, mode="r:") as tar:
            for member in tar:
                if member.name == MANIFEST:
                    continue
                want = expected.get(member.name)
                if want is None or not member.isfile() or not _safe_name(member.name):
                    raise _refuse(archive, f"member {member.name!r} is not in its manifest")
                target = partial / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise _refuse(archive, f"member {member.name!r} cannot be read")
                digest = hashlib.sha256()
                with target.open("wb") as sink:
                    while chunk := source.read(_CHUNK):
                        digest.update(chunk)
                        _write_sparse(sink, chunk)
                    sink.truncate()
                    sink.flush()
                    os.fsync(sink.fileno())
                if digest.hexdigest() != want["sha256"] or target.stat().st_size != want["size"]:
                    raise _refuse(archive, f"member {member.name!r} fails its sha256 checksum (damaged)")
                seen.add(member.name)
        missing = sorted(set(expected) - seen)
        if missing:
            raise _refuse(archive, f"{len(missing)} members are missing (truncated?), e.g. {missing[0]!r}")
        if root.exists():
            root.rmdir()  # empty, checked above
        os.replace(partial, root)
        fsync_dir(root.parent)
    except (tarfile.TarError, EOFError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise _refuse(archive, f"it is truncated or damaged ({exc})") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    with Store.open(root) as store:
        if manifest["engine"] == "server":
            _upload_points(store, root / POINTS)
        count = store.index.count()
        report = fsck(store, verify=True)
    if count != manifest["points"]:
        raise StoreError(f"the restored store has {count} points, the archive {manifest['points']}")
    (root / POINTS).unlink()
    return RestoreReport(
        str(root), str(manifest["engine"]), count, len(seen), time.perf_counter() - start, report.to_dict()
    )


def _upload_points(store: Store, points: Path) -> None:
    """Writes the exported points into the server's collection, which must be empty (nothing is overwritten)."""
    from ..storage.points import Point

    if store.index.count() != 0:
        raise StoreError(
            f"the server collection {store.config.qdrant.collection!r} is not empty",
            hint="restore into a new collection: edit qdrant.collection in the archive's store.json, or drop the old",
        )
    batch: list[Point] = []
    with points.open() as handle:
        for line in handle:
            row = json.loads(line)
            batch.append(Point(row["id"], row["vectors"], row["payload"]))
            if len(batch) == 256:
                store.index.upsert(batch)
                batch = []
    if batch:
        store.index.upsert(batch)
