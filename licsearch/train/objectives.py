"""Retrieval objectives for the adapter (Schall et al. 2024, arXiv 2409.01936): 2SFT and MCIP, beside distillation.

The adapter is the image side of the store's embedding space; these objectives fine-tune it for image-to-image
search without losing text-to-image search:

- **ArcMargin** (Deng et al. 2019): a learnable proxy per class; the logit of the true class is ``s·cos(θ + m)``,
  every other ``s·cos θ``, under softmax cross-entropy. Labels come in two heads, averaged: *classes* (the world's
  scene classes, (shape, colour, background) of the first object; a natural image is its own class) and
  *instances* (every source image with its augmented views: random JPEG re-encoding, crops and downscales).
- **MCArcMargin** (Schall et al. 2024): the same margin against the frozen text tower's embeddings of an image's
  pseudo-captions, a soft target spread evenly over them, every other caption of the batch a negative.
- **Pseudo-captions**: each image's nearest captions of a caption pool (the world's caption grammar, or a file) by
  the CLIP image tower's embedding of its pixels, at most ``count`` of them and only those above ``threshold``.
- **2SFT**: stage 1 is ArcMargin alone; stage 2 re-aligns the text tower (all its weights, image tower untouched)
  with InfoNCE (CLIP's contrastive loss, open_clip's ``ClipLoss``) against the frozen stage-1 adapter on the world's
  captioned scenes. It writes a new CLIP checkpoint, so its space has its own text tower.
- **MCIP**: ``λ1·ArcMargin + λ2·MCArcMargin`` with the text tower frozen; the CLIP stays as it is.
- **Distillation term** (``--lambda-distill``, not in the seed): ``λd·(1 - cos)`` between the adapter's embedding of
  an item and the CLIP image tower's embedding of its source's pixels, the distill objective's own target, kept
  beside the margin losses so that the space stays where the text tower's queries land. MCIP's weights default to
  the measured ones of :data:`licsearch.defaults.MCIP_LAMBDA_DISTILL` and its neighbours, not the seed's
  λ1 = λ2 = 0.5; 2SFT's stage 1 stays ArcMargin alone unless ``--lambda-distill`` is given.

``distill`` remains :mod:`.adapter`'s trainer. The data (:mod:`.objective_data`) is computed once, the codec being
frozen and the views fixed per seed, and cached, so a run costs the adapter's steps only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import defaults
from ..errors import InputError
from .adapter import ADAPTER_FILE, AdapterTrainOptions, adamw, build_trainable_adapter
from .data import item_keys
from .loop import TrainReport, lr_at, resolve_device, run_loop, write_provenance
from .objective_data import ObjectiveData, load_or_build_data
from .run import RunDir

if TYPE_CHECKING:
    import torch
    from torch import nn


OBJECTIVES = ("distill", "2sft", "mcip")
CLIP_FILE = "clip.safetensors"


@dataclass(frozen=True)
class ObjectiveOptions:
    """``licsearch train adapter --objective 2sft|mcip``: the adapter options plus the retrieval objective's own."""

    base: AdapterTrainOptions
    objective: str
    world_scenes: int = 1200
    world_seed: int = 0
    photos: int = 30
    views: int = 3
    arc_scale: float = defaults.ARC_MARGIN_SCALE
    arc_margin: float = defaults.ARC_MARGIN_MARGIN
    captions: Path | None = None
    caption_pool: int = 4000
    caption_threshold: float = defaults.PSEUDO_CAPTION_THRESHOLD
    caption_count: int = defaults.PSEUDO_CAPTION_COUNT
    lambda_labels: float = defaults.MCIP_LAMBDA_LABELS
    lambda_captions: float = defaults.MCIP_LAMBDA_CAPTIONS
    text_steps: int = 300
    text_lr: float = 1e-4
    cache: Path | None = None
    lambda_distill: float | None = None

    @property
    def distill_weight(self) -> float:
        """``λd``: the value given, else ``MCIP_LAMBDA_DISTILL`` of the defaults for MCIP, 0 (the seed's) for 2SFT."""
        if self.lambda_distill is not None:
            return self.lambda_distill
        return defaults.MCIP_LAMBDA_DISTILL if self.objective == "mcip" else 0.0

    def check(self) -> None:
        """Refuses values no run can use, naming the flag."""
        if self.objective not in OBJECTIVES[1:]:
            raise InputError(f"unknown objective {self.objective!r}", hint=f"use one of {', '.join(OBJECTIVES)}")
        if self.arc_scale <= 0 or not 0 <= self.arc_margin < math.pi / 2:
            raise InputError("--arc-scale must be positive and --arc-margin in [0, π/2) radians", hint="e.g. 30, 0.1")
        if self.caption_count < 1 or not -1 <= self.caption_threshold <= 1:
            raise InputError("--caption-count must be at least 1 and --caption-threshold a cosine in [-1, 1]")
        if self.world_scenes < 0 or self.photos < 0 or self.views < 0 or self.text_steps < 0:
            raise InputError("--world-scenes, --photos, --views and --text-steps cannot be negative")
        if self.lambda_labels < 0 or self.lambda_captions < 0 or self.distill_weight < 0:
            raise InputError("--lambda-labels, --lambda-captions and --lambda-distill cannot be negative")
        if self.world_scenes == 0 and self.photos == 0:
            raise InputError("nothing to train on", hint="give --world-scenes N or --photos N with --images DIR")
        if self.base.batch_size < 2:
            raise InputError("--batch-size must be at least 2 for a margin loss over a batch")


# -- losses ---------------------------------------------------------------------------------------------------


def arc_margin_logits(cos: torch.Tensor, positive: torch.Tensor, *, scale: float, margin: float) -> torch.Tensor:
    """``s·cos(θ + m)`` where ``positive``, else ``s·cos θ``.

    Past ``θ = π - m`` the margin would raise the logit again; there ArcFace's usual fallback ``cos θ - m·sin m``
    keeps it monotonic (Deng et al. 2019).
    """
    import torch

    sin = torch.sqrt((1.0 - cos * cos).clamp(0.0, 1.0))
    shifted = cos * math.cos(margin) - sin * math.sin(margin)
    shifted = torch.where(cos > math.cos(math.pi - margin), shifted, cos - margin * math.sin(margin))
    return scale * torch.where(positive, shifted, cos)


def arc_margin_loss(
    embeddings: torch.Tensor, proxies: torch.Tensor, labels: torch.Tensor, *, scale: float, margin: float
) -> torch.Tensor:
    """ArcMargin cross-entropy of embeddings (B, D) against class proxies (C, D) for integer ``labels`` (B,)."""
    import torch.nn.functional as F

    cos = F.normalize(embeddings, dim=-1) @ F.normalize(proxies, dim=-1).T
    positive = F.one_hot(labels, proxies.shape[0]).bool()
    return F.cross_entropy(arc_margin_logits(cos, positive, scale=scale, margin=margin), labels)


def mc_arc_margin_loss(
    embeddings: torch.Tensor, texts: torch.Tensor, positive: torch.Tensor, *, scale: float, margin: float
) -> torch.Tensor:
    """MCArcMargin of images (B, D) against caption embeddings (T, D); ``positive`` (B, T) marks each image's captions.

    The target puts ``1 / |C_i|`` on each of image i's captions; images without a caption are left out (zero loss
    when none has one).
    """
    import torch
    import torch.nn.functional as F

    keep = positive.any(dim=1)
    if not bool(keep.any()):
        return embeddings.sum() * 0.0
    cos = F.normalize(embeddings[keep], dim=-1) @ F.normalize(texts, dim=-1).T
    pos = positive[keep]
    logp = torch.log_softmax(arc_margin_logits(cos, pos, scale=scale, margin=margin), dim=1)
    target = pos.float() / pos.sum(dim=1, keepdim=True)
    return -(target * logp).sum(dim=1).mean()


def distill_loss(embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` between embeddings (B, D) and the CLIP image tower's embeddings of their sources (B, D)."""
    import torch.nn.functional as F

    return (1.0 - (F.normalize(embeddings, dim=-1) * F.normalize(targets, dim=-1)).sum(dim=-1)).mean()


# -- pseudo-captions ------------------------------------------------------------------------------------------


def mine_pseudo_captions(
    image_emb: np.ndarray, caption_emb: np.ndarray, *, threshold: float, count: int
) -> list[tuple[int, ...]]:
    """Each image's pseudo-captions: indexes of its ``count`` nearest captions whose cosine exceeds ``threshold``.

    Nearest first; ties go to the lower caption index, so the same inputs always give the same lists.
    """
    sims = image_emb.astype(np.float64) @ caption_emb.astype(np.float64).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :count]
    return [tuple(int(j) for j in row if sims[i, j] > threshold) for i, row in enumerate(order)]


def caption_pool(path: Path | None, n: int, seed: int) -> list[str]:
    """Distinct captions, sorted: of a file (``captions.jsonl`` lines, or one caption a line) or of ``n`` world scenes.

    The world's scenes are drawn from its train split with their own seed, so held-out combinations never appear.
    """
    from ..world import sample_specs

    if path is None:
        return sorted({s.caption() for s in sample_specs(n, seed=seed + 7919, split="train")})
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read --captions {path}: {e}", hint="give a UTF-8 text or captions.jsonl file") from e
    texts = []
    for n_line, line in enumerate(lines, 1):
        if line.startswith("{"):
            try:
                line = str(json.loads(line)["caption"])
            except (ValueError, KeyError, TypeError) as e:
                raise InputError(f"{path}:{n_line}: not a captions line ({e})", hint='use {"caption": TEXT}') from e
        texts.append(line)
    if not texts:
        raise InputError(f"--captions {path} holds no captions")
    return sorted(set(texts))


# -- trainers -------------------------------------------------------------------------------------------------


def embed_items(adapter: nn.Module, data: ObjectiveData, idx: Sequence[int]) -> torch.Tensor:
    """Adapter embeddings of items ``idx`` in that order (latents of one shape run as one batch)."""
    import torch

    groups: dict[str, list[int]] = {}
    for pos, i in enumerate(idx):
        groups.setdefault(data.where[i][0], []).append(pos)
    out: list[torch.Tensor | None] = [None] * len(idx)
    for key, positions in groups.items():
        rows = torch.tensor([data.where[idx[p]][1] for p in positions])
        for p, e in zip(positions, adapter(data.latents[key][rows]), strict=True):
            out[p] = e
    return torch.stack([e for e in out if e is not None])


class ObjectiveTrainer:
    """One ArcMargin (2SFT stage 1) or ArcMargin + MCArcMargin (MCIP) step per call, on cached latents."""

    def __init__(
        self,
        adapter: nn.Module,
        data: ObjectiveData,
        caption_emb: torch.Tensor | None,
        options: ObjectiveOptions,
        *,
        dim: int,
    ) -> None:
        import torch

        self.adapter, self.data, self.options = adapter, data, options
        gen = torch.Generator().manual_seed(options.base.seed)
        self.proxies = torch.nn.ParameterDict(
            {
                "classes": torch.nn.Parameter(torch.randn(max(data.classes) + 1, dim, generator=gen)),
                "instances": torch.nn.Parameter(torch.randn(max(data.instances) + 1, dim, generator=gen)),
            }
        )
        self.caption_emb = caption_emb
        self.opt = adamw(adapter, options.base.lr, options.base.weight_decay)
        self.opt.add_param_group({"params": list(self.proxies.parameters()), "weight_decay": 0.0, "lr": 1e-2})
        self.modules = {"adapter": adapter, "proxies": self.proxies}
        self.optimizers = {"adam": self.opt}
        b = options.base
        self.warmup = b.warmup if b.warmup is not None else b.loop.steps // 50

    def losses(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        import torch

        o, d = self.options, self.data
        emb = embed_items(self.adapter, d, idx)
        arc = {"scale": o.arc_scale, "margin": o.arc_margin}
        labels = {h: torch.tensor([getattr(d, h)[i] for i in idx]) for h in ("classes", "instances")}
        heads = [arc_margin_loss(emb, self.proxies[h], labels[h], **arc) for h in labels]
        out = {"arc": torch.stack(heads).mean()}
        if o.objective == "mcip" and self.caption_emb is not None:
            sets = [d.pseudo[d.source[i]] for i in idx]
            ids = sorted({j for s in sets for j in s})
            if ids:
                col = {j: c for c, j in enumerate(ids)}
                positive = torch.zeros(len(idx), len(ids), dtype=torch.bool)
                for r, s in enumerate(sets):
                    positive[r, [col[j] for j in s]] = True
                out["mc_arc"] = mc_arc_margin_loss(emb, self.caption_emb[ids], positive, **arc)
            else:
                out["mc_arc"] = emb.sum() * 0.0
            out["loss"] = o.lambda_labels * out["arc"] + o.lambda_captions * out["mc_arc"]
        else:
            out["loss"] = out["arc"]
        if (weight := o.distill_weight) > 0:
            out["distill"] = distill_loss(emb, torch.from_numpy(d.teacher[[d.source[i] for i in idx]]))
            out["loss"] = out["loss"] + weight * out["distill"]
        return out

    def step(self, step: int) -> dict[str, float]:
        b = self.options.base
        idx = [i for i, _ in item_keys(len(self.data), b.batch_size, b.seed, step)]
        lr = lr_at(step, b.loop.steps, b.lr, "cosine", self.warmup)
        self.opt.param_groups[0]["lr"] = self.opt.param_groups[1]["lr"] = lr
        self.adapter.train()
        self.opt.zero_grad(set_to_none=True)
        losses = self.losses(idx)
        losses["loss"].backward()
        self.opt.step()
        return {**{k: float(v.detach()) for k, v in losses.items()}, "lr": lr}


class TextRealigner:
    """2SFT stage 2: InfoNCE between the text tower and the frozen adapter's embeddings of captioned scenes."""

    def __init__(self, clip: Any, tokens: torch.Tensor, image_emb: torch.Tensor, options: ObjectiveOptions) -> None:
        import open_clip
        import torch

        self.clip, self.tokens, self.image_emb, self.options = clip, tokens, image_emb, options
        self.params = [p for n, p in clip.named_parameters() if not n.startswith("visual.") and n != "logit_scale"]
        for p in clip.parameters():
            p.requires_grad_(False)
        for p in self.params:
            p.requires_grad_(True)
        self.scale = float(clip.logit_scale.exp())
        self.loss = open_clip.ClipLoss()
        self.opt = torch.optim.AdamW(self.params, lr=options.text_lr, weight_decay=0.0)
        self.modules = {"clip": clip}
        self.optimizers = {"adamw": self.opt}

    def step(self, step: int) -> dict[str, float]:
        import torch

        o = self.options
        idx = torch.tensor([i for i, _ in item_keys(len(self.tokens), o.base.batch_size, o.base.seed, step)])
        lr = lr_at(step, o.text_steps, o.text_lr, "cosine", 0)
        self.opt.param_groups[0]["lr"] = lr
        self.clip.train()
        self.opt.zero_grad(set_to_none=True)
        text = self.clip.encode_text(self.tokens[idx], normalize=True)
        loss = self.loss(self.image_emb[idx], text, self.scale)
        loss.backward()
        self.opt.step()
        return {"loss": float(loss.detach()), "lr": lr}


def train_objective(options: ObjectiveOptions) -> TrainReport:
    """Trains the adapter with 2SFT or MCIP from ``options.base.init``; writes the adapter (and 2SFT's CLIP)."""
    import dataclasses

    import torch

    from ..model.adapter import AdapterShape
    from ..model.codec import Codec
    from ..model.text import TextEncoder
    from .teacher import ClipTeacher

    options.check()
    b, m = options.base, options.base.models
    device = resolve_device(b.device)
    codec = Codec.load(m.codec.arch, m.codec.quality, m.codec.weights, seed=m.codec.seed)
    teacher = ClipTeacher.load(m.clip.model, m.clip.tag, m.clip.weights, torch.device("cpu"), seed=m.clip.seed)
    shape = AdapterShape(codec.latent_channels, teacher.embed_dim, **b.shape_kwargs)
    data, data_doc = load_or_build_data(options, codec, teacher)
    caption_emb = None
    if options.objective == "mcip":
        data.pool = caption_pool(options.captions, options.caption_pool, options.world_seed)
        text = TextEncoder.load(m.clip.model, m.clip.tag, m.clip.weights, seed=m.clip.seed)
        caption_emb = torch.cat([text.embed(data.pool[k : k + 256]).vectors for k in range(0, len(data.pool), 256)])
        data.pseudo = mine_pseudo_captions(
            data.teacher, caption_emb.numpy(), threshold=options.caption_threshold, count=options.caption_count
        )
    run = RunDir(b.out)
    identity = {"kind": "adapter", "objective": options.objective, "shape": shape.to_dict(), **data_doc}
    ck = run.prepare(resume=b.resume, identity=identity)
    torch.manual_seed(b.seed)
    adapter = build_trainable_adapter(shape, b.init, seed=b.seed).to(device)
    trainer = ObjectiveTrainer(adapter, data, caption_emb, options, dim=shape.embed_dim)
    result = run_loop(run, trainer, b.loop, resume_from=ck, state={"identity": identity})
    meta = {"kind": "adapter", **shape.to_dict(), "codec": codec.profile_id, "clip": m.clip.model}
    outputs = {"adapter": run.save_weights(ADAPTER_FILE, adapter.state_dict(), meta)}
    figures: dict[str, Any] = {"items": len(data), "sources": len(data.captions)}
    if options.objective == "mcip":
        counts = [len(p) for p in data.pseudo]
        figures["pseudo_captions"] = {
            "pool": len(data.pool),
            "mean_per_image": float(np.mean(counts)),
            "images_without": int(sum(c == 0 for c in counts)),
        }
    clip_doc = {"model": m.clip.model, "weights": m.clip.weights, "sha256": teacher.weights_sha256}
    if options.objective == "2sft" and options.text_steps:
        clip_doc = _realign_text(options, adapter.eval(), data, run, outputs, figures)
    write_provenance(
        run,
        kind="adapter",
        options=dataclasses.replace(options, base=b),
        data={**data_doc, **figures},
        result=result,
        outputs=outputs,
        models={"codec": {"profile": codec.profile_id, "sha256": codec.weights_sha256}, "clip": clip_doc},
        adapter_shape=shape.to_dict(),
        objective=options.objective,
    )
    return TrainReport(run.root, outputs, result, {**data_doc, **figures})


def _realign_text(
    options: ObjectiveOptions,
    adapter: nn.Module,
    data: ObjectiveData,
    run: RunDir,
    outputs: dict[str, Any],
    figures: dict[str, Any],
) -> dict[str, Any]:
    """2SFT stage 2 in ``OUT/text``; writes ``OUT/clip.safetensors``: the image tower as it was, the text re-aligned."""
    import dataclasses

    import open_clip
    import torch

    from ..model.text import load_clip_model
    from ..model.weights import state_dict_sha256

    b, m = options.base, options.base.models
    first: dict[int, int] = {}
    for i, s in enumerate(data.source):
        first.setdefault(s, i)  # a source's own item comes before its views
    originals = [i for s, i in first.items() if data.captions[s] is not None]
    if not originals:
        raise InputError("2SFT's text re-alignment needs captioned scenes", hint="give --world-scenes N")
    with torch.no_grad():
        image_emb = torch.cat(
            [embed_items(adapter, data, originals[k : k + 256]) for k in range(0, len(originals), 256)]
        )
    clip = load_clip_model(m.clip.model, m.clip.tag, m.clip.weights, seed=m.clip.seed)
    tokens = open_clip.get_tokenizer(m.clip.model)([str(data.captions[data.source[i]]) for i in originals])
    realigner = TextRealigner(clip, tokens, image_emb.detach(), options)
    sub = RunDir(run.root / "text")
    loop = dataclasses.replace(b.loop, steps=options.text_steps)
    ck = sub.prepare(resume=b.resume, identity={"kind": "clip-text", "adapter": outputs["adapter"]["sha256"]})
    res = run_loop(sub, realigner, loop, resume_from=ck, state={"identity": {"kind": "clip-text"}})
    state = {k: v.detach().cpu() for k, v in clip.state_dict().items()}
    outputs["clip"] = run.save_weights(CLIP_FILE, state, {"kind": "clip", "model": m.clip.model, "text": "2sft"})
    figures["text_realignment"] = {"steps": res.step, "seconds": round(res.seconds, 3), **res.metrics}
    return {"model": m.clip.model, "weights": outputs["clip"]["path"], "sha256": state_dict_sha256(state)}
