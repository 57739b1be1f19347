"""The Qdrant collection that makes stored images searchable, behind one interface over two engines.

One point per image: a UUID id derived from content by the caller, one *named* vector per embedding space (so
vectors of different spaces never meet in one query) and a payload with the bitstream reference, hashes, size and
codec profile. Engines (``store.json``'s ``qdrant.engine``):

- ``edge`` (the embedded default): a Qdrant Edge shard in the store's folder (:mod:`licsearch.storage.edge`);
- ``client``: qdrant-client, on a Qdrant server or cluster (``url``), or in local mode on a store made before the
  Edge engine (:mod:`licsearch.storage.client`), kept to read and upgrade such stores.

Both answer the same calls with the same results, which ``tests/test_edge.py`` holds them to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from licsearch.errors import ConfigMismatchError, InputError, StoreError

from ..readonly import read_only_error
from .points import (
    DATETIME_FIELDS,
    INDEXED_FIELDS,
    MAX_FILTER_KEY,
    MAX_TOP_K,
    FieldFilter,
    FilterOp,
    Hit,
    IndexState,
    Point,
    Selection,
    check_dim,
    key_problem,
    normalise_id,
    parse_filter,
)
from .totals import SUMMED_FIELDS
from .vectors import DEFAULT_VECTORS, VectorSetting, vector_setting

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

    from .client import ClientEngine
    from .edge import EdgeEngine
    from .totals import TotalsKeeper

__all__ = [
    "DATETIME_FIELDS",
    "ENGINE_LABELS",
    "INDEXED_FIELDS",
    "MAX_FILTER_KEY",
    "MAX_TOP_K",
    "FieldFilter",
    "FilterOp",
    "Hit",
    "IndexState",
    "Point",
    "Selection",
    "VectorIndex",
    "key_problem",
    "parse_filter",
]

Engine = Literal["edge", "client"]
ENGINES: tuple[Engine, ...] = ("edge", "client")
EngineKind = Literal["edge", "client", "server"]
ENGINE_LABELS: dict[EngineKind, str] = {
    "edge": "Qdrant Edge",
    "client": "qdrant-client local mode",
    "server": "Qdrant server",
}
"""What each kind of index is called in messages: the one owner of these names (``stats``' ``engine`` is the key)."""
_BATCH = 256
_EDGE_BATCH = 1000
_normalise_id = normalise_id


def detect_engine(path: Path) -> Engine:
    """The engine of an embedded index folder: ``client`` for qdrant-client's local mode, else ``edge``."""
    from .edge import is_edge_folder
    from .local import META_FILE

    return "client" if (path / META_FILE).exists() and not is_edge_folder(path) else "edge"


class VectorIndex:
    """Named-vector collection: a Qdrant Edge shard (``path``), or qdrant-client on a server (``url``) or local mode.

    Args:
        path: folder of the embedded index; only one process may open it at a time.
        url: URL of a Qdrant server or cluster, e.g. ``http://localhost:6333``.
        api_key: API key of the server, if it requires one.
        collection: name of the collection (a server's; an Edge shard is one collection).
        engine: ``edge`` or ``client``; None picks ``client`` for a URL or a local-mode folder, else ``edge``.
        vectors: vector setting per space id (:mod:`licsearch.storage.vectors`); unlisted spaces are float32.
        legacy_hint: when set, writes are refused with this hint (a local-mode store awaiting its upgrade).
    """

    def __init__(
        self,
        *,
        path: Path | None = None,
        url: str | None = None,
        api_key: str | None = None,
        collection: str = "licsearch",
        engine: Engine | None = None,
        vectors: Mapping[str, str] | None = None,
        legacy_hint: str | None = None,
    ) -> None:
        if (path is None) == (url is None):
            raise InputError(
                "give exactly one of path (embedded index) or url (Qdrant server)",
                hint="use a path for a single-user store, or --qdrant URL for a shared server",
            )
        if engine is None:
            engine = "client" if path is None else detect_engine(path)
        if engine not in ENGINES:
            raise InputError(f"unknown index engine {engine!r}", hint=f"use one of {', '.join(ENGINES)}")
        if engine == "edge" and path is None:
            raise InputError("the edge engine is embedded: it needs a path", hint="use --qdrant URL for a server")
        self.collection = collection
        self.engine_name: Engine = engine
        self._settings = dict(vectors or {})
        self._legacy_hint = legacy_hint
        self._spaces: dict[str, int] | None = None
        self._engine: EdgeEngine | ClientEngine | None
        if engine == "edge":
            from .edge import EdgeEngine

            assert path is not None
            self._engine = EdgeEngine(path, self._settings)
        else:
            from .client import ClientEngine

            self._engine = ClientEngine(path=path, url=url, api_key=api_key, collection=collection)
        self._where = self._engine.where
        self._local = path is not None
        self._url = url
        self.totals: TotalsKeeper | None = None
        """Told of every change to the points (set by the store that owns this index; see :mod:`.totals`)."""

    @property
    def engine(self) -> EdgeEngine | ClientEngine:
        """The engine behind this index (closed: StoreError)."""
        if self._engine is None:
            raise StoreError(f"{self._where} is closed", hint="open a new VectorIndex")
        return self._engine

    @property
    def engine_kind(self) -> EngineKind:
        """``edge`` or ``client`` (local mode) for an embedded index, ``server`` for a Qdrant server."""
        return self.engine_name if self._local else "server"

    def describe(self) -> str:
        """The engine in words for messages, e.g. ``Qdrant Edge 0.9.0 (embedded)`` or ``Qdrant server at URL``."""
        kind = self.engine_kind
        if kind == "server":
            return f"{ENGINE_LABELS[kind]} at {self._url}"
        if kind == "edge":
            from .edge import edge_version

            return f"{ENGINE_LABELS[kind]} {edge_version()} (embedded)"
        return f"{ENGINE_LABELS[kind]} (embedded)"

    @property
    def read_only(self) -> bool:
        """True when the embedded index is a read-only view, or a local-mode store awaiting its upgrade."""
        return self._engine is not None and (self._engine.read_only or self._legacy_hint is not None)

    def require_writable(self, action: str) -> None:
        """Refuses ``action`` (a change) on a read-only index with a StoreError that says what still works."""
        if self._legacy_hint is not None:
            raise StoreError(f"{self._where} is an old local-mode index: cannot {action}", hint=self._legacy_hint)
        if self.read_only:
            raise read_only_error(self._where, action)

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the index (and its lock); further calls raise StoreError."""
        if self._engine is not None:
            self._engine.close()
        self._engine = None

    @property
    def client(self) -> QdrantClient:
        """The underlying qdrant-client of the ``client`` engine, for operations this class does not wrap."""
        from .client import ClientEngine

        engine = self.engine
        if not isinstance(engine, ClientEngine):
            raise StoreError(f"{self._where} runs on Qdrant Edge, which has no qdrant-client")
        return engine.client

    def use_setting(self, space_id: str, setting: str) -> None:
        """Keeps ``space_id``'s vectors as ``setting`` from now on (a space about to be added)."""
        self._settings[space_id] = vector_setting(setting).name

    def setting(self, space_id: str, *, oversampling: float | None = None) -> VectorSetting:
        """The vector setting of ``space_id`` (``oversampling``: with this oversampling instead of its own)."""
        setting = vector_setting(self._settings.get(space_id, DEFAULT_VECTORS))
        if oversampling is None:
            return setting
        if not oversampling >= 1:
            raise InputError(f"oversampling must be at least 1, got {oversampling!r}")
        return replace(setting, oversampling=float(oversampling))

    def spaces(self) -> dict[str, int]:
        """Embedding spaces of the collection, as space id to vector dimension."""
        self._spaces = {name: dim for name, (dim, _) in self.engine.spaces().items()}
        return dict(self._spaces)

    def _space_dim(self, space_id: str) -> int:
        known = self._spaces if self._spaces is not None and space_id in self._spaces else self.spaces()
        if space_id not in known:
            raise StoreError(
                f"embedding space {space_id!r} is not in collection {self.collection!r} "
                f"(it has {sorted(known) or 'none'})",
                hint="query a space the store has, or build this one with a re-index",
            )
        return known[space_id]

    def ensure_collection(self, spaces: dict[str, int], vectors: Mapping[str, str] | None = None) -> None:
        """Create the collection with one cosine named vector per space if missing, else check it matches.

        Payload indexes for :data:`INDEXED_FIELDS` are created on Edge and on a server; local mode scans.

        Args:
            spaces: space id to dimension.
            vectors: vector setting per space id for a new collection (default float32).

        Raises:
            ConfigMismatchError: the collection lacks a space, or has it with another dimension or distance.
        """
        if not spaces:
            raise InputError("a collection needs at least one embedding space")
        wanted = {space_id: check_dim(space_id, dim) for space_id, dim in spaces.items()}
        engine = self.engine
        if not engine.exists():
            self.require_writable("create the collection")
            chosen = {sid: vector_setting((vectors or {}).get(sid, self._settings.get(sid))) for sid in wanted}
            self._settings.update({sid: s.name for sid, s in chosen.items()})
            engine.create({sid: (dim, chosen[sid]) for sid, dim in wanted.items()})
        current = engine.spaces()
        for space_id, dim in wanted.items():
            if space_id not in current:
                raise ConfigMismatchError(
                    f"embedding space {space_id!r} is missing from collection {self.collection!r} in {self._where} "
                    f"(it has {sorted(current)})",
                    hint="open the store with the models it was made with, or add the space with a re-index",
                )
            size, distance = current[space_id]
            if size != dim or distance != "Cosine":
                raise ConfigMismatchError(
                    f"embedding space {space_id!r} has dimension {size} ({distance}) in "
                    f"{self._where}, but the models produce dimension {dim} (Cosine)",
                    hint="open the store with the models it was made with, or re-index into a new space id",
                )
        self._spaces = {name: size for name, (size, _) in current.items()}
        if not self.read_only:
            engine.ensure_payload_indexes()

    def ensure_payload_indexes(self) -> None:
        """Creates the payload indexes of :data:`INDEXED_FIELDS` the collection lacks (an older store's).

        A no-op in local mode (it filters by scanning) and on a read-only index.
        """
        if not self.read_only:
            self.engine.ensure_payload_indexes()

    def payload_indexes(self) -> dict[str, str]:
        """Payload fields with an index, and the index type (empty in local mode)."""
        return self.engine.payload_indexes()

    def add_space(self, space_id: str, dim: int, vectors: str | None = None) -> None:
        """Add a named vector (a new embedding space) to the existing collection; a no-op if it already matches.

        Args:
            space_id: the new space.
            dim: its dimension.
            vectors: its vector setting (default float32).

        Raises:
            ConfigMismatchError: the space exists with another dimension.
            StoreError: the server or the installed qdrant-client cannot add a named vector.
        """
        check_dim(space_id, dim)
        setting = vector_setting(vectors)
        current = self.spaces()
        if space_id in current:
            if current[space_id] != dim:
                raise ConfigMismatchError(
                    f"embedding space {space_id!r} already exists with dimension {current[space_id]}, not {dim}",
                    hint="use a new space id for the new models",
                )
            return
        self.require_writable(f"add embedding space {space_id!r}")
        self.engine.add_space(space_id, dim, setting)
        self._settings[space_id] = setting.name
        self._spaces = None

    def drop_space(self, space_id: str) -> None:
        """Deletes the named vector ``space_id`` from the collection and from every point (a no-op if absent)."""
        if space_id not in self.spaces():
            return
        self.require_writable(f"remove embedding space {space_id!r}")
        self.engine.drop_space(space_id)
        self._settings.pop(space_id, None)
        self._spaces = None

    def check_vector(self, space_id: str, vector: Sequence[float]) -> list[float]:
        """``vector`` as floats after checking it fits ``space_id`` (dimension, finite, non-zero).

        Raises:
            InputError: it does not; StoreError: no such space.
        """
        import numpy as np

        dim = self._space_dim(space_id)
        try:
            values = np.asarray(vector, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"a vector of space {space_id!r} must be a sequence of numbers") from None
        if values.ndim != 1 or values.shape[0] != dim:
            raise InputError(f"a vector of space {space_id!r} needs {dim} values, got {values.size}")
        if not np.isfinite(values).all() or not values.any():
            raise InputError(f"a vector of space {space_id!r} must be finite and non-zero")
        return values.tolist()

    _check_vector = check_vector

    def _batch(self) -> int:
        return _EDGE_BATCH if self.engine_name == "edge" else _BATCH

    def upsert(self, points: Sequence[Point]) -> None:
        """Insert or replace points; in the index's write-ahead log (or on the server) when this returns.

        Raises:
            StoreError: a point names a space the collection lacks.
            InputError: an id is not a UUID or a vector has the wrong dimension.
        """
        self.require_writable(f"write {len(points)} points")
        checked = [
            Point(
                normalise_id(point.id),
                {sid: self.check_vector(sid, vec) for sid, vec in point.vectors.items()},
                point.payload,
            )
            for point in points
        ]
        step = self._batch()
        for start in range(0, len(checked), step):
            chunk = checked[start : start + step]
            if self.totals is None:
                self.engine.upsert(chunk)
                continue
            added = {point.id: point.payload for point in chunk}  # a repeated id: the last one stays
            removed = self._payloads(list(added))
            with self._changing(self.totals):
                self.engine.upsert(chunk)
            self.totals.points_changed(removed, added.values())

    def _payloads(self, ids: list[str]) -> list[dict[str, Any]]:
        """The payloads of those of ``ids`` (normalised) that are present."""
        return [row[1] for row in self.engine.retrieve(ids, with_payload=True, with_vectors=False)]

    @staticmethod
    @contextmanager
    def _changing(totals: TotalsKeeper) -> Iterator[None]:
        """Around one write to the engine: the totals are marked before it, and unknown if it fails."""
        totals.before_change()
        try:
            yield
        except BaseException:
            totals.unknown()
            raise

    def update_vectors(self, space_id: str, vectors: Mapping[str, Sequence[float]]) -> None:
        """Writes one vector of ``space_id`` onto each existing point; its other vectors and payload stay.

        Raises:
            StoreError: a point was deleted meanwhile, or the space is missing.
        """
        self.require_writable(f"write vectors of space {space_id!r}")
        checked = {normalise_id(pid): self.check_vector(space_id, vec) for pid, vec in vectors.items()}
        if checked:
            self.engine.update_vectors(space_id, checked)

    def set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None:
        """Sets the fields of ``payload`` on the points ``ids`` (their other fields stay)."""
        self.require_writable(f"change the payload of {len(ids)} points")
        wanted = [normalise_id(point_id) for point_id in ids]
        if not wanted:
            return
        if self.totals is None or not set(payload) & set(SUMMED_FIELDS):
            self.engine.set_payload(wanted, payload)
            return
        removed = self._payloads(list(dict.fromkeys(wanted)))
        with self._changing(self.totals):
            self.engine.set_payload(wanted, payload)
        self.totals.points_changed(removed, [{**old, **payload} for old in removed])

    def _records(
        self, ids: Sequence[str], *, with_payload: bool, with_vectors: bool | list[str]
    ) -> Iterator[tuple[str, dict[str, Any], dict[str, list[float]]]]:
        wanted = [normalise_id(point_id) for point_id in ids]
        step = self._batch()
        for start in range(0, len(wanted), step):
            yield from self.engine.retrieve(
                wanted[start : start + step], with_payload=with_payload, with_vectors=with_vectors
            )

    def retrieve(
        self, ids: Sequence[str], *, with_vectors: bool | list[str] = False
    ) -> list[tuple[str, dict[str, Any], dict[str, list[float]]]]:
        """Fetch points by id as ``(id, payload, vectors)``, in the order asked; absent ids are left out.

        Args:
            ids: point ids.
            with_vectors: False for no vectors, True for all spaces, or a list of space ids.
        """
        found = {row[0]: row for row in self._records(ids, with_payload=True, with_vectors=with_vectors)}
        return [found[point_id] for point_id in dict.fromkeys(map(normalise_id, ids)) if point_id in found]

    def existing(self, ids: Sequence[str]) -> set[str]:
        """The subset of ``ids`` that are present, as normalised UUID strings."""
        return {row[0] for row in self._records(ids, with_payload=False, with_vectors=False)}

    def search(
        self,
        space_id: str,
        vector: Sequence[float],
        *,
        top_k: int = 10,
        filters: Sequence[FieldFilter] = (),
        exact: bool = False,
        hnsw_ef: int | None = None,
        oversampling: float | None = None,
    ) -> list[Hit]:
        """Return the ``top_k`` points of ``space_id`` most similar (cosine) to ``vector``, best first.

        Args:
            exact: an exhaustive search on the original vectors (no HNSW, no quantized codes), for recall checks.
            hnsw_ef: the HNSW candidate list instead of the default (:func:`~licsearch.storage.vectors.search_ef`).
            oversampling: candidates rescored per result instead of the space's setting's (quantized settings).

        Raises:
            InputError: ``top_k`` is outside 1..1000 or the vector has the wrong dimension.
            StoreError: the collection has no such space.
        """
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
            raise InputError(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {top_k!r}")
        if hnsw_ef is not None and (not isinstance(hnsw_ef, int) or isinstance(hnsw_ef, bool) or hnsw_ef < 1):
            raise InputError(f"hnsw_ef must be a positive integer, got {hnsw_ef!r}")
        query = self.check_vector(space_id, vector)
        return self.engine.query(
            space_id,
            query,
            limit=top_k,
            selection=Selection(filters=tuple(filters)),
            setting=self.setting(space_id, oversampling=oversampling),
            exact=exact,
            hnsw_ef=hnsw_ef,
        )

    def scroll(
        self, selection: Selection | None = None, *, batch: int = _BATCH, fields: Sequence[str] | None = None
    ) -> Iterator[list[tuple[str, dict[str, Any]]]]:
        """Pages of ``(id, payload)`` of the selected points, in id order, each continuing after the last id seen.

        Args:
            fields: only these top-level payload fields (None: the whole payload); reading less is faster.
        """
        if batch < 1:
            raise InputError(f"batch must be at least 1, got {batch}")
        offset: str | None = None
        chosen = selection or Selection()
        while True:
            page, offset = self.engine.scroll(chosen, limit=batch, offset=offset, fields=fields)
            if page:
                yield page
            if offset is None:
                return

    def iter_points(
        self, *, batch: int = _BATCH, fields: Sequence[str] | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(id, payload)`` of every point (``fields``: only these payload fields), ``batch`` per request."""
        for page in self.scroll(batch=batch, fields=fields):
            yield from page

    def count(self, filters: Sequence[FieldFilter] = (), *, selection: Selection | None = None) -> int:
        """Exact number of points, optionally only those matching all ``filters`` (or a whole ``selection``)."""
        return self.engine.count(selection if selection is not None else Selection(filters=tuple(filters)))

    def delete(self, ids: Sequence[str]) -> None:
        """Delete points by id; ids that are absent are ignored."""
        self.require_writable(f"delete {len(ids)} points")
        wanted = list(dict.fromkeys(normalise_id(point_id) for point_id in ids))
        step = self._batch()
        for start in range(0, len(wanted), step):
            chunk = wanted[start : start + step]
            if self.totals is None:
                self.engine.delete(chunk)
                continue
            removed = self._payloads(chunk)
            with self._changing(self.totals):
                self.engine.delete(chunk)
            self.totals.points_changed(removed, ())

    def state(self) -> IndexState:
        """Points, vectors held in an HNSW graph and segments (a server's own figures; local mode indexes none)."""
        return self.engine.state()

    def optimize(self, progress: Callable[[IndexState], None] | None = None) -> bool:
        """Builds the HNSW graphs of the unindexed tail (Edge; a server does it in the background).

        Args:
            progress: called with the index state about twice a second while the build runs.

        Returns:
            True when anything was built.
        """
        self.require_writable("optimise the index")
        engine = self.engine
        if progress is None:
            return engine.optimize()
        import threading

        done = threading.Event()
        result: list[bool] = []
        failure: list[BaseException] = []

        def run() -> None:
            try:
                result.append(engine.optimize())
            except BaseException as exc:  # handed to the calling thread below
                failure.append(exc)
            finally:
                done.set()

        worker = threading.Thread(target=run, name="licsearch-optimize", daemon=True)
        worker.start()
        while not done.wait(0.5):
            progress(engine.state())
        worker.join()
        if failure:
            raise failure[0]
        progress(engine.state())
        return bool(result and result[0])
