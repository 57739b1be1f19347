"""The user's cache of exported graphs: where it lives, how an entry is written and how it is checked on load.

A store's eager models are exported to ONNX once per machine, in ``$LICSEARCH_CACHE_DIR`` (default
``~/.cache/licsearch``), so that a CLI command that only queries (:mod:`.text_cache`) or only decodes
(:mod:`.codec_cache`) needs neither torch nor the model's own library. Both caches keep an entry as a folder
``<root>/<kind>/<key>/`` of files and an ``entry.json`` that records each file's sha256; this module owns those rules:

- an entry is built in a temporary folder beside its place and renamed into it when complete, so a killed build
  leaves no entry that looks complete (and two processes building the same entry keep the first one);
- every load checks the files against their hashes (:func:`check_files`); a damaged entry raises
  :class:`DamagedEntry`, and its cache removes it and builds it again, never using it;
- a cache that cannot be written costs speed only: the command runs on the eager models, with a logged warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, TypeVar

from ..errors import LicsearchError
from ..jsondoc import JsonDocError, decode_json, write_json
from .manifest import file_sha256

logger = logging.getLogger(__name__)

ENTRY_FILE = "entry.json"
T = TypeVar("T")


class Entry(Protocol):
    """What every cache's ``entry.json`` says first: whether the entry's files may be used."""

    @property
    def usable(self) -> bool: ...


E = TypeVar("E", bound=Entry)


class DamagedEntry(Exception):
    """A cache entry whose files are missing, unreadable or do not match their hashes."""


def cache_root() -> Path:
    """``$LICSEARCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/licsearch`` (``~/.cache/licsearch``)."""
    env = os.environ.get("LICSEARCH_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "licsearch"


def switched_on(variable: str) -> bool:
    """False where the environment variable ``variable`` is ``off`` or ``0`` (unset: on)."""
    return os.environ.get(variable, "on").strip().lower() not in ("off", "0")


def read_entry_doc(folder: Path) -> dict[str, object] | None:
    """``entry.json`` of the entry in ``folder`` as a JSON object; None where there is none.

    Raises:
        DamagedEntry: the file cannot be read or is not a JSON object.
    """
    try:
        raw = (folder / ENTRY_FILE).read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # no entry, or no cache folder can exist there
        return None
    except OSError as e:
        raise DamagedEntry(f"{ENTRY_FILE}: {e.strerror or e}") from e
    try:
        doc = decode_json(raw, ENTRY_FILE)
    except JsonDocError as e:
        raise DamagedEntry(f"{ENTRY_FILE} {e}") from e
    if not isinstance(doc, dict):
        raise DamagedEntry(f"{ENTRY_FILE} is not a JSON object")
    return doc


def check_files(folder: Path, files: Mapping[str, str]) -> None:
    """Checks each file of an entry against its recorded sha256.

    Raises:
        DamagedEntry: a file is missing, unreadable or does not match its hash.
    """
    for name, sha in files.items():
        try:
            ok = file_sha256(folder / name) == sha
        except OSError as e:
            raise DamagedEntry(f"{name}: {e.strerror or e}") from e
        if not ok:
            raise DamagedEntry(f"{name} does not match its hash")


def hash_files(folder: Path, names: list[str]) -> dict[str, str]:
    """The sha256 of each named file of a folder, for ``entry.json``."""
    return {name: file_sha256(folder / name) for name in names}


def build_entry(folder: Path, make: Callable[[Path], tuple[T, dict[str, object]]], what: str) -> T | None:
    """Builds an entry: ``make(tmp)`` writes its files into a temporary folder and returns (result, ``entry.json``
    document); the folder is then renamed to ``folder``. None, with a warning naming ``what``, where the cache
    cannot be written or ``make`` fails with a licsearch error.
    """
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    except OSError as e:
        logger.warning("%s not written (%s): the eager models run instead", what, e)
        return None
    try:
        result, doc = make(tmp)
        write_json(tmp / ENTRY_FILE, doc, indent=2)
        with contextlib.suppress(OSError):  # another process finished the same entry first: keep its copy
            tmp.rename(folder)
        return result
    except (OSError, LicsearchError) as e:
        logger.warning("%s not written (%s): the eager models run instead", what, e)
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_entry(
    folder: Path,
    loaded: dict[Path, T | None],
    *,
    read: Callable[[Path], E | None],
    build: Callable[[Path], E | None],
    open_: Callable[[Path, E], T],
    what: str,
) -> tuple[T | None, list[str]]:
    """The object an entry's files make (``open_``), reading the entry or building it first; None where the entry is
    not usable or cannot be written. What an entry gave is kept in ``loaded``, refusals too: each entry is read and
    checked once per process, and a long-lived process (the UI's previews) does not re-read an unusable entry or try
    again to write one that could not be written on every call.

    A damaged entry (``read`` or ``open_`` raising :class:`DamagedEntry`) is removed and built again, with a notice
    (logged, and returned for the caller's report).
    """
    if folder in loaded:
        return loaded[folder], []
    damage = ""
    opened: T | None = None
    try:
        entry = read(folder)
        if entry is not None and entry.usable:
            opened = open_(folder, entry)
    except DamagedEntry as e:
        damage = f"the {what} {folder} was damaged ({e})"
        shutil.rmtree(folder, ignore_errors=True)
        entry = None
    if entry is None:
        entry = build(folder)
        if entry is not None and entry.usable:
            opened = open_(folder, entry)
    notices = [f"{damage}: {'rebuilt' if entry is not None else 'removed'}"] if damage else []
    for n in notices:
        logger.warning(n)
    loaded[folder] = opened
    return opened, notices
