"""``licsearch eval``: the whole evaluation as one JSON document (:mod:`.table` prints its human summary).

Steps: load the images (and captions); sweep the Pillow baselines; load the published anchors; run every model
plane (one per codec quality or bundle) over the images for rate-distortion, and, where a CLIP model can be
loaded, for semantic fidelity (:mod:`.semantic`); compute BD-rates (:mod:`.bdrate`) of every codec curve against
every baseline and anchor; draw the plots.

JSON document, ``schema`` 1 (keys may be added; none renamed or removed without raising ``schema``)::

    {"schema": 1,
     "images": {"count", "source", "sizes": [[w, h], ...], "captioned"},
     "settings": {"bd_method", "baselines", "anchors", "captions", "max_images"},
     "curves": [{"label", "kind": "codec" | "baseline" | "anchor", "description", "random_weights", "source",
                 "points": [{"quality", "bpp", "psnr", "ms_ssim", "bpp_streams"?, "images"}]}],
     "bd_rate_vs_jpeg": percent | null,     # first codec curve vs measured JPEG, PSNR
     "bd_rates": [{"curve", "reference", "metric": "psnr" | "ms_ssim_db",
                   "bd_rate": {"value", "interval", "note", "method"}, "bd_psnr": {...}}],
     "semantic": {CURVE: {"available", "note", "clip_pixels": {"hit1", "hit5", "near_duplicate"},
                          "per_quality": {Q: {"bpp", "cos_mean", "cos_min", "recall_overlap", "recall_overlap_k",
                                              "clip_decoded_cos_mean", "hit1_adapter", ..., "near_duplicate":
                                              {EDIT: {"recall_at_1", "recall_at_5"}}, "near_duplicate_search":
                                              {EDIT: {...}}} | {"available": false, "note"}}}},
                                              # near_duplicate_search: ranked as search --image ranks (2x view)
     "hit1_adapter", "hit5_adapter", "hit1_clip_pixels", "hit5_clip_pixels", "hit1_clip_decoded",
     "hit5_clip_decoded": {Q: fraction}     # first codec curve, when captions are given
     "random_weights": [component, ...], "plots": [PNG, ...], "notes": [text, ...],
     "retrieval"?: {"sets": {SET: {...}}, "entries": {NAME: {"adapter", "clip", "sets": {SET: {"map_at_r"?,
                    "recall_at_1"?, "recall_at_10"?, "text_hit_at_1"?, "text_hit_at_5"?, "instance_map_at_r",
                    "near_duplicate": {EDIT: {"recall_at_1", "recall_at_5"}}, "near_duplicate_search": {EDIT: {...}},
                    ...}}}}}   # with --retrieval

Quality keys are strings (JSON object keys). Non-finite numbers are written as ``null``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..bitstream import Bitstream
from ..errors import InputError, LicsearchError
from ..metrics import hits_at_k
from .baselines import PILLOW_CODECS
from .bdrate import Method, bd_psnr, bd_rate
from .planes import EvalPlane
from .rd import RDCurve, RDPoint, load_anchors, mean_point, measure, sweep_pillow
from .semantic import (
    EDITS,
    CaptionQueries,
    Teacher,
    agreement,
    caption_queries,
    load_captions,
    near_duplicate_recall,
    search_views,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..config import ClipConfig
    from ..model.text import TextEncoder
    from .retrieval import RetrievalOptions

SCHEMA = 1
SIDES = ("adapter", "clip_decoded", "clip_pixels")
Log = Callable[[str], None]


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate besides the model planes.

    Attributes:
        images: a folder (or file) of images; default the captions file's folder.
        max_images: evaluate at most this many (the first in sorted path order).
        captions: ``captions.jsonl`` naming the images (text-to-image hit rates).
        anchors: a folder of published curves (CompressAI's results JSON).
        plots: a folder to write PNG figures into.
        baselines: Pillow codecs to sweep (see :data:`~licsearch.eval.baselines.PILLOW_CODECS`).
        bd_method: ``cubic`` or ``pchip``.
        retrieval: image-to-image retrieval to measure besides (:mod:`.retrieval`), or None.
    """

    images: Path | None = None
    max_images: int = 24
    captions: Path | None = None
    anchors: Path | None = None
    plots: Path | None = None
    baselines: tuple[str, ...] = ("JPEG", "WebP", "AVIF")
    bd_method: Method = "cubic"
    retrieval: RetrievalOptions | None = None


def load_eval_images(options: EvalOptions) -> tuple[list[Path], list[np.ndarray], str]:
    """The images to evaluate, their paths and where they came from."""
    from ..imageio import iter_image_files, load_image

    folder = options.images or (options.captions.parent if options.captions else None)
    if folder is None:
        raise InputError("no images to evaluate", hint="give --images DIR (e.g. ../shared/data/kodak)")
    if options.max_images < 1:
        raise InputError("--max-images must be positive")
    if not folder.exists():
        raise InputError(f"--images {folder}: no such file or folder")
    paths: list[Path] = []
    for path, err in iter_image_files([folder]):
        if err is not None:
            raise err
        if len(paths) < options.max_images:
            paths.append(path)
    if not paths:
        raise InputError(f"no images found in {folder}", hint="give a folder of .png, .jpg or .webp images")
    return paths, [load_image(p).pixels.copy() for p in paths], str(folder)


@dataclass
class _Semantic:
    """What every plane's semantic evaluation shares: images, edits, captions, and cached CLIP results."""

    images: list[np.ndarray]
    queries: CaptionQueries | None
    edited: dict[str, list[np.ndarray]]
    encoders: dict[ClipConfig, TextEncoder] = field(default_factory=dict)
    teacher_cache: dict[tuple[ClipConfig, str], np.ndarray] = field(default_factory=dict)

    def encoder(self, clip: ClipConfig) -> TextEncoder:
        """One torch CLIP per configuration, however many planes share it (its fingerprint is checked)."""
        from ..config import ModelsConfig
        from ..model.models import ModelSet

        if clip not in self.encoders:
            self.encoders[clip] = ModelSet(ModelsConfig(clip=clip)).text
        return self.encoders[clip]

    def teacher(self, clip: ClipConfig, what: str, images: Sequence[np.ndarray]) -> np.ndarray:
        key = (clip, what)
        if key not in self.teacher_cache:
            self.teacher_cache[key] = Teacher(self.encoder(clip).model).embed(images)
        return self.teacher_cache[key]

    def texts(self, ep: EvalPlane, texts: list[str]) -> np.ndarray:
        """Query vectors from the plane's own text tower (ONNX for bundles), else the shared torch one."""
        if ep.backend == "onnx":
            return ep.plane.embed_texts(texts).vectors.float().numpy()
        return self.encoder(ep.plane.cfg.clip).embed(texts).vectors.float().numpy()


def _adapter_embed(ep: EvalPlane, latents: Sequence[torch.Tensor]) -> np.ndarray:
    import numpy as np

    return np.stack([ep.plane.adapter.embed(y)[0].float().numpy() for y in latents]).astype(np.float32)


def _run_plane(ep: EvalPlane, images: Sequence[np.ndarray]) -> tuple[RDPoint, list[torch.Tensor], list[np.ndarray]]:
    """Every image through the codec: the RD point, the latents the adapter reads, and the decoded pixels."""
    plane = ep.plane
    results, latents, decoded = [], [], []
    for px in images:
        comp = plane.codec.compress(px)
        data = Bitstream(plane.codec.profile_id, comp.width, comp.height, comp.latent_hash, comp.streams).to_bytes()
        out = plane.decode(data)
        results.append(measure(px, out, len(data), sum(len(s) for s in comp.streams.values())))
        latents.append(comp.y_hat)
        decoded.append(out)
    return mean_point(results, ep.quality), latents, decoded


def _semantic_quality(
    ep: EvalPlane, ctx: _Semantic, point: RDPoint, latents: list[torch.Tensor], decoded: list[np.ndarray]
) -> dict[str, Any]:
    import numpy as np

    clip = ep.plane.cfg.clip
    adapter = _adapter_embed(ep, latents)
    pixels = ctx.teacher(clip, "pixels", ctx.images)
    on_decoded = Teacher(ctx.encoder(clip).model).embed(decoded)
    res: dict[str, Any] = {"bpp": point.bpp, **agreement(adapter, pixels)}
    res["clip_decoded_cos_mean"] = float(np.mean((on_decoded * pixels).sum(axis=1)))
    if ctx.queries is not None:
        q = ctx.queries
        text = ctx.texts(ep, q.texts)
        for side, emb in zip(SIDES, (adapter, on_decoded, pixels), strict=True):
            for k, v in hits_at_k(text, emb[q.gallery], q.relevant).items():
                res[f"hit{k}_{side}"] = v
    res["near_duplicate"], res["near_duplicate_search"] = {}, {}
    for name, edited in ctx.edited.items():
        edited_emb = _adapter_embed(ep, [ep.plane.codec.compress(e).y_hat for e in edited])
        views = search_views(
            edited, ctx.images, lambda px: _adapter_embed(ep, [ep.plane.codec.compress(v).y_hat for v in px])
        )
        res["near_duplicate"][name] = near_duplicate_recall(adapter, edited_emb)
        res["near_duplicate_search"][name] = near_duplicate_recall(adapter, edited_emb, views=views)
    return res


def _clip_pixels_reference(ep: EvalPlane, ctx: _Semantic) -> dict[str, Any]:
    """The teacher's own figures on the original pixels (no compression)."""
    clip = ep.plane.cfg.clip
    pixels = ctx.teacher(clip, "pixels", ctx.images)
    ref: dict[str, Any] = {}
    if ctx.queries is not None:
        text = ctx.texts(ep, ctx.queries.texts)
        for k, v in hits_at_k(text, pixels[ctx.queries.gallery], ctx.queries.relevant).items():
            ref[f"hit{k}"] = v
    ref["near_duplicate"] = {
        name: near_duplicate_recall(pixels, ctx.teacher(clip, name, edited)) for name, edited in ctx.edited.items()
    }
    return ref


def _bd_rows(codec: Sequence[RDCurve], references: Sequence[RDCurve], method: Method) -> list[dict[str, Any]]:
    rows = []
    for test in codec:
        for ref in references:
            if ref is test:
                continue
            for metric in ("psnr", "ms_ssim_db"):
                if not any(math.isfinite(v) for v in ref.metric(metric)):
                    continue  # e.g. an anchor that publishes PSNR only
                args = (ref.rates(), ref.metric(metric), test.rates(), test.metric(metric), method)
                rows.append(
                    {
                        "curve": test.label,
                        "reference": ref.label,
                        "metric": metric,
                        "bd_rate": bd_rate(*args).to_dict(),
                        "bd_psnr": bd_psnr(*args).to_dict(),
                    }
                )
    return rows


def run_eval(planes: Sequence[EvalPlane], options: EvalOptions, log: Log | None = None) -> dict[str, Any]:
    """Runs the evaluation described in the module docstring; returns the JSON document (not yet sanitised)."""
    say = log or (lambda _m: None)
    paths, images, source = load_eval_images(options)
    notes: list[str] = []
    queries = None
    if options.captions is not None:
        queries = caption_queries(paths, load_captions(options.captions), options.captions.parent)
    say(f"{len(images)} images from {source}" + (f", {len(queries.gallery)} captioned" if queries else ""))

    baselines, anchors = _reference_curves(options, images, source, notes, say)

    if len(images) <= 11:
        notes.append(
            f"with {len(images)} images, recall@10 overlap compares all other images (k = {len(images) - 1}) and is 1 "
            "by construction; near-duplicate recall@5 is 1 by construction with 5 images or fewer"
        )
    ctx = _Semantic(images, queries, {name: [EDITS.get(name)(px) for px in images] for name in EDITS})
    points: dict[str, list[RDPoint]] = {}
    semantic: dict[str, dict[str, Any]] = {}
    curve_planes: dict[str, list[EvalPlane]] = {}
    for ep in planes:
        point, latents, decoded = _run_plane(ep, images)
        say(f"{ep.curve} q{ep.quality}: {point.bpp:.4f} bpp, {point.psnr:.2f} dB")
        points.setdefault(ep.curve, []).append(point)
        curve_planes.setdefault(ep.curve, []).append(ep)
        sem = semantic.setdefault(ep.curve, {"available": True, "note": "", "per_quality": {}})
        _plane_semantic(ep, ctx, sem, notes, (point, latents, decoded))

    codec_curves = [_codec_curve(label, points[label], curve_planes[label]) for label in points]
    rows = _bd_rows(codec_curves, [*baselines, *anchors], options.bd_method)
    jpeg = [c for c in baselines if c.label == "JPEG"]
    rows += _bd_rows([c for c in baselines if c.label != "JPEG"], jpeg, options.bd_method)
    notes += _same_model_notes(curve_planes)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "images": {
            "count": len(images),
            "source": source,
            "sizes": [[int(px.shape[1]), int(px.shape[0])] for px in images],
            "captioned": len(queries.gallery) if queries else 0,
        },
        "settings": {
            "bd_method": options.bd_method,
            "baselines": [c.label for c in baselines],
            "anchors": str(options.anchors) if options.anchors else None,
            "captions": str(options.captions) if options.captions else None,
            "max_images": options.max_images,
        },
        "curves": [c.to_dict() for c in [*codec_curves, *baselines, *anchors]],
        "bd_rate_vs_jpeg": _primary_bd(rows, codec_curves, notes),
        "bd_rates": rows,
        "semantic": semantic,
        "random_weights": sorted({r for c in codec_curves for r in c.random_weights}),
        "plots": [],
        "notes": notes,
    }
    if queries is not None and codec_curves:
        per_q = semantic[codec_curves[0].label]["per_quality"]
        for k in (1, 5):
            for side in SIDES:
                key = f"hit{k}_{side}"
                doc[key] = {q: r.get(key) for q, r in per_q.items()}
    if options.retrieval is not None and planes:
        from .retrieval import run_retrieval

        doc["retrieval"] = run_retrieval(planes[0].plane.cfg, planes[0].curve, options.retrieval, say)
    if options.plots is not None:
        from .plots import write_plots
        from .retrieval import write_retrieval_plot

        doc["plots"] = [str(p) for p in write_plots(doc, options.plots)]
        if "retrieval" in doc and (extra := write_retrieval_plot(doc["retrieval"], options.plots)) is not None:
            doc["plots"].append(str(extra))
    return doc


def _reference_curves(
    options: EvalOptions, images: list[np.ndarray], source: str, notes: list[str], say: Log
) -> tuple[list[RDCurve], list[RDCurve]]:
    """(Pillow baselines this build can write, published anchors); a note for each skipped codec and for anchors."""
    baselines = []
    for name in options.baselines:
        codec = PILLOW_CODECS.get(name)
        if not codec.available():
            notes.append(f"{name}: this Pillow build cannot write it (features.check({codec.feature!r})); skipped")
            continue
        baselines.append(sweep_pillow(codec, images, progress=say))
    anchors = load_anchors(options.anchors) if options.anchors else []
    if anchors:
        notes.append(
            "anchors are published means over their own image set (Kodak, 24 images); BD-rates against them "
            f"compare like with like only when --images is that set (this run: {len(images)} images from {source})"
        )
    return baselines, anchors


def _plane_semantic(
    ep: EvalPlane,
    ctx: _Semantic,
    sem: dict[str, Any],
    notes: list[str],
    measured: tuple[RDPoint, list[torch.Tensor], list[np.ndarray]],
) -> None:
    """Adds one quality's semantic figures to its curve's ``sem``; a CLIP or adapter that cannot load is a note."""
    if ep.semantic_note:
        sem["per_quality"][str(ep.quality)] = {"available": False, "note": ep.semantic_note}
        return
    if not sem["available"]:
        return
    try:
        if "clip_pixels" not in sem:
            sem["clip_pixels"] = _clip_pixels_reference(ep, ctx)
    except LicsearchError as e:  # CLIP cannot be loaded (e.g. pretrained, offline): RD still stands
        sem.update(available=False, note=f"semantic evaluation skipped: {e}")
        notes.append(f"{ep.curve}: semantic evaluation skipped: {e}")
        return
    try:
        sem["per_quality"][str(ep.quality)] = _semantic_quality(ep, ctx, *measured)
    except LicsearchError as e:  # this quality's adapter cannot be loaded
        sem["per_quality"][str(ep.quality)] = {"available": False, "note": str(e)}
        notes.append(f"{ep.curve} q{ep.quality}: semantic evaluation skipped: {e}")


def _codec_curve(label: str, points: list[RDPoint], planes: list[EvalPlane]) -> RDCurve:
    first = planes[0].plane.cfg.codec
    where = ", ".join(sorted({p.bundle for p in planes if p.bundle})) or "eager PyTorch"
    desc = f"{first.arch}, qualities {sorted(p.quality for p in planes)}, codec weights {first.weights} ({where})"
    return RDCurve(label, "codec", points, description=desc, random_weights=planes[0].plane.random_components())


def _primary_bd(rows: list[dict[str, Any]], codec_curves: list[RDCurve], notes: list[str]) -> float | None:
    if not codec_curves:
        return None
    label = codec_curves[0].label
    row = next((r for r in rows if r["curve"] == label and r["reference"] == "JPEG" and r["metric"] == "psnr"), None)
    if row is None:
        notes.append("bd_rate_vs_jpeg: JPEG was not among the baselines")
        return None
    res = row["bd_rate"]
    if res["note"]:
        notes.append(f"bd_rate_vs_jpeg ({label}): {res['note']}")
    value = res["value"]
    return value if math.isfinite(value) else None


def json_safe(obj: Any) -> Any:
    """Non-finite floats -> None, tuples -> lists, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def _same_model_notes(curve_planes: dict[str, list[EvalPlane]]) -> list[str]:
    """Qualities that are one and the same model (random weights of one shape are seeded alike)."""
    notes = []
    for label, planes in curve_planes.items():
        by_sha: dict[str, list[int]] = {}
        for ep in planes:
            by_sha.setdefault(ep.plane.codec.weights_sha256, []).append(ep.quality)
        for qualities in by_sha.values():
            if len(qualities) > 1:
                notes.append(
                    f"{label}: qualities {qualities} have identical codec weights (random weights of one shape), "
                    "so their points coincide"
                )
    return notes
