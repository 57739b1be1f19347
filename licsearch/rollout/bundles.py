"""The bundles a rollout works with: where the live version's bundle is, and the candidate's staged copy and archives.

*Live bundle.* The rollout journal records, for every version it archived, the bundle it was built from (a staged
copy in ``<state dir>/bundles/VERSION``, hashes verified). A version served before any rollout (made by
``licsearch archive``) is found in its own archive instead: every ``.mar`` carries the whole bundle under
``bundle/``, and its ``MAR-INF/MANIFEST.json`` names the version, so the archive the server registered
(``modelUrl`` in the model store) is unpacked once into the state dir, after checking that it is the version the
server runs. ``--live-bundle DIR`` names it explicitly.

*Candidate.* The candidate bundle is copied to ``<state dir>/bundles/VERSION`` (with the live space id when the
gate passed, its own otherwise: the user's bundle is never modified) and archived from there as
``<model store>/<model>-<version>.mar``, next to the live archives, with the live archives' batching settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle.manifest import MANIFEST, Manifest
from ..errors import InputError, StoreError
from ..serving.archive import MODEL_CONFIG, ArchiveSettings, archive_bundle
from ..serving.endpoint import BUNDLE_DIR, Limits

MAR_MANIFEST = "MAR-INF/MANIFEST.json"


def manifest_digest(root: Path) -> str:
    """sha256 of a bundle's file hashes (what the default archive version abbreviates)."""
    return hashlib.sha256(json.dumps(sorted(Manifest.load(root).files.items())).encode()).hexdigest()


def archive_version(path: Path) -> str | None:
    """The version a ``.mar`` declares, or None when it is not a readable archive."""
    try:
        with zipfile.ZipFile(path) as z:
            return str(json.loads(z.read(MAR_MANIFEST))["model"]["modelVersion"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def extract_bundle(mar: Path, version: str, dest: Path) -> Path:
    """Unpacks the bundle inside ``mar`` to ``dest`` (atomically) after checking the archive is ``version``."""
    found = archive_version(mar)
    if found != version:
        raise StoreError(
            f"{mar} holds version {found!r}, the server runs {version!r}: the archive was replaced after it was "
            "registered, so the live bundle cannot be read from it",
            hint="pass --live-bundle DIR (the bundle the live version was archived from)",
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with zipfile.ZipFile(mar) as z:
            prefix = f"{BUNDLE_DIR}/"
            for name in z.namelist():
                if name.startswith(prefix) and not name.endswith("/") and ".." not in Path(name).parts:
                    target = tmp / name[len(prefix) :]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(name))
        Manifest.load(tmp).verify_files(tmp)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


@dataclass(frozen=True)
class CandidateSettings(ArchiveSettings):
    """The live archive's settings plus TorchServe's ``startupTimeout``: a candidate's workers load next to the
    live ones, on a busy host, and a worker that is not up within it fails the registration."""

    startup_timeout_s: int = 300

    def model_config(self) -> str:
        return super().model_config().replace("handler:\n", f"startupTimeout: {self.startup_timeout_s}\nhandler:\n", 1)


def live_settings(mar: Path, startup_timeout_s: int = 300) -> CandidateSettings:
    """The batching, workers, timeout and limits of a live archive's ``model-config.yaml`` (defaults if absent)."""
    try:
        with zipfile.ZipFile(mar) as z:
            cfg = _simple_yaml(z.read(MODEL_CONFIG).decode("utf-8"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return CandidateSettings(startup_timeout_s=startup_timeout_s)
    d = ArchiveSettings()
    section = cfg.get("handler")
    handler: dict[str, Any] = section if isinstance(section, dict) else {}
    limits = {k: v for k, v in handler.items() if k in {f.name for f in dataclasses.fields(Limits)}}
    return CandidateSettings(
        batch_size=int(cfg.get("batchSize", d.batch_size)),
        max_batch_delay_ms=int(cfg.get("maxBatchDelay", d.max_batch_delay_ms)),
        min_workers=int(cfg.get("minWorkers", d.min_workers)),
        max_workers=int(cfg.get("maxWorkers", d.max_workers)),
        response_timeout_s=int(cfg.get("responseTimeout", d.response_timeout_s)),
        limits=Limits(**limits),
        startup_timeout_s=startup_timeout_s,
    )


def _simple_yaml(text: str) -> dict[str, Any]:
    """The integer mapping (one nested level) that :meth:`ArchiveSettings.model_config` writes."""
    out: dict[str, Any] = {}
    section: dict[str, Any] | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.strip().partition(":")
        value = value.strip()
        if not line.startswith(" "):
            section = None
            if value:
                out[key] = int(value) if value.lstrip("-").isdigit() else value
            else:
                section = out.setdefault(key, {})
        elif section is not None and value:
            section[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


def stage_candidate(candidate: Path, dest: Path, space_id: str) -> Path:
    """Copies the candidate bundle to ``dest`` with the given space id (atomic; the source is not touched)."""
    manifest = Manifest.load(candidate)
    manifest.verify_files(candidate)
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(candidate, tmp, ignore=shutil.ignore_patterns(".*"))
    if manifest.space_id != space_id:
        dataclasses.replace(manifest, space_id=space_id).save(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def staged_ok(dest: Path, space_id: str) -> bool:
    """Whether a staged copy is complete, intact and in the given space (a rerun reuses it)."""
    if not (dest / MANIFEST).is_file():
        return False
    try:
        m = Manifest.load(dest)
        m.verify_files(dest)
    except StoreError:
        return False
    return m.space_id == space_id


def archive_candidate(
    staged: Path,
    model_store: Path,
    version: str,
    settings: ArchiveSettings,
    models: tuple[str, ...],
    *,
    handlers: Path | None = None,
) -> dict[str, str]:
    """Archives the staged bundle as ``<model>-<version>.mar`` in the model store; returns model -> file name."""
    if not model_store.is_dir():
        raise InputError(f"model store {model_store} does not exist", hint="pass --model-store DIR (the server's)")
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix=".rollout-archive-", dir=model_store) as tmp:
        written = archive_bundle(
            staged, Path(tmp), dataclasses.replace(settings, version=version), handlers=handlers, names=models
        )
        for a in written:
            name = f"{a.name}-{version}.mar"
            a.path.replace(model_store / name)
            out[a.name] = name
    return out
