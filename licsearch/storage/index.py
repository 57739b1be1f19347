"""The Qdrant collection that makes stored images searchable.

One point per image: a UUID id derived from content by the caller, one *named* vector per embedding space (so
vectors of different spaces never meet in one query) and a payload with the bitstream
reference, hashes, size and codec profile. The same code runs against qdrant-client's embedded local mode
(``path=``, one process at a time) and against a Qdrant server or cluster (``url=``).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, get_args

from licsearch.errors import ConfigMismatchError, InputError, StoreError

from ..readonly import read_only_error
from .local import LocalIndex, open_local

if TYPE_CHECKING:
    from qdrant_client import QdrantClient
    from qdrant_client import models as qm

FilterOp = Literal["eq", "gte", "lte", "gt", "lt"]
MAX_TOP_K = 1000

INDEXED_FIELDS: dict[str, str] = {
    "bitstream_sha256": "keyword",
    "source_sha256": "keyword",
    "codec_profile": "keyword",
    "space_id": "keyword",
    "source_path": "keyword",
    "width": "integer",
    "height": "integer",
    "bytes": "integer",
    "bpp": "float",
    "created_at": "float",
    "taken": "datetime",
    "camera": "keyword",
    "lens": "keyword",
    "gps_lat": "float",
    "gps_lon": "float",
    "orientation": "integer",
}
"""Payload fields that get a server-side payload index, with their Qdrant index type."""

DATETIME_FIELDS: frozenset[str] = frozenset({"taken"})
"""Payload fields holding ISO 8601 date-times; ``KEY=DATE`` on them matches the whole day."""

_FILTER_HINT = (
    "write filters as KEY=VALUE, KEY>=N, KEY<=N, KEY>N or KEY<N, where KEY is a payload field such as width or "
    'meta.album (names of letters, digits, "_" and "-", joined by single dots), and N a number or a date '
    "(2024-06-01, 2024-06-01T18:30:00), e.g. codec_profile=mbt2018-q3, width>=512 or taken>=2024-06-01"
)
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2})?")
_FILTER_RE = re.compile(r"(?P<key>[^<>=!~]*)(?P<op>[<>=!~]+)(?P<value>.*)", re.DOTALL)
_KEY_PART_RE = re.compile(r"[A-Za-z0-9_\-]+")
_SYMBOL_OPS: dict[str, FilterOp] = {"=": "eq", "==": "eq", ">=": "gte", "<=": "lte", ">": "gt", "<": "lt"}
MAX_FILTER_KEY = 256
_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")
_BATCH = 256


@dataclass(frozen=True)
class Point:
    """A point to write: its id (a UUID string), one vector per space id, and its payload."""

    id: str
    vectors: dict[str, list[float]]
    payload: dict[str, Any]


@dataclass(frozen=True)
class Hit:
    """A search result: the point's id, its cosine similarity to the query, and its payload."""

    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class FieldFilter:
    """A condition on one payload field; several filters combine with AND."""

    key: str
    op: FilterOp
    value: str | int | float | bool | date

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise InputError(f"a filter needs a payload field name, got {self.key!r}", hint=_FILTER_HINT)
        if problem := key_problem(self.key):
            raise InputError(f"filter field name {_clip(self.key)} {problem}", hint=_FILTER_HINT)
        if self.op not in get_args(FilterOp):
            raise InputError(f"unknown filter operator {self.op!r} on {self.key!r}", hint=_FILTER_HINT)
        numeric = isinstance(self.value, int | float | date) and not isinstance(self.value, bool)
        if self.op != "eq" and not numeric:
            raise InputError(
                f"a range ({self.op}) on {self.key!r} needs a number or a date, got {self.value!r}", hint=_FILTER_HINT
            )
        if not (numeric or isinstance(self.value, str | bool)):
            raise InputError(f"filter value of {self.key!r} must be a string, number or boolean", hint=_FILTER_HINT)
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise InputError(f"filter value of {self.key!r} must be finite, got {self.value!r}", hint=_FILTER_HINT)


def _parse_date(text: str) -> date | None:
    """A date (``2024-06-01``) or naive date-time (``2024-06-01T18:30[:00]``), None when the text is neither."""
    try:
        if _DATE_RE.fullmatch(text):
            return date.fromisoformat(text)
        if _DATETIME_RE.fullmatch(text):
            return datetime.fromisoformat(text.replace(" ", "T"))
    except ValueError:
        raise InputError(f"{text!r} is not a valid date", hint="write dates as YYYY-MM-DD[THH:MM[:SS]]") from None
    return None


def _parse_value(text: str, *, as_date: bool) -> str | int | float | bool | date:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]  # quoted: always a string, e.g. codec_profile="3"
    if as_date and (when := _parse_date(text)) is not None:
        return when
    if _INT_RE.fullmatch(text) and len(text.lstrip("+-")) <= 18:  # beyond int64 it is compared as a float
        return int(text)
    if _FLOAT_RE.fullmatch(text):
        return float(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _clip(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:77] + "...")


def key_problem(key: str) -> str | None:
    """What is wrong with a payload field name for a filter, or None when it is a valid dotted path.

    Qdrant reads a key as a JSON path (``meta.album``); an empty part (``a..b``, ``meta.``), brackets, quotes or
    spaces would make it fail, or match another field than meant.
    """
    if len(key) > MAX_FILTER_KEY:
        return f"is longer than {MAX_FILTER_KEY} characters"
    parts = key.split(".")
    if any(not part for part in parts):
        return "has an empty part (a dot at its start or end, or two dots in a row)"
    bad = [part for part in parts if not _KEY_PART_RE.fullmatch(part)]
    if bad:
        return f"has characters a field name cannot hold in {bad[0]!r}"
    if parts[0][0].isdigit() or parts[0][0] == "-":
        return "must start with a letter or '_'"
    return None


def parse_filter(expr: str) -> FieldFilter:
    """Parse a filter expression such as ``width>=512`` or ``codec_profile=mbt2018-q3``.

    The value is read as an int, else a float, else ``true``/``false``, else a string; quote it to force a string
    (``KEY=""`` matches the empty string). In a range, and on :data:`DATETIME_FIELDS` also with ``=``, a date
    or date-time (``2024-06-01``, ``2024-06-01T18:30:00``) compares as a date-time: a date alone means its whole
    day, so ``taken<=2024-06-30`` includes that day and ``taken=2024-06-01`` matches any time on it.

    Raises:
        InputError: the expression is malformed (no operator, an unknown one, no field name or value, a bad field
            name) or a range has a non-numeric value; the message quotes the expression and the accepted forms.
    """
    if not isinstance(expr, str):
        raise InputError(
            f"a filter must be a string such as 'width>=512', got {type(expr).__name__}", hint=_FILTER_HINT
        )
    shown = _clip(expr)
    match = _FILTER_RE.fullmatch(expr)
    if match is None:
        raise InputError(f"cannot parse filter {shown}: it has no operator", hint=_FILTER_HINT)
    key, op, value = match["key"].strip(), match["op"], match["value"].strip()
    if op not in _SYMBOL_OPS:
        # "width=>80", "width!=3": a misspelt or unsupported operator, never a value anyone stores.
        raise InputError(f"cannot parse filter {shown}: unknown operator {op!r}", hint=_FILTER_HINT)
    if not key:
        raise InputError(f"cannot parse filter {shown}: it has no field name before {op!r}", hint=_FILTER_HINT)
    if problem := key_problem(key):
        raise InputError(f"cannot parse filter {shown}: the field name {_clip(key)} {problem}", hint=_FILTER_HINT)
    if not value:
        raise InputError(f"cannot parse filter {shown}: it has no value after {op!r}", hint=_FILTER_HINT)
    try:
        as_date = key in DATETIME_FIELDS or _SYMBOL_OPS[op] != "eq"
        return FieldFilter(key=key, op=_SYMBOL_OPS[op], value=_parse_value(value, as_date=as_date))
    except InputError as exc:
        raise InputError(f"cannot parse filter {shown}: {exc.message}", hint=_FILTER_HINT) from None


def _normalise_id(point_id: object) -> str:
    try:
        return str(uuid.UUID(str(point_id)))
    except ValueError as exc:
        raise InputError(f"invalid point id {point_id!r}", hint="point ids are UUID strings") from exc


def _to_filter(filters: Sequence[FieldFilter]) -> qm.Filter | None:
    from qdrant_client import models as qm

    if not filters:
        return None
    conditions: list[qm.Condition] = []
    for flt in filters:
        value = flt.value
        if isinstance(value, date):
            conditions.append(qm.FieldCondition(key=flt.key, range=_datetime_range(flt.op, value)))
            continue
        if flt.op == "eq" and not isinstance(value, float):
            conditions.append(qm.FieldCondition(key=flt.key, match=qm.MatchValue(value=value)))
            continue
        number = float(value)  # FieldFilter admits only numbers for ranges
        # MatchValue takes no floats, so a float equality becomes an exact range
        bounds: dict[str, float] = {"gte": number, "lte": number} if flt.op == "eq" else {flt.op: number}
        conditions.append(qm.FieldCondition(key=flt.key, range=qm.Range(**bounds)))
    return qm.Filter(must=conditions)


def _datetime_range(op: FilterOp, value: date) -> qm.DatetimeRange:
    """Qdrant's DatetimeRange for a date or date-time; a date alone stands for the day from its midnight."""
    from qdrant_client import models as qm

    if isinstance(value, datetime):
        bounds: dict[str, datetime] = {"gte": value, "lte": value} if op == "eq" else {op: value}
        return qm.DatetimeRange(**bounds)
    start = datetime(value.year, value.month, value.day)
    end = start + timedelta(days=1)
    day_bounds: dict[FilterOp, dict[str, datetime]] = {
        "eq": {"gte": start, "lt": end},
        "gte": {"gte": start},
        "gt": {"gte": end},
        "lte": {"lt": end},
        "lt": {"lt": start},
    }
    return qm.DatetimeRange(**day_bounds[op])


def _dense(vector: object) -> list[float] | None:
    """A dense vector as a list of floats; None for the sparse and multi-vectors licsearch does not use."""
    if isinstance(vector, list) and all(isinstance(x, int | float) for x in vector):
        return [float(x) for x in vector]
    return None


def _check_dim(space_id: str, dim: object) -> int:
    if not isinstance(space_id, str) or not space_id:
        raise InputError(f"an embedding space id must be a non-empty string, got {space_id!r}")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise InputError(f"embedding space {space_id!r} needs a positive integer dimension, got {dim!r}")
    return dim


class VectorIndex:
    """Named-vector collection in Qdrant, embedded (``path``) or on a server (``url``).

    Args:
        path: directory of qdrant-client's local mode; only one process may open it at a time.
        url: URL of a Qdrant server or cluster, e.g. ``http://localhost:6333``.
        api_key: API key of the server, if it requires one.
        collection: name of the collection.
    """

    def __init__(
        self,
        *,
        path: Path | None = None,
        url: str | None = None,
        api_key: str | None = None,
        collection: str = "licsearch",
    ) -> None:
        from qdrant_client import QdrantClient

        if (path is None) == (url is None):
            raise InputError(
                "give exactly one of path (embedded index) or url (Qdrant server)",
                hint="use a path for a single-user store, or --qdrant URL for a shared server",
            )
        self.collection = collection
        self._where = f"the vector index at {path}" if path is not None else f"the Qdrant server at {url}"
        self._local = path is not None
        self._spaces: dict[str, int] | None = None
        self._client: QdrantClient | None
        self._local_index: LocalIndex | None = None
        if path is not None:
            self._local_index = open_local(path)
            self._client = self._local_index.client
        else:
            try:
                self._client = QdrantClient(url=url, api_key=api_key)
            except ValueError as exc:
                raise InputError(f"invalid Qdrant URL {url!r}: {exc}", hint="use e.g. http://localhost:6333") from exc

    @property
    def read_only(self) -> bool:
        """True when the embedded index was opened as a read-only view (see :mod:`licsearch.storage.local`)."""
        return self._local_index is not None and self._local_index.read_only

    def require_writable(self, action: str) -> None:
        """Refuses ``action`` (a change) on a read-only index with a StoreError that says what still works."""
        if self.read_only:
            raise read_only_error(self._where, action)

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the index (and, in local mode, its lock); further calls raise StoreError."""
        if self._local_index is not None:
            self._local_index.close()
            self._local_index = None
        elif self._client is not None:
            self._client.close()
        self._client = None

    @property
    def client(self) -> QdrantClient:
        """The underlying qdrant-client, for operations this class does not wrap."""
        if self._client is None:
            raise StoreError(f"{self._where} is closed", hint="open a new VectorIndex")
        return self._client

    @contextmanager
    def _calling(self, action: str) -> Iterator[None]:
        """Turn qdrant-client failures into StoreErrors that name the index and the failed action."""
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        try:
            yield
        except ResponseHandlingException as exc:  # transport failure: refused, DNS, TLS, timeout
            raise StoreError(
                f"cannot reach {self._where} while {action}: {exc.source}",
                hint="check the URL, the API key and that the server is running",
            ) from exc
        except UnexpectedResponse as exc:
            if exc.status_code == 404:
                raise self._missing_collection() from exc
            body = exc.content.decode("utf-8", "replace")[:300]
            hint = "check the API key" if exc.status_code in (401, 403) else None
            raise StoreError(f"{self._where} refused {action}: HTTP {exc.status_code} {body}", hint=hint) from exc
        except ValueError as exc:  # local mode reports a missing collection as ValueError
            if self._local and f"Collection {self.collection} not found" in str(exc):
                raise self._missing_collection() from exc
            raise

    def _missing_collection(self) -> StoreError:
        return StoreError(
            f"collection {self.collection!r} does not exist in {self._where}",
            hint="initialise the store with `licsearch init`",
        )

    def _vector_params(self) -> dict[str, qm.VectorParams]:
        from qdrant_client import models as qm

        with self._calling("reading the collection"):
            info = self.client.get_collection(self.collection)
        vectors = info.config.params.vectors
        if isinstance(vectors, qm.VectorParams):
            raise StoreError(
                f"collection {self.collection!r} in {self._where} has an unnamed vector; licsearch needs one named "
                "vector per embedding space",
                hint="use another collection name, or delete this collection if it is not needed",
            )
        return dict(vectors or {})

    def spaces(self) -> dict[str, int]:
        """Embedding spaces of the collection, as space id to vector dimension."""
        self._spaces = {name: params.size for name, params in self._vector_params().items()}
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

    def ensure_collection(self, spaces: dict[str, int]) -> None:
        """Create the collection with one cosine named vector per space if missing, else check it matches.

        Payload indexes for :data:`INDEXED_FIELDS` are created on a server; local mode has no use for them
        (it filters by scanning), so they are skipped there.

        Raises:
            ConfigMismatchError: the collection lacks a space, or has it with another dimension or distance.
        """
        from qdrant_client import models as qm

        if not spaces:
            raise InputError("a collection needs at least one embedding space")
        wanted = {space_id: _check_dim(space_id, dim) for space_id, dim in spaces.items()}
        with self._calling("checking the collection"):
            exists = self.client.collection_exists(self.collection)
        if not exists:
            self.require_writable("create the collection")
            config = {sid: qm.VectorParams(size=dim, distance=qm.Distance.COSINE) for sid, dim in wanted.items()}
            try:
                with self._calling("creating the collection"):
                    self.client.create_collection(self.collection, vectors_config=config)
            except StoreError:  # another process may have created it meanwhile: the checks below decide
                with self._calling("checking the collection"):
                    if not self.client.collection_exists(self.collection):
                        raise
        current = self._vector_params()
        for space_id, dim in wanted.items():
            params = current.get(space_id)
            if params is None:
                raise ConfigMismatchError(
                    f"embedding space {space_id!r} is missing from collection {self.collection!r} in {self._where} "
                    f"(it has {sorted(current)})",
                    hint="open the store with the models it was made with, or add the space with a re-index",
                )
            if params.size != dim or params.distance != qm.Distance.COSINE:
                raise ConfigMismatchError(
                    f"embedding space {space_id!r} has dimension {params.size} ({params.distance.value}) in "
                    f"{self._where}, but the models produce dimension {dim} (Cosine)",
                    hint="open the store with the models it was made with, or re-index into a new space id",
                )
        self._spaces = {name: params.size for name, params in current.items()}
        if not self._local:
            self._ensure_payload_indexes()

    def ensure_payload_indexes(self) -> None:
        """Creates the payload indexes of :data:`INDEXED_FIELDS` a server's collection lacks (an older store's).

        A no-op in local mode (it filters by scanning) and on a read-only index.
        """
        if not self._local and not self.read_only:
            self._ensure_payload_indexes()

    def _ensure_payload_indexes(self) -> None:
        from qdrant_client import models as qm

        with self._calling("reading the payload indexes"):
            present = self.client.get_collection(self.collection).payload_schema
        for field, kind in INDEXED_FIELDS.items():
            if field not in present:
                with self._calling(f"creating the payload index of {field!r}"):
                    self.client.create_payload_index(
                        self.collection, field, field_schema=qm.PayloadSchemaType(kind), wait=True
                    )

    def add_space(self, space_id: str, dim: int) -> None:
        """Add a named vector (a new embedding space) to the existing collection; a no-op if it already matches.

        Uses Qdrant's create-vector-name operation, which local mode and Qdrant servers >= 1.18 support.

        Raises:
            ConfigMismatchError: the space exists with another dimension.
            StoreError: the server or the installed qdrant-client cannot add a named vector.
        """
        from qdrant_client import models as qm
        from qdrant_client.http.exceptions import UnexpectedResponse

        _check_dim(space_id, dim)
        current = self.spaces()
        if space_id in current:
            if current[space_id] != dim:
                raise ConfigMismatchError(
                    f"embedding space {space_id!r} already exists with dimension {current[space_id]}, not {dim}",
                    hint="use a new space id for the new models",
                )
            return
        self.require_writable(f"add embedding space {space_id!r}")
        if not hasattr(self.client, "create_vector_name"):
            raise StoreError(
                "the installed qdrant-client cannot add an embedding space to an existing collection",
                hint="upgrade qdrant-client to >= 1.18, or export and re-ingest into a new collection",
            )
        config = qm.DenseVectorNameConfig(dense=qm.DenseVectorConfig(size=dim, distance=qm.Distance.COSINE))
        try:
            with self._calling(f"adding embedding space {space_id!r}"):
                self.client.create_vector_name(self.collection, space_id, config, wait=True)
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, UnexpectedResponse) and cause.status_code in (404, 405):
                raise StoreError(
                    f"{self._where} cannot add a named vector to an existing collection",
                    hint="upgrade the server to Qdrant >= 1.18, or re-ingest into a new collection",
                ) from exc
            raise
        self._spaces = None

    def _check_vector(self, space_id: str, vector: Sequence[float]) -> list[float]:
        dim = self._space_dim(space_id)
        values = [float(x) for x in vector]
        if len(values) != dim:
            raise InputError(f"a vector of space {space_id!r} needs {dim} values, got {len(values)}")
        if not all(math.isfinite(x) for x in values) or not any(values):
            raise InputError(f"a vector of space {space_id!r} must be finite and non-zero")
        return values

    def upsert(self, points: Sequence[Point]) -> None:
        """Insert or replace points; durable in the index when this returns (``wait=True``).

        Raises:
            StoreError: a point names a space the collection lacks.
            InputError: an id is not a UUID or a vector has the wrong dimension.
        """
        from qdrant_client import models as qm

        self.require_writable(f"write {len(points)} points")
        structs = [
            qm.PointStruct(
                id=_normalise_id(point.id),
                vector={sid: self._check_vector(sid, vec) for sid, vec in point.vectors.items()},
                payload=point.payload,
            )
            for point in points
        ]
        for start in range(0, len(structs), _BATCH):
            with self._calling(f"writing {len(structs)} points"):
                self.client.upsert(self.collection, points=structs[start : start + _BATCH], wait=True)

    def _records(
        self, ids: Sequence[str], *, with_payload: bool, with_vectors: bool | list[str]
    ) -> Iterator[qm.Record]:
        wanted = [_normalise_id(point_id) for point_id in ids]
        for start in range(0, len(wanted), _BATCH):
            with self._calling("reading points"):
                yield from self.client.retrieve(
                    self.collection,
                    ids=wanted[start : start + _BATCH],
                    with_payload=with_payload,
                    with_vectors=with_vectors,
                )

    def retrieve(
        self, ids: Sequence[str], *, with_vectors: bool | list[str] = False
    ) -> list[tuple[str, dict[str, Any], dict[str, list[float]]]]:
        """Fetch points by id as ``(id, payload, vectors)``, in the order asked; absent ids are left out.

        Args:
            ids: point ids.
            with_vectors: False for no vectors, True for all spaces, or a list of space ids.
        """
        found: dict[str, tuple[str, dict[str, Any], dict[str, list[float]]]] = {}
        for record in self._records(ids, with_payload=True, with_vectors=with_vectors):
            vectors = record.vector if isinstance(record.vector, dict) else {}
            named = {name: dense for name, vec in vectors.items() if (dense := _dense(vec)) is not None}
            found[_normalise_id(record.id)] = (_normalise_id(record.id), dict(record.payload or {}), named)
        return [found[point_id] for point_id in dict.fromkeys(map(_normalise_id, ids)) if point_id in found]

    def existing(self, ids: Sequence[str]) -> set[str]:
        """The subset of ``ids`` that are present, as normalised UUID strings."""
        return {_normalise_id(record.id) for record in self._records(ids, with_payload=False, with_vectors=False)}

    def search(
        self, space_id: str, vector: Sequence[float], *, top_k: int = 10, filters: Sequence[FieldFilter] = ()
    ) -> list[Hit]:
        """Return the ``top_k`` points of ``space_id`` most similar (cosine) to ``vector``, best first.

        Raises:
            InputError: ``top_k`` is outside 1..1000 or the vector has the wrong dimension.
            StoreError: the collection has no such space.
        """
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
            raise InputError(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {top_k!r}")
        query = self._check_vector(space_id, vector)
        with self._calling(f"searching space {space_id!r}"):
            response = self.client.query_points(
                self.collection,
                query=query,
                using=space_id,
                limit=top_k,
                query_filter=_to_filter(filters),
                with_payload=True,
                with_vectors=False,
            )
        return [Hit(_normalise_id(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def iter_points(self, *, batch: int = _BATCH) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(id, payload)`` of every point, scrolling ``batch`` points per request."""
        if batch < 1:
            raise InputError(f"batch must be at least 1, got {batch}")
        offset: Any = None
        while True:
            with self._calling("scrolling points"):
                records, offset = self.client.scroll(
                    self.collection, limit=batch, offset=offset, with_payload=True, with_vectors=False
                )
            for record in records:
                yield _normalise_id(record.id), dict(record.payload or {})
            if offset is None:
                return

    def count(self, filters: Sequence[FieldFilter] = ()) -> int:
        """Exact number of points, optionally only those matching all ``filters``."""
        with self._calling("counting points"):
            return self.client.count(self.collection, count_filter=_to_filter(filters), exact=True).count

    def delete(self, ids: Sequence[str]) -> None:
        """Delete points by id; ids that are absent are ignored."""
        from qdrant_client import models as qm

        self.require_writable(f"delete {len(ids)} points")
        wanted = [_normalise_id(point_id) for point_id in ids]
        for start in range(0, len(wanted), _BATCH):
            selector = qm.PointIdsList(points=list(wanted[start : start + _BATCH]))
            with self._calling("deleting points"):
                self.client.delete(self.collection, points_selector=selector, wait=True)
