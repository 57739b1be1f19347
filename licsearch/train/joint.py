"""Joint fine-tuning of codec and adapter (Luo 2024, arXiv 2404.10234): ``L = R + λ·D + λs·Ds``.

``R + λ·D`` is CompressAI's rate-distortion loss on the noisy training forward (``R`` in bits per pixel,
``D = 255²·MSE``); ``Ds = 1 - cos`` between the adapter's embedding of the latent and the frozen CLIP image
tower's embedding of the same crop. The codec (with its auxiliary quantile loss and optimizer) and the adapter
train together from the given weights; both are written at the end, the codec with fresh entropy tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ModelsConfig
from ..errors import InputError
from ..model.adapter import AdapterShape
from ..model.codec import CODEC_ARCHS
from .adapter import ADAPTER_FILE, build_trainable_adapter, cosine_loss, evaluate_adapter
from .codec import CODEC_FILE, LAMBDAS, evaluate_codec
from .data import Augment, ImageFolder, batch_source, default_workers
from .latent import build_trainable_codec, check_crop, training_forward
from .loop import LoopOptions, TrainReport, lr_at, resolve_device, run_loop, write_provenance
from .run import RunDir
from .teacher import ClipTeacher

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class JointTrainOptions:
    """Options of ``licsearch train joint``; ``models`` names the initial codec and adapter and the teacher CLIP."""

    images: Path
    out: Path
    loop: LoopOptions
    models: ModelsConfig
    lmbda: float | None = None
    lambda_s: float = 1.0
    batch_size: int = 8
    crop: int = 256
    lr: float = 1e-5
    adapter_lr: float = 1e-4
    aux_lr: float = 1e-3
    clip_grad: float = 1.0
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    flip: bool = True
    eval_images: int = 4
    resume: bool = False

    @property
    def lambda_(self) -> float:
        return self.lmbda if self.lmbda is not None else LAMBDAS[self.models.codec.quality]


class JointTrainer:
    """One step of the joint loss: codec and adapter by the main optimizer, then the auxiliary quantile step."""

    def __init__(
        self,
        model: Any,
        adapter: nn.Module,
        teacher: ClipTeacher,
        options: JointTrainOptions,
        batches_from: Any,
        device: torch.device,
    ) -> None:
        from compressai.losses import RateDistortionLoss
        from compressai.optimizers import net_aux_optimizer

        self.model, self.adapter = model.to(device), adapter.to(device)
        self.arch = CODEC_ARCHS.get(options.models.codec.arch)
        self.teacher, self.options, self.device = teacher, options, device
        self.criterion = RateDistortionLoss(lmbda=options.lambda_)
        opts = net_aux_optimizer(
            self.model, {"net": {"type": "Adam", "lr": options.lr}, "aux": {"type": "Adam", "lr": options.aux_lr}}
        )
        self.net_opt, self.aux_opt = opts["net"], opts["aux"]
        self.net_opt.add_param_group({"params": list(self.adapter.parameters()), "lr": options.adapter_lr})
        self.modules = {"codec": self.model, "adapter": self.adapter}
        self.optimizers = {"net": self.net_opt, "aux": self.aux_opt}
        self._batches_from = batches_from
        self._batches: Iterator[torch.Tensor] | None = None

    def step(self, step: int) -> dict[str, float]:
        import torch

        if self._batches is None:
            self._batches = self._batches_from(step)
        x = next(self._batches).to(self.device, non_blocking=True)
        o = self.options
        codec_group, adapter_group = self.net_opt.param_groups
        codec_group["lr"] = lr_at(step, o.loop.steps, o.lr, "constant", 0)
        adapter_group["lr"] = lr_at(step, o.loop.steps, o.adapter_lr, "constant", 0)
        self.model.train()
        self.adapter.train()
        self.net_opt.zero_grad(set_to_none=True)
        self.aux_opt.zero_grad(set_to_none=True)
        out = training_forward(self.model, self.arch, x)
        rd = self.criterion(out, x)
        ds, cos = cosine_loss(self.adapter(out["y_adapter"]), self.teacher(x))
        loss = rd["loss"] + o.lambda_s * ds
        loss.backward()
        if o.clip_grad > 0:
            params = [p for g in self.net_opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, o.clip_grad)
        self.net_opt.step()
        aux = self.model.aux_loss()
        aux.backward()
        self.aux_opt.step()
        mse = float(rd["mse_loss"].detach())
        return {
            "loss": float(loss.detach()),
            "bpp": float(rd["bpp_loss"].detach()),
            "mse": mse,
            "psnr": -10.0 * math.log10(max(mse, 1e-12)),
            "ds": float(ds.detach()),
            "cos": float(cos),
            "aux": float(aux.detach()),
            "lr": codec_group["lr"],
        }


def train_joint(options: JointTrainOptions) -> TrainReport:
    """Fine-tunes codec and adapter together; writes both weight files and ``OUT/provenance.json``."""
    import torch

    from ..model.codec import Codec

    m = options.models
    arch = CODEC_ARCHS.get(m.codec.arch)
    arch.check_quality(m.codec.quality)
    check_crop(options.crop, arch)
    if options.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    device = resolve_device(options.device)
    teacher = ClipTeacher.load(m.clip.model, m.clip.tag, m.clip.weights, device, seed=m.clip.seed)
    model = build_trainable_codec(m.codec.arch, m.codec.quality, m.codec.weights, seed=m.codec.seed)
    shape = AdapterShape(int(model.M), teacher.embed_dim, width=m.adapter.width, hidden=m.adapter.hidden)
    folder = ImageFolder(options.images, min_side=options.crop)
    augment = Augment(options.crop, mode="random", flip=options.flip)
    run = RunDir(options.out)
    identity = {
        "kind": "joint",
        "arch": m.codec.arch,
        "quality": m.codec.quality,
        "shape": shape.to_dict(),
        "clip": f"{m.clip.model}:{teacher.weights_sha256[:12]}",
        "crop": options.crop,
        "batch_size": options.batch_size,
        "seed": options.seed,
    }
    ck = run.prepare(resume=options.resume, identity=identity)
    torch.manual_seed(options.seed)
    adapter = build_trainable_adapter(shape, m.adapter.weights, seed=m.adapter.seed)
    workers = default_workers(device) if options.workers is None else options.workers

    batches_from = batch_source(
        folder, augment, seed=options.seed, batch=options.batch_size, steps=options.loop.steps, workers=workers,
        device=device,
    )  # fmt: skip

    trainer = JointTrainer(model, adapter, teacher, options, batches_from, device)
    result = run_loop(run, trainer, options.loop, resume_from=ck, state={"identity": identity})

    model = trainer.model.cpu().eval()
    model.update(force=True)
    q = m.codec.quality
    codec_meta = {"kind": "codec", "arch": m.codec.arch, "quality": q, "lambda": options.lambda_, "joint": True}
    outputs = {"codec": run.save_weights(CODEC_FILE, model.state_dict(), codec_meta)}
    adapter_meta = {"kind": "adapter", **shape.to_dict(), "clip": m.clip.model, "joint": True}
    outputs["adapter"] = run.save_weights(ADAPTER_FILE, trainer.adapter.state_dict(), adapter_meta)
    codec_eval = evaluate_codec(m.codec.arch, q, run.root / CODEC_FILE, folder, options.eval_images)
    codec = Codec.load(m.codec.arch, q, str(run.root / CODEC_FILE))
    adapter_eval = evaluate_adapter(
        codec, teacher, shape, run.root / ADAPTER_FILE, folder, crop=options.crop, n=max(options.eval_images, 16)
    )
    result.evaluation = {"codec": codec_eval, "adapter": adapter_eval}
    data = {"images_dir": str(folder.root.resolve()), "images": len(folder), "skipped_small": folder.skipped_small}
    models = {
        "codec_init": {"arch": m.codec.arch, "quality": q, "weights": m.codec.weights},
        "adapter_init": {"weights": m.adapter.weights},
        "clip": {"model": m.clip.model, "tag": m.clip.tag, "weights": m.clip.weights, "sha256": teacher.weights_sha256},
    }
    write_provenance(
        run,
        kind="joint",
        options=options,
        data=data,
        result=result,
        outputs=outputs,
        models=models,
        lmbda=options.lambda_,
        lambda_s=options.lambda_s,
        adapter_shape=shape.to_dict(),
    )
    return TrainReport(run.root, outputs, result, data)
