"""Distillation of the adapter with the codec frozen (Luo 2024's second phase): ``Ds = 1 - cos(adapter(y_hat), t)``.

``y_hat`` is computed exactly as at inference (:func:`.latent.inference_y_hat`) and ``t`` is the CLIP image
tower's embedding of the same augmented crop (:class:`.teacher.ClipTeacher`). Any CLIP weights serve as the
teacher: pretrained, a checkpoint (e.g. from ``licsearch train clip``) or seeded random ones. With
augmentations off every image always gives the same crop, so the latents and targets are computed once and
kept in memory when they fit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ModelsConfig
from ..errors import InputError
from ..model.adapter import Adapter, AdapterShape, build_adapter
from ..model.codec import Codec
from ..model.weights import RANDOM, load_state_dict_file, seeded
from .data import VIEW_TARGETS, Augment, ImageFolder, ViewStream, batch_source, default_workers, item_keys, item_rng
from .latent import check_crop, inference_y_hat
from .loop import LoopOptions, TrainReport, lr_at, resolve_device, run_loop, write_provenance
from .run import RunDir
from .teacher import ClipTeacher

if TYPE_CHECKING:
    import torch
    from torch import nn

ADAPTER_FILE = "adapter.safetensors"
PRECOMPUTE_LIMIT_BYTES = 1 << 30


@dataclass(frozen=True)
class AdapterTrainOptions:
    """Options of ``licsearch train adapter``; ``models`` names the frozen codec and the teacher CLIP."""

    images: Path
    out: Path
    loop: LoopOptions
    models: ModelsConfig
    batch_size: int = 32
    crop: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int | None = None
    augment: bool = True
    jitter: float = 0.1
    init: str = RANDOM
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    eval_images: int = 64
    resume: bool = False
    world: bool = False
    chunk: int = 256
    reuse: int = 8
    photo_share: float = 0.25
    world_seed: int = 7
    view_target: str = "view"

    @property
    def shape_kwargs(self) -> dict[str, int]:
        return {"width": self.models.adapter.width, "hidden": self.models.adapter.hidden}


def build_trainable_adapter(shape: AdapterShape, init: str, *, seed: int) -> nn.Module:
    """A seeded fresh adapter, or one initialised from a weights file (which must fit ``shape``)."""
    with seeded(seed):
        module = build_adapter(shape)
    if init != RANDOM:
        try:
            module.load_state_dict(load_state_dict_file(init, what="adapter"))
        except RuntimeError as e:
            raise InputError(f"adapter weights {init} do not fit {shape}: {str(e).splitlines()[0]}") from e
    for p in module.parameters():
        p.requires_grad_(True)
    return module.train()


def adamw(module: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and convolution kernels only (not on biases and norm gains)."""
    import torch

    decay = [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in module.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean of 1 - cos, mean cos) of unit vectors."""
    cos = (pred * target).sum(dim=-1)
    return (1.0 - cos).mean(), cos.detach().mean()


class AdapterTrainer:
    """One distillation step per call, from live batches or from precomputed (y_hat, target) pairs."""

    def __init__(
        self,
        adapter: nn.Module,
        codec: Codec,
        teacher: ClipTeacher,
        options: AdapterTrainOptions,
        batches_from: Any,
        device: torch.device,
    ) -> None:
        self.adapter = adapter.to(device)
        self.codec, self.teacher, self.options, self.device = codec, teacher, options, device
        self.opt = adamw(self.adapter, options.lr, options.weight_decay)
        self.modules = {"adapter": self.adapter}
        self.optimizers = {"adam": self.opt}
        self._batches_from = batches_from
        self._batches: Iterator[torch.Tensor] | None = None
        self.cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.stream: ChunkPairs | None = None
        self.warmup = options.warmup if options.warmup is not None else options.loop.steps // 50

    def precompute(self, folder: ImageFolder, augment: Augment) -> None:
        """Computes every image's y_hat and target once (only valid when ``augment`` is deterministic)."""
        import torch

        ys, ts = [], []
        b = self.options.batch_size
        for i in range(0, len(folder), b):
            items = range(i, min(len(folder), i + b))
            x = torch.stack([augment(folder.load(j), item_rng(self.options.seed, j)) for j in items]).to(self.device)
            ys.append(inference_y_hat(self.codec, x))
            ts.append(self.teacher(x))
        self.cache = (torch.cat(ys), torch.cat(ts))

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        if self.stream is not None:
            return self.stream.batch(step)
        if self.cache is not None:
            keys = item_keys(len(self.cache[0]), self.options.batch_size, self.options.seed, step)
            idx = torch.tensor([i for i, _ in keys], device=self.cache[0].device)
            return self.cache[0][idx], self.cache[1][idx]
        if self._batches is None:
            self._batches = self._batches_from(step)
        x = next(self._batches).to(self.device, non_blocking=True)
        return inference_y_hat(self.codec, x), self.teacher(x)

    def step(self, step: int) -> dict[str, float]:
        y_hat, target = self._batch(step)
        lr = lr_at(step, self.options.loop.steps, self.options.lr, "cosine", self.warmup)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.adapter.train()
        self.opt.zero_grad(set_to_none=True)
        loss, cos = cosine_loss(self.adapter(y_hat), target)
        loss.backward()
        self.opt.step()
        return {"loss": float(loss.detach()), "cos": float(cos), "lr": lr}


class ChunkPairs:
    """(y_hat, teacher) pairs of the views of :class:`.data.ViewStream`, a chunk at a time, each used ``reuse`` times.

    The codec's analysis transform is what costs on a CPU, so every view's y_hat is computed once (batched by
    padded shape) and the chunk serves ``chunk * reuse / batch`` steps before the next one replaces it. Step
    ``s`` reads chunk ``s // steps_per_chunk`` and a batch drawn from (seed, s), so a resumed run rebuilds the chunk
    it was in and continues as the uninterrupted run would. The teacher embeds each view with open_clip's eval
    preprocessing (:class:`licsearch.eval.semantic.Teacher`), exactly as a ``pixels`` space stores it; y_hat comes
    from the view padded as :meth:`Codec.compress` pads it.

    With ``view_target`` ``original`` a near-duplicate view (re-encoded, cropped to 80-95 %, downscaled, mirrored) is
    taught the teacher's embedding of the image it was edited from, not of itself: near-duplicate search asks the
    adapter for more invariance than the teacher has (the world CLIP finds a 90 % crop's original at recall@1 0.887
    on 300 world test scenes and 0.875 on Kodak, README *Training*). A random resized crop shows other content and keeps
    its own embedding.
    """

    def __init__(
        self, codec: Codec, teacher: ClipTeacher, stream: ViewStream, options: AdapterTrainOptions, device: torch.device
    ) -> None:
        from ..eval.semantic import Teacher
        from ..world import sample_specs

        if options.chunk < options.batch_size or options.reuse < 1:
            raise InputError("--chunk must be at least --batch-size and --reuse at least 1")
        if options.view_target not in VIEW_TARGETS:
            raise InputError(f"--view-target must be one of {', '.join(VIEW_TARGETS)}, not {options.view_target!r}")
        self.codec, self.stream, self.options, self.device = codec, stream, options, device
        self.teacher = Teacher(teacher.model)
        self.steps_per_chunk = max(1, options.chunk * options.reuse // options.batch_size)
        self.chunks = -(-options.loop.steps // self.steps_per_chunk)
        self.specs = sample_specs(self.chunks * options.chunk, seed=options.world_seed, split="train")
        self.current: int | None = None
        self.groups: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.build_seconds = 0.0
        self.views_built = 0

    def _build(self, c: int) -> None:
        import time

        import numpy as np
        import torch
        import torch.nn.functional as F

        t0 = time.perf_counter()
        edits = self.stream.edits(c, self.specs)
        views = [view for view, _, _ in edits]
        targets = torch.from_numpy(self.teacher.embed(views)).float()
        if self.options.view_target == "original":
            near = [i for i, (_, _, is_near) in enumerate(edits) if is_near]
            if near:
                targets[near] = torch.from_numpy(self.teacher.embed([edits[i][1] for i in near])).float()
        d = self.codec.arch.downsampling
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, v in enumerate(views):
            by_shape.setdefault((-(-v.shape[0] // d) * d, -(-v.shape[1] // d) * d), []).append(i)
        self.groups = []
        for (ph, pw), idx in sorted(by_shape.items()):
            ys = []
            for k in range(0, len(idx), 32):
                part = idx[k : k + 32]
                xs = []
                for i in part:
                    x = torch.from_numpy(np.ascontiguousarray(views[i])).permute(2, 0, 1).float().div(255)
                    xs.append(F.pad(x[None], (0, pw - x.shape[2], 0, ph - x.shape[1]), mode="replicate")[0])
                ys.append(inference_y_hat(self.codec, torch.stack(xs).to(self.device)).cpu())
            self.groups.append((torch.cat(ys), targets[idx]))
        self.current = c
        self.views_built += len(views)
        self.build_seconds += time.perf_counter() - t0

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (y_hat, target) batch of ``step``: one padded shape, drawn in proportion to the shapes' counts."""
        import numpy as np
        import torch

        c = step // self.steps_per_chunk
        if self.current != c:
            self._build(c)
        rng = np.random.default_rng([self.options.seed, step, 0xBA7C])
        sizes = np.array([len(t) for _, t in self.groups], dtype=np.float64)
        g = int(rng.choice(len(self.groups), p=sizes / sizes.sum()))
        ys, ts = self.groups[g]
        idx = torch.from_numpy(rng.choice(len(ts), size=min(len(ts), self.options.batch_size), replace=False))
        return ys[idx].to(self.device), ts[idx].to(self.device)

    def figures(self) -> dict[str, Any]:
        """What the stream produced, for the provenance (views, scenes/s of building)."""
        return {
            "world_views": self.chunks * self.options.chunk,
            "chunks": self.chunks,
            "reuse": self.options.reuse,
            "photo_share": self.options.photo_share,
            "world_seed": self.options.world_seed,
            "view_target": self.options.view_target,
            "views_built_this_run": self.views_built,
            "build_seconds_this_run": round(self.build_seconds, 1),
            "views_per_second": round(self.views_built / max(self.build_seconds, 1e-9), 2),
        }


def train_adapter(options: AdapterTrainOptions) -> TrainReport:
    """Trains (or resumes) the adapter and writes ``OUT/adapter.safetensors`` and ``OUT/provenance.json``."""
    import torch

    if options.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    device = resolve_device(options.device)
    m = options.models
    codec = Codec.load(m.codec.arch, m.codec.quality, m.codec.weights, seed=m.codec.seed)
    check_crop(options.crop, codec.arch)
    codec.model.to(device)
    teacher = ClipTeacher.load(m.clip.model, m.clip.tag, m.clip.weights, device, seed=m.clip.seed)
    shape = AdapterShape(codec.latent_channels, teacher.embed_dim, **options.shape_kwargs)
    folder = ImageFolder(options.images)
    if options.augment:
        augment = Augment(options.crop, mode="resized", flip=True, jitter=options.jitter)
    else:
        augment = Augment(options.crop, mode="center", flip=False)
    run = RunDir(options.out)
    identity = {
        "kind": "adapter",
        "shape": shape.to_dict(),
        "codec": codec.profile_id,
        "clip": f"{m.clip.model}:{teacher.weights_sha256[:12]}",
        "crop": options.crop,
        "batch_size": options.batch_size,
        "seed": options.seed,
        "augment": options.augment,
    }
    if options.world:
        identity.update(world=True, chunk=options.chunk, reuse=options.reuse, world_seed=options.world_seed)
        if options.view_target != "view":  # absent from older runs' identity, which resume as they were
            identity["view_target"] = options.view_target
    ck = run.prepare(resume=options.resume, identity=identity)
    torch.manual_seed(options.seed)
    adapter = build_trainable_adapter(shape, options.init, seed=options.seed)
    workers = default_workers(device) if options.workers is None else options.workers

    batches_from = batch_source(
        folder, augment, seed=options.seed, batch=options.batch_size, steps=options.loop.steps, workers=workers,
        device=device,
    )  # fmt: skip

    trainer = AdapterTrainer(adapter, codec, teacher, options, batches_from, device)
    if options.world:
        stream = ViewStream(folder, options.chunk, options.seed, options.world_seed, photo_share=options.photo_share)
        trainer.stream = ChunkPairs(codec, teacher, stream, options, device)
    side = options.crop // 16
    per_image = 4 * (codec.latent_channels * side * side + shape.embed_dim)
    if not options.world and not augment.random and len(folder) * per_image <= PRECOMPUTE_LIMIT_BYTES:
        trainer.precompute(folder, augment)
    result = run_loop(run, trainer, options.loop, resume_from=ck, state={"identity": identity})

    meta = {"kind": "adapter", **shape.to_dict(), "codec": codec.profile_id, "clip": m.clip.model}
    outputs = {"adapter": run.save_weights(ADAPTER_FILE, trainer.adapter.state_dict(), meta)}
    codec.model.cpu()
    result.evaluation = evaluate_adapter(
        codec, teacher, shape, run.root / ADAPTER_FILE, folder, crop=options.crop, n=options.eval_images
    )
    data: dict[str, Any] = {
        "images_dir": str(folder.root.resolve()), "images": len(folder), "precomputed": trainer.cache is not None
    }  # fmt: skip
    if trainer.stream is not None:
        data.update(trainer.stream.figures())
    models = {
        "codec": {"profile": codec.profile_id, "weights": m.codec.weights, "sha256": codec.weights_sha256},
        "clip": {"model": m.clip.model, "tag": m.clip.tag, "weights": m.clip.weights, "sha256": teacher.weights_sha256},
    }
    write_provenance(
        run,
        kind="adapter",
        options=options,
        data=data,
        result=result,
        outputs=outputs,
        models=models,
        adapter_shape=shape.to_dict(),
    )
    return TrainReport(run.root, outputs, result, data)


def evaluate_adapter(
    codec: Codec,
    teacher: ClipTeacher,
    shape: AdapterShape,
    path: Path,
    folder: ImageFolder,
    *,
    crop: int,
    n: int,
) -> dict[str, Any]:
    """Loads the written adapter with :meth:`Adapter.load` and scores it through the real inference path.

    On centre crops of the first images, y_hat comes from :meth:`Codec.compress` (bitstreams included).
    Figures: the mean cosine to the teacher, and ``top1``, the fraction of images whose adapter embedding is
    nearer to their own teacher embedding than to any other image's (chance is ``1 / images``).
    """
    import numpy as np
    import torch

    n = min(len(folder), max(0, n))
    if n == 0:
        return {"images": 0}
    adapter = Adapter.load(shape, str(path))
    center = Augment(crop, mode="center", flip=False)
    preds, targets = [], []
    for j in range(n):
        image = center(folder.load(j), item_rng(0, j))
        pixels = np.ascontiguousarray(image.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy())
        x = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255).unsqueeze(0)
        preds.append(adapter.embed(codec.compress(pixels).y_hat))
        targets.append(teacher(x.to(teacher.mean.device)).cpu())
    p, t = torch.cat(preds), torch.cat(targets)
    cos = (p * t).sum(-1)
    top1 = (p @ t.T).argmax(dim=1) == torch.arange(n)
    return {"images": n, "cos": float(cos.mean()), "cos_min": float(cos.min()), "top1": float(top1.float().mean())}
