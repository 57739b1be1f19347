"""Frozen, typed configuration kept by the store (``store.json``).

A store records which models made its bitstreams and embeddings (with weight fingerprints) and the
embedding space id; every command reads it, and loading models whose fingerprints differ is an error.
Besides the active space (the one queries and ingest use), it records the spaces a re-index is building
or has built, and retired ones, each with the models that produce it (``spaces``; absent in older files).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from . import defaults
from .errors import StoreError
from .fsutil import atomic_write
from .jsondoc import JsonDocError, decode_json
from .readonly import is_writable, read_only_error
from .spaces import ADAPTER_KIND, BUILDING, SPACE_KINDS, SPACE_STATES

STORE_FORMAT = 1
_T = TypeVar("_T")
MAX_CONFIG_BYTES = 16 * 1024 * 1024
CONFIG_FILE = "store.json"


@dataclass(frozen=True)
class CodecConfig:
    """The learned codec: CompressAI architecture, zoo quality, weights source and fingerprint."""

    arch: str = defaults.CODEC_ARCH
    quality: int = defaults.CODEC_QUALITY
    weights: str = defaults.CODEC_WEIGHTS
    seed: int = defaults.SEED
    sha256: str = ""


@dataclass(frozen=True)
class ClipConfig:
    """The CLIP model whose text tower embeds queries (and whose image tower teaches the adapter)."""

    model: str = defaults.CLIP_MODEL
    tag: str | None = defaults.CLIP_TAG
    weights: str = defaults.CLIP_WEIGHTS
    seed: int = defaults.SEED
    sha256: str = ""


@dataclass(frozen=True)
class AdapterConfig:
    """The multi-scale adapter from codec latents to the CLIP space."""

    weights: str = defaults.ADAPTER_WEIGHTS
    seed: int = defaults.SEED
    width: int = 256
    hidden: int = 1024
    sha256: str = ""


@dataclass(frozen=True)
class ModelsConfig:
    """Everything that determines bitstreams and embeddings."""

    codec: CodecConfig = field(default_factory=CodecConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)

    def with_hashes(self, codec: str, clip: str, adapter: str) -> ModelsConfig:
        return ModelsConfig(
            codec=dataclasses.replace(self.codec, sha256=codec),
            clip=dataclasses.replace(self.clip, sha256=clip),
            adapter=dataclasses.replace(self.adapter, sha256=adapter),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str = "models") -> ModelsConfig:
        """The three models from their JSON object, every field type-checked (each model must be named).

        Raises:
            StoreError: a model is missing, or a field unknown or of the wrong type.
        """
        return _typed(cls, d, where, required=("codec", "clip", "adapter"))


@dataclass(frozen=True)
class QdrantConfig:
    """Where embeddings live, and how each space's vectors are kept.

    ``engine`` is ``edge`` (a Qdrant Edge shard at ``path``, relative to the store: the embedded default) or
    ``client`` (qdrant-client: the server at ``url``, or, without one, an old local-mode folder at ``path``). A
    ``store.json`` without the field was written before Edge: its engine is ``client``. ``vectors`` maps a space
    id to its vector setting (``licsearch.storage.vectors``); a space not listed is float32.
    """

    url: str | None = None
    path: str = "edge"
    collection: str = "licsearch"
    engine: str = "edge"
    vectors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str = "qdrant") -> QdrantConfig:
        """The section from its JSON object; without ``engine`` (an older store) the engine is ``client``."""
        q = _typed(cls, {"engine": "client", **_object(d, where)}, where)
        if q.engine not in INDEX_ENGINES:
            raise _damaged(f"{where}.engine {q.engine!r} is unknown (known: {', '.join(INDEX_ENGINES)})")
        return q


INDEX_ENGINES = ("edge", "client")
"""Engines of the vector index: Qdrant Edge in-process, or qdrant-client (a server, or an old local-mode store)."""


@dataclass(frozen=True)
class SpaceConfig:
    """An embedding space besides the active one: the models that produce its vectors, and its state.

    ``bundle``, when set, is the bundle whose adapter and text encoder produce the space; ``models`` then
    records the bundle's source models. ``state`` is one of :data:`SPACE_STATES`, ``kind`` one of
    :data:`~licsearch.spaces.SPACE_KINDS` (absent in older files: ``adapter``).
    """

    models: ModelsConfig
    dim: int
    state: str = BUILDING
    bundle: str | None = None
    kind: str = ADAPTER_KIND
    created_at: float = field(default_factory=time.time)
    completed_at: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str = "a space") -> SpaceConfig:
        """A space from its JSON object, every field type-checked; ``where`` names it in errors.

        Raises:
            StoreError: a field is missing, unknown or of the wrong type, or the state is unknown.
        """
        space = _typed(cls, {"created_at": 0.0, **_object(d, where)}, where)
        if space.state not in SPACE_STATES:
            raise _damaged(f"{where}.state {space.state!r} is unknown (known: {', '.join(SPACE_STATES)})")
        _check_kind(space.kind, f"{where}.kind")
        return space


def _check_kind(kind: str, where: str) -> None:
    if kind not in SPACE_KINDS:
        raise _damaged(f"{where} {kind!r} is unknown (known: {', '.join(SPACE_KINDS)})")


_JSON_TYPES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _damaged(problem: str) -> StoreError:
    return StoreError(f"store config is damaged: {problem}")


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _damaged(f"{where} must be a JSON object, got {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"the number {value!r}"
    return names.get(type(value), type(value).__name__)


def _typed(cls: type[_T], value: object, where: str, required: tuple[str, ...] = ()) -> _T:
    """Builds the frozen dataclass ``cls`` from a JSON object, checking every field's type against its annotation.

    A damaged or hand-edited ``store.json`` (a number where a string belongs, a string where an object does) is
    refused here, naming the field, instead of failing later far from the cause.
    """
    data = _object(value, where)
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise _damaged(f"{where}.{unknown[0]} is not a known field (known: {', '.join(sorted(names))})")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            kwargs[f.name] = _field(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.name in required or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING):
            raise _damaged(f"{where}.{f.name} is missing")
    return cls(**kwargs)


def _field(tp: Any, value: object, where: str) -> Any:
    args = get_args(tp)
    if get_origin(tp) in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        builder = getattr(tp, "from_dict", None)  # a class that checks more than types
        return builder(value, where=where) if builder is not None else _typed(tp, value, where)
    if get_origin(tp) is dict:
        _, value_type = get_args(tp)
        return {str(k): _field(value_type, v, f"{where}[{json.dumps(k)}]") for k, v in _object(value, where).items()}
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise _damaged(f"{where} must be {_JSON_TYPES.get(tp, tp.__name__)}, got {_json_type(value)}")


@dataclass(frozen=True)
class StoreConfig:
    """The store's identity: models, embedding space, vector database and input limits.

    ``bundle``, when set, is the model bundle directory whose ONNX graphs run the models in place of eager
    PyTorch; ``models`` then records the bundle's source models. ``models``, ``space_id`` and ``bundle``
    describe the active space, ``kind`` its kind (absent in older files: ``adapter``); ``spaces`` the others (see
    :class:`SpaceConfig`).
    """

    models: ModelsConfig
    space_id: str
    qdrant: QdrantConfig = field(default_factory=QdrantConfig)
    bundle: str | None = None
    max_pixels: int = defaults.MAX_PIXELS
    format: int = STORE_FORMAT
    created_at: float = field(default_factory=time.time)
    spaces: dict[str, SpaceConfig] = field(default_factory=dict)
    kind: str = ADAPTER_KIND

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StoreConfig:
        """The config from its JSON object, every field type-checked.

        Raises:
            StoreError: another store format, or a field missing, unknown, of the wrong type or out of range.
        """
        data = _object(d, "the store config")
        if data.get("format") != STORE_FORMAT:
            raise StoreError(f"store format {data.get('format')!r} is not supported", hint=f"expected {STORE_FORMAT}")
        cfg = _typed(cls, {"created_at": 0.0, **data}, "store", required=("models", "space_id", "format"))
        if not cfg.space_id:
            raise _damaged("store.space_id is empty")
        _check_kind(cfg.kind, "store.kind")
        if cfg.max_pixels < 1:
            raise _damaged(f"store.max_pixels must be positive, got {cfg.max_pixels}")
        q = cfg.qdrant
        if q.url is not None and not q.url.startswith(("http://", "https://")):
            raise _damaged(f"store.qdrant.url must be an http:// or https:// URL, got {q.url!r}")
        if not q.path or Path(q.path).is_absolute() or ".." in Path(q.path).parts:
            raise _damaged(f"store.qdrant.path must be a folder inside the store, got {q.path!r}")
        if not q.collection:
            raise _damaged("store.qdrant.collection is empty")
        if q.engine == "edge" and q.url is not None:
            raise _damaged("store.qdrant.engine is edge (embedded), but store.qdrant.url names a server")
        return cfg

    def save(self, root: Path) -> None:
        """Writes ``store.json`` atomically; weights files inside the store are written as ``store:PATH``.

        Raises:
            StoreError: the store is read-only (nothing is written).
        """
        if not is_writable(root):
            raise read_only_error(f"the store at {root}", f"write {CONFIG_FILE}")
        data = _map_weights(self, lambda w: _store_relative(w, root)).to_dict()
        atomic_write(root / CONFIG_FILE, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())

    @classmethod
    def load(cls, root: Path) -> StoreConfig:
        """Reads ``store.json``; a ``store:PATH`` weights source becomes the file's path under ``root``.

        Raises:
            StoreError: there is no store at ``root``, or its ``store.json`` is unreadable or damaged (not UTF-8,
                not JSON, nested absurdly deep, or a field missing or of the wrong type); the message names the
                file and the repair.
        """
        path = root / CONFIG_FILE
        if not path.is_file():
            raise StoreError(f"no licsearch store at {root}", hint="create one with `licsearch init --store DIR`")
        try:
            if path.stat().st_size > MAX_CONFIG_BYTES:
                raise _damaged_file(path, f"it is {path.stat().st_size} bytes, far more than any store config")
            raw = path.read_bytes()
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e.strerror or e}", hint="check the store's permissions") from e
        try:
            data = decode_json(raw, "a store config")
        except JsonDocError as e:
            raise _damaged_file(path, f"it {e}") from None
        try:
            return _map_weights(cls.from_dict(data), lambda w: _in_store(w, root))
        except StoreError as e:
            if e.hint:  # a store of another format: not damage
                raise
            raise _damaged_file(path, e.message.removeprefix("store config is damaged: ")) from None


STORE_WEIGHTS_PREFIX = "store:"
"""A weights source inside the store (``store:adapters/NAME``), so that a moved or copied store still finds it."""


def _store_relative(weights: str, root: Path) -> str:
    """``store:PATH`` for a weights file inside ``root``; any other source unchanged."""
    if not Path(weights).is_absolute():
        return weights
    try:
        rel = Path(weights).resolve().relative_to(root.resolve())
    except ValueError:
        return weights
    return STORE_WEIGHTS_PREFIX + rel.as_posix()


def _in_store(weights: str, root: Path) -> str:
    """The path under ``root`` of a ``store:PATH`` source; any other source unchanged.

    Raises:
        StoreError: the path leaves the store.
    """
    if not weights.startswith(STORE_WEIGHTS_PREFIX):
        return weights
    rel = Path(weights[len(STORE_WEIGHTS_PREFIX) :])
    if not rel.parts or rel.is_absolute() or ".." in rel.parts:
        raise _damaged(f"weights source {weights!r} must name a file inside the store")
    return str(root.resolve() / rel)


def _map_weights(cfg: StoreConfig, fn: Callable[[str], str]) -> StoreConfig:
    """``cfg`` with ``fn`` applied to the weights source of every model of every space."""

    def models(m: ModelsConfig) -> ModelsConfig:
        return ModelsConfig(
            codec=dataclasses.replace(m.codec, weights=fn(m.codec.weights)),
            clip=dataclasses.replace(m.clip, weights=fn(m.clip.weights)),
            adapter=dataclasses.replace(m.adapter, weights=fn(m.adapter.weights)),
        )

    spaces = {sid: dataclasses.replace(sp, models=models(sp.models)) for sid, sp in cfg.spaces.items()}
    return dataclasses.replace(cfg, models=models(cfg.models), spaces=spaces)


CONFIG_REPAIR_HINT = (
    "restore store.json from a backup, or correct the named field by hand; fsck cannot repair it (the bitstreams "
    "under blobs/ are untouched)"
)
"""What to do about a damaged ``store.json``."""


def _damaged_file(path: Path, problem: str) -> StoreError:
    return StoreError(f"{path} is damaged: {problem}", hint=CONFIG_REPAIR_HINT)
