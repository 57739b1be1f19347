"""Running totals of an embedded store (points, their ``bytes`` and ``bpp``, the bitstream files), so that ``stats``
reads one small file instead of every payload and every bitstream's size.

The totals live in ``totals.json`` in the store's folder and are kept by the one writer of the store (the process
that holds the index's lock): :class:`~licsearch.storage.index.VectorIndex` and
:class:`~licsearch.storage.blobs.BlobStore` report each change to the :class:`TotalsKeeper` in the same call that
makes it. Crash safety: before its first change a writer rewrites the file marked ``writing`` (atomic, fsynced);
the clean totals are written back only when the store is closed. A writer killed in between leaves the mark, so
the next reader does not trust the file and counts everything once (:func:`scan`), saving the result when it
may write. A reader also checks the point count against the index's exact count, which catches a file that an
older licsearch left behind while it changed the points.

``bpp`` is summed as an integer number of nano-bpp, so incremental updates in any order give exactly the sum a
scan gives (a float sum would depend on the order of the additions).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..fsutil import fsync_dir
from ..jsondoc import decode_json, write_json

TOTALS_FILE = "totals.json"
"""The totals' file in a store's folder."""
TOTALS_FORMAT = 1
SUMMED_FIELDS = ("bytes", "bpp")
"""The payload fields the totals sum over points (what ``stats`` reports besides the count)."""
BPP_UNIT = 1e-9
"""The unit of :attr:`Totals.bpp_nano`."""


@dataclass(frozen=True)
class Totals:
    """Points with their summed ``bytes`` and ``bpp`` (in :data:`BPP_UNIT`), and the bitstream files and bytes."""

    points: int = 0
    bytes: int = 0
    bpp_nano: int = 0
    blob_files: int = 0
    blob_bytes: int = 0

    @property
    def bpp_sum(self) -> float:
        return self.bpp_nano * BPP_UNIT

    def with_points(self, removed: Iterable[Mapping[str, Any]], added: Iterable[Mapping[str, Any]]) -> Totals:
        """These totals after the points with payloads ``removed`` left and those with ``added`` came."""
        n, size, bpp = self.points, self.bytes, self.bpp_nano
        for sign, payloads in ((-1, removed), (1, added)):
            for payload in payloads:
                n += sign
                size += sign * payload_bytes(payload)
                bpp += sign * payload_bpp_nano(payload)
        return replace(self, points=n, bytes=size, bpp_nano=bpp)


def scan(payloads: Iterable[Mapping[str, Any]], blob_usage: tuple[int, int]) -> Totals:
    """The totals counted from every point's payload (its :data:`SUMMED_FIELDS` at least) and the blob store's
    ``(files, bytes)``."""
    blob_files, blob_bytes = blob_usage
    return Totals(blob_files=blob_files, blob_bytes=blob_bytes).with_points((), payloads)


def payload_bytes(payload: Mapping[str, Any]) -> int:
    return int(payload.get("bytes", 0) or 0)


def payload_bpp_nano(payload: Mapping[str, Any]) -> int:
    return round(float(payload.get("bpp", 0.0) or 0.0) / BPP_UNIT)


class TotalsKeeper:
    """The totals of one store: read from ``totals.json``, updated by the writer's changes, saved on :meth:`close`.

    Args:
        path: the totals file.
        writable: this process is the store's writer (it holds the index's lock and may write the folder).
    """

    def __init__(self, path: Path, *, writable: bool) -> None:
        self.path = path
        self.writable = writable
        self._live: Totals | None = None  # totals this process knows to be right (None: unknown)
        self._loaded = False
        self._marked = False  # the file says "writing" (this process changed, or will change, the store)

    def current(self) -> Totals | None:
        """The totals, or None when they are not known (no file, a damaged one, or a writer that did not finish)."""
        if not self._loaded:
            self._live = read_totals(self.path)
            self._loaded = True
        return self._live

    def before_change(self) -> None:
        """Marks the file ``writing`` before the first change of this process (the mark survives a crash)."""
        if self._marked or not self.writable:
            return
        known = self.current()
        _write(self.path, known or Totals(), writing=True)
        self._marked = True

    def points_changed(self, removed: Iterable[Mapping[str, Any]], added: Iterable[Mapping[str, Any]]) -> None:
        """Points with payloads ``removed`` were deleted or replaced by points with ``added`` (already written)."""
        if self._live is not None:
            self._live = self._live.with_points(removed, added)

    def blobs_changed(self, files: int, nbytes: int) -> None:
        """``files`` bitstream files of ``nbytes`` in all were added (negative: deleted)."""
        if self._live is not None:
            self._live = replace(
                self._live, blob_files=self._live.blob_files + files, blob_bytes=self._live.blob_bytes + nbytes
            )

    def unknown(self) -> None:
        """A change failed part-way: the totals are not known any more (the next reader counts them again)."""
        self._live = None
        self._loaded = True

    def replace(self, totals: Totals) -> None:
        """Totals counted by a full scan: kept and, for the writer, saved at once."""
        self._live = totals
        self._loaded = True
        if self.writable:
            _write(self.path, totals, writing=self._marked)

    def close(self) -> None:
        """Saves the totals after this process's changes (clean); unknown totals leave the ``writing`` mark."""
        if self._marked and self._live is not None:
            _write(self.path, self._live, writing=False)
            self._marked = False


def read_totals(path: Path) -> Totals | None:
    """The totals saved in ``path``, or None when the file is absent, damaged or marked ``writing``."""
    try:
        doc = decode_json(path.read_bytes(), "a store's totals")
        if doc.get("format") != TOTALS_FORMAT or doc.get("writing") is not False:
            return None
        return Totals(**{name: int(doc[name]) for name in Totals.__dataclass_fields__})
    except (OSError, ValueError, TypeError, KeyError, AttributeError):  # JsonDocError is a ValueError
        return None


def _write(path: Path, totals: Totals, *, writing: bool) -> None:
    write_json(path, {"format": TOTALS_FORMAT, "writing": writing, **asdict(totals)})
    if writing:  # the mark must be on disk before the change it announces
        fsync_dir(path.parent)
