"""Rate-distortion training of a CompressAI codec (Luo 2024's first phase): ``L = R + λ·255²·MSE``.

As CompressAI's ``examples/train.py``: :class:`compressai.losses.RateDistortionLoss`, one optimizer for the
network and one, with its own loss (``aux_loss``), for the entropy bottleneck's quantiles; gradient clipping.
At the end the entropy tables are rebuilt (``update(force=True)``) and the weights are written as
``OUT/codec.safetensors``, which is then loaded back with :meth:`Codec.load` and round-trips a few images
through real rANS bitstreams to report the actual rate and PSNR.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..metrics import psnr
from ..model.codec import CODEC_ARCHS, Codec
from .data import Augment, ImageFolder, SmallPolicy, batch_source, default_workers
from .latent import build_trainable_codec, check_crop
from .loop import LoopOptions, Schedule, TrainReport, lr_at, resolve_device, run_loop, write_provenance
from .run import RunDir

if TYPE_CHECKING:
    import numpy as np
    import torch

#: CompressAI's λ for the MSE-optimised zoo models, by quality.
LAMBDAS: Mapping[int, float] = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483, 7: 0.0932, 8: 0.1800}
CODEC_FILE = "codec.safetensors"


@dataclass(frozen=True)
class CodecTrainOptions:
    """Options of ``licsearch train codec`` (see the CLI's help for each)."""

    images: Path
    out: Path
    loop: LoopOptions
    arch: str = "bmshj2018-hyperprior"
    quality: int = 3
    lmbda: float | None = None
    batch_size: int = 16
    crop: int = 256
    lr: float = 1e-4
    schedule: Schedule = "constant"
    warmup: int = 0
    aux_lr: float = 1e-3
    clip_grad: float = 1.0
    init: str = "random"
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    small: SmallPolicy = "pad"
    flip: bool = True
    eval_images: int = 4
    resume: bool = False

    @property
    def lambda_(self) -> float:
        return self.lmbda if self.lmbda is not None else LAMBDAS[self.quality]


class CodecTrainer:
    """One rate-distortion step per call: main loss and optimizer, then the auxiliary one."""

    def __init__(self, model: Any, options: CodecTrainOptions, batches_from: Any, device: torch.device) -> None:
        from compressai.losses import RateDistortionLoss
        from compressai.optimizers import net_aux_optimizer

        self.model = model.to(device)
        self.options = options
        self.device = device
        self.criterion = RateDistortionLoss(lmbda=options.lambda_)
        opts = net_aux_optimizer(
            self.model, {"net": {"type": "Adam", "lr": options.lr}, "aux": {"type": "Adam", "lr": options.aux_lr}}
        )
        self.net_opt: torch.optim.Optimizer = opts["net"]
        self.aux_opt: torch.optim.Optimizer = opts["aux"]
        self.modules = {"codec": self.model}
        self.optimizers = {"net": self.net_opt, "aux": self.aux_opt}
        self._batches_from = batches_from
        self._batches: Iterator[torch.Tensor] | None = None

    def step(self, step: int) -> dict[str, float]:
        import torch

        if self._batches is None:
            self._batches = self._batches_from(step)
        x = next(self._batches).to(self.device, non_blocking=True)
        o = self.options
        lr = lr_at(step, o.loop.steps, o.lr, o.schedule, o.warmup)
        for g in self.net_opt.param_groups:
            g["lr"] = lr
        self.model.train()
        self.net_opt.zero_grad(set_to_none=True)
        self.aux_opt.zero_grad(set_to_none=True)
        rd = self.criterion(self.model(x), x)
        rd["loss"].backward()
        if o.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.clip_grad)
        self.net_opt.step()
        aux = self.model.aux_loss()
        aux.backward()
        self.aux_opt.step()
        mse = float(rd["mse_loss"].detach())
        return {
            "loss": float(rd["loss"].detach()),
            "bpp": float(rd["bpp_loss"].detach()),
            "mse": mse,
            "psnr": -10.0 * math.log10(max(mse, 1e-12)),
            "aux": float(aux.detach()),
            "lr": lr,
        }


def train_codec(options: CodecTrainOptions) -> TrainReport:
    """Trains (or resumes training) a codec and writes ``OUT/codec.safetensors`` and ``OUT/provenance.json``."""
    import torch

    arch = CODEC_ARCHS.get(options.arch)
    arch.check_quality(options.quality)
    check_crop(options.crop, arch)
    if options.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    device = resolve_device(options.device)
    folder = ImageFolder(options.images, min_side=options.crop, small=options.small)
    run = RunDir(options.out)
    identity = {
        "kind": "codec",
        "arch": options.arch,
        "quality": options.quality,
        "crop": options.crop,
        "batch_size": options.batch_size,
        "seed": options.seed,
    }
    ck = run.prepare(resume=options.resume, identity=identity)
    torch.manual_seed(options.seed)
    model = build_trainable_codec(options.arch, options.quality, options.init, seed=options.seed)
    augment = Augment(options.crop, mode="random", flip=options.flip)
    workers = default_workers(device) if options.workers is None else options.workers

    batches_from = batch_source(
        folder, augment, seed=options.seed, batch=options.batch_size, steps=options.loop.steps, workers=workers,
        device=device,
    )  # fmt: skip

    trainer = CodecTrainer(model, options, batches_from, device)
    result = run_loop(run, trainer, options.loop, resume_from=ck, state={"identity": identity})

    model = trainer.model.cpu().eval()
    model.update(force=True)
    meta = {"kind": "codec", "arch": options.arch, "quality": options.quality, "lambda": options.lambda_}
    outputs = {"codec": run.save_weights(CODEC_FILE, model.state_dict(), {**meta, "steps": result.step})}
    result.evaluation = evaluate_codec(
        options.arch, options.quality, run.root / CODEC_FILE, folder, options.eval_images
    )
    data = {"images_dir": str(folder.root.resolve()), "images": len(folder), "skipped_small": folder.skipped_small}
    write_provenance(
        run, kind="codec", options=options, data=data, result=result, outputs=outputs, lmbda=options.lambda_
    )
    return TrainReport(run.root, outputs, result, data)


def evaluate_codec(arch: str, quality: int, path: Path, folder: ImageFolder, n: int) -> dict[str, Any]:
    """Loads the written weights with :meth:`Codec.load` and round-trips up to ``n`` images through bitstreams.

    Returns the mean container bpp and PSNR of the decoded images (the real figures, not the training proxy).
    """
    from ..imageio import load_image

    return round_trip_figures(arch, quality, str(path), [load_image(f).pixels for f in folder.files[: max(0, n)]])


def round_trip_figures(arch: str, quality: int, weights: str, images: Sequence[np.ndarray]) -> dict[str, Any]:
    """Mean container bpp and PSNR of ``images`` through real ``.lics`` bitstreams of the codec ``weights``."""
    from ..bitstream import Bitstream

    codec = Codec.load(arch, quality, weights)
    bpps, psnrs = [], []
    for pixels in images:
        comp = codec.compress(pixels)
        data = Bitstream(codec.profile_id, comp.width, comp.height, comp.latent_hash, comp.streams).to_bytes()
        bs = Bitstream.from_bytes(data)
        y_hat = codec.entropy_decode(bs.streams, bs.width, bs.height, bs.latent_hash)
        decoded = codec.synthesize(y_hat, bs.width, bs.height)
        bpps.append(8.0 * len(data) / (comp.width * comp.height))
        psnrs.append(psnr(pixels, decoded))
    if not bpps:
        return {"images": 0}
    return {
        "images": len(bpps),
        "bpp": sum(bpps) / len(bpps),
        "psnr": sum(psnrs) / len(psnrs),
        "profile": codec.profile_id,
    }
