"""What the vector index holds and is asked: points, hits, payload filters and point selections.

Engine-neutral: both engines behind :class:`~licsearch.storage.index.VectorIndex` (Qdrant Edge in-process,
qdrant-client for a server or an old local-mode store) translate these into their own models.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal, get_args

from ..errors import InputError

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


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def normalise_id(point_id: object) -> str:
    """``point_id`` as a canonical UUID string (lowercase, hyphenated). The engines return ``uuid.UUID`` objects or
    canonical strings, which are turned or passed without a second parse (that parse was a quarter of ``stats``'
    scroll time at 100,000 points)."""
    if isinstance(point_id, uuid.UUID):
        return str(point_id)
    if isinstance(point_id, str) and _CANONICAL_UUID.fullmatch(point_id):
        return point_id
    try:
        return str(uuid.UUID(str(point_id)))
    except ValueError as exc:
        raise InputError(f"invalid point id {point_id!r}", hint="point ids are UUID strings") from exc


def dense(vector: object) -> list[float] | None:
    """A dense vector as a list of floats; None for the sparse and multi-vectors licsearch does not use."""
    if isinstance(vector, list) and all(isinstance(x, int | float) for x in vector):
        return [float(x) for x in vector]
    return None


def check_dim(space_id: str, dim: object) -> int:
    if not isinstance(space_id, str) or not space_id:
        raise InputError(f"an embedding space id must be a non-empty string, got {space_id!r}")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise InputError(f"embedding space {space_id!r} needs a positive integer dimension, got {dim!r}")
    return dim


@dataclass(frozen=True)
class Selection:
    """Which points an operation reads: all of ``filters`` hold, the point has ``with_vector``'s vector and lacks
    ``without_vector``'s, and its id is not in ``exclude``."""

    filters: tuple[FieldFilter, ...] = ()
    with_vector: str | None = None
    without_vector: str | None = None
    exclude: tuple[str, ...] = ()

    @property
    def everything(self) -> bool:
        """True when the selection is every point."""
        return not (self.filters or self.with_vector or self.without_vector or self.exclude)


def datetime_bounds(op: FilterOp, value: date) -> dict[str, datetime]:
    """Range bounds of a date-time condition; a date alone stands for the day from its midnight."""
    if isinstance(value, datetime):
        return {"gte": value, "lte": value} if op == "eq" else {op: value}
    start = datetime(value.year, value.month, value.day)
    end = start + timedelta(days=1)
    day_bounds: dict[FilterOp, dict[str, datetime]] = {
        "eq": {"gte": start, "lt": end},
        "gte": {"gte": start},
        "gt": {"gte": end},
        "lte": {"lt": end},
        "lt": {"lt": start},
    }
    return day_bounds[op]


def number_bounds(op: FilterOp, value: float) -> dict[str, float]:
    """Range bounds of a numeric condition; a float equality is the exact range (Qdrant matches no floats)."""
    return {"gte": value, "lte": value} if op == "eq" else {op: value}


@dataclass(frozen=True)
class IndexState:
    """How far the index is built: points, vectors in an HNSW graph (over all spaces), segments."""

    points: int
    indexed_vectors: int
    segments: int
