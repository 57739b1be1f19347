"""Ingest: image files -> bitstreams in the blob store + embeddings with payload in Qdrant.

Crash safety: a point's id derives from the image's decoded pixels, its bitstream is
written durably before the point that references it is upserted, and images whose point already exists
are skipped. A run killed at any moment and run again therefore completes without duplicates; a blob
written just before a kill is referenced by the rerun (encoding is deterministic) or found by fsck.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..bundle.codec_cache import cached_encoder
from ..errors import InputError, LicsearchError
from ..faults import crash_point
from ..imageio import LoadedImage, iter_image_files, load_image
from ..model import rans
from ..spaces import PIXELS_KIND
from ..storage.index import Point
from ..storage.store import Store, point_id
from .maintenance import optimize_index
from .progress import progress_bar

if TYPE_CHECKING:
    import numpy as np
    from tqdm import tqdm

    from ..model.models import Encoded

DEFAULT_BATCH = 8
MAX_DUPLICATE_PATHS = 100
"""Most paths of exact-pixel copies remembered per point."""


@dataclass
class IngestReport:
    """Counts and per-file outcomes of one ingest run."""

    ingested: int = 0
    skipped: int = 0
    failed: int = 0
    ids: list[str] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)

    def record(
        self,
        path: Path,
        status: str,
        *,
        id: str | None = None,
        error: str | None = None,
        notices: Sequence[str] = (),
    ) -> None:
        setattr(self, status, getattr(self, status) + 1)
        item: dict[str, Any] = {"path": str(path), "status": status}
        if id:
            item["id"] = id
            if status != "failed":
                self.ids.append(id)
        if error:
            item["error"] = error
        if notices:
            item["notices"] = list(notices)
        self.items.append(item)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ingested": self.ingested,
            "skipped": self.skipped,
            "failed": self.failed,
            "ids": self.ids,
            "items": self.items,
        }


@dataclass
class _Pending:
    path: Path
    image: LoadedImage
    id: str


def ingest(
    store: Store,
    paths: Iterable[str | Path],
    *,
    batch_size: int = DEFAULT_BATCH,
    metadata: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    on_error: Callable[[Path, str], None] | None = None,
) -> IngestReport:
    """Ingests files and folders (recursively); bad files are reported and skipped.

    Args:
        store: an open store.
        paths: files and directories.
        batch_size: images of one size encoded together.
        metadata: user fields stored under ``meta`` in every point's payload.
        progress: show a progress bar (default: when stderr is a terminal).
        on_error: called with (path, message) for each failed file; the message does not repeat the path.

    Raises:
        StoreError: the store is read-only (nothing is read or written), or a store-level failure.
    """
    store.require_writable("ingest")
    report = IngestReport()
    # Load (and fingerprint-check) the models before touching any file: a store-level problem such as
    # changed weights is one error for the run, not one failure per file. A pixels space embeds with CLIP's image
    # tower, an adapter space with the adapter only (it never loads the image tower).
    models = store.models
    encoder = cached_encoder(models)  # an adapter space on the codec cache: no torch (bundle/codec_cache.py)
    if encoder is not None:
        rans.warm_up_in_background()  # numba loads while the files are read and the transforms run
    if encoder is None:
        _ = models.codec, (models.image_tower if models.kind == PIXELS_KIND else models.adapter)
    coder = _Coder(encoder.encode_batch, encoder.profile_id) if encoder else _Coder(models.encode_batch, "")
    store.index.ensure_payload_indexes()  # a store made before a field was indexed gets its index now
    files = list(iter_image_files(paths))
    bar = progress_bar(len(files), progress, "ingest")
    groups: dict[tuple[int, int], list[_Pending]] = {}
    seen: set[str] = set()
    duplicates: dict[str, list[str]] = {}
    meta = dict(metadata or {})

    def fail(path: Path, message: str) -> None:
        # Image errors start with the file's name; the item (and the CLI's line) name it already.
        message = message.removeprefix(f"{path}: ")
        report.record(path, "failed", error=message)
        if on_error:
            on_error(path, message)

    def flush(key: tuple[int, int]) -> None:
        batch = groups.pop(key, [])
        if batch:
            _store_batch(store, coder, batch, meta, report, fail)
            if bar is not None:
                bar.update(len(batch))

    for path, err in files:
        if err is not None:
            fail(path, str(err))
            _tick(bar)
            continue
        try:
            image = load_image(path, max_pixels=store.config.max_pixels)
        except LicsearchError as e:
            fail(path, str(e))
            _tick(bar)
            continue
        pid = point_id(image.pixels_sha256())
        if pid in seen or store.index.existing([pid]):
            report.record(path, "skipped", id=pid)
            duplicates.setdefault(pid, []).append(str(path.resolve()))
            _tick(bar)
            continue
        seen.add(pid)
        key = (image.height, image.width)
        groups.setdefault(key, []).append(_Pending(path, image, pid))
        if len(groups[key]) >= batch_size:
            flush(key)
        elif sum(len(g) for g in groups.values()) >= 4 * batch_size:
            flush(max(groups, key=lambda k: len(groups[k])))  # bound memory when sizes vary
    for key in list(groups):
        flush(key)
    _record_duplicates(store, duplicates)
    if bar is not None:
        bar.close()
    optimize_index(store, progress)  # the HNSW index of the new tail, built now rather than searched exhaustively
    return report


def _record_duplicates(store: Store, duplicates: dict[str, list[str]]) -> None:
    """Adds the paths of skipped exact-pixel copies to their point's ``duplicate_paths`` (for ``licsearch dupes``).

    Only paths not yet recorded are added, so a rerun changes nothing; the list is bounded by
    :data:`MAX_DUPLICATE_PATHS`.
    """
    if not duplicates:
        return
    for pid, payload, _ in store.index.retrieve(list(duplicates)):
        known = list(payload.get("duplicate_paths") or [])
        new = [p for p in dict.fromkeys(duplicates[pid]) if p != payload.get("source_path") and p not in known]
        if new and len(known) < MAX_DUPLICATE_PATHS:
            merged = (known + new)[:MAX_DUPLICATE_PATHS]
            store.index.set_payload([pid], {"duplicate_paths": merged})


@dataclass(frozen=True)
class _Coder:
    """What ingest encodes with: the models' ``encode_batch`` or the codec cache's, and the profile it writes ("": the
    models' codec's)."""

    encode_batch: Callable[[list[np.ndarray]], list[Encoded]]
    profile_id: str


def _store_batch(
    store: Store,
    coder: _Coder,
    batch: list[_Pending],
    meta: dict[str, Any],
    report: IngestReport,
    fail: Callable[[Path, str], None],
) -> None:
    try:
        encoded = coder.encode_batch([p.image.pixels for p in batch])
    except InputError as e:
        for p in batch:
            fail(p.path, str(e))
        return
    points = []
    now = time.time()
    for p, enc in zip(batch, encoded, strict=True):
        ref = store.blobs.put(enc.data)
        crash_point("after_blob")
        payload: dict[str, Any] = {
            "blob": ref,
            "bitstream_sha256": hashlib.sha256(enc.data).hexdigest(),
            "source_sha256": p.image.source_sha256,
            "source_bytes": p.path.stat().st_size,
            "pixels_sha256": p.image.pixels_sha256(),
            "bytes": len(enc.data),
            "bpp": enc.bpp,
            "width": enc.width,
            "height": enc.height,
            "codec_profile": coder.profile_id or store.models.codec.profile_id,
            "space_id": store.space_id,
            "source_path": str(p.path.resolve()),
            "source_format": p.image.format,
            "created_at": now,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        }
        payload.update(p.image.exif)
        if meta:
            payload["meta"] = meta
        points.append(Point(id=p.id, vectors={store.space_id: enc.embedding}, payload=payload))
    crash_point("before_upsert")
    store.index.upsert(points)
    crash_point("after_upsert")
    for p in batch:
        report.record(p.path, "ingested", id=p.id, notices=p.image.exif_notices)


def _tick(bar: tqdm | None) -> None:
    if bar is not None:
        bar.update(1)
