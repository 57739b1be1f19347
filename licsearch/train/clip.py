"""Contrastive training of a small CLIP on the procedural world, scored by text-to-image retrieval.

The model is an open_clip config shipped with licsearch (``licsearch-world`` by default), trained with
open_clip's :class:`~open_clip.loss.ClipLoss` and a learnable logit scale (clamped at 100 as open_clip does)
on the world's TRAIN split. It is scored on scenes it never saw: ``val``, fresh scenes of the train
distribution, and ``test``, scenes whose first object is a held-out (shape, colour) combination. For each
distinct caption of a split the split's images are ranked; a query hits at k when an image with that exact
caption (any scene whose spec gives the same words) is among the first k. No augmentation is used: captions
name positions and colours, which flips and colour jitter would falsify.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..model.text import TextEncoder, load_clip_model
from ..model.weights import RANDOM
from ..world import HELD_OUT
from .data import item_keys
from .loop import LoopOptions, TrainReport, lr_at, resolve_device, run_loop, write_provenance
from .run import RunDir
from .world_data import WorldSplit, world_split

if TYPE_CHECKING:
    import torch

CLIP_FILE = "clip.safetensors"
MAX_LOGIT_SCALE = math.log(100.0)
KS = (1, 5)


@dataclass(frozen=True)
class ClipTrainOptions:
    """Options of ``licsearch train clip --world`` (see the CLI's help for each)."""

    out: Path
    loop: LoopOptions
    model: str = "licsearch-world"
    n_train: int = 20000
    n_eval: int = 1000
    image_size: int | None = None
    world_seed: int = 0
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: int | None = None
    init: str = RANDOM
    seed: int = 0
    device: str = "auto"
    cache: Path | None = None
    resume: bool = False


class ClipTrainer:
    """One contrastive step per call on a batch of the in-memory train split."""

    def __init__(
        self, model: Any, train: WorldSplit, tokens: torch.Tensor, options: ClipTrainOptions, device: torch.device
    ) -> None:
        import open_clip
        import torch

        self.model = model.to(device)
        self.options, self.device = options, device
        self.images = torch.from_numpy(train.images).permute(0, 3, 1, 2).contiguous().to(device)
        self.tokens = tokens.to(device)
        cfg = open_clip.get_model_preprocess_cfg(model)
        self.mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
        self.loss = open_clip.ClipLoss()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        groups = [{"params": decay, "weight_decay": options.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        self.opt = torch.optim.AdamW(groups, lr=options.lr, betas=(0.9, 0.98), eps=1e-6)
        self.modules = {"clip": self.model}
        self.optimizers = {"adamw": self.opt}
        self.warmup = options.warmup if options.warmup is not None else min(500, options.loop.steps // 20)

    def normalize(self, images_u8: torch.Tensor) -> torch.Tensor:
        return (images_u8.float().div(255.0) - self.mean) / self.std

    def step(self, step: int) -> dict[str, float]:
        import torch

        o = self.options
        keys = item_keys(len(self.images), o.batch_size, o.seed, step)
        idx = torch.tensor([i for i, _ in keys], device=self.device)
        lr = lr_at(step, o.loop.steps, o.lr, "cosine", self.warmup)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        img = self.model.encode_image(self.normalize(self.images[idx]), normalize=True)
        txt = self.model.encode_text(self.tokens[idx], normalize=True)
        scale = self.model.logit_scale.exp()
        loss = self.loss(img, txt, scale)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            acc = ((img @ txt.T).argmax(dim=1) == torch.arange(len(idx), device=self.device)).float().mean()
        return {"loss": float(loss.detach()), "acc": float(acc), "logit_scale": float(scale.detach()), "lr": lr}

    def embed_split(self, split: WorldSplit, tokenizer: Any, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """(image embeddings, embeddings of the distinct captions in sorted order) of a split."""
        import torch

        self.model.eval()
        images = torch.from_numpy(split.images).permute(0, 3, 1, 2)
        queries = sorted(set(split.captions))
        with torch.no_grad():
            img = [
                self.model.encode_image(self.normalize(images[i : i + batch].to(self.device)), normalize=True)
                for i in range(0, len(images), batch)
            ]
            txt = [
                self.model.encode_text(tokenizer(queries[i : i + batch]).to(self.device), normalize=True)
                for i in range(0, len(queries), batch)
            ]
        return torch.cat(img).float().cpu(), torch.cat(txt).float().cpu()


def retrieval_hits(
    image_emb: torch.Tensor, query_emb: torch.Tensor, captions: list[str], ks: tuple[int, ...] = KS
) -> dict[str, float]:
    """Text-to-image hit@k over the distinct captions (queries in sorted order), and the chance level of each.

    A query hits at k when one of the k best-scored images has exactly the query's caption
    (:func:`licsearch.metrics.hits_at_k`); the chance level and the median rank of the first hit go with it.
    """
    import torch

    from ..metrics import hits_at_k

    queries = sorted(set(captions))
    relevant = torch.tensor([[c == q for c in captions] for q in queries])
    order = (query_emb @ image_emb.T).argsort(dim=1, descending=True)
    ranked = torch.gather(relevant, 1, order)
    n = len(captions)
    counts = relevant.sum(dim=1).tolist()
    sets = [{i for i, c in enumerate(captions) if c == q} for q in queries]
    hits = hits_at_k(query_emb.detach().cpu().float().numpy(), image_emb.detach().cpu().float().numpy(), sets, ks)
    out: dict[str, float] = {"queries": float(len(queries)), "images": float(n)}
    for k in ks:
        out[f"hit@{k}"] = hits[k]
        kk = min(k, n)
        out[f"chance@{k}"] = sum(1.0 - math.comb(n - r, kk) / math.comb(n, kk) for r in counts) / len(queries)
    first = ranked.float().argmax(dim=1) + 1  # rank of the first relevant image (every query has one)
    out["median_rank"] = float(first.float().median())
    return out


def train_clip(options: ClipTrainOptions) -> TrainReport:
    """Trains (or resumes) the world CLIP; writes ``OUT/clip.safetensors`` and ``OUT/provenance.json``."""
    import open_clip
    import torch

    device = resolve_device(options.device)
    model = load_clip_model(options.model, None, options.init, seed=options.seed)
    size = _image_size(model, options)
    if options.batch_size < 2:
        raise InputError("--batch-size must be at least 2 for a contrastive loss")
    cache = options.cache if options.cache is not None else Path(options.out) / "world-cache"
    splits = {
        "train": world_split("train", "train", options.n_train, seed=options.world_seed, size=size, cache=cache),
        "val": world_split("val", "train", options.n_eval, seed=options.world_seed + 1, size=size, cache=cache),
        "test": world_split("test", "test", options.n_eval, seed=options.world_seed, size=size, cache=cache),
    }
    tokenizer = open_clip.get_tokenizer(options.model)
    run = RunDir(options.out)
    identity = {
        "kind": "clip",
        "model": options.model,
        "image_size": size,
        "n_train": options.n_train,
        "world_seed": options.world_seed,
        "batch_size": options.batch_size,
        "seed": options.seed,
    }
    ck = run.prepare(resume=options.resume, identity=identity)
    torch.manual_seed(options.seed)
    for p in model.parameters():
        p.requires_grad_(True)
    trainer = ClipTrainer(model, splits["train"], tokenizer(splits["train"].captions), options, device)

    def evaluate(step: int) -> dict[str, Any]:
        figures = {}
        for name in ("val", "test"):
            img, txt = trainer.embed_split(splits[name], tokenizer)
            figures[name] = retrieval_hits(img, txt, splits[name].captions)
        return figures

    result = run_loop(run, trainer, options.loop, resume_from=ck, state={"identity": identity}, evaluate=evaluate)
    state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    meta = {"kind": "clip", "model": options.model, "image_size": size, "steps": result.step}
    outputs = {"clip": run.save_weights(CLIP_FILE, state, meta)}
    check = _check_reload(options.model, run.root / CLIP_FILE, trainer, tokenizer, splits["test"].captions[:4])
    data = {
        "world": "licsearch.world",
        "world_seed": options.world_seed,
        "image_size": size,
        "splits": {name: len(s) for name, s in splits.items()},
        "held_out": sorted(f"{color} {shape}" for shape, color in HELD_OUT),
        "cache": str(Path(cache).resolve()),
    }
    write_provenance(run, kind="clip", options=options, data=data, result=result, outputs=outputs, reload_check=check)
    return TrainReport(run.root, outputs, result, data)


def _image_size(model: Any, options: ClipTrainOptions) -> int:
    size = model.visual.image_size
    side = int(size[0]) if isinstance(size, tuple | list) else int(size)
    if options.image_size is not None and options.image_size != side:
        raise InputError(
            f"--image-size {options.image_size} does not match {options.model}, whose image tower takes {side} px",
            hint=f"use --image-size {side}, or a model config made for {options.image_size} px",
        )
    return side


def _check_reload(name: str, path: Path, trainer: ClipTrainer, tokenizer: Any, texts: list[str]) -> dict[str, Any]:
    """Loads the written weights as ``--clip NAME --clip-weights PATH`` would and compares text embeddings."""
    import torch

    encoder = TextEncoder.load(name, None, str(path))
    trainer.model.eval()
    with torch.no_grad():
        ours = trainer.model.encode_text(tokenizer(texts).to(trainer.device), normalize=True).float().cpu()
    theirs = encoder.embed(texts).vectors
    diff = float((ours - theirs).abs().max())
    if diff > 1e-4:
        raise RuntimeError(f"reloaded CLIP differs from the trained one by {diff}; this is a bug")
    return {"text_encoder": name, "max_abs_diff": diff, "weights_sha256": encoder.weights_sha256}
