"""``manifest.json`` of a model bundle: what each file is, its hash, its interface and its parity figures."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import AdapterConfig, ClipConfig, CodecConfig, ModelsConfig
from ..errors import StoreError
from ..fsutil import atomic_write
from ..model.tokenizer import VOCAB_FILE

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"
GRAPHS = ("g_a", "h_a", "g_s", "adapter", "text")
TOKENIZER_FILE = f"tokenizer/{VOCAB_FILE}"
"""The bundle's copy of CLIP's merges file."""


@dataclass(frozen=True)
class Int8Bound:
    """One accuracy figure of an int8 graph against its fp32 graph.

    Attributes:
        metric: ``cosine_min``, ``bpp_delta_pct``, ``psnr_delta_db`` or ``psnr_vs_fp32_db``.
        measured: the figure measured at export.
        bound: the limit it is held to: a floor for every metric but ``bpp_delta_pct``, which has a ceiling.
    """

    metric: str
    measured: float
    bound: float

    @property
    def ok(self) -> bool:
        """Whether ``measured`` is within ``bound`` (NaN never is)."""
        return self.holds(self.measured)

    def holds(self, value: float) -> bool:
        """Whether ``value`` (e.g. a fresh measurement) is within this bound."""
        return value <= self.bound if self.metric in CEILINGS else value >= self.bound

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Int8Bound:
        return cls(str(d["metric"]), float(d["measured"]), float(d["bound"]))


CEILINGS = frozenset({"bpp_delta_pct"})
"""Int8 metrics whose bound is a ceiling (the others have floors)."""


@dataclass(frozen=True)
class GraphInfo:
    """One ONNX graph: file, hash, named inputs/outputs with their axes (str = dynamic), precision.

    Attributes:
        parity_max_abs, parity_tolerance: an fp32 graph's largest difference from eager torch at export and the
            tolerance it was held to; an int8 graph's largest difference from its fp32 graph, tolerance 0 (it is
            held to ``int8_bounds`` instead).
        int8_bounds: accuracy of the int8 version against the fp32 graph and the bounds it is held to
            (:mod:`licsearch.bundle.accuracy`); also recorded when the int8 version was not kept.
        int8_note: what quantization did and why.
    """

    file: str
    sha256: str
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]
    precision: str = "fp32"
    parity_max_abs: float = 0.0
    parity_tolerance: float = 0.0
    int8_note: str = ""
    int8_bounds: tuple[Int8Bound, ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphInfo:
        """Reads a manifest entry (bundles written before ``int8_bounds`` existed have none)."""
        bounds = tuple(Int8Bound.from_dict(b) for b in d.get("int8_bounds", ()))
        return cls(**{**d, "int8_bounds": bounds})


@dataclass(frozen=True)
class Manifest:
    """Everything a runtime needs to load a bundle and to tell what it is."""

    models: ModelsConfig
    codec_profile: str
    space_id: str
    embed_dim: int
    latent_channels: int
    context_length: int
    opset: int
    graphs: dict[str, GraphInfo]
    files: dict[str, str]
    int8: str = "none"
    format: int = BUNDLE_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def precision(self) -> str:
        """``fp32``, ``int8`` or ``mixed`` over the graphs."""
        kinds = {g.precision for g in self.graphs.values()}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["precision"] = self.precision
        return d

    def save(self, root: Path) -> None:
        atomic_write(root / MANIFEST, (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode())

    @classmethod
    def load(cls, root: Path) -> Manifest:
        path = root / MANIFEST
        if not path.is_file():
            raise StoreError(f"no model bundle at {root} (missing {MANIFEST})", hint="make one with `licsearch export`")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            if d.get("format") != BUNDLE_FORMAT:
                raise StoreError(f"bundle format {d.get('format')} is not supported", hint=f"expected {BUNDLE_FORMAT}")
            m = d["models"]
            return cls(
                models=ModelsConfig(CodecConfig(**m["codec"]), ClipConfig(**m["clip"]), AdapterConfig(**m["adapter"])),
                codec_profile=d["codec_profile"],
                space_id=d["space_id"],
                embed_dim=int(d["embed_dim"]),
                latent_channels=int(d["latent_channels"]),
                context_length=int(d["context_length"]),
                opset=int(d["opset"]),
                graphs={k: GraphInfo.from_dict(v) for k, v in d["graphs"].items()},
                files=dict(d["files"]),
                int8=str(d.get("int8", "none")),
                format=int(d["format"]),
                extra=dict(d.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"bundle manifest {path} is damaged: {e!r}") from e

    def verify_files(self, root: Path) -> None:
        """Checks every file's sha256 against the manifest (a bundle is used whole or not at all)."""
        for rel, sha in self.files.items():
            p = root / rel
            if not p.is_file():
                raise StoreError(f"bundle {root} lacks {rel}", hint="re-export the bundle")
            if file_sha256(p) != sha:
                raise StoreError(f"bundle file {rel} does not match its manifest hash", hint="re-export the bundle")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
