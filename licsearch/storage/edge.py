"""The ``edge`` engine: the store's vectors in a Qdrant Edge shard, Qdrant's own engine run in-process.

``DIR/edge/`` holds the shard (``edge_config.json``, ``wal/``, ``segments/``) and two files of ours:

- ``licsearch.lock``: the one-writer lock. A writer holds an exclusive ``flock`` on it and writes its pid into it,
  so a second process is refused with the holder's pid. Edge itself locks its WAL exclusively too, so two
  processes can never open one shard, not even to read: concurrent readers of a shard are not possible with Edge
  0.9. A folder this process cannot write (read-only media) is opened as a private copy under a shared lock, as
  local mode's views are (:mod:`licsearch.storage.local`).
- ``licsearch-edge.json``: the version marker, the qdrant-edge-py version that last wrote the shard. A store
  written by a newer Edge than the one installed is refused before the engine reads it.

What the store needs that Edge 0.9 lacks, and how this module goes around it:

- no read-back of the shard's vector config: the named vectors are read from the shard's ``edge_config.json``;
- no quantization when a named vector is added (``create_dense_vector`` takes only size, distance and datatype):
  the shard is closed and loaded again with the full config, the new vector's quantization included (README,
  Store layout, gives the cost);
- no HNSW build in the background: :meth:`EdgeEngine.optimize` builds the unindexed tail, called after ingest and
  re-index; below :data:`~licsearch.storage.vectors.INDEXING_THRESHOLD_KB` a segment stays exact.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..jsondoc import JsonDocError, decode_json, write_json
from ..readonly import is_writable
from .points import INDEXED_FIELDS, FieldFilter, Hit, IndexState, Point, Selection, datetime_bounds, normalise_id
from .points import dense as dense_vector
from .vectors import (
    INDEXING_THRESHOLD_KB,
    VectorSetting,
    edge_hnsw_config,
    edge_search_params,
    edge_vector_params,
    vector_setting,
)

EDGE_PACKAGE = "qdrant-edge-py"
LOCK_FILE = "licsearch.lock"
MARKER_FILE = "licsearch-edge.json"
CONFIG_FILE = "edge_config.json"
MARKER_FORMAT = 1
EDGE_REPAIR_HINT = (
    "restore the store's edge/ folder from a backup (`licsearch restore`); the bitstreams under blobs/ are intact: "
    "decode them (`licsearch decode`) and ingest the images into a new store"
)
MIN_FREE_BYTES = 96 * 1024 * 1024
"""Free disk space below which the shard takes no more writes: three of Edge's 32 MiB file chunks. Edge writes through
memory-mapped files, and a write into a mapping on a full disk kills the process with SIGBUS (no error to catch), so
the space is checked before each write instead."""
_PAYLOAD_TYPES = {"keyword": "Keyword", "integer": "Integer", "float": "Float", "datetime": "Datetime"}


def edge_version() -> str:
    """The installed qdrant-edge-py version."""
    from importlib.metadata import version

    return version(EDGE_PACKAGE)


def _version_key(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def is_edge_folder(path: Path) -> bool:
    """Whether ``path`` holds an Edge shard (or our marker of one)."""
    return (path / CONFIG_FILE).is_file() or (path / MARKER_FILE).is_file()


def to_filter(selection: Selection, ids: set[Any] | None = None) -> Any:
    """Qdrant Edge's filter for a selection (None for every point); ``ids``: only these points."""
    import qdrant_edge as qe

    if selection.everything and ids is None:
        return None
    must: list[Any] = [_condition(flt) for flt in selection.filters if not _is_bool(flt)]
    if ids is not None:
        must.append(qe.HasIdCondition(ids))
    must_not: list[Any] = []
    if selection.with_vector:
        must.append(qe.HasVectorCondition(selection.with_vector))
    if selection.without_vector:
        must_not.append(qe.HasVectorCondition(selection.without_vector))
    if selection.exclude:
        excluded: set[Any] = {normalise_id(i) for i in selection.exclude}
        must_not.append(qe.HasIdCondition(excluded))
    return qe.Filter(must=must or None, must_not=must_not or None)


def _is_bool(flt: FieldFilter) -> bool:
    return isinstance(flt.value, bool)


def _payload_values(payload: Any, key: str) -> list[Any]:
    """The values at the dotted path ``key`` of a payload, arrays flattened (as Qdrant matches them)."""
    found = [payload]
    for part in key.split("."):
        step: list[Any] = []
        for item in found:
            for value in item if isinstance(item, list) else [item]:
                if isinstance(value, dict) and part in value:
                    step.append(value[part])
        found = step
    return [leaf for value in found for leaf in (value if isinstance(value, list) else [value])]


def _matches(payload: dict[str, Any], flt: FieldFilter) -> bool:
    return any(value is flt.value for value in _payload_values(payload, flt.key))


def _condition(flt: FieldFilter) -> Any:
    import qdrant_edge as qe

    value = flt.value
    if isinstance(value, date):
        bounds = {op: when.isoformat() for op, when in datetime_bounds(flt.op, value).items()}
        return qe.FieldCondition(key=flt.key, range=qe.RangeDateTime(**bounds))
    if flt.op == "eq" and not isinstance(value, float):
        return qe.FieldCondition(key=flt.key, match=qe.MatchValue(value))
    number = float(value)
    ranges: dict[str, float] = {"gte": number, "lte": number} if flt.op == "eq" else {flt.op: number}
    return qe.FieldCondition(key=flt.key, range=qe.RangeFloat(**ranges))


class EdgeEngine:
    """One Qdrant Edge shard in ``path``, held by this process (see the module docstring).

    Args:
        path: the shard's folder (created on :meth:`create`).
        settings: vector setting per space id (a space not listed is the default), for search and config.

    Raises:
        StoreError: another process holds the shard (naming its pid), the shard was written by a newer Edge, or
            its files are damaged.
    """

    name = "edge"

    def __init__(self, path: Path, settings: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.where = f"the vector index at {path}"
        self.settings = dict(settings or {})
        self.read_only = False
        self._lock_fd: int | None = None
        self._copy: Path | None = None
        self._shard: Any = None
        self._location = path
        writable = is_writable(path) if path.exists() else is_writable(_existing_parent(path))
        if not path.exists() and not writable:
            raise StoreError(f"{self.where} is missing and cannot be created here", hint=EDGE_REPAIR_HINT)
        try:
            if writable:
                path.mkdir(parents=True, exist_ok=True)
                self._lock_exclusive()
            else:
                self._open_copy()
            if (self._location / CONFIG_FILE).exists():
                self._check_marker()
                check_files(self._location)
                self._shard = self._load(None)
        except BaseException:
            self.close()
            raise

    def _lock_exclusive(self) -> None:
        import fcntl

        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise held_error(self.path, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _open_copy(self) -> None:
        """A folder this process cannot write: a private copy, under a shared lock that keeps writers out."""
        import fcntl

        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDONLY)
        except FileNotFoundError:
            fd = None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                raise held_error(self.path, holder) from None
            self._lock_fd = fd
        self._copy = Path(tempfile.mkdtemp(prefix="licsearch-readonly-edge-"))
        self._location = self._copy / "edge"
        try:
            shutil.copytree(
                self.path, self._location, ignore=shutil.ignore_patterns(LOCK_FILE), copy_function=shutil.copyfile
            )
        except (OSError, shutil.Error) as exc:
            raise StoreError(
                f"cannot read {self.where} (read-only store): {exc}",
                hint="check that the store's files are readable by this user",
            ) from exc
        for folder, _, _ in os.walk(self._location):
            os.chmod(folder, 0o700)
        self.read_only = True

    def _check_marker(self) -> None:
        marker = self._location / MARKER_FILE
        if not marker.exists():
            return
        try:
            doc = decode_json(marker.read_bytes(), "a version marker")
            written = str(doc["qdrant_edge"])
            fmt = int(doc["format"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"the version marker {self.path / MARKER_FILE} is damaged ({exc})", hint=EDGE_REPAIR_HINT
            ) from None
        installed = edge_version()
        if fmt > MARKER_FORMAT or _version_key(written) > _version_key(installed):
            raise StoreError(
                f"{self.where} was written by {EDGE_PACKAGE} {written} (marker format {fmt}); this licsearch has "
                f"{installed}, which may not read it ({self.path / MARKER_FILE})",
                hint=f"install the licsearch release that pins {EDGE_PACKAGE}=={written}, or restore an older backup",
            )

    def _write_marker(self) -> None:
        write_json(self.path / MARKER_FILE, {"format": MARKER_FORMAT, "qdrant_edge": edge_version()})

    def _load(self, config: Any) -> Any:
        import qdrant_edge as qe

        try:
            return qe.EdgeShard.load(str(self._location), config)
        except Exception as exc:
            if "WouldBlock" in str(exc):
                raise held_error(self.path, "") from exc
            raise damaged(self.path, exc) from exc
        except BaseException as exc:  # a Rust panic surfaces as pyo3's PanicException, a BaseException
            if type(exc).__name__ != "PanicException":
                raise
            raise damaged(self.path, exc) from exc

    @property
    def shard(self) -> Any:
        if self._shard is None:
            raise self.missing()
        return self._shard

    def close(self) -> None:
        if self._shard is not None:
            with contextlib.suppress(Exception):
                self._shard.close()
            self._shard = None
        if self._copy is not None:
            shutil.rmtree(self._copy, ignore_errors=True)
            self._copy = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _check_space(self, action: str, needed: int = 0) -> None:
        """Refuses a write that would leave less than :data:`MIN_FREE_BYTES` free (see its note)."""
        stat = os.statvfs(self.path)
        free = stat.f_bavail * stat.f_frsize
        if free < MIN_FREE_BYTES + needed:
            raise StoreError(
                f"the disk of {self.where} is nearly full ({free // 2**20} MiB free, {MIN_FREE_BYTES // 2**20} MiB "
                f"kept in reserve) while {action}; nothing was written",
                hint="free disk space (or move the store) and run the command again: it continues where it stopped",
            )

    @contextmanager
    def calling(self, action: str) -> Iterator[None]:
        """Turns the engine's failures into StoreErrors naming the shard, the action and the fix."""
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:
            text = str(exc)
            if "No space left" in text or "os error 28" in text:
                raise StoreError(
                    f"the disk of {self.where} is full while {action}",
                    hint="free disk space and run the command again: it continues where it stopped",
                ) from exc
            raise StoreError(f"{self.where} failed while {action}: {text[:300]}", hint=EDGE_REPAIR_HINT) from exc

    def missing(self) -> StoreError:
        return StoreError(
            f"the collection does not exist in {self.where}", hint="initialise the store with `licsearch init`"
        )

    def exists(self) -> bool:
        return self._shard is not None

    def spaces(self) -> dict[str, tuple[int, str]]:
        if self._shard is None:
            raise self.missing()
        config = read_config(self._location)
        return {str(name): (int(v["size"]), str(v["distance"])) for name, v in config.get("vectors", {}).items()}

    def _config(self, dims: Mapping[str, int]) -> Any:
        import qdrant_edge as qe

        vectors = {sid: edge_vector_params(vector_setting(self.settings.get(sid)), dim) for sid, dim in dims.items()}
        optimizers = qe.EdgeOptimizersConfig(indexing_threshold=INDEXING_THRESHOLD_KB)
        return qe.EdgeConfig(vectors=vectors, hnsw_config=edge_hnsw_config(), optimizers=optimizers)

    def create(self, spaces: Mapping[str, tuple[int, VectorSetting]]) -> None:
        import qdrant_edge as qe

        for sid, (_, setting) in spaces.items():
            self.settings[sid] = setting.name
        config = self._config({sid: dim for sid, (dim, _) in spaces.items()})
        self._check_space("creating the collection")
        self._write_marker()
        with self.calling("creating the collection"):
            self._shard = qe.EdgeShard.create(str(self.path), config)
        self.ensure_payload_indexes()

    def ensure_payload_indexes(self, *, move_to_disk: bool = False) -> None:
        """Creates the payload indexes of :data:`INDEXED_FIELDS` the shard lacks, kept on disk (see
        :func:`_index_params`); ``move_to_disk``: also rebuild on disk those an older store keeps in RAM."""
        import qdrant_edge as qe

        if self.read_only or self._shard is None:
            return
        with self.calling("reading the payload indexes"):
            present = self.shard.info().payload_schema
        for field, kind in INDEXED_FIELDS.items():
            info = present.get(field)
            if info is not None and (getattr(info.params, "on_disk", False) or not move_to_disk):
                continue
            with self.calling(f"creating the payload index of {field!r}"):
                if info is not None:
                    self.shard.update(qe.UpdateOperation.delete_field_index(field))
                self.shard.update(qe.UpdateOperation.create_field_index(field, _index_params(kind)))

    def payload_indexes(self) -> dict[str, str]:
        with self.calling("reading the payload indexes"):
            schema = self.shard.info().payload_schema
        return {field: str(info.data_type).rsplit(".", 1)[-1].lower() for field, info in schema.items()}

    def add_space(self, space_id: str, dim: int, setting: VectorSetting) -> None:
        import qdrant_edge as qe

        float16 = setting.datatype == "float16"
        datatype = qe.VectorStorageDatatype.Float16 if float16 else qe.VectorStorageDatatype.Float32
        self._check_space(f"adding embedding space {space_id!r}")
        with self.calling(f"adding embedding space {space_id!r}"):
            self.shard.update(
                qe.UpdateOperation.create_dense_vector(space_id, dim, qe.Distance.Cosine, datatype=datatype)
            )
            self.shard.flush()
        self.settings[space_id] = setting.name
        if setting.quantization != "none":
            # create_dense_vector takes no quantization: reload the shard with the full config, the new one's included
            dims = {sid: size for sid, (size, _) in self.spaces().items()}
            self.shard.close()
            self._shard = None
            self._shard = self._load(self._config(dims))

    def drop_space(self, space_id: str) -> None:
        import qdrant_edge as qe

        with self.calling(f"removing embedding space {space_id!r}"):
            self.shard.update(qe.UpdateOperation.delete_vector_name(space_id))
            self.shard.flush()
        self.settings.pop(space_id, None)

    def upsert(self, points: Sequence[Point]) -> None:
        import qdrant_edge as qe

        structs = [qe.Point(p.id, dict(p.vectors), p.payload) for p in points]
        # the WAL and the segment each hold a copy: twice the floats, and the payload's JSON
        self._check_space(
            f"writing {len(structs)} points", 2 * sum(8 * sum(map(len, p.vectors.values())) + 1024 for p in points)
        )
        with self.calling(f"writing {len(structs)} points"):
            self.shard.update(qe.UpdateOperation.upsert_points(structs))

    def update_vectors(self, space_id: str, vectors: Mapping[str, list[float]]) -> None:
        import qdrant_edge as qe

        wanted = list(vectors)
        present = {normalise_id(r.id) for r in self.shard.retrieve(wanted, False, False)}
        gone = [pid for pid in wanted if pid not in present]
        if gone:
            raise StoreError(
                f"point {gone[0]} disappeared while its vector of space {space_id!r} was written",
                hint="run the re-index again; it continues with the points that remain",
            )
        batch = [qe.PointVectors(pid, {space_id: vec}) for pid, vec in vectors.items()]
        self._check_space(f"writing {len(batch)} vectors", 2 * sum(8 * len(v) for v in vectors.values()))
        with self.calling(f"writing {len(batch)} vectors of space {space_id!r}"):
            self.shard.update(qe.UpdateOperation.update_vectors(batch))

    def set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None:
        import qdrant_edge as qe

        self._check_space(f"setting the payload of {len(ids)} points", 2048 * len(ids))
        with self.calling(f"setting the payload of {len(ids)} points"):
            self.shard.update(qe.UpdateOperation.set_payload(list(ids), payload))

    def retrieve(
        self, ids: Sequence[str], *, with_payload: bool, with_vectors: bool | list[str]
    ) -> list[tuple[str, dict[str, Any], dict[str, list[float]]]]:
        with self.calling("reading points"):
            records = self.shard.retrieve(list(ids), with_payload, with_vectors)
        return [_row(r.id, r.payload, r.vector) for r in records]

    def query(
        self, space_id: str, vector: list[float], *, limit: int, selection: Selection, setting: VectorSetting,
        exact: bool = False, hnsw_ef: int | None = None,
    ) -> list[Hit]:  # fmt: skip
        import qdrant_edge as qe

        ids = self._bool_matches(selection)
        if ids is not None and not ids:
            return []
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(vector, using=space_id),
            filter=to_filter(selection, ids),
            params=edge_search_params(setting, limit, hnsw_ef=hnsw_ef, exact=exact),
            with_payload=True,
            with_vector=False,
        )
        with self.calling(f"searching space {space_id!r}"):
            points = self.shard.query(request)
        return [Hit(normalise_id(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def scroll(
        self, selection: Selection, *, limit: int, offset: str | None, fields: Sequence[str] | None = None
    ) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
        import qdrant_edge as qe

        ids = self._bool_matches(selection)
        if ids is not None and not ids:
            return [], None
        payload = True if fields is None else qe.PayloadSelector.Include(list(fields))
        request = qe.ScrollRequest(offset=offset, limit=limit, filter=to_filter(selection, ids), with_payload=payload)
        with self.calling("scrolling points"):
            records, after = self.shard.scroll(request)
        page = [(normalise_id(r.id), dict(r.payload or {})) for r in records]
        return page, None if after is None else normalise_id(after)

    def count(self, selection: Selection) -> int:
        import qdrant_edge as qe

        ids = self._bool_matches(selection)
        if ids is not None:
            return len(ids)
        with self.calling("counting points"):
            return int(self.shard.count(qe.CountRequest(exact=True, filter=to_filter(selection))))

    def _bool_matches(self, selection: Selection) -> set[Any] | None:
        """The ids matching a selection with a boolean equality, found by a scroll; None without one.

        Qdrant Edge 0.9 reads a boolean ``MatchValue`` as the integer 0 or 1, so ``flagged=true`` would match
        nothing: the other conditions go to the engine and the booleans are checked on the payloads here.
        """
        import qdrant_edge as qe

        flags = [flt for flt in selection.filters if _is_bool(flt)]
        if not flags:
            return None
        ids: set[Any] = set()
        offset: Any = None
        fields = qe.PayloadSelector.Include(sorted({flt.key.split(".")[0] for flt in flags}))
        while True:
            request = qe.ScrollRequest(offset=offset, limit=5000, filter=to_filter(selection), with_payload=fields)
            with self.calling("scrolling points"):
                records, offset = self.shard.scroll(request)
            ids.update(normalise_id(r.id) for r in records if all(_matches(dict(r.payload or {}), f) for f in flags))
            if offset is None:
                return ids

    def delete(self, ids: Sequence[str]) -> None:
        import qdrant_edge as qe

        with self.calling("deleting points"):
            self.shard.update(qe.UpdateOperation.delete_points(list(ids)))

    def flush(self) -> None:
        """Writes the segments to disk (the WAL already holds every acknowledged update)."""
        with self.calling("flushing"):
            self.shard.flush()

    def state(self) -> IndexState:
        with self.calling("reading the index state"):
            info = self.shard.info()
        return IndexState(
            points=int(info.points_count),
            indexed_vectors=int(info.indexed_vectors_count),
            segments=int(info.segments_count),
        )

    def optimize(self) -> bool:
        """Builds the HNSW graphs (and quantized codes) of segments past the threshold, and moves payload indexes an
        older store keeps in RAM to disk (:func:`_index_params`); True when it built any graph."""
        points, floats = self.state().points, sum(dim for dim, _ in self.spaces().values())
        self._check_space("optimising the index", points * (4 * floats + 1024))  # the new segment beside the old
        with self.calling("optimising the index"):
            changed = bool(self.shard.optimize())
            self.shard.flush()
        self.ensure_payload_indexes(move_to_disk=True)
        self.flush()
        self._write_marker()
        return changed


def _index_params(kind: str) -> Any:
    """The params of a payload index of ``kind`` (:data:`INDEXED_FIELDS`), kept on disk.

    An index kept in RAM is read whole at every open: at 100,000 points the 16 indexes made opening the shard take
    2.0-2.8 s, against 0.42-0.45 s on disk (README, The vector index). Filters read them through the page cache.
    """
    import qdrant_edge as qe

    params = {
        "keyword": qe.KeywordIndexParams,
        "integer": qe.IntegerIndexParams,
        "float": qe.FloatIndexParams,
        "datetime": qe.DatetimeIndexParams,
    }
    return params[kind](on_disk=True)


def held_error(path: Path, holder: str) -> StoreError:
    """The refusal of a store another process holds, naming that process's pid when it is known."""
    who = f" (pid {holder})" if holder.isdigit() else ""
    return StoreError(
        f"the vector index at {path} is held by another process{who} (the embedded index allows one at a time)",
        hint="wait for that process to finish (or stop it), or keep the index on a Qdrant server (--qdrant URL), "
        "which allows concurrent access",
    )


def damaged(path: Path, exc: BaseException) -> StoreError:
    detail = str(exc).splitlines()[0][:200] if str(exc) else ""
    return StoreError(
        f"the vector index at {path} is damaged: Qdrant Edge cannot load it ({type(exc).__name__}: {detail})",
        hint=EDGE_REPAIR_HINT,
    )


def read_config(path: Path) -> dict[str, Any]:
    """The shard's ``edge_config.json``.

    Raises:
        StoreError: naming the file when it is unreadable, not JSON or without its vectors.
    """
    config_path = path / CONFIG_FILE
    try:
        doc = decode_json(config_path.read_bytes(), "a shard config")
    except OSError as exc:
        raise _bad_file(config_path, f"cannot be read ({exc.strerror or exc})") from None
    except JsonDocError as exc:
        raise _bad_file(config_path, str(exc)) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("vectors"), dict):
        raise _bad_file(config_path, 'lacks its "vectors" object')
    for name, params in doc["vectors"].items():
        if not isinstance(params, dict) or not isinstance(params.get("size"), int):
            raise _bad_file(config_path, f"has a vector {name!r} without an integer size")
    return doc


def check_files(path: Path) -> None:
    """Refuses a shard folder whose config, segments or segment metadata are missing or unreadable.

    Raises:
        StoreError: naming the damaged file.
    """
    read_config(path)
    segments = path / "segments"
    if not segments.is_dir():
        raise _bad_file(segments, "is missing (the shard's segments)")
    for segment in segments.iterdir():
        if not segment.is_dir():
            continue
        meta = segment / "segment.json"
        try:
            doc = decode_json(meta.read_bytes(), "a segment's metadata")
        except FileNotFoundError:
            raise _bad_file(meta, "is missing") from None
        except OSError as exc:
            raise _bad_file(meta, f"cannot be read ({exc.strerror or exc})") from None
        except JsonDocError as exc:
            raise _bad_file(meta, str(exc)) from None
        if not isinstance(doc, dict) or "config" not in doc:
            raise _bad_file(meta, 'lacks its "config"')


def _bad_file(path: Path, problem: str) -> StoreError:
    return StoreError(f"the vector index file {path} {problem}", hint=EDGE_REPAIR_HINT)


def _existing_parent(path: Path) -> Path:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def _row(point_id: object, payload: object, vector: object) -> tuple[str, dict[str, Any], dict[str, list[float]]]:
    vectors = vector if isinstance(vector, dict) else {}
    named = {name: dense for name, vec in vectors.items() if (dense := dense_vector(vec)) is not None}
    return normalise_id(point_id), dict(payload) if isinstance(payload, dict) else {}, named
