"""Store maintenance: statistics and fsck (find and repair missing, orphan and corrupt bitstreams)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import StoreError
from ..storage.blobs import parse_ref
from ..storage.previews import Previews
from ..storage.store import Store
from ..storage.totals import SUMMED_FIELDS, Totals
from ..storage.totals import scan as scan_totals

# A blob younger than this may belong to an ingest in flight on another process (only possible with a
# Qdrant server; local mode holds an exclusive lock), so repair leaves it alone.
SERVER_ORPHAN_GRACE_S = 3600.0
_STATS_BATCH = 5000
"""Points per scroll of ``stats``, which reads only ``bytes`` and ``bpp`` of each."""


def stats(store: Store) -> dict[str, Any]:
    """Images, stored bytes, mean bpp and embedding spaces.

    The sums come from the store's running totals (:mod:`licsearch.storage.totals`) when they are known and agree
    with the index's exact count; otherwise every payload is read once and, when this process may write the store,
    the totals are saved (``totals`` in the result says which: ``kept``, ``counted`` or ``counted, saved``).
    """
    totals, source = store_totals(store)
    n = totals.points
    return {
        "store": str(store.root),
        "images": n,
        "bytes": totals.bytes,
        "mean_bpp": totals.bpp_sum / n if n else 0.0,
        "mean_bytes": totals.bytes / n if n else 0.0,
        "blob_bytes_on_disk": totals.blob_bytes,
        "totals": source,
        **Previews(store.root).stats(),
        "space_id": store.space_id,
        "spaces": store.index.spaces(),
        "kind": store.config.kind,
        "space_kinds": {store.space_id: store.config.kind, **{s: sp.kind for s, sp in store.config.spaces.items()}},
        "codec_profile": _profile(store),
        "qdrant": store.config.qdrant.url or "local",
        "index": index_state(store),
        "random_weights": store.models.random_components(),
    }


def store_totals(store: Store) -> tuple[Totals, str]:
    """The store's totals and where they came from: ``kept`` (the running totals), ``counted`` (a full scan) or
    ``counted, saved`` (a full scan, now kept: an older store's first ``stats``, or one after a killed writer)."""
    keeper = store.totals
    if keeper is not None:
        known = keeper.current()
        if known is not None and known.points == store.index.count():
            return known, "kept"
    counted = count_totals(store)
    if keeper is None or store.read_only:
        return counted, "counted"
    keeper.replace(counted)
    return counted, "counted, saved"


def count_totals(store: Store) -> Totals:
    """The totals counted from every point's payload and every bitstream file (what the running totals hold)."""
    payloads = (payload for _, payload in store.index.iter_points(batch=_STATS_BATCH, fields=SUMMED_FIELDS))
    return scan_totals(payloads, store.blobs.usage())


def optimize_index(store: Store, progress: bool | None = None) -> bool:
    """Builds the HNSW index of the points not yet indexed (after ingest and re-index), with a bar on stderr.

    Segments below :data:`~licsearch.storage.vectors.INDEXING_THRESHOLD_KB` stay exact and cost nothing here; a
    server indexes in the background and a read-only store is left as it is.

    Args:
        store: an open, writable store.
        progress: show a progress bar (default: when stderr is a terminal).

    Returns:
        True when anything was built.
    """
    from .progress import progress_bar

    if store.read_only or store.config.qdrant.url is not None:
        return False
    bar = progress_bar(None, progress, "index", unit="vec", leave=False)
    if bar is None:
        return store.index.optimize()
    spaces = max(len(store.index.spaces()), 1)
    with bar:

        def show(state: Any) -> None:
            bar.total = state.points * spaces
            bar.n = min(state.indexed_vectors, bar.total)
            bar.refresh()

        return store.index.optimize(progress=show)


def index_state(store: Store) -> dict[str, Any]:
    """The vector index: engine, points, vectors in an HNSW graph, segments, vector setting per space.

    Segments smaller than the threshold keep no graph and are searched exactly, so ``indexed_vectors`` below
    ``points`` times the spaces is normal for a small store.
    """
    from ..storage.vectors import INDEXING_THRESHOLD_KB

    state = store.index.state()
    return {
        "engine": store.index.engine_kind,
        "points": state.points,
        "indexed_vectors": state.indexed_vectors,
        "segments": state.segments,
        "exact_below_kb": INDEXING_THRESHOLD_KB,
        "vectors": {space: store.index.setting(space).name for space in store.index.spaces()},
    }


def _profile(store: Store) -> str:
    c = store.config.models.codec
    return f"{c.arch}:q{c.quality}:{c.sha256[:12]}"


@dataclass
class FsckReport:
    """What fsck found and, with repair, what it fixed."""

    points: int = 0
    bitstreams: int = 0
    missing: list[str] = field(default_factory=list)  # point ids whose bitstream is absent
    corrupt: list[str] = field(default_factory=list)  # point ids whose bitstream fails its hash
    orphans: list[str] = field(default_factory=list)  # blob refs no point references
    temp_files_removed: int = 0
    preview_orphans: list[str] = field(default_factory=list)  # previews of bitstreams no point references
    preview_damaged: list[str] = field(default_factory=list)  # previews that are not a readable WebP (rebuilt)
    totals_kept: Totals | None = None  # the store's running totals (None: unknown, or a server's store)
    totals_counted: Totals | None = None  # the same counted by this fsck's full scan
    totals_saved: bool = False  # the counted totals were saved (unknown before, or repaired)
    repaired: bool = False

    @property
    def totals_wrong(self) -> bool:
        """The kept totals disagree with the scan (``stats`` would report them: repair saves the scan's)."""
        return self.totals_kept is not None and self.totals_kept != self.totals_counted

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.orphans or self.totals_wrong) or self.repaired

    def to_dict(self) -> dict[str, Any]:
        return {
            "points": self.points,
            "bitstreams": self.bitstreams,
            "missing": self.missing,
            "corrupt": self.corrupt,
            "orphans": self.orphans,
            "temp_files_removed": self.temp_files_removed,
            "preview_orphans": self.preview_orphans,
            "preview_damaged": self.preview_damaged,
            "totals": {
                "kept": None if self.totals_kept is None else asdict(self.totals_kept),
                "counted": None if self.totals_counted is None else asdict(self.totals_counted),
                "wrong": self.totals_wrong,
                "saved": self.totals_saved,
            },
            "repaired": self.repaired,
            "ok": self.ok,
        }


def fsck(store: Store, *, repair: bool = False, verify: bool = True, progress: bool | None = None) -> FsckReport:
    """Cross-checks points and bitstreams.

    A point whose bitstream is missing or corrupt cannot be decoded: repair deletes the point (re-ingest the
    source to restore it). A bitstream no point references is an orphan of an interrupted ingest: repair
    deletes it. With ``verify``, every referenced bitstream is re-hashed. The store's running totals are checked
    against the scan: unknown ones (an older store, a killed writer) are saved, wrong ones are a problem that
    repair fixes. ``progress``: a bar over the points (None: when stderr is a terminal).
    """
    if repair:
        store.require_writable("repair it (fsck --repair)")
    rep = FsckReport()
    referenced: set[str] = set()
    bad_points: list[str] = []
    corrupt_refs: set[str] = set()
    summed: list[dict[str, Any]] = []
    # One walk of the bitstream folder, before the points: a point whose bitstream is not in it (one written by
    # another process meanwhile, on a server) is looked up on its own.
    stored = store.blobs.inventory()
    from .progress import progress_bar

    bar = progress_bar(store.index.count(), progress, "fsck", unit="pt")
    for pid, payload in store.index.iter_points(fields=("blob", *SUMMED_FIELDS)):
        rep.points += 1
        if bar is not None:
            bar.update()
        summed.append({name: payload.get(name) for name in SUMMED_FIELDS})
        ref = str(payload.get("blob", ""))
        try:
            parse_ref(ref)
        except Exception:
            rep.missing.append(pid)
            bad_points.append(pid)
            continue
        referenced.add(ref)
        if ref not in stored and not store.blobs.exists(ref):
            rep.missing.append(pid)
            bad_points.append(pid)
        elif verify:
            try:
                store.blobs.get(ref)
            except StoreError:
                rep.corrupt.append(pid)
                bad_points.append(pid)
                corrupt_refs.add(ref)
    if bar is not None:
        bar.close()
    grace = 0.0 if store.local else SERVER_ORPHAN_GRACE_S
    now = time.time()
    for ref, st in stored.items():
        rep.bitstreams += 1
        if ref not in referenced and now - st.st_mtime >= grace:
            rep.orphans.append(ref)
    usage = (len(stored), sum(st.st_size for st in stored.values()))
    _check_totals(store, rep, scan_totals(summed, usage), repair=repair)
    previews = Previews(store.root)
    rep.preview_orphans = previews.orphans(referenced - corrupt_refs)
    if verify:
        rep.preview_damaged = previews.damaged(referenced - corrupt_refs)
    if repair:
        previews.remove(rep.preview_orphans)
        previews.rebuild(store, rep.preview_damaged)  # derived data: made again from the (verified) bitstream
        if bad_points:
            store.index.delete(bad_points)
        for ref in [*rep.orphans, *corrupt_refs]:
            store.blobs.delete(ref)
        rep.temp_files_removed = store.blobs.clean_tmp(older_than_s=grace)
        rep.repaired = True
    return rep


def _check_totals(store: Store, rep: FsckReport, counted: Totals, *, repair: bool) -> None:
    """Compares the kept totals with ``counted``; saves the count where the totals were unknown, or wrong and
    ``repair`` (before repair deletes anything, so the deletions then update the right totals)."""
    keeper = store.totals
    if keeper is None:
        return
    rep.totals_kept, rep.totals_counted = keeper.current(), counted
    if (rep.totals_kept is None or (rep.totals_wrong and repair)) and not store.read_only:
        keeper.replace(counted)
        rep.totals_saved = True
