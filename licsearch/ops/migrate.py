"""Migrate a store to another CLIP by decoding only a sample of its bitstreams: ``licsearch migrate``.

Moving to a new CLIP model normally means decoding every stored image and running the new image tower on it. The
adapter of Luo 2024 (arXiv 2404.10234) reads y_hat, which entropy decoding alone recovers from a bitstream, so
only a sample needs pixels: N points, chosen by a hash of their id (the same N always picks the same points), are
decoded (g_s) and embedded by the new image tower as teacher; an adapter for the new CLIP is fitted on the sample's
y_hat, measured on a held-out part of the sample (the figures and thresholds of :mod:`licsearch.ops.distill`), and
every point is then re-embedded from its bitstream by the re-index path (:mod:`licsearch.ops.reindex`) into a new
space whose models are the store's codec, the new adapter and the new CLIP, so its text queries use the new text
tower.

How the adapter is fitted. When the store's active space is an adapter space, its adapter already reads y_hat
well; only its output layer is specific to the old CLIP. The new adapter keeps the old one's trunk and gets a new
output layer: a linear map from the old adapter's vectors to the new teacher vectors (that two networks'
representations are related by a linear map is Lenc & Vedaldi 2015), fitted in closed form by ridge regression
shrunk towards the orthogonal Procrustes map, with the penalty of least leave-one-out error on the training part,
and folded into the last linear layer. On the offline world it beats gradient training on a sample of 100 by a wide
margin (README, "Moving to another CLIP"). Without an adapter space (a pixels store, random or bundle weights), a
fresh adapter is trained on the pairs (:func:`licsearch.ops.distill.train_from_pairs`).

Every phase is resumable: teacher vectors are written in chunks under ``STORE/migrations/KEY/``, training
checkpoints there, the fit is deterministic, and the re-index resumes from Qdrant itself; a run killed at any moment
and run again reaches the same end state. A CLIP that cannot load is refused before anything is written. The space
becomes ``complete``; it is activated only with ``activate`` and when the held-out figures pass the thresholds (or
with ``force``), and the report says why not.

The report prices the migration against the full alternative, decoding every image and running the new image
tower on it: the sample measures that path's seconds per image, which times the store's size is its cost.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import defaults
from ..config import AdapterConfig, ClipConfig, ModelsConfig
from ..errors import ConfigMismatchError, InputError, LicsearchError, StoreError
from ..faults import crash_point
from ..fsutil import atomic_write
from ..jsondoc import write_json
from ..model.adapter import Adapter, AdapterShape
from ..model.models import ModelSet
from ..model.text import TextEncoder, load_clip_model
from ..model.threads import torch_threads
from ..model.weights import RANDOM, save_state_dict, state_dict_sha256
from ..spaces import ADAPTER_KIND, space_id_for
from ..storage.store import Store
from .anchors import TextAnchors, fit_map, text_anchors
from .distill import (
    ADAPTERS_DIR,
    Pairs,
    Thresholds,
    TrainOptions,
    decide,
    ids_digest,
    measure_heldout,
    vocabulary_texts,
)
from .progress import progress_bar
from .reindex import Target, reindex_store
from .spaces import activate_space

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..model.image_tower import ImageTower

MIGRATIONS_DIR = "migrations"
"""Work folders of ``migrate`` inside the store (teacher chunks, training run, the last report)."""
MIN_TRAIN, MIN_HELDOUT = 8, 4
CHUNK = 16
REEMBED_BATCH = 128


@dataclass(frozen=True)
class MigrateOptions:
    """What ``licsearch migrate`` was asked (see the CLI's help for each)."""

    clip: ClipConfig
    sample: int
    holdout: float = defaults.MIGRATE_HOLDOUT
    train: TrainOptions = field(default_factory=lambda: TrainOptions(steps=defaults.MIGRATE_STEPS))
    thresholds: Thresholds = field(default_factory=Thresholds)
    texts: tuple[str, ...] | None = None
    anchor_texts: tuple[str, ...] | None = None
    activate: bool = False
    force: bool = False
    progress: bool | None = None
    threads: int | None = None


@dataclass
class MigrateReport:
    """What a migration did, what it measured and what it cost.

    Attributes:
        method: how the adapter was fitted: ``ridge_head`` (the store adapter's trunk, a new output layer) or
            ``trained`` (a fresh adapter trained on the pairs).
        seconds: ``sample_decode`` and ``sample_embed`` (the sample's g_s and new image tower), ``fit`` (training)
            and ``reembed`` (every point from its bitstream), as measured by the run that did each.
        cost: seconds per image of each path and each path's cost for the whole store (:func:`cost_figures`).
    """

    space_id: str
    clip: dict[str, Any]
    method: str
    sample: dict[str, int]
    heldout: dict[str, Any]
    thresholds: dict[str, float]
    passed: bool
    reasons: list[str]
    seconds: dict[str, float]
    cost: dict[str, float]
    reindex: dict[str, Any]
    state: str
    activated: bool
    active_space: str
    weights: str
    work_dir: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def migrate(store_dir: Path, options: MigrateOptions) -> MigrateReport:
    """Moves the store at ``store_dir`` to another CLIP (a new space), decoding only ``options.sample`` images.

    Raises:
        InputError: bad options (sample size, hold-out fraction), or the store already uses this CLIP.
        ModelError: the new CLIP cannot load (nothing is written then).
        StoreError: the store is read-only, or a sampled bitstream fails to decode.
    """
    _check_options(options)
    c = options.clip
    clip_model = load_clip_model(c.model, c.tag, c.weights, seed=c.seed)  # refused here, before any write
    clip_cfg = dataclasses.replace(c, sha256=state_dict_sha256(clip_model.state_dict()))
    with Store.open(store_dir) as store:
        store.require_writable("migrate to another CLIP")
        if clip_cfg.sha256 == store.config.models.clip.sha256:
            raise InputError(
                f"the store already uses this CLIP ({c.model}, weights {clip_cfg.sha256[:12]})",
                hint="a new adapter for the same CLIP is `licsearch distill` or `licsearch reindex --adapter-weights`",
            )
        with torch_threads(options.threads):
            return _migrate(store, options, clip_model, clip_cfg)


def _check_options(o: MigrateOptions) -> None:
    if not 0.0 < o.holdout < 1.0:
        raise InputError(f"--holdout must be between 0 and 1, got {o.holdout}", hint="e.g. --holdout 0.2")
    held = math.ceil(o.sample * o.holdout)
    if o.sample - held < MIN_TRAIN or held < MIN_HELDOUT:
        raise InputError(
            f"--sample {o.sample} with --holdout {o.holdout} leaves {o.sample - held} training and {held} held-out "
            f"images; at least {MIN_TRAIN} and {MIN_HELDOUT} are needed",
            hint="raise --sample (10 % of the store is a good start)",
        )
    if o.threads is not None and o.threads < 1:
        raise InputError(f"--threads {o.threads} must be at least 1")


def _migrate(store: Store, o: MigrateOptions, clip_model: Any, clip_cfg: ClipConfig) -> MigrateReport:
    import torch

    from ..model.image_tower import ImageTower

    total = store.index.count()
    if o.sample > total:
        raise InputError(f"--sample {o.sample} is more than the store's {total} points", hint=f"use at most {total}")
    text = TextEncoder(
        clip_model, clip_cfg.model, clip_cfg.tag, clip_cfg.sha256, random_weights=clip_cfg.weights == RANDOM
    )
    texts = list(o.texts) if o.texts is not None else vocabulary_texts(text.tokenizer)
    trunk = _trunk(store)
    if o.anchor_texts and trunk is None:
        # Text anchors constrain the map from the old adapter's vectors to the new CLIP's; without a trained adapter
        # space there is no such map (the new adapter is trained from scratch), so they could only be ignored.
        raise InputError(
            "--anchor-texts needs an active adapter space with trained weights; "
            f"this store's active space is {store.config.kind!r}"
            + (" with random weights" if store.config.kind == ADAPTER_KIND else ""),
            hint="drop --anchor-texts, or run `licsearch distill --activate` first",
        )
    work = store.root.resolve() / MIGRATIONS_DIR / f"{clip_cfg.model.lower()}-{clip_cfg.sha256[:12]}-n{o.sample}"
    work.mkdir(parents=True, exist_ok=True)
    ids = sample_ids(store, o.sample)
    pairs, timing = _sample_pairs(store, ids, ImageTower(clip_model), work, o.progress)
    n_held = math.ceil(o.sample * o.holdout)
    train_ids, held_ids = ids[: o.sample - n_held], ids[o.sample - n_held :]
    a = store.config.models.adapter
    shape = AdapterShape(store.models.codec.latent_channels, text.embed_dim, width=a.width, hidden=a.hidden)
    t0 = time.perf_counter()
    anchors = None
    if trunk is not None:
        anchors = text_anchors(store.models.text, text, o.anchor_texts) if o.anchor_texts else None
        method, state = "ridge_head", ridge_head(trunk, pairs.subset(train_ids), shape, anchors)
        timing["fit"] = time.perf_counter() - t0
    else:
        from .distill import train_from_pairs

        identity = {"migrate": clip_cfg.sha256, "train_ids": ids_digest(train_ids)}
        trained = train_from_pairs(pairs.subset(train_ids), shape, work / "train", o.train, identity=identity)
        method, state, timing["fit"] = "trained", trained.state, trained.seconds
    crash_point("migrate_fitted")
    weights = _save_weights(store, state, shape, clip_cfg.model)
    adapter = Adapter.load(shape, str(weights))  # the file, as the re-index will load it
    held = pairs.subset(held_ids)
    pred = torch.cat([adapter.embed(y) for y in held.y_hats]).numpy()
    figures = measure_heldout(pred, held.teacher, text.embed(texts).vectors.numpy())
    reasons = decide(figures, o.thresholds)
    passed = not reasons
    target = _target(store, clip_cfg, weights, adapter)
    rx = reindex_store(store, target, batch=REEMBED_BATCH, progress=o.progress)
    timing["reembed"] = _reembed_seconds(work, rx.seconds, rx.reembedded, rx.points)
    activated = store.space_id == target.space_id  # by an earlier run of the same migration
    if o.activate and not activated and (passed or o.force) and rx.state == "complete":
        activate_space(store, target.space_id)
        activated = True
    if not o.activate and not activated:
        reasons.append("not asked to activate (pass --activate)")
    elif reasons and activated and o.force:
        reasons.append("activated anyway: --force")
    elif reasons and not activated:
        reasons.append("not activated: the held-out figures fail the thresholds (--force activates anyway)")
    report = MigrateReport(
        space_id=target.space_id,
        clip={"model": clip_cfg.model, "tag": clip_cfg.tag, "weights": clip_cfg.weights, "sha256": clip_cfg.sha256},
        method=method,
        sample={
            "n": o.sample,
            "train": len(train_ids),
            "heldout": len(held_ids),
            "points": rx.points,
            "anchors": len(anchors) if anchors is not None else 0,
        },
        heldout=figures.to_dict(),
        thresholds=dataclasses.asdict(o.thresholds),
        passed=passed,
        reasons=reasons,
        seconds=timing,
        cost=cost_figures(timing, o.sample, rx.points),
        reindex=rx.to_dict(),
        state="active" if activated else rx.state,
        activated=activated,
        active_space=store.space_id,
        weights=str(weights),
        work_dir=str(work),
    )
    write_json(work / "report.json", report.to_dict(), indent=2)
    return report


def sample_ids(store: Store, n: int) -> list[str]:
    """``n`` point ids chosen by a hash of the id: the same store and ``n`` always give the same sample."""
    ids = [pid for pid, _ in store.index.iter_points()]
    return sorted(ids, key=lambda pid: hashlib.sha256(f"migrate-sample|{pid}".encode()).hexdigest())[:n]


def _sample_pairs(
    store: Store, ids: list[str], tower: ImageTower, work: Path, progress: bool | None
) -> tuple[Pairs, dict[str, float]]:
    """y_hat of every sampled point (entropy decode) and its teacher vector (decode, new image tower).

    Teacher vectors are written in chunks as they are made; chunks on disk (from an interrupted run) are read
    back, and their points are only entropy-decoded. Also returns the decode and embed seconds of the sample.
    """
    import numpy as np

    teacher: dict[str, np.ndarray] = {}
    timing = {"sample_decode": 0.0, "sample_embed": 0.0}
    for path in sorted(work.glob("teacher-*.npz")):
        with np.load(path, allow_pickle=False) as z:
            teacher.update(zip([str(i) for i in z["ids"]], z["vectors"], strict=True))
            timing["sample_decode"] += float(z["decode_s"])
            timing["sample_embed"] += float(z["embed_s"])
    payloads = {pid: payload for pid, payload, _ in store.index.retrieve(ids)}
    y_hats: dict[str, torch.Tensor] = {}
    todo = [pid for pid in ids if pid not in teacher]
    bar = progress_bar(len(todo), progress, "migrate: decode the sample")
    try:
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            t0 = time.perf_counter()
            pixels = []
            for pid in chunk:
                bs, y_hats[pid] = _entropy_decode(store, pid, payloads)
                pixels.append(store.models.codec.synthesize(y_hats[pid], bs.width, bs.height))
            t1 = time.perf_counter()
            vectors = tower.embed(pixels).numpy().astype(np.float32)
            t2 = time.perf_counter()
            teacher.update(zip(chunk, vectors, strict=True))
            timing["sample_decode"] += t1 - t0
            timing["sample_embed"] += t2 - t1
            _save_chunk(work / f"teacher-{ids_digest(chunk)[:16]}.npz", chunk, vectors, t1 - t0, t2 - t1)
            crash_point("migrate_teacher")
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    for pid in ids:
        if pid not in y_hats:
            y_hats[pid] = _entropy_decode(store, pid, payloads)[1]
    pairs = Pairs(list(ids), [y_hats[i].float() for i in ids], np.stack([teacher[i] for i in ids]))
    return pairs, timing


def _entropy_decode(store: Store, pid: str, payloads: dict[str, dict[str, Any]]) -> tuple[Any, torch.Tensor]:
    try:
        return store.models.entropy_decode(store.blobs.get(str(payloads[pid]["blob"])))
    except (KeyError, LicsearchError) as e:
        raise StoreError(
            f"the sampled point {pid} cannot be decoded from its bitstream: {e}",
            hint=f"repair the store (`licsearch fsck --store {store.root} --repair`), then run the migration again",
        ) from e


def _save_chunk(path: Path, ids: list[str], vectors: np.ndarray, decode_s: float, embed_s: float) -> None:
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, ids=np.array(ids), vectors=vectors, decode_s=decode_s, embed_s=embed_s)
    atomic_write(path, buf.getvalue())


def _trunk(store: Store) -> Adapter | None:
    """The store's active adapter when its trunk can serve the new one (an eager adapter space with weights)."""
    cfg = store.config
    if cfg.kind != ADAPTER_KIND or cfg.bundle is not None or cfg.models.adapter.weights == RANDOM:
        return None
    adapter = store.models.adapter
    return adapter if isinstance(adapter, Adapter) else None


def ridge_head(
    trunk: Adapter, pairs: Pairs, shape: AdapterShape, anchors: TextAnchors | None = None
) -> dict[str, torch.Tensor]:
    """The new adapter's weights: ``trunk``'s, with its output layer refitted to ``pairs``' teacher vectors.

    The old adapter's unit vectors ``x`` are mapped linearly to the teacher vectors: ridge regression shrunk towards
    the orthogonal Procrustes map of the same pairs (Schönemann 1966), its penalty chosen by the leave-one-out error.
    A map without a constant term commutes with the adapter's final normalisation, so it folds into the last linear
    layer exactly: ``normalize(M^T (W h + b)) = normalize(M^T normalize(W h + b))``.
    """
    import numpy as np
    import torch

    x = torch.cat([trunk.embed(y) for y in pairs.y_hats]).double().numpy()
    m = fit_map(x, pairs.teacher.astype(np.float64), anchors)
    mlp: Any = trunk.module.mlp  # LayerNorm, Linear, GELU, Linear; the adapter normalises its output
    last = mlp[-1]
    prefix = next(f"{name}." for name, mod in trunk.module.named_modules() if mod is last)
    w_old, b_old = last.weight.detach().double().numpy(), last.bias.detach().double().numpy()
    state = {k: v.detach().clone() for k, v in trunk.module.state_dict().items()}
    state[f"{prefix}weight"] = torch.from_numpy(m.T @ w_old).float().contiguous()
    state[f"{prefix}bias"] = torch.from_numpy(m.T @ b_old).float().contiguous()
    if tuple(state[f"{prefix}weight"].shape) != (shape.embed_dim, shape.hidden):
        raise StoreError(f"the store's adapter does not fit {shape}: its output layer is {tuple(w_old.shape)}")
    return state


def _save_weights(store: Store, state: dict[str, torch.Tensor], shape: AdapterShape, clip: str) -> Path:
    """Writes the adapter into ``DIR/adapters/migrated-<fingerprint>.safetensors`` (atomically; once)."""
    folder = store.root / ADAPTERS_DIR
    folder.mkdir(exist_ok=True)
    path = folder / f"migrated-{state_dict_sha256(state)[:16]}.safetensors"
    if not path.is_file():
        meta = {"kind": "adapter", "source": "licsearch migrate", "clip": clip}
        save_state_dict(state, path, {**meta, **{k: str(v) for k, v in shape.to_dict().items()}})
    return path.resolve()


def _target(store: Store, clip: ClipConfig, weights: Path, adapter: Adapter) -> Target:
    """The new space: the store's codec, the new adapter and the new CLIP, fingerprinted."""
    base = store.config.models.adapter
    models = ModelsConfig(
        codec=store.config.models.codec,
        clip=clip,
        adapter=AdapterConfig(str(weights), base.seed, base.width, base.hidden, adapter.weights_sha256),
    )
    plane = ModelSet(models)
    plane.__dict__["codec"] = store.models.codec  # the store's loaded codec and the new adapter: no second load
    plane.__dict__["adapter"] = adapter
    target = Target(space_id_for(models), models, None, adapter.shape.embed_dim, plane)
    recorded = store.config.spaces.get(target.space_id)
    if recorded is not None and recorded.models != models:
        raise ConfigMismatchError(
            f"embedding space {target.space_id!r} is recorded with other models",
            hint=f"remove it (`licsearch reindex --remove {target.space_id}`) and migrate again",
        )
    return target


def _reembed_seconds(work: Path, seconds: float, reembedded: int, points: int) -> float:
    """Seconds to re-embed every point: measured when this run re-embedded, else the rate an earlier run recorded."""
    path = work / "reembed.json"
    if reembedded:
        atomic_write(path, json.dumps({"seconds_per_point": seconds / reembedded}).encode())
    if not path.is_file():
        return 0.0
    return float(json.loads(path.read_text(encoding="utf-8"))["seconds_per_point"]) * points


def cost_figures(seconds: dict[str, float], sample: int, points: int) -> dict[str, float]:
    """Seconds per image of each path, and each path's cost for the whole store.

    The full alternative (decode every image, run the new image tower) costs the sample's decode and embed seconds
    per image times the store's size; the migration costs the sample, the fit and the re-embedding.
    """
    full_per = (seconds["sample_decode"] + seconds["sample_embed"]) / sample
    migrate_s = seconds["sample_decode"] + seconds["sample_embed"] + seconds["fit"] + seconds["reembed"]
    full_s = full_per * points
    return {
        "points": float(points),
        "full_s_per_image": full_per,
        "sample_decode_s_per_image": seconds["sample_decode"] / sample,
        "sample_embed_s_per_image": seconds["sample_embed"] / sample,
        "reembed_s_per_image": seconds["reembed"] / points if points else 0.0,
        "fit_s": seconds["fit"],
        "migrate_s": migrate_s,
        "full_s": full_s,
        "speedup": full_s / migrate_s if migrate_s else 0.0,
    }
