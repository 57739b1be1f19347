"""Image-to-image retrieval beside text-to-image search, for several adapters (and text towers) over one codec.

One vector per image should serve both kinds of search (Schall et al. 2024, arXiv 2409.01936). For each *entry*
(an adapter, and the text tower its space queries with) over the same codec's latents:

- **class retrieval** on the world's held-out test scenes (:func:`licsearch.world.sample_specs`, split ``test``:
  every first object is a (shape, colour) pair no training scene holds): each scene queries the others, relevant
  when of the same scene class (shape, colour and background of its first object); mAP@R and recall@1/@10
  (:func:`licsearch.metrics.map_at_r`, :func:`licsearch.metrics.labelled_recall_at_k`);
- **text-to-image** hit@1/@5 of those scenes' distinct captions, through the entry's own text tower;
- **near-duplicates** on every image set (the world scenes, and each folder given: Kodak, photos): each edit of
  :data:`licsearch.eval.semantic.EDITS` searched among the originals (recall@1/@5), and the *instance mAP@R* of an
  image and its edited versions taken as one class.

Latents come from :meth:`Codec.compress` (what a bitstream holds) and are computed once for every entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..metrics import HIT_KS, hits_at_k, labelled_recall_at_k, map_at_r
from .semantic import EDITS, SearchViews, near_duplicate_recall, search_view_images

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..config import ModelsConfig
    from ..model.codec import Codec
    from ..world import SceneSpec

RECALL_KS = (1, 10)
ADAPTER_FILE = "adapter.safetensors"
CLIP_FILE = "clip.safetensors"
Log = Callable[[str], None]


@dataclass(frozen=True)
class RetrievalEntry:
    """An adapter to evaluate and the CLIP weights whose text tower queries its space."""

    name: str
    adapter: str
    clip: str | None = None


@dataclass(frozen=True)
class RetrievalOptions:
    """What ``licsearch eval --retrieval`` measures.

    Attributes:
        entries: named adapters besides the evaluated models' own (``NAME=PATH`` on the command line).
        world_scenes: held-out world scenes (split ``test``) to rank; 0 for none.
        world_seed: their seed.
        sets: image folders for near-duplicate search (each at most ``max_images`` images).
        max_images: images taken per folder.
    """

    entries: tuple[RetrievalEntry, ...] = ()
    world_scenes: int = 200
    world_seed: int = 0
    sets: tuple[Path, ...] = ()
    max_images: int = 24


def parse_entry(text: str) -> RetrievalEntry:
    """``NAME=PATH``: a training run folder (its adapter, and its CLIP when it wrote one) or an adapter weights file."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise InputError(f"bad --retrieval-adapter {text!r}", hint="write NAME=RUN_DIR or NAME=ADAPTER.safetensors")
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / ADAPTER_FILE).is_file():
            raise InputError(f"--retrieval-adapter {text}: {p} holds no {ADAPTER_FILE}", hint="give a training run")
        clip = p / CLIP_FILE
        return RetrievalEntry(name, str(p / ADAPTER_FILE), str(clip) if clip.is_file() else None)
    return RetrievalEntry(name, path)


@dataclass
class _ImageSet:
    """Latents of one image set and of its edited versions, with labels and captions where it has them."""

    name: str
    latents: list[torch.Tensor]
    edited: dict[str, list[torch.Tensor]]
    classes: list[str] | None = None
    captions: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The extra views search --image adds (edit -> [(query row, min_width, latent)]) and the originals' widths.
    view_latents: dict[str, list[tuple[int, int, torch.Tensor]]] = field(default_factory=dict)
    widths: list[int] = field(default_factory=list)


def _latent_set(codec: Codec, name: str, images: Sequence[np.ndarray], edits: Sequence[str] | None = None) -> _ImageSet:
    edited, views = {}, {}
    for e in edits or EDITS.names():
        pixels = [EDITS.get(e)(px) for px in images]
        edited[e] = [codec.compress(px).y_hat for px in pixels]
        views[e] = [(i, v.min_width, codec.compress(v.pixels).y_hat) for i, v in search_view_images(pixels, images)]
    out = _ImageSet(name, [codec.compress(px).y_hat for px in images], edited)
    out.view_latents, out.widths = views, [int(px.shape[1]) for px in images]
    return out


def scene_class(spec: SceneSpec) -> str:
    """The class of a world scene for retrieval: shape, colour and background of its first object group."""
    first = spec.objects[0]
    return f"{first.color} {first.shape} / {spec.background}"


def world_set(codec: Codec, n: int, seed: int) -> _ImageSet:
    """The world's held-out test scenes at 256 px: latents, scene classes and captions."""
    from ..world import render, sample_specs

    specs = sample_specs(n, seed=seed, split="test")
    out = _latent_set(codec, "world", [render(s, (256, 256)).copy() for s in specs])
    out.classes = [scene_class(s) for s in specs]
    out.captions = [s.caption() for s in specs]
    out.extra = {"scenes": n, "seed": seed, "split": "test", "classes": len(set(out.classes))}
    return out


def folder_set(codec: Codec, folder: Path, max_images: int) -> _ImageSet:
    """The first ``max_images`` images of a folder (sorted paths) and their edits."""
    from ..imageio import iter_image_files, load_image

    if not folder.exists():
        raise InputError(f"--retrieval-images {folder}: no such folder")
    paths: list[Path] = []
    for path, err in iter_image_files([folder]):
        if err is not None:
            raise err
        if len(paths) < max_images:
            paths.append(path)
    if not paths:
        raise InputError(f"no images in {folder}", hint="give a folder of .png, .jpg or .webp images")
    out = _latent_set(codec, folder.name, [load_image(p).pixels.copy() for p in paths])
    out.extra = {"images": len(paths), "source": str(folder)}
    return out


def _embed(adapter: Any, latents: Sequence[torch.Tensor]) -> np.ndarray:
    import numpy as np

    return np.stack([adapter.embed(y)[0].float().numpy() for y in latents]).astype(np.float32)


def _set_figures(adapter: Any, text: Any, s: _ImageSet) -> dict[str, Any]:
    """Every figure of one entry on one image set."""
    import numpy as np

    emb = _embed(adapter, s.latents)
    out: dict[str, Any] = {}
    if s.classes is not None:
        out["map_at_r"] = map_at_r(emb, s.classes)
        for k, v in labelled_recall_at_k(emb, s.classes, RECALL_KS).items():
            out[f"recall_at_{k}"] = v
    if s.captions is not None and text is not None:
        queries = sorted(set(s.captions))
        q = text.embed(queries).vectors.float().numpy()
        relevant = [{i for i, c in enumerate(s.captions) if c == t} for t in queries]
        for k, v in hits_at_k(q, emb, relevant, HIT_KS).items():
            out[f"text_hit_at_{k}"] = v
    near: dict[str, Any] = {}
    near_search: dict[str, Any] = {}
    stacked, labels = [emb], list(range(len(emb)))
    for name, latents in s.edited.items():
        e = _embed(adapter, latents)
        near[name] = near_duplicate_recall(emb, e)
        if name in s.view_latents:
            rows = s.view_latents[name]
            vectors: list[np.ndarray] = list(_embed(adapter, [y for _, _, y in rows])) if rows else []
            views = [(i, w, v) for (i, w, _), v in zip(rows, vectors, strict=True)]
            near_search[name] = near_duplicate_recall(emb, e, views=SearchViews(views, np.array(s.widths)))
        stacked.append(e)
        labels += list(range(len(e)))
    out["near_duplicate"] = near
    if near_search:
        out["near_duplicate_search"] = near_search  # ranked as search --image ranks, with its extra views
    out["near_duplicate_min_recall_at_1"] = min((r["recall_at_1"] for r in near.values()), default=math.nan)
    out["instance_map_at_r"] = map_at_r(np.concatenate(stacked), labels)
    return out


def run_retrieval(
    base: ModelsConfig, base_name: str, options: RetrievalOptions, log: Log | None = None
) -> dict[str, Any]:
    """The retrieval figures of the base models' adapter and of every entry, on every image set.

    Returns:
        ``{"sets": {SET: {...}}, "entries": {NAME: {"adapter", "clip", "sets": {SET: figures}}}}``.
    """
    import dataclasses

    from ..model.models import ModelSet

    say = log or (lambda _m: None)
    codec = ModelSet(base).codec
    sets = []
    if options.world_scenes > 0:
        sets.append(world_set(codec, options.world_scenes, options.world_seed))
    sets += [folder_set(codec, Path(f), options.max_images) for f in options.sets]
    if not sets:
        raise InputError("no image set to search", hint="give --retrieval-world N or --retrieval-images DIR")
    say(f"retrieval: latents of {', '.join(s.name for s in sets)} ready")
    entries = [RetrievalEntry(base_name, base.adapter.weights, base.clip.weights), *options.entries]
    doc: dict[str, Any] = {"sets": {s.name: s.extra for s in sets}, "entries": {}}
    for entry in entries:
        clip = entry.clip or base.clip.weights
        models = dataclasses.replace(
            base,
            adapter=dataclasses.replace(base.adapter, weights=entry.adapter, sha256=""),
            clip=dataclasses.replace(base.clip, weights=clip, sha256=""),
        )
        plane = ModelSet(models)
        figures = {s.name: _set_figures(plane.adapter, plane.text, s) for s in sets}
        doc["entries"][entry.name] = {"adapter": entry.adapter, "clip": clip, "sets": figures}
        say(f"retrieval {entry.name}: " + _summary(figures))
    return doc


def _summary(figures: dict[str, Any]) -> str:
    parts = []
    for name, f in figures.items():
        bits = [f"{k} {f[k]:.3f}" for k in ("map_at_r", "text_hit_at_1") if k in f]
        bits.append(f"near-dup min r@1 {f['near_duplicate_min_recall_at_1']:.3f}")
        parts.append(f"{name}: " + ", ".join(bits))
    return "; ".join(parts)


def write_retrieval_plot(doc: dict[str, Any], out_dir: Path) -> Path | None:
    """``retrieval.png``: image-to-image mAP@R against text-to-image hit@1 on the world scenes, one point per entry,
    and near-duplicate recall@1 per edit and image set; None without world figures."""
    from ..extras import need

    need("matplotlib", "eval", "plots (--plots)")
    from matplotlib.figure import Figure

    entries = doc["entries"]
    if not any("map_at_r" in e["sets"].get("world", {}) for e in entries.values()):
        return None
    fig = Figure(figsize=(13, 6), dpi=110)
    ax, bx = fig.subplots(1, 2)
    for i, (name, e) in enumerate(entries.items()):
        w = e["sets"]["world"]
        ax.scatter([w.get("text_hit_at_1", math.nan)], [w["map_at_r"]], s=60, color=f"C{i}", label=name)
        ax.annotate(name, (w.get("text_hit_at_1", math.nan), w["map_at_r"]), textcoords="offset points", xytext=(6, 4))
        bars = [
            (f"{s}\n{edit}", r["recall_at_1"]) for s, f in e["sets"].items() for edit, r in f["near_duplicate"].items()
        ]
        width = 0.8 / len(entries)
        bx.bar([j + i * width for j in range(len(bars))], [b[1] for b in bars], width, color=f"C{i}", label=name)
        bx.set_xticks([j + 0.4 - width / 2 for j in range(len(bars))], [b[0] for b in bars], fontsize=6, rotation=60)
    ax.set_xlabel("text-to-image hit@1 (world held-out scenes)")
    ax.set_ylabel("image-to-image mAP@R (held-out scene classes)")
    ax.set_title("one embedding for both searches")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    bx.set_ylabel("near-duplicate recall@1")
    bx.set_ylim(0, 1.05)
    bx.axhline(0.9, color="grey", lw=0.8, ls="--")
    bx.set_title("near-duplicates per image set and edit")
    bx.legend(fontsize=8)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "retrieval.png"
    fig.savefig(path)
    return path
