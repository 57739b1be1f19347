"""Frozen, typed configuration kept by the store (``store.json``).

A store records which models made its bitstreams and embeddings (with weight fingerprints) and the
embedding space id; every command reads it, and loading models whose fingerprints differ is an error.
Besides the active space (the one queries and ingest use), it records the spaces a re-index is building
or has built, and retired ones, each with the models that produce it (``spaces``; absent in older files).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import defaults
from .errors import StoreError
from .fsutil import atomic_write
from .spaces import BUILDING, SPACE_STATES

STORE_FORMAT = 1
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


@dataclass(frozen=True)
class QdrantConfig:
    """Where embeddings live: local mode at ``path`` (relative to the store) unless ``url`` is set."""

    url: str | None = None
    path: str = "qdrant"
    collection: str = "licsearch"


@dataclass(frozen=True)
class SpaceConfig:
    """An embedding space besides the active one: the models that produce its vectors, and its state.

    ``bundle``, when set, is the bundle whose adapter and text encoder produce the space; ``models`` then
    records the bundle's source models. ``state`` is one of :data:`SPACE_STATES`.
    """

    models: ModelsConfig
    dim: int
    state: str = BUILDING
    bundle: str | None = None
    created_at: float = field(default_factory=time.time)
    completed_at: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpaceConfig:
        state = str(d.get("state", BUILDING))
        if state not in SPACE_STATES:
            raise ValueError(f"unknown space state {state!r}")
        done = d.get("completed_at")
        return cls(
            models=_models_from_dict(d["models"]),
            dim=int(d["dim"]),
            state=state,
            bundle=d.get("bundle"),
            created_at=float(d.get("created_at", 0.0)),
            completed_at=None if done is None else float(done),
        )


def _models_from_dict(m: dict[str, Any]) -> ModelsConfig:
    return ModelsConfig(
        codec=CodecConfig(**m["codec"]), clip=ClipConfig(**m["clip"]), adapter=AdapterConfig(**m["adapter"])
    )


@dataclass(frozen=True)
class StoreConfig:
    """The store's identity: models, embedding space, vector database and input limits.

    ``bundle``, when set, is the model bundle directory whose ONNX graphs run the models in place of eager
    PyTorch; ``models`` then records the bundle's source models. ``models``, ``space_id`` and ``bundle``
    describe the active space; ``spaces`` the others (see :class:`SpaceConfig`).
    """

    models: ModelsConfig
    space_id: str
    qdrant: QdrantConfig = field(default_factory=QdrantConfig)
    bundle: str | None = None
    max_pixels: int = defaults.MAX_PIXELS
    format: int = STORE_FORMAT
    created_at: float = field(default_factory=time.time)
    spaces: dict[str, SpaceConfig] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StoreConfig:
        try:
            if d.get("format") != STORE_FORMAT:
                raise StoreError(f"store format {d.get('format')} is not supported", hint=f"expected {STORE_FORMAT}")
            return cls(
                models=_models_from_dict(d["models"]),
                space_id=str(d["space_id"]),
                qdrant=QdrantConfig(**d.get("qdrant", {})),
                bundle=d.get("bundle"),
                max_pixels=int(d.get("max_pixels", defaults.MAX_PIXELS)),
                format=int(d["format"]),
                created_at=float(d.get("created_at", 0.0)),
                spaces={str(k): SpaceConfig.from_dict(v) for k, v in d.get("spaces", {}).items()},
            )
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise StoreError(f"store config is damaged: {e!r}") from e

    def save(self, root: Path) -> None:
        """Writes ``store.json`` atomically."""
        atomic_write(root / CONFIG_FILE, (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode())

    @classmethod
    def load(cls, root: Path) -> StoreConfig:
        path = root / CONFIG_FILE
        if not path.is_file():
            raise StoreError(f"no licsearch store at {root}", hint="create one with `licsearch init --store DIR`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise StoreError(f"cannot read {path}: {e}") from e
        return cls.from_dict(data)
