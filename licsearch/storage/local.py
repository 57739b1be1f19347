"""Opening qdrant-client's embedded local mode: damaged files, the one-process lock and read-only stores.

Local mode keeps a store's vectors in ``DIR/qdrant``: ``meta.json`` (the collections and their vector
parameters), ``collection/<name>/storage.sqlite`` (the points) and ``.lock``, which the engine locks exclusively
(``flock``) for as long as a client has the folder open, so that one process at a time reads and writes it.

Damaged files are found before the engine reads them, so that the error names the file and the repair instead of
surfacing the engine's own exception; anything the engine still fails on while loading is reported the same way.
The engine stores each point as a pickle and unpickles them all on opening, so every row is first read with an
unpickler that admits only the engine's point models (:func:`check_points`): a planted row cannot run code.

A folder the process cannot write (read-only media or mount, or permissions) cannot be opened by the engine,
which wants its lock file open for writing. Such a folder is opened as a read-only view instead: under a shared
``flock`` of the same ``.lock`` file, the folder is copied to a private temporary directory and the engine opens
the copy. The shared lock is held until the view is closed, so a process that *can* write the folder (root on a
``chmod``-protected store) is refused by the engine's exclusive lock while anyone reads, and readers never see a
half-written copy: the one-writer guarantee of writable stores is unchanged, and any number of readers may share a
read-only store. Local mode loads every point into memory when it opens, so the copy costs about what opening
costs anyway; callers refuse writes on a view (see :attr:`LocalIndex.read_only`).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from licsearch.errors import StoreError

from ..jsondoc import JsonDocError, decode_json
from ..readonly import is_writable

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

META_FILE = "meta.json"
LOCK_FILE = ".lock"
POINTS_FILE = "storage.sqlite"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SQLITE_HEADER = 100

INDEX_REPAIR_HINT = (
    "restore the folder from a backup; fsck cannot rebuild it, but the bitstreams under blobs/ are intact: "
    "decode them (`licsearch decode`) and ingest the images into a new store"
)
"""What to do about a damaged vector index."""


@dataclass
class LocalIndex:
    """An open local-mode client, and what must be released with it.

    Attributes:
        client: the engine's client.
        read_only: True for a read-only view (a private copy; writes would not reach the store).
    """

    client: QdrantClient
    read_only: bool = False
    _snapshot: Path | None = None
    _lock_fd: int | None = None

    def close(self) -> None:
        """Closes the client, then drops the view's copy and shared lock."""
        self.client.close()
        if self._snapshot is not None:
            shutil.rmtree(self._snapshot, ignore_errors=True)
            self._snapshot = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases its flock
            self._lock_fd = None


def open_local(path: Path) -> LocalIndex:
    """Opens the local-mode folder ``path``: for reading and writing if this process may write it, else as a view.

    Raises:
        StoreError: another process holds the folder, a file of it is damaged or unreadable, or a read-only folder
            is missing.
    """
    writable = is_writable(path) if path.exists() else is_writable(_existing_parent(path))
    lock = path / LOCK_FILE
    if writable and lock.exists() and not os.access(lock, os.W_OK):
        writable = False
    if path.exists():
        check_files(path)
    elif not writable:
        raise StoreError(f"the vector index at {path} is missing and cannot be created here", hint=INDEX_REPAIR_HINT)
    if writable:
        return LocalIndex(_load(path, path))
    return open_view(path)


def _existing_parent(path: Path) -> Path:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def open_view(path: Path) -> LocalIndex:
    """Opens ``path`` as a read-only view (see the module docstring), whether or not this process could write it.

    Raises:
        StoreError: a writer holds the folder, or it cannot be read or loaded.
    """
    import fcntl

    lock_fd: int | None = None
    try:
        lock_fd = os.open(path / LOCK_FILE, os.O_RDONLY)
        fcntl.flock(lock_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except FileNotFoundError:
        lock_fd = None  # never opened by a writer since the store was copied here: nobody to exclude
    except BlockingIOError:
        if lock_fd is not None:
            os.close(lock_fd)
        raise _held(path) from None
    except OSError as exc:
        if lock_fd is not None:
            os.close(lock_fd)
        raise StoreError(
            f"cannot open the vector index at {path}: {exc}", hint="check the store's permissions"
        ) from exc
    snapshot = Path(tempfile.mkdtemp(prefix="licsearch-readonly-index-"))
    try:
        copy = snapshot / "qdrant"
        try:
            shutil.copytree(path, copy, ignore=shutil.ignore_patterns(LOCK_FILE), copy_function=shutil.copyfile)
            _make_private(copy)
        except (OSError, shutil.Error) as exc:
            raise StoreError(
                f"cannot read the vector index at {path} (read-only store): {exc}",
                hint="check that the store's files are readable by this user",
            ) from exc
        client = _load(copy, path)
    except BaseException:
        shutil.rmtree(snapshot, ignore_errors=True)
        if lock_fd is not None:
            os.close(lock_fd)
        raise
    return LocalIndex(client, read_only=True, _snapshot=snapshot, _lock_fd=lock_fd)


def _make_private(copy: Path) -> None:
    """Gives the copy's folders, read-only like the originals, to this process (the engine writes its lock there)."""
    for folder, _, _ in os.walk(copy):
        os.chmod(folder, 0o700)


def _held(path: Path) -> StoreError:
    return StoreError(
        f"the vector index at {path} is held by another licsearch process (the embedded index allows one at a time)",
        hint="wait for that process to finish, or keep the index on a Qdrant server (--qdrant URL), which allows "
        "concurrent access",
    )


def _load(location: Path, shown: Path) -> QdrantClient:
    """The engine's client on ``location``; errors name ``shown`` (the store's folder, not a view's copy)."""
    from qdrant_client import QdrantClient

    try:
        return QdrantClient(path=str(location))
    except RuntimeError as exc:
        if "already accessed" in str(exc):
            raise _held(shown) from exc
        raise _damaged(shown, exc) from exc
    except PermissionError as exc:
        raise StoreError(
            f"cannot open the vector index at {shown}: {exc.strerror} ({exc.filename})",
            hint="check the store's permissions",
        ) from exc
    except Exception as exc:
        # The engine's loader unpickles and validates the files it reads: whatever it raises means they are bad.
        raise _damaged(shown, exc) from exc


def _damaged(path: Path, exc: BaseException) -> StoreError:
    import pickle
    import sqlite3

    from pydantic import ValidationError

    detail = str(exc).splitlines()[0][:200] if str(exc) else ""
    if isinstance(exc, ValidationError):
        what = f"the vector index file {path / META_FILE} is damaged"
    elif isinstance(exc, sqlite3.Error | pickle.UnpicklingError):
        what = f"a point database of the vector index at {path} (collection/*/{POINTS_FILE}) is damaged"
    else:
        what = f"the vector index at {path} is damaged"
    return StoreError(f"{what}: the engine cannot load it ({type(exc).__name__}: {detail})", hint=INDEX_REPAIR_HINT)


def check_files(path: Path) -> None:
    """Refuses a local-mode folder whose metadata or point database is unreadable, truncated or not what it claims.

    Raises:
        StoreError: naming the damaged file.
    """
    meta_path = path / META_FILE
    if not meta_path.exists():
        return  # a folder the engine has not initialised yet; it writes meta.json on open
    meta = _read_meta(meta_path)
    for name in meta["collections"]:
        points = path / "collection" / str(name) / POINTS_FILE
        try:
            with points.open("rb") as handle:
                head = handle.read(_SQLITE_HEADER)
                size = os.fstat(handle.fileno()).st_size
        except FileNotFoundError:
            raise _bad_file(points, "is missing (meta.json lists its collection)") from None
        except OSError as exc:
            raise _bad_file(points, f"cannot be read ({exc.strerror or exc})") from None
        if not head:
            raise _bad_file(points, "is empty (truncated)")
        if not head.startswith(_SQLITE_MAGIC):
            raise _bad_file(points, "is not an SQLite database")
        # The header's page size (big-endian, 1 meaning 65536): a database is a whole number of pages.
        page = int.from_bytes(head[16:18], "big") if len(head) >= 18 else 0
        page = 65536 if page == 1 else page
        if page < 512 or size % page:
            raise _bad_file(points, f"is truncated ({size} bytes, not a whole number of {page}-byte pages)")
        check_points(points)


_POINT_MODULE = "qdrant_client.http.models.models"


class _PointUnpickler(pickle.Unpickler):
    """Unpickles only the engine's own point models: a pickle naming any other global could run code."""

    def find_class(self, module: str, name: str) -> Any:
        from pydantic import BaseModel

        if module == _POINT_MODULE:
            found = getattr(importlib.import_module(module), name, None)
            if isinstance(found, type) and issubclass(found, BaseModel):
                return found
        raise pickle.UnpicklingError(f"it names {module}.{name}, which is not a point model")


def check_points(points: Path) -> None:
    """Reads every point the engine would unpickle on opening, with an unpickler that admits only point models.

    Local mode keeps each point as a pickle and loads them all with :func:`pickle.loads` when it opens, and a
    pickle can name any importable callable: a planted or damaged row would run code, or fail inside the engine.
    Checking the rows first turns both into a StoreError naming the file (Qdrant's own local persistence).

    Raises:
        StoreError: a row is not a pickled point, or the database cannot be read.
    """
    import sqlite3

    try:
        # mode=ro: never written, not even a journal; immutable on read-only media, where no writer can exist.
        mode = "ro" if is_writable(points.parent) else "ro&immutable=1"
        with contextlib.closing(sqlite3.connect(f"{points.resolve().as_uri()}?mode={mode}", uri=True)) as db:
            for key, blob in db.execute("SELECT id, point FROM points"):
                try:
                    _PointUnpickler(io.BytesIO(blob)).load()
                except Exception as exc:  # whatever the bytes make the unpickler raise, the row is not a point
                    raise _bad_file(points, f"holds a row that is not a point ({key!r:.60}: {exc})") from None
    except sqlite3.Error as exc:
        raise _bad_file(points, f"cannot be read as the engine's point database ({exc})") from None


def _read_meta(meta_path: Path) -> dict[str, Any]:
    try:
        raw = meta_path.read_bytes()
    except OSError as exc:
        raise _bad_file(meta_path, f"cannot be read ({exc.strerror or exc})") from None
    try:
        meta = decode_json(raw, "the engine's metadata")
    except JsonDocError as exc:
        raise _bad_file(meta_path, str(exc)) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("collections"), dict):
        raise _bad_file(meta_path, 'lacks its "collections" object')
    if not isinstance(meta.get("aliases", {}), dict):
        raise _bad_file(meta_path, 'has an "aliases" field that is not an object')
    for name, config in meta["collections"].items():
        if not isinstance(config, dict):
            raise _bad_file(meta_path, f"has a collection {name!r} whose config is not an object")
    return meta


def _bad_file(path: Path, problem: str) -> StoreError:
    return StoreError(f"the vector index file {path} {problem}", hint=INDEX_REPAIR_HINT)
