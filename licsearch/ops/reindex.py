"""Re-index: rebuild every point's embedding in a new space from its stored bitstream (no pixels, no synthesis).

A target space is defined by a model bundle (its manifest's space id, adapter and text encoder) or by new
adapter weights for the store's codec and CLIP model. Each stored bitstream is entropy-decoded to y_hat with
the store's codec (the canonical integer path makes y_hat exact on any backend) and the target adapter maps it
to the new space; the synthesis transform and the CLIP image tower never run. Bitstreams are fixed, so the
codec cannot change: a target made for another codec is refused.

The vectors go into a new named vector of the same collection (Qdrant's create-vector-name, then
update-vectors onto the existing points; local mode and servers >= 1.18 alike), so one point keeps one id,
one payload and one vector per space. The space is recorded in ``store.json`` as ``building`` before any
vector is written and becomes ``complete`` when every point carries its vector; queries switch to it only
when it is activated (at completion with ``activate=True``, or later). Resuming needs no cursor: each run
asks Qdrant which points still lack the space's vector, so a run killed at any moment and run again
completes the space with exactly one vector per point. Points ingested while a space is building get only
the active space's vector; the next run of the re-index picks them up (activation refuses until it has).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ModelsConfig, SpaceConfig
from ..errors import ConfigMismatchError, InputError, LicsearchError
from ..faults import crash_point
from ..model.models import ModelPlane, ModelSet
from ..model.weights import normalise_source
from ..spaces import ACTIVE, BUILDING, COMPLETE, PIXELS_KIND, space_id_for
from ..storage import space_vectors
from ..storage.store import Store, model_plane_for
from .maintenance import optimize_index
from .progress import progress_bar
from .spaces import SpaceNotReadyError, activate_space, config_for_space, record_space, space_config

if TYPE_CHECKING:
    import torch

DEFAULT_BATCH = 32


@dataclass(frozen=True)
class Target:
    """The space to build: its id, the models that produce it (fingerprinted), its bundle and dimension."""

    space_id: str
    models: ModelsConfig
    bundle: str | None
    dim: int
    plane: ModelPlane = field(repr=False, compare=False)


@dataclass
class ReindexReport:
    """What one re-index run did.

    Attributes:
        state: the space's state afterwards: ``active``, ``complete`` or ``building`` (some points failed).
        points: points in the collection at the end.
        already: points that carried the space's vector before this run (done by an earlier run).
        reembedded: points whose vector this run wrote.
        failures: ``{"id", "error"}`` of points whose bitstream could not be read or decoded.
        seconds: wall time of the rebuild (read, entropy decode, adapter, write), loading the models excluded.
    """

    space_id: str
    active_space: str
    state: str = BUILDING
    dim: int = 0
    points: int = 0
    already: int = 0
    reembedded: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    activated: bool = False
    note: str = ""

    @property
    def failed(self) -> int:
        return len(self.failures)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["failed"] = self.failed
        d["seconds_per_point"] = self.seconds / self.reembedded if self.reembedded else None
        return d


def reindex(
    store_dir: Path,
    *,
    bundle: Path | None = None,
    adapter_weights: str | None = None,
    space_id: str | None = None,
    batch: int = DEFAULT_BATCH,
    progress: bool | None = None,
    activate: bool = False,
    on_error: Callable[[str, str], None] | None = None,
    vectors: str | None = None,
) -> ReindexReport:
    """Builds (or resumes, or completes) an embedding space of the store at ``store_dir`` from its bitstreams.

    Args:
        store_dir: the store.
        bundle: a model bundle defining the space (its manifest's space id, adapter and text encoder).
        adapter_weights: new adapter weights (``.safetensors``/checkpoint path, or ``random``) for the store's
            codec and CLIP model; the space id defaults to their fingerprint.
        space_id: with neither of the above, a recorded space to resume or complete; else the new space's id
            (with a bundle it must equal the manifest's).
        batch: points read and written per request.
        progress: show a progress bar (default: when stderr is a terminal).
        activate: when the space is complete, switch queries and ingest to it.
        on_error: called with (point id, message) for each point that failed.
        vectors: the new space's vector setting (:mod:`licsearch.storage.vectors`; default float32).

    Raises:
        InputError: conflicting or unknown arguments, a target for another codec.
        SpaceNotReadyError: ``activate`` was asked but some points failed.
    """
    if batch < 1:
        raise InputError(f"batch must be at least 1, got {batch}")
    with Store.open(store_dir) as store:
        return reindex_store(
            store,
            resolve_target(store, bundle=bundle, adapter_weights=adapter_weights, space_id=space_id),
            batch=batch,
            progress=progress,
            activate=activate,
            on_error=on_error,
            vector_setting=vectors,
        )


def resolve_target(
    store: Store, *, bundle: Path | None = None, adapter_weights: str | None = None, space_id: str | None = None
) -> Target:
    """The space a bundle, adapter weights or a recorded space id defines; refuses one for another codec."""
    cfg = store.config
    if bundle is not None and adapter_weights is not None:
        raise InputError("give either a bundle or adapter weights, not both", hint="a bundle has its own adapter")
    if bundle is not None:
        target = _bundle_target(bundle, space_id)
    elif adapter_weights is not None:
        target = _adapter_target(store, adapter_weights, space_id)
    elif space_id is None:
        raise InputError("say which space to build", hint="give --bundle DIR, --adapter-weights PATH or --space ID")
    elif space_id == cfg.space_id:
        _refuse_pixels(store, space_id, cfg.kind)
        return Target(space_id, cfg.models, cfg.bundle, store.index.spaces().get(space_id, 0), store.models)
    else:
        sp = space_config(store, space_id)
        _refuse_pixels(store, space_id, sp.kind)
        return Target(space_id, sp.models, sp.bundle, sp.dim, model_plane_for(config_for_space(cfg, space_id)))
    _check_codec(cfg.models, target.models)
    recorded = cfg.spaces.get(target.space_id)
    if recorded is not None and not _same_models(recorded.models, recorded.bundle, target):
        raise ConfigMismatchError(
            f"embedding space {target.space_id!r} is recorded with other models (adapter "
            f"{recorded.models.adapter.sha256[:12]}, this one {target.models.adapter.sha256[:12]})",
            hint=f"choose another --space id, or remove the old space (`licsearch reindex --remove {target.space_id}`)",
        )
    if target.space_id == cfg.space_id and bundle is None and target.models != cfg.models:
        raise ConfigMismatchError(
            f"embedding space {target.space_id!r} is the active space, made with other adapter weights",
            hint="give the new space its own --space id (or none: it defaults to the weights' fingerprint)",
        )
    return target


def _refuse_pixels(store: Store, space_id: str, kind: str) -> None:
    """A pixels space holds CLIP's image tower on pixels: a bitstream gives y_hat, never those vectors."""
    if kind == PIXELS_KIND:
        raise InputError(
            f"embedding space {space_id!r} is a pixels space (CLIP's image tower on the ingested pixels): it cannot "
            "be rebuilt from bitstreams without decoding every image",
            hint=f"train an adapter space from it with `licsearch distill --store {store.root}`, or move to another "
            f"CLIP with `licsearch migrate --store {store.root}`",
        )


def _bundle_target(bundle: Path, space_id: str | None) -> Target:
    from ..bundle.runtime import BundleModelSet

    root = bundle.expanduser().resolve()
    plane = BundleModelSet(root)
    if space_id is not None and space_id != plane.space_id:
        raise InputError(
            f"bundle {root} embeds into space {plane.space_id!r}, not {space_id!r}",
            hint="drop --space: a bundle's vectors carry its manifest's space id (`licsearch gate --assign-space`)",
        )
    return Target(plane.space_id, plane.manifest.models, str(root), plane.embed_dim, plane)


def _adapter_target(store: Store, weights: str, space_id: str | None) -> Target:
    base = store.config.models
    source = normalise_source(weights)
    models = dataclasses.replace(base, adapter=dataclasses.replace(base.adapter, weights=source, sha256=""))
    plane = ModelSet(models)
    fingerprinted = dataclasses.replace(
        models, adapter=dataclasses.replace(models.adapter, sha256=plane.adapter.weights_sha256)
    )
    return Target(space_id or space_id_for(fingerprinted), fingerprinted, None, plane.embed_dim, plane)


def _check_codec(store_models: ModelsConfig, target: ModelsConfig) -> None:
    a, b = store_models.codec, target.codec
    if (a.arch, a.quality, a.sha256) != (b.arch, b.quality, b.sha256):
        raise InputError(
            f"re-indexing cannot change the codec: the stored bitstreams were made by {a.arch}:q{a.quality}:"
            f"{a.sha256[:12]} and decode only with it; the new space's codec is {b.arch}:q{b.quality}:{b.sha256[:12]}",
            hint="re-index with an adapter (or bundle) for the store's codec; a new codec needs a new store "
            "(`licsearch init`, then ingest the source images)",
        )


def _same_models(models: ModelsConfig, bundle: str | None, target: Target) -> bool:
    return models == target.models and bundle == target.bundle


def reindex_store(
    store: Store,
    target: Target,
    *,
    batch: int = DEFAULT_BATCH,
    progress: bool | None = None,
    activate: bool = False,
    on_error: Callable[[str, str], None] | None = None,
    vector_setting: str | None = None,
) -> ReindexReport:
    """Builds ``target`` on an open store; see :func:`reindex` (``vector_setting`` is its ``vectors``)."""
    report = ReindexReport(space_id=target.space_id, active_space=store.space_id, dim=target.dim)
    if target.space_id == store.space_id:
        report.state, report.points = ACTIVE, store.index.count()
        report.already = report.points
        report.note = "the space is the active one (the candidate shares it): nothing to re-index"
        return report
    index = store.index
    _ = store.models.codec, target.plane.adapter  # load (and fingerprint-check) the models before any write
    started = time.perf_counter()  # the rebuild, without loading the models
    if target.space_id not in store.config.spaces:  # recorded first: a vector in the collection is never unexplained
        record_space(store, target.space_id, _space_record(target))
    crash_point("reindex_recorded")
    if vector_setting is not None:
        store.record_vectors(target.space_id, vector_setting)
    index.add_space(target.space_id, target.dim, store.index.setting(target.space_id).name)
    report.already = space_vectors.count_with(index, target.space_id)
    lacking = space_vectors.count_lacking(index, target.space_id)
    recorded = store.config.spaces[target.space_id]
    if lacking and recorded.state != BUILDING:
        record_space(store, target.space_id, dataclasses.replace(recorded, state=BUILDING, completed_at=None))
    bar = progress_bar(lacking, progress, f"reindex {target.space_id}")
    failed: dict[str, str] = {}

    def fail(pid: str, message: str) -> None:
        failed[pid] = message
        if on_error:
            on_error(pid, message)

    try:
        while True:  # passes: a pass may miss points added behind its cursor (ingest on a Qdrant server)
            done = 0
            for page in space_vectors.iter_lacking(index, target.space_id, batch=batch, exclude=list(failed)):
                vectors = _embed_page(store, target, page, fail)
                if vectors:
                    space_vectors.write_vectors(index, target.space_id, vectors)
                    crash_point("reindex_batch")
                done += len(vectors)
                if bar is not None:
                    bar.update(len(page))
            report.reembedded += done
            if not done or not space_vectors.count_lacking(index, target.space_id, list(failed)):
                break
    finally:
        if bar is not None:
            bar.close()
    optimize_index(store, progress)
    report.failures = [{"id": pid, "error": msg} for pid, msg in failed.items()]
    report.points = index.count()
    complete = not failed and space_vectors.count_lacking(index, target.space_id) == 0
    report.state = COMPLETE if complete else BUILDING
    current = store.config.spaces[target.space_id]
    if complete and current.state != COMPLETE:
        record_space(store, target.space_id, dataclasses.replace(current, state=COMPLETE, completed_at=time.time()))
    report.seconds = time.perf_counter() - started
    if activate:
        if not complete:
            raise SpaceNotReadyError(
                f"embedding space {target.space_id!r} was not activated: {len(failed)} points failed to re-embed",
                hint="repair the store (`licsearch fsck --repair`), then run the re-index again",
            )
        activate_space(store, target.space_id)
        report.activated, report.state, report.active_space = True, ACTIVE, target.space_id
    return report


def _space_record(target: Target) -> SpaceConfig:
    return SpaceConfig(models=target.models, dim=target.dim, state=BUILDING, bundle=target.bundle)


def _embed_page(
    store: Store, target: Target, page: list[tuple[str, dict[str, Any]]], fail: Callable[[str, str], None]
) -> dict[str, list[float]]:
    """Entropy-decodes each point's bitstream and runs the target adapter, batching latents of one shape."""
    import torch

    groups: dict[tuple[int, ...], list[tuple[str, torch.Tensor]]] = {}
    for pid, payload in page:
        try:
            data = store.blobs.get(str(payload["blob"]))
            _, y_hat = store.models.entropy_decode(data)
        except (KeyError, LicsearchError) as e:
            fail(pid, f"cannot re-embed from its bitstream: {e}")
            continue
        groups.setdefault(tuple(y_hat.shape), []).append((pid, y_hat))
    out: dict[str, list[float]] = {}
    for items in groups.values():
        emb = target.plane.adapter.embed(torch.cat([y for _, y in items]))
        out.update((pid, [float(x) for x in row]) for (pid, _), row in zip(items, emb.tolist(), strict=True))
    return out
