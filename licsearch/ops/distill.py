"""Distillation of a store's own adapter from its pixels space: ``licsearch distill``.

A store that started without an adapter for its codec and CLIP keeps CLIP's image-tower vectors of every ingested
image in a ``pixels`` space. Those vectors and the bitstreams are exactly the pairs the adapter is trained on
(Luo 2024, arXiv 2404.10234, second phase: ``1 - cos(adapter(y_hat), t)``): y_hat by entropy decoding each stored
bitstream (no synthesis, no CLIP pass, no source file), ``t`` the teacher vector of the same point. A held-out split,
fixed by the point ids, measures the trained adapter before it may become the active space; the ``adapter`` space is
then built from the bitstreams by the re-index path (:mod:`licsearch.ops.reindex`).

The parts, for ``distill`` and for other commands that train an adapter from stored pairs (``migrate``):

- :func:`teacher_space`: the store's pixels space (the teacher), or a clear error.
- :func:`heldout_split`: the deterministic (train, held-out) split of point ids.
- :func:`load_pairs`: (y_hat, teacher vector) pairs of a list of point ids, as :class:`Pairs`.
- :func:`train_from_pairs`: trains an adapter on pairs in a run folder, resuming from its checkpoint.
- :func:`measure_heldout`: the held-out figures (:class:`Heldout`) of adapter vectors against teacher vectors.
- :func:`decide`: the reasons a space fails :class:`Thresholds` (none: it may be activated), including a bound that
  a random ranking meets on so few held-out points (:func:`chance_levels`).
- :func:`distill`: all of it on a store, then the adapter space and, on request, its activation.

Crash safety: nothing is written before every pair is loaded; training checkpoints into
``DIR/distill/<teacher space>-<digest>/`` and resumes there; the weights go to ``DIR/adapters/`` atomically; the
re-index resumes by itself. A run killed at any moment and run again reaches the same end state.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import defaults
from ..errors import InputError, LicsearchError, StoreError
from ..faults import crash_point
from ..model.adapter import Adapter, AdapterShape
from ..model.threads import torch_threads
from ..model.weights import RANDOM, save_state_dict, state_dict_sha256
from ..spaces import BUILDING, PIXELS_KIND
from ..storage.store import Store
from .progress import progress_bar
from .reindex import reindex_store, resolve_target
from .spaces import activate_space, plane_for_space

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

DISTILL_DIR = "distill"
"""Training runs of ``distill`` inside the store (checkpoint and log of each)."""
ADAPTERS_DIR = "adapters"
"""Adapter weights trained inside the store (``distilled-<fingerprint>.safetensors``)."""
TOP_K = 10
"""The depth of the ranking figures (recall@10 overlap, text top-10 agreement)."""


@dataclass(frozen=True)
class Pairs:
    """Training pairs of a list of points: each one's y_hat (``(1, M, h, w)``, shapes may differ) and teacher vector.

    Attributes:
        ids: the point ids, in order.
        y_hats: their latents, entropy-decoded from the stored bitstreams.
        teacher: ``(N, D)`` unit teacher vectors, float32.
    """

    ids: list[str]
    y_hats: list[torch.Tensor] = field(repr=False)
    teacher: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, ids: Sequence[str]) -> Pairs:
        where = {pid: i for i, pid in enumerate(self.ids)}
        idx = [where[pid] for pid in ids]
        return Pairs([self.ids[i] for i in idx], [self.y_hats[i] for i in idx], self.teacher[idx])


@dataclass(frozen=True)
class Heldout:
    """The held-out figures of adapter vectors against the teacher's.

    Attributes:
        points: held-out points measured.
        cos_mean: mean cosine of each point's adapter vector to its teacher vector.
        recall_at_10_overlap: mean overlap of each point's image-to-image top 10 under both
            (:func:`licsearch.metrics.recall_overlap`).
        text_top10_agreement: mean overlap of the top 10 held-out images of each text query under both.
        texts: the number of text queries.
    """

    points: int
    cos_mean: float
    recall_at_10_overlap: float
    text_top10_agreement: float
    texts: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Thresholds:
    """Least held-out figures a distilled space needs to be activated (0 for a figure not held)."""

    recall_min: float = defaults.ADAPTER_RECALL_OVERLAP_MIN
    cos_min: float = 0.0
    text_min: float = 0.0


@dataclass(frozen=True)
class TrainOptions:
    """How an adapter is trained from pairs (:func:`train_from_pairs`).

    ``flip`` is the chance that a pair's y_hat is mirrored left to right (its teacher vector kept): the mirror
    augmentation of Krizhevsky et al. 2012, applied to the latent, which the codec's convolutions map close to the
    latent of the mirrored image; it costs nothing and narrows the gap between training and held-out cosine.
    """

    steps: int = defaults.DISTILL_STEPS
    batch_size: int = defaults.DISTILL_BATCH
    lr: float = defaults.DISTILL_LR
    weight_decay: float = 0.01
    flip: float = defaults.DISTILL_FLIP
    seed: int = defaults.SEED
    init: str = RANDOM
    checkpoint_every: int | None = None
    progress: bool | None = None

    def recipe(self) -> dict[str, Any]:
        """The options that decide the weights, as a run's identity records them. ``init`` is left out: a path is not
        a recipe, so the caller puts the starting weights' fingerprint in the identity (runs from before it resume)."""
        return {k: v for k, v in asdict(self).items() if k not in ("progress", "checkpoint_every", "init")}

    @property
    def every(self) -> int:
        """Steps between checkpoints: as given, else a tenth of the run (at most 200)."""
        return self.checkpoint_every or max(1, min(200, self.steps // 10))


@dataclass(frozen=True)
class DistillOptions:
    """Options of ``licsearch distill`` (see the CLI's help for each)."""

    holdout: float = defaults.DISTILL_HOLDOUT
    train: TrainOptions = field(default_factory=TrainOptions)
    texts: tuple[str, ...] | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    activate: bool = False
    force: bool = False
    progress: bool | None = None
    threads: int | None = None


@dataclass
class DistillReport:
    """What one ``distill`` run did; ``reasons`` says why the space was not activated (empty when it was)."""

    space_id: str
    teacher_space: str
    heldout: Heldout
    points: int
    train_points: int
    weights: str
    adapter_sha256: str
    passed: bool
    activated: bool
    reasons: list[str]
    state: str
    seconds: float
    train_seconds: float
    reindex_seconds: float
    resumed_from: int | None = None
    thresholds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["heldout"] = self.heldout.to_dict()
        return d


def teacher_space(store: Store) -> str:
    """The store's pixels space: the active one when it is a pixels space, else a recorded complete or retired one.

    Raises:
        InputError: the store has no pixels space.
    """
    if store.config.kind == PIXELS_KIND:
        return store.space_id
    for sid, sp in sorted(store.config.spaces.items()):
        if sp.kind == PIXELS_KIND and sp.state != BUILDING:
            return sid
    raise InputError(
        f"the store at {store.root} has no pixels space to distil from (its active space {store.space_id!r} is an "
        "adapter space)",
        hint="distil needs CLIP's image-tower vectors of the ingested images: a store made by `licsearch init` "
        "without adapter weights keeps them",
    )


def heldout_split(ids: Sequence[str], fraction: float) -> tuple[list[str], list[str]]:
    """(train ids, held-out ids): a point is held out when the hash of its id falls below ``fraction``.

    The split depends on each id alone, so it is the same in every run and for every subset of points.
    """
    if not 0.0 < fraction < 1.0:
        raise InputError(f"--holdout {fraction} is out of range", hint="give a fraction between 0 and 1, e.g. 0.1")
    train: list[str] = []
    held: list[str] = []
    for pid in ids:
        u = int.from_bytes(hashlib.sha256(f"distill-holdout|{pid}".encode()).digest()[:8], "big") / 2.0**64
        (held if u < fraction else train).append(pid)
    return train, held


def load_pairs(store: Store, ids: Sequence[str], teacher: str, *, progress: bool | None = None) -> Pairs:
    """Entropy-decodes the bitstreams of ``ids`` and reads their vectors in the space ``teacher``.

    Raises:
        StoreError: a point lacks its teacher vector or its bitstream, or the bitstream fails to decode.
    """
    import numpy as np

    bar = progress_bar(len(ids), progress, "read pairs")
    out_ids: list[str] = []
    ys: list[torch.Tensor] = []
    vecs: list[list[float]] = []
    try:
        for start in range(0, len(ids), 64):
            for pid, payload, vectors in store.index.retrieve(list(ids[start : start + 64]), with_vectors=[teacher]):
                vec = vectors.get(teacher)
                if vec is None:
                    raise StoreError(f"point {pid} has no vector in the teacher space {teacher!r}")
                try:
                    _, y_hat = store.models.entropy_decode(store.blobs.get(str(payload["blob"])))
                except (KeyError, LicsearchError) as e:
                    raise StoreError(
                        f"the bitstream of point {pid} fails to decode: {e}",
                        hint=f"check and repair the store (`licsearch fsck --store {store.root} --repair`), then "
                        "run distill again; nothing was trained or activated",
                    ) from None
                out_ids.append(pid)
                ys.append(y_hat.float())
                vecs.append(vec)
            if bar is not None:
                bar.update(min(64, len(ids) - start))
    finally:
        if bar is not None:
            bar.close()
    return Pairs(out_ids, ys, np.asarray(vecs, dtype=np.float32).reshape(len(vecs), -1))


class _PairTrainer:
    """One distillation step per call on a batch of stored pairs (latents of one shape run together)."""

    def __init__(self, adapter: nn.Module, pairs: Pairs, options: TrainOptions) -> None:
        import torch

        from ..train.adapter import adamw

        self.adapter, self.options = adapter, options
        self.y_hats = pairs.y_hats
        self.teacher = torch.from_numpy(pairs.teacher)
        self.opt = adamw(adapter, options.lr, options.weight_decay)
        self.modules = {"adapter": adapter}
        self.optimizers = {"adamw": self.opt}
        self.warmup = max(1, options.steps // 50)

    def step(self, step: int) -> dict[str, float]:
        import torch

        from ..train.adapter import cosine_loss
        from ..train.data import item_keys
        from ..train.loop import lr_at

        o = self.options
        idx = [i for i, _ in item_keys(len(self.y_hats), o.batch_size, o.seed, step)]
        mirror = torch.rand(len(idx), generator=torch.Generator().manual_seed(o.seed * 1_000_003 + step)) < o.flip
        groups: dict[tuple[int, ...], list[int]] = {}
        for pos, i in enumerate(idx):
            groups.setdefault(tuple(self.y_hats[i].shape), []).append(pos)
        lr = lr_at(step, o.steps, o.lr, "cosine", self.warmup)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.adapter.train()
        self.opt.zero_grad(set_to_none=True)
        views = [self.y_hats[i].flip(3) if bool(mirror[pos]) else self.y_hats[i] for pos, i in enumerate(idx)]
        order = [idx[pos] for members in groups.values() for pos in members]
        pred = torch.cat([self.adapter(torch.cat([views[pos] for pos in m])) for m in groups.values()])
        loss, cos = cosine_loss(pred, self.teacher[order])
        loss.backward()
        self.opt.step()
        crash_point("distill_step")
        return {"loss": float(loss.detach()), "cos": float(cos), "lr": lr}


@dataclass(frozen=True)
class Trained:
    """A trained adapter: its state dict, fingerprint, the training seconds and the step it resumed from."""

    state: dict[str, torch.Tensor] = field(repr=False)
    sha256: str
    seconds: float
    resumed_from: int | None


def train_from_pairs(
    pairs: Pairs, shape: AdapterShape, run_dir: Path, options: TrainOptions, *, identity: dict[str, Any]
) -> Trained:
    """Trains an adapter (fresh and seeded, or from ``options.init``) on ``pairs`` for ``options.steps`` steps,
    checkpointing into ``run_dir``.

    ``identity`` names the run (with ``options.recipe()``); a caller that starts from ``options.init`` puts those
    weights' fingerprint in it. A run folder holding a checkpoint of the same ``identity`` is resumed (and one at the
    last step is only read back), so a run killed at any moment and started again ends with the same weights.

    Raises:
        InputError: the folder's checkpoint was made with another identity (other pairs or options).
    """
    import torch

    from ..train.adapter import build_trainable_adapter
    from ..train.loop import LoopOptions, run_loop
    from ..train.run import RunDir

    if len(pairs) == 0:
        raise InputError("no training pairs", hint="ingest images into the store first")
    loop = LoopOptions(
        steps=options.steps,
        checkpoint_every=options.every,
        log_every=max(1, min(50, options.steps)),
        progress=options.progress,
    )
    full = {**identity, "shape": shape.to_dict(), **options.recipe(), "progress": None, "checkpoint_every": None}
    run = RunDir(run_dir)
    ck = run.prepare(resume=True, identity=full)
    torch.manual_seed(options.seed)
    adapter = build_trainable_adapter(shape, options.init, seed=options.seed)
    trainer = _PairTrainer(adapter, pairs, options)
    resumed: int | None
    if ck is not None and ck.step >= options.steps:
        ck.restore(trainer.modules, trainer.optimizers)
        seconds, resumed = float(ck.state.get("seconds", 0.0)), int(ck.step)
    else:
        result = run_loop(run, trainer, loop, resume_from=ck, state={"identity": full})
        seconds, resumed = result.seconds, result.resumed_from
    state = {k: v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}
    return Trained(state, state_dict_sha256(state), seconds, resumed)


def vocabulary_texts(tokenizer: Any, n: int = defaults.DISTILL_TEXTS) -> list[str]:
    """``n`` whole words of the CLIP tokenizer's vocabulary (alphabetic, 3 letters or more), a fixed sample."""
    import numpy as np

    encoder = getattr(tokenizer, "encoder", None)
    if not encoder:
        raise InputError("this CLIP tokenizer exposes no vocabulary", hint="give query texts with --texts FILE")
    words = sorted(
        {t[:-4] for t in encoder if t.endswith("</w>") and t[:-4].isascii() and t[:-4].isalpha() and len(t) >= 7}
    )
    pick = np.random.default_rng(0).choice(len(words), size=min(n, len(words)), replace=False)
    return [words[i] for i in sorted(pick)]


def measure_heldout(pred: np.ndarray, teacher: np.ndarray, text_vectors: np.ndarray) -> Heldout:
    """Held-out figures of adapter vectors ``pred`` against ``teacher`` (rows are points), with text queries."""
    import numpy as np

    from ..metrics import recall_overlap

    n = len(pred)
    cos = float(np.mean(np.sum(pred * teacher, axis=1))) if n else 0.0
    recall = recall_overlap(teacher, pred, k=TOP_K)
    k = min(TOP_K, n)
    agree = 0.0
    if len(text_vectors) and k:
        a = np.argsort(-(text_vectors @ teacher.T), axis=1, kind="stable")[:, :k]
        b = np.argsort(-(text_vectors @ pred.T), axis=1, kind="stable")[:, :k]
        agree = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist(), strict=True)]))
    return Heldout(n, cos, recall, agree, len(text_vectors))


def chance_levels(points: int) -> dict[str, float]:
    """What a random ranking scores on ``points`` held-out points: top-k overlaps of ``k`` of the ``n - 1`` others
    (image to image) or of the ``n`` points (text), with ``k`` shrunk to fit as the measures shrink it."""
    if points < 2:
        return {"recall@10 overlap": 1.0, "text top-10 agreement": 1.0}
    return {
        "recall@10 overlap": min(TOP_K, points - 1) / (points - 1),
        "text top-10 agreement": min(TOP_K, points) / points,
    }


def decide(heldout: Heldout, thresholds: Thresholds) -> list[str]:
    """Why the held-out figures fail ``thresholds``, one sentence per failed figure (empty: they pass).

    A bound that a random ranking already meets on this many points (a held-out split of 10 points overlaps fully
    in its top 10) cannot tell a good adapter from noise, so it fails too, with the split's size as the reason.
    """
    chance = chance_levels(heldout.points)
    checks = (  # name, value, bound, flag, what a random ranking scores (a cosine has no such floor)
        ("recall@10 overlap", heldout.recall_at_10_overlap, thresholds.recall_min, "--recall-min",
         chance["recall@10 overlap"]),
        ("mean cosine to the teacher", heldout.cos_mean, thresholds.cos_min, "--cos-min", None),
        ("text top-10 agreement", heldout.text_top10_agreement, thresholds.text_min, "--text-min",
         chance["text top-10 agreement"]),
    )  # fmt: skip
    reasons = []
    for name, value, bound, flag, floor in checks:
        if value < bound:
            reasons.append(f"held-out {name} {value:.4f} is below {flag} {bound:.4f}")
        elif floor is not None and bound > 0 and floor >= bound:
            reasons.append(
                f"held-out {name} cannot fail {flag} {bound:.4f} on {heldout.points} held-out points (a random "
                f"ranking scores {floor:.4f}): hold out more points (a larger sample or --holdout)"
            )
    return reasons


def distill(store: Store, options: DistillOptions) -> DistillReport:
    """Trains the store's adapter from its pixels space, builds the adapter space, and activates it if it passes.

    Raises:
        InputError: no pixels space, fewer than :data:`~licsearch.defaults.DISTILL_MIN_POINTS` points with a teacher
            vector, a held-out or training split that is empty, or bad options.
        StoreError: a bitstream fails to decode (nothing is written then), or the store is read-only.
    """
    started = time.perf_counter()
    store.require_writable("distill")
    if options.threads is not None and options.threads < 1:
        raise InputError(f"--threads {options.threads} must be at least 1")
    with torch_threads(options.threads):
        return _distill(store, options, started)


def _distill(store: Store, options: DistillOptions, started: float) -> DistillReport:
    import numpy as np

    teacher = teacher_space(store)
    ids = _ids_with(store, teacher)
    if len(ids) < defaults.DISTILL_MIN_POINTS:
        raise InputError(
            f"the pixels space {teacher!r} has {len(ids)} points; distilling an adapter needs at least "
            f"{defaults.DISTILL_MIN_POINTS}",
            hint="ingest more images first (thousands give an adapter that generalises)",
        )
    train_ids, held_ids = heldout_split(ids, options.holdout)
    if not held_ids or len(train_ids) < 2:
        raise InputError(
            f"--holdout {options.holdout} leaves {len(train_ids)} training and {len(held_ids)} held-out points",
            hint="choose a fraction that keeps both sides, e.g. 0.1",
        )
    pairs = load_pairs(store, ids, teacher, progress=options.progress)  # every decode checked before any write
    teacher_plane = plane_for_space(store, teacher)
    texts = (
        list(options.texts)
        if options.texts is not None
        else vocabulary_texts(getattr(teacher_plane.text, "tokenizer", None))
    )
    if not texts:
        raise InputError("no query texts", hint="give a --texts file with one query per line")
    text_vectors = teacher_plane.embed_texts(texts).vectors.numpy()

    cfg = store.config.spaces.get(teacher)
    models = store.config.models if cfg is None else cfg.models
    a = models.adapter
    shape = AdapterShape(store.models.codec.latent_channels, pairs.teacher.shape[1], width=a.width, hidden=a.hidden)
    identity = {"teacher": teacher, "codec": models.codec.sha256, "train_ids": ids_digest(train_ids)}
    if options.train.init != RANDOM:  # refused before anything is written; the run is named by the weights' digest
        from ..train.adapter import build_trainable_adapter

        start = build_trainable_adapter(shape, options.train.init, seed=options.train.seed)
        identity["init"] = state_dict_sha256(start.state_dict())
    recipe = options.train.recipe()
    key = json.dumps({**identity, **recipe}, sort_keys=True)
    run_dir = store.root / DISTILL_DIR / f"{teacher}-{ids_digest([key])[:12]}"  # another recipe trains in another run
    trained = train_from_pairs(pairs.subset(train_ids), shape, run_dir, options.train, identity=identity)
    weights = _save_weights(store, trained, shape)

    held = pairs.subset(held_ids)
    adapter = Adapter.load(shape, str(weights))  # the file, as ingest and re-index will load it
    pred = np.concatenate([adapter.embed(y).numpy() for y in held.y_hats])
    figures = measure_heldout(pred, held.teacher, text_vectors)
    reasons = decide(figures, options.thresholds)
    passed = not reasons

    target = resolve_target(store, adapter_weights=str(weights))
    rep = reindex_store(store, target, progress=options.progress)
    activated = False
    if options.activate and (not reasons or options.force) and rep.state == "complete":
        activate_space(store, target.space_id)
        activated = True
    elif store.space_id == target.space_id:
        activated = True  # activated by an earlier run of the same distillation
    if not options.activate and not activated:
        reasons = [*reasons, "not asked to activate (pass --activate)"]
    elif reasons and options.force and activated:
        reasons = [*reasons, "activated anyway: --force"]
    return DistillReport(
        space_id=target.space_id,
        teacher_space=teacher,
        heldout=figures,
        points=len(ids),
        train_points=len(train_ids),
        weights=str(weights),
        adapter_sha256=trained.sha256,
        passed=passed,
        activated=activated,
        reasons=reasons,
        state="active" if store.space_id == target.space_id else rep.state,
        seconds=time.perf_counter() - started,
        train_seconds=trained.seconds,
        reindex_seconds=rep.seconds,
        resumed_from=trained.resumed_from,
        thresholds=asdict(options.thresholds),
    )


def _ids_with(store: Store, space: str) -> list[str]:
    """Ids of the points that carry a vector in ``space``, sorted (a pixels space that is no longer active lacks the
    points ingested since)."""
    from ..storage import space_vectors

    lacking: set[str] = set()
    if space != store.space_id:
        for page in space_vectors.iter_lacking(store.index, space, batch=256):
            lacking.update(pid for pid, _ in page)
    return sorted(pid for pid, _ in store.index.iter_points() if pid not in lacking)


def _save_weights(store: Store, trained: Trained, shape: AdapterShape) -> Path:
    """Writes the adapter into ``DIR/adapters/distilled-<fingerprint>.safetensors`` (atomically; once)."""
    folder = store.root / ADAPTERS_DIR
    folder.mkdir(exist_ok=True)
    path = folder / f"distilled-{trained.sha256[:16]}.safetensors"
    if not path.is_file():
        meta = {"kind": "adapter", "source": "licsearch distill", **{k: str(v) for k, v in shape.to_dict().items()}}
        save_state_dict(trained.state, path, meta)
    return path.resolve()


def ids_digest(items: Sequence[str]) -> str:
    """SHA-256 hex of the items in order, one a line: names a training set (or a chunk of ids) in a run's identity."""
    return hashlib.sha256("\n".join(items).encode()).hexdigest()
