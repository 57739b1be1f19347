"""Embedding spaces of a store: their state and counts, switching queries to a built space, removing an old one.

The store config names one *active* space (the one ``search`` and ``ingest`` use) and records the others: a
space a re-index is ``building``, one that is ``complete`` (every point carries its vector), and ``retired``
ones that were active before (the states are :mod:`licsearch.spaces`'s). Queries never mix spaces: a query
runs in exactly one named vector, and a space that does not cover every point yet is refused with its progress.
A space's vectors are removed only on request, and never the active space's.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from ..config import ModelsConfig, SpaceConfig, StoreConfig
from ..errors import InputError
from ..model.models import ModelPlane
from ..spaces import ACTIVE, BUILDING, PIXELS_KIND, RETIRED, UNRECORDED
from ..storage import space_vectors
from ..storage.store import Store, model_plane_for


class SpaceNotReadyError(InputError):
    """A query or an activation named a space that does not cover every point yet."""


@dataclass(frozen=True)
class SpaceStatus:
    """One embedding space: its state (``active``, ``building``, ``complete``, ``retired``), kind and coverage.

    ``kind`` is ``adapter`` or ``pixels`` (:data:`~licsearch.spaces.SPACE_KINDS`), empty for unrecorded vectors.
    """

    space_id: str
    state: str
    dim: int | None
    points: int
    with_vector: int
    bundle: str | None = None
    adapter_sha256: str = ""
    kind: str = ""

    @property
    def missing(self) -> int:
        return self.points - self.with_vector

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "missing": self.missing}


def space_config(store: Store, space_id: str) -> SpaceConfig:
    """The recorded non-active space ``space_id``.

    Raises:
        InputError: the store records no such space.
    """
    sp = store.config.spaces.get(space_id)
    if sp is None:
        known = [store.space_id, *sorted(store.config.spaces)]
        raise InputError(
            f"unknown embedding space {space_id!r} in {store.root} (it has {', '.join(known)})",
            hint="define a new space with `licsearch reindex --bundle DIR` or `--adapter-weights PATH`",
        )
    return sp


def space_status(store: Store) -> list[SpaceStatus]:
    """Every space: the active one first, then recorded ones, then vectors in the collection nobody recorded."""
    cfg = store.config
    dims = store.index.spaces()
    total = store.index.count()
    out = [_status(store, cfg.space_id, ACTIVE, dims, total, cfg.bundle, _adapter_sha(cfg.models, cfg.kind), cfg.kind)]
    for sid, sp in sorted(cfg.spaces.items()):
        out.append(_status(store, sid, sp.state, dims, total, sp.bundle, _adapter_sha(sp.models, sp.kind), sp.kind))
    for sid in sorted(set(dims) - {cfg.space_id, *cfg.spaces}):
        out.append(_status(store, sid, UNRECORDED, dims, total, None, "", ""))
    return out


def space_kind(store: Store, space_id: str) -> str:
    """The kind of a recorded space (the active one included): ``adapter`` or ``pixels``.

    Raises:
        InputError: the store records no such space.
    """
    return store.config.kind if space_id == store.space_id else space_config(store, space_id).kind


def _adapter_sha(models: ModelsConfig, kind: str) -> str:
    return "" if kind == PIXELS_KIND else models.adapter.sha256


def _status(
    store: Store,
    sid: str,
    state: str,
    dims: dict[str, int],
    total: int,
    bundle: str | None,
    adapter: str,
    kind: str,
) -> SpaceStatus:
    have = space_vectors.count_with(store.index, sid) if sid in dims else 0
    return SpaceStatus(sid, state, dims.get(sid), total, have, bundle, adapter, kind)


def check_queryable(store: Store, space_id: str) -> None:
    """Refuses a query in a space that is not the active one and does not cover every point.

    Raises:
        InputError: the space is unknown.
        SpaceNotReadyError: the space is still building, or points were ingested after it was built.
    """
    if space_id == store.space_id:
        return
    sp = space_config(store, space_id)
    total = store.index.count()
    have = space_vectors.count_with(store.index, space_id) if space_id in store.index.spaces() else 0
    if sp.state == BUILDING or have < total:
        pct = 100.0 * have / total if total else 100.0
        why = "still building" if sp.state == BUILDING else f"{sp.state} but missing points ingested since"
        raise SpaceNotReadyError(
            f"embedding space {space_id!r} is {why}: {have} of {total} points have its vector ({pct:.0f} %); "
            "queries never mix spaces, so it cannot be searched until every point has one",
            hint=f"finish it with `licsearch reindex --store {store.root} --space {space_id}`, or search the "
            f"active space {store.space_id!r} (without --space)",
        )


def config_for_space(cfg: StoreConfig, space_id: str) -> StoreConfig:
    """The store config as it would be with ``space_id`` active (the models and bundle that produce it)."""
    if space_id == cfg.space_id:
        return cfg
    sp = cfg.spaces[space_id]
    return dataclasses.replace(cfg, models=sp.models, bundle=sp.bundle, space_id=space_id, kind=sp.kind)


def plane_for_space(store: Store, space_id: str) -> ModelPlane:
    """The models that embed images and texts into ``space_id`` (the store's own for the active space)."""
    if space_id == store.space_id:
        return store.models
    space_config(store, space_id)
    return model_plane_for(config_for_space(store.config, space_id))


def record_space(store: Store, space_id: str, space: SpaceConfig | None) -> None:
    """Writes the store config with ``space_id`` recorded as ``space`` (or forgotten, with None)."""
    spaces = dict(store.config.spaces)
    if space is None:
        spaces.pop(space_id, None)
    else:
        spaces[space_id] = space
    cfg = dataclasses.replace(store.config, spaces=spaces)
    cfg.save(store.root)
    store.config = cfg


def activate_space(store: Store, space_id: str) -> StoreConfig:
    """Switches queries and ingest to ``space_id``; the formerly active space is kept as ``retired``.

    Only a space whose vector every point carries is activated; a no-op for the active space.

    Raises:
        InputError: the space is unknown.
        SpaceNotReadyError: some points lack its vector.
    """
    cfg = store.config
    if space_id == cfg.space_id:
        return cfg
    sp = space_config(store, space_id)
    total = store.index.count()
    have = space_vectors.count_with(store.index, space_id) if space_id in store.index.spaces() else 0
    if have < total:
        raise SpaceNotReadyError(
            f"cannot activate embedding space {space_id!r}: {total - have} of {total} points lack its vector",
            hint=f"build it first with `licsearch reindex --store {store.root} --space {space_id}`",
        )
    old = SpaceConfig(
        models=cfg.models,
        dim=store.index.spaces()[cfg.space_id],
        state=RETIRED,
        bundle=cfg.bundle,
        kind=cfg.kind,
        created_at=cfg.created_at,
        completed_at=time.time(),
    )
    spaces = {k: v for k, v in cfg.spaces.items() if k != space_id}
    spaces[cfg.space_id] = old
    new = dataclasses.replace(cfg, models=sp.models, bundle=sp.bundle, space_id=space_id, spaces=spaces, kind=sp.kind)
    new.save(store.root)  # one atomic write switches queries, ingest and the recorded models together
    store.config = new
    store.models = model_plane_for(new)
    return new


def remove_space(store: Store, space_id: str) -> None:
    """Deletes a non-active space's vectors from every point and forgets it.

    The vectors go first: an interrupted removal leaves the space recorded (a rerun finishes it).

    Raises:
        InputError: ``space_id`` is the active space, or the store has no such space.
    """
    if space_id == store.space_id:
        raise InputError(
            f"embedding space {space_id!r} is the active space; queries use it, so it is not removed",
            hint="activate another complete space first (`licsearch reindex --activate --space ID`)",
        )
    if space_id not in store.config.spaces and space_id not in store.index.spaces():
        space_config(store, space_id)  # raises, naming the known spaces
    space_vectors.drop_space(store.index, space_id)
    record_space(store, space_id, None)
