"""Keeping a store in step with folders by periodic rescans.

Rescans rather than inotify: inotify's default limit on watches (``fs.inotify.max_user_watches``, often 8192)
is too low for a large photo tree, and a rescan also sees what changed while nothing was watching. Each scan
walks the folders, leaves out files whose ``(path, size, mtime)`` this run has already handled, and hands the rest
to :func:`licsearch.ops.ingest.ingest` a few at a time, so a stop request is honoured after the current batch and
everything ingest promises (content ids, skip of stored images, crash safety) holds here too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..defaults import WATCH_INTERVAL_S
from ..errors import InputError
from ..imageio import iter_image_files
from ..storage.store import Store
from .ingest import DEFAULT_BATCH, ingest

__all__ = ["WatchReport", "watch"]

_FileKey = tuple[str, int, int]


@dataclass
class WatchReport:
    """Totals of one watch run."""

    scans: int = 0
    ingested: int = 0
    skipped: int = 0
    failed: int = 0
    stopped: bool = False
    errors: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scans": self.scans,
            "ingested": self.ingested,
            "skipped": self.skipped,
            "failed": self.failed,
            "stopped": self.stopped,
            "errors": self.errors,
        }


def watch(
    store: Store,
    folders: Sequence[str | Path],
    *,
    interval: float = WATCH_INTERVAL_S,
    once: bool = False,
    stop: threading.Event | None = None,
    batch_size: int = DEFAULT_BATCH,
    on_scan: Callable[[int, int, WatchReport], None] | None = None,
    on_error: Callable[[Path, str], None] | None = None,
) -> WatchReport:
    """Rescans ``folders`` every ``interval`` seconds and ingests what is new, until ``stop`` is set.

    Args:
        store: an open, writable store.
        folders: folders (or files) to keep in the store.
        interval: seconds between the end of one scan and the start of the next.
        once: scan once and return.
        stop: set it (e.g. from a signal handler) to end after the current batch.
        batch_size: images ingested per step; a stop waits at most for one step.
        on_scan: called after each scan with (scan number, files new this scan, running totals).
        on_error: called with (path, message) for each file that failed.

    Raises:
        InputError: the interval is not a positive number, or no folder is given.
        StoreError: the store is read-only, or a store-level failure.
    """
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not interval > 0:
        raise InputError(f"the watch interval must be a positive number of seconds, got {interval!r}")
    if not folders:
        raise InputError("name at least one folder to watch")
    store.require_writable("watch folders")
    stop = stop or threading.Event()
    report = WatchReport()
    seen: set[_FileKey] = set()
    while not stop.is_set():
        new = _new_files(folders, seen, report, on_error)
        for start in range(0, len(new), batch_size):
            if stop.is_set():
                break
            chunk = new[start : start + batch_size]
            step = ingest(store, [path for path, _ in chunk], batch_size=batch_size, progress=False, on_error=on_error)
            report.ingested += step.ingested
            report.skipped += step.skipped
            report.failed += step.failed
            report.errors.extend(
                {"path": item["path"], "error": item["error"]} for item in step.items if item["status"] == "failed"
            )
            seen.update(key for _, key in chunk)
        report.scans += 1
        if on_scan:
            on_scan(report.scans, len(new), report)
        if once:
            break
        stop.wait(interval)
    report.stopped = stop.is_set()
    return report


def _new_files(
    folders: Sequence[str | Path],
    seen: set[_FileKey],
    report: WatchReport,
    on_error: Callable[[Path, str], None] | None,
) -> list[tuple[Path, _FileKey]]:
    new: list[tuple[Path, _FileKey]] = []
    for path, err in iter_image_files(folders):
        if err is not None:
            key: _FileKey = (str(path), -1, -1)
            if key not in seen:  # a missing folder is reported once, not at every scan
                seen.add(key)
                report.errors.append({"path": str(path), "error": err.message})
                if on_error:
                    on_error(path, err.message)
            continue
        try:
            info = path.stat()
        except OSError:
            continue  # removed between the listing and now: the next scan decides
        key = (str(path.resolve()), info.st_size, info.st_mtime_ns)
        if key not in seen:
            new.append((path, key))
    return new
