"""Read-only stores: how they are recognised, and the one message for a change asked of one.

A store on read-only media, a read-only mount or without write permission still answers every read (``search``,
``get``, ``stats``, ``fsck`` without ``--repair``); the embedded index is opened as a view for that (see
:mod:`licsearch.storage.local`). Changes (ingest, ``fsck --repair``, re-index) are refused before anything is tried.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import StoreError

READ_ONLY_HINT = (
    "search, get, stats and fsck without --repair work on a read-only store; to change it, copy it to writable "
    "storage (or remount it read-write) and run the command there"
)


def is_writable(path: Path) -> bool:
    """Whether this process may create and replace files in the folder ``path`` (False on read-only media)."""
    return os.access(path, os.W_OK | os.X_OK)


def read_only_error(what: str, action: str) -> StoreError:
    """The error for ``action`` (a change, e.g. "ingest") asked of ``what`` (e.g. "the store at DIR")."""
    return StoreError(f"{what} is read-only: cannot {action}", hint=READ_ONLY_HINT)
