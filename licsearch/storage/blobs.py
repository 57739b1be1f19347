"""Content-addressed store of ``.lics`` bitstreams on a local directory.

An object is named by the SHA-256 of its bytes, so storing the same bitstream twice is a no-op and a reference
(``sha256:<64 hex>``) says both where an object lives and what it must contain. Layout::

    root/objects/ab/<62 hex>.lics   one read-only file per bitstream
    root/tmp/                       in-flight writes; leftovers of interrupted ones are removed by clean_tmp

Writes follow the design's durability invariant: the bytes go to a unique temp file in ``root/tmp`` that is
flushed and fsynced, then renamed over the final path and the directory is fsynced. A crash at any moment leaves
either no object or a complete one at the final path, never a partial one; at worst a temp file remains.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from licsearch.bitstream import SUFFIX
from licsearch.errors import InputError, StoreError
from licsearch.fsutil import fsync_dir

if TYPE_CHECKING:
    from .totals import TotalsKeeper

REF_PREFIX = "sha256:"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX2 = re.compile(r"[0-9a-f]{2}")
_HEX62 = re.compile(r"[0-9a-f]{62}")
_FSCK_HINT = "run `licsearch fsck --repair` to drop the points that reference it"


def parse_ref(ref: str) -> str:
    """Validate a bitstream reference and return its hex digest.

    Only ``sha256:`` followed by exactly 64 lowercase hex digits is accepted, which also keeps any reference from
    naming a path outside the store (no ``/``, ``..`` or separators can get through).

    Raises:
        InputError: the reference is malformed.
    """
    if not isinstance(ref, str) or not ref.startswith(REF_PREFIX) or not _HEX64.fullmatch(ref[len(REF_PREFIX) :]):
        shown = repr(ref) if len(repr(ref)) <= 100 else repr(ref)[:97] + "..."
        raise InputError(
            f"invalid bitstream reference {shown}",
            hint='a reference is "sha256:" followed by 64 lowercase hex digits, as returned by BlobStore.put',
        )
    return ref[len(REF_PREFIX) :]


class BlobStore:
    """Bitstreams kept as immutable, content-addressed files under ``root``.

    Safe to share between processes: writers never touch a final path except through an atomic rename, and two
    writers of the same bytes produce the same object.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._objects = self.root / "objects"
        self._objects_dir = str(self._objects)  # for the string paths of reads (pathlib costs more than the read)
        self._tmp = self.root / "tmp"
        self.totals: TotalsKeeper | None = None
        """Told of every object added or deleted (set by the store that owns this blob store; see :mod:`.totals`)."""
        try:
            self._objects.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir(exist_ok=True)
        except OSError as exc:
            if self._objects.is_dir():
                return  # a read-only store: reads work, and writes fail with their own error
            raise StoreError(
                f"cannot create the blob store at {self.root}: {exc}",
                hint="choose a writable directory for the store",
            ) from exc

    def path(self, ref: str) -> Path:
        """Return where the object named by ``ref`` lives (whether or not it exists)."""
        return Path(self._path(parse_ref(ref)))

    def _path(self, digest: str) -> str:
        # os.path rather than pathlib: fsck reads every object, and building a Path cost it more than reading the file.
        return os.path.join(self._objects_dir, digest[:2], f"{digest[2:]}{SUFFIX}")

    def put(self, data: bytes) -> str:
        """Store ``data`` durably and return its reference.

        Idempotent: if the object already exists nothing is written. When this returns, the object is on stable
        storage, so a point that references it may be written next.

        Raises:
            StoreError: the write failed (disk full, permissions); nothing is left at the final path.
        """
        digest = hashlib.sha256(data).hexdigest()
        ref = REF_PREFIX + digest
        final = self.path(ref)
        if final.is_file():
            return ref
        tmp_name: str | None = None
        if self.totals is not None:
            self.totals.before_change()
        try:
            try:
                final.parent.mkdir()
                new_subdir = True
            except FileExistsError:
                new_subdir = False
            fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix=f"{digest[:16]}.", suffix=".part")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
                os.fchmod(fh.fileno(), 0o444)
            Path(tmp_name).replace(final)
            tmp_name = None
            if self.totals is not None:
                self.totals.blobs_changed(1, len(data))
            fsync_dir(final.parent)
            if new_subdir:
                fsync_dir(self._objects)
        except OSError as exc:
            raise StoreError(
                f"cannot write bitstream {ref} to {final}: {exc}",
                hint="check free space and permissions of the store directory",
            ) from exc
        finally:
            if tmp_name is not None:
                Path(tmp_name).unlink(missing_ok=True)
        return ref

    def get(self, ref: str) -> bytes:
        """Read an object and check that its bytes still hash to its reference.

        Raises:
            InputError: ``ref`` is malformed.
            StoreError: the object is missing or its content does not match its hash.
        """
        digest = parse_ref(ref)
        final = self._path(digest)
        try:
            with open(final, "rb") as fh:
                data = fh.read()
        except FileNotFoundError as exc:
            raise StoreError(f"missing bitstream {ref} (expected at {final})", hint=_FSCK_HINT) from exc
        except OSError as exc:
            raise StoreError(f"cannot read bitstream {ref} at {final}: {exc}", hint=_FSCK_HINT) from exc
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise StoreError(
                f"corrupt bitstream {ref} at {final}: its content hashes to sha256:{actual}",
                hint=f"restore the file from a backup, or {_FSCK_HINT}",
            )
        return data

    def exists(self, ref: str) -> bool:
        """Whether the object named by ``ref`` is stored (its content is not checked)."""
        return self.path(ref).is_file()

    def size(self, ref: str) -> int:
        """Size in bytes of a stored object.

        Raises:
            StoreError: the object is missing.
        """
        final = self.path(ref)
        try:
            return final.stat().st_size
        except FileNotFoundError as exc:
            raise StoreError(f"missing bitstream {ref} (expected at {final})", hint=_FSCK_HINT) from exc

    def delete(self, ref: str) -> bool:
        """Remove an object; return True if one was removed.

        The directory is not fsynced: an object that reappears after a crash is an orphan, which fsck finds.
        """
        path = self.path(ref)
        if self.totals is not None:
            self.totals.before_change()
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return False
        if self.totals is not None:
            self.totals.blobs_changed(-1, -size)
        return True

    def _objects_walk(self, *, ordered: bool) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """``(ref, entry)`` of every stored object (one ``scandir`` per folder); stray files are skipped."""

        def entries(path: str | Path) -> list[os.DirEntry[str]]:
            with os.scandir(path) as it:
                found = list(it)
            return sorted(found, key=lambda e: e.name) if ordered else found

        for subdir in entries(self._objects):
            if not (subdir.is_dir() and _HEX2.fullmatch(subdir.name)):
                continue
            for entry in entries(subdir.path):
                stem = entry.name.removesuffix(SUFFIX)
                if entry.name.endswith(SUFFIX) and _HEX62.fullmatch(stem) and entry.is_file():
                    yield f"{REF_PREFIX}{subdir.name}{stem}", entry

    def iter_refs(self) -> Iterator[str]:
        """Yield the reference of every stored object, in hex order; stray files are skipped."""
        return (ref for ref, _ in self._objects_walk(ordered=True))

    def total_bytes(self) -> int:
        """Total size of all stored objects (the files :meth:`iter_refs` names, one ``stat`` each)."""
        return self.usage()[1]

    def inventory(self) -> dict[str, os.stat_result]:
        """Every stored object's reference (hex order) and ``stat``, from one walk of the folder."""
        return {ref: entry.stat() for ref, entry in self._objects_walk(ordered=True)}

    def usage(self) -> tuple[int, int]:
        """How many objects are stored and their total size, counted by one walk of the folder."""
        files = size = 0
        for _, entry in self._objects_walk(ordered=False):
            files += 1
            size += entry.stat().st_size
        return files, size

    def clean_tmp(self, older_than_s: float = 0) -> int:
        """Remove temp files left by interrupted writes and return how many were removed.

        Args:
            older_than_s: only remove files not modified for this many seconds. With the default 0, call it only
                when no other process is writing to the store, or an in-flight write would fail.
        """
        now = time.time()
        removed = 0
        for entry in self._tmp.iterdir():
            try:
                if not entry.is_file() or (older_than_s > 0 and now - entry.stat().st_mtime < older_than_s):
                    continue
                entry.unlink()
            except FileNotFoundError:  # finished or cleaned by someone else meanwhile
                continue
            removed += 1
        return removed
