"""Pack a bundle into TorchServe model archives: ``encode.mar``, ``decode.mar`` and ``embed.mar``.

Each archive holds its handler (``handlers/<name>_handler.py``), a ``model-config.yaml`` (batching, workers,
timeout and the handler's limits) and the whole bundle under ``bundle/``. torch-model-archiver copies the
*contents* of a directory given as an extra file, keeping sub-directories, so the bundle is staged as
``<stage>/bundle/`` and ``<stage>`` is passed: the archive then extracts to ``<model_dir>/bundle/...`` with the
bundle's own layout, which the handler verifies against the manifest's hashes when it loads.

The default version is the bundle's precision and a short hash of its manifest's file hashes
(``fp32-1a2b3c4d``), so an int8 and an fp32 archive of the same models tell themselves apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..bundle.manifest import Manifest
from ..errors import InputError, ModelError
from ..extras import missing_extra
from .endpoint import BUNDLE_DIR, Limits
from .endpoints import ENDPOINTS, handler_file

MODEL_CONFIG = "model-config.yaml"
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ArchiveSettings:
    """What TorchServe reads from ``model-config.yaml``, and the handler's limits.

    Attributes:
        batch_size: most requests TorchServe groups into one ``handle`` call.
        max_batch_delay_ms: how long TorchServe waits to fill a batch.
        min_workers, max_workers: worker processes per model.
        response_timeout_s: seconds before TorchServe gives up on a batch and restarts the worker.
        version: archive version; None derives it from the manifest.
        limits: request limits of the handler.
    """

    batch_size: int = 4
    max_batch_delay_ms: int = 50
    min_workers: int = 1
    max_workers: int = 1
    response_timeout_s: int = 120
    version: str | None = None
    limits: Limits = field(default_factory=Limits)

    def check(self) -> None:
        for name, value, low in (
            ("--batch-size", self.batch_size, 1),
            ("--max-batch-delay", self.max_batch_delay_ms, 0),
            ("--min-workers", self.min_workers, 0),
            ("--max-workers", self.max_workers, 1),
            ("--response-timeout", self.response_timeout_s, 1),
        ):
            if value < low:
                raise InputError(f"{name} must be at least {low}, got {value}")
        if self.min_workers > self.max_workers:
            raise InputError("--min-workers is larger than --max-workers")
        if self.version is not None and not _VERSION.match(self.version):
            raise InputError(f"bad --version {self.version!r}", hint="use letters, digits, '.', '_' and '-'")

    def model_config(self) -> str:
        """The archive's ``model-config.yaml`` (YAML; the values are JSON scalars)."""
        lines = [
            "# TorchServe model configuration, written by `licsearch archive`.",
            f"batchSize: {self.batch_size}",
            f"maxBatchDelay: {self.max_batch_delay_ms}",
            f"minWorkers: {self.min_workers}",
            f"maxWorkers: {self.max_workers}",
            f"responseTimeout: {self.response_timeout_s}",
            "handler:",
            f"  max_bytes: {self.limits.max_bytes}",
            f"  max_pixels: {self.limits.max_pixels}",
            f"  max_texts: {self.limits.max_texts}",
        ]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Archived:
    """One written archive."""

    name: str
    path: Path
    version: str
    bytes: int


def default_version(manifest: Manifest) -> str:
    """``<precision>-<8 hex>``: the hash covers every file of the bundle through the manifest's file hashes."""
    digest = hashlib.sha256(json.dumps(sorted(manifest.files.items())).encode()).hexdigest()[:8]
    return f"{manifest.precision}-{digest}"


def default_handlers_dir() -> Path:
    """``handlers/`` of the checkout this package runs from, else of the working directory."""
    beside = Path(__file__).resolve().parents[2] / "handlers"
    return beside if beside.is_dir() else Path("handlers")


def archive_bundle(
    bundle: Path,
    out: Path,
    settings: ArchiveSettings | None = None,
    *,
    handlers: Path | None = None,
    names: tuple[str, ...] | None = None,
) -> list[Archived]:
    """Writes ``<name>.mar`` into ``out`` for every endpoint (replacing archives already there, atomically).

    Args:
        bundle: an exported bundle; its files are checked against the manifest first.
        out: the model store.
        settings: batching, workers, timeout, version and limits.
        handlers: folder of the handler modules (default: :func:`default_handlers_dir`).
        names: endpoints to archive (default: all).
    """
    try:
        from model_archiver import ModelArchiver, ModelArchiverConfig
    except ImportError:
        raise missing_extra("serve", "packing TorchServe archives") from None

    settings = settings or ArchiveSettings()
    settings.check()
    manifest = Manifest.load(bundle)
    manifest.verify_files(bundle)
    version = settings.version or default_version(manifest)
    handlers = handlers or default_handlers_dir()
    names = names or tuple(ENDPOINTS.names())
    sources = {n: handlers / handler_file(n) for n in names}
    missing = [str(p) for p in sources.values() if not p.is_file()]
    if missing:
        raise InputError(f"handler module(s) not found: {', '.join(missing)}", hint="pass --handlers DIR")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Archived] = []
    with tempfile.TemporaryDirectory(prefix=".archive-", dir=out) as tmp:
        stage, export, work = Path(tmp) / "extra", Path(tmp) / "export", Path(tmp) / "work"
        for d in (export, work):
            d.mkdir()
        shutil.copytree(bundle, stage / BUNDLE_DIR, ignore=shutil.ignore_patterns(".*"))
        config = Path(tmp) / MODEL_CONFIG
        config.write_text(settings.model_config(), encoding="utf-8")
        for name in names:
            cfg = ModelArchiverConfig(
                model_name=name,
                handler=str(sources[name]),
                version=version,
                extra_files=str(stage),
                export_path=str(export),
                config_file=str(config),
                archive_format="zip-store",  # ONNX weights hardly deflate; storing is several times faster
                force=True,
            )
            # The archiver assembles each model in tempfile.gettempdir()/<model name>; a private temp dir keeps
            # concurrent archivers (another store, a test) from sharing that folder.
            with _tempdir(work):
                try:
                    ModelArchiver.generate_model_archive(cfg)
                except Exception as e:
                    raise ModelError(f"torch-model-archiver failed for {name}: {e}") from e
            built = export / f"{name}.mar"
            target = out / built.name
            os.replace(built, target)
            written.append(Archived(name, target, version, target.stat().st_size))
    return written


@contextlib.contextmanager
def _tempdir(path: Path) -> Iterator[Path]:
    saved = tempfile.tempdir
    tempfile.tempdir = str(path)
    try:
        yield path
    finally:
        tempfile.tempdir = saved
