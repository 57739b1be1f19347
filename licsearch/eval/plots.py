"""Figures of an evaluation document: rate-distortion curves and semantic fidelity against rate.

``rd_psnr.png`` and ``rd_msssim.png``: PSNR and MS-SSIM (in dB) against bpp, the codec curves bold, the measured
Pillow baselines dashed, published anchors thin and dotted. ``semantic.png`` (when a CLIP model was available):
text-to-image hit@1 and hit@5 against bpp for the adapter and for CLIP on decoded pixels, with CLIP on the
original pixels as a horizontal line (when captions were given); near-duplicate recall@1 per edit; and the
adapter-vs-teacher cosine. Random-weight curves say so in their legend and in the title.

matplotlib is imported inside the functions, and figures are drawn on ``matplotlib.figure.Figure`` (the Agg
canvas) without pyplot, so nothing needs a display and no global backend state is touched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..extras import need
from ..metrics import ms_ssim_db


def _finite(xs: list[Any], ys: list[Any]) -> tuple[list[float], list[float]]:
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if x is not None and y is not None]
    pairs = [(float(x), float(y)) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _label(curve: dict[str, Any]) -> str:
    return curve["label"] + (" (RANDOM WEIGHTS)" if curve.get("random_weights") else "")


def _title(doc: dict[str, Any], what: str) -> str:
    img = doc["images"]
    title = f"{what}: {img['count']} images from {Path(img['source']).name}"
    if doc.get("random_weights"):
        title += f"\nRANDOM WEIGHTS ({', '.join(doc['random_weights'])}): not meaningful"
    return title


def _rd_plot(doc: dict[str, Any], path: Path, metric: str) -> bool:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6), dpi=110)
    ax = fig.subplots()
    drawn = False
    anchor_colors = colormaps["tab20"]
    n_anchor = n_ours = 0
    for curve in doc["curves"]:
        pts = curve["points"]
        if metric == "psnr":
            ys = [p["psnr"] for p in pts]
        else:
            ys = [ms_ssim_db(p["ms_ssim"]) if p["ms_ssim"] is not None else None for p in pts]
        xs, ys = _finite([p["bpp"] for p in pts], ys)
        if not xs:
            continue
        drawn = True
        if curve["kind"] == "anchor":
            anchor_color = anchor_colors(n_anchor % 20)
            n_anchor += 1
            ax.plot(xs, ys, ":", color=anchor_color, linewidth=1.1, label=f"{curve['label']} (published)", zorder=1)
            continue
        color, n_ours = f"C{n_ours % 10}", n_ours + 1
        if curve["kind"] == "codec":
            ax.plot(xs, ys, "o-", color=color, linewidth=2.4, markersize=6, label=_label(curve), zorder=3)
        else:
            label = f"{curve['label']} (measured)"
            ax.plot(xs, ys, "s--", color=color, linewidth=1.6, markersize=4, label=label, zorder=2)
    if not drawn:
        return False
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR (dB, RGB)" if metric == "psnr" else "MS-SSIM (dB, -10 log10(1 - MS-SSIM))")
    ax.set_title(_title(doc, "Rate-distortion"), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(path, bbox_inches="tight")
    return True


def _series(sem: dict[str, Any], *path: str) -> tuple[list[float], list[float]]:
    """(bpp, value) of every quality of a curve, by rate; ``path`` are the keys down to the value."""
    rows = sorted((r for r in sem["per_quality"].values() if r.get("bpp") is not None), key=lambda r: r["bpp"])
    values = []
    for r in rows:
        v: Any = r
        for key in path:
            v = v.get(key, {}) if isinstance(v, dict) else None
        values.append(v if isinstance(v, int | float) else None)
    return _finite([r["bpp"] for r in rows], values)


def _hits_panel(ax: Any, label: str, sem: dict[str, Any], color: int) -> None:
    for k, style in ((1, "o-"), (5, "s--")):
        for offset, side, name in ((0, "adapter", "adapter on latents"), (1, "clip_decoded", "CLIP on decoded")):
            xs, ys = _series(sem, f"hit{k}_{side}")
            ax.plot(xs, ys, style, color=f"C{(color + offset) % 10}", label=f"{label}: {name} @{k}")
        ref = sem.get("clip_pixels", {}).get(f"hit{k}")
        if ref is not None:
            ax.axhline(ref, linestyle=":" if k == 1 else "-.", color="grey", label=f"CLIP on original pixels @{k}")
    ax.set_ylabel("text-to-image hit rate")
    ax.set_ylim(-0.05, 1.05)


def _near_duplicate_panel(ax: Any, label: str, sem: dict[str, Any], color: int) -> None:
    edits = sorted({e for r in sem["per_quality"].values() for e in r.get("near_duplicate", {})})
    for i, edit in enumerate(edits):
        xs, ys = _series(sem, "near_duplicate", edit, "recall_at_1")
        ax.plot(xs, ys, "o-", color=f"C{(color + i) % 10}", label=f"{label}: {edit}")
    ax.set_ylabel("near-duplicate recall@1 (adapter)")
    ax.set_ylim(-0.05, 1.05)


def _cosine_panel(ax: Any, label: str, sem: dict[str, Any], color: int) -> None:
    ax.plot(*_series(sem, "cos_mean"), "o-", color=f"C{color % 10}", label=f"{label}: adapter vs teacher")
    xs, ys = _series(sem, "clip_decoded_cos_mean")
    ax.plot(xs, ys, "s--", color=f"C{(color + 1) % 10}", label=f"{label}: CLIP on decoded vs original")
    ax.set_ylabel("cosine to the teacher on original pixels (mean)")


def _semantic_plot(doc: dict[str, Any], path: Path) -> bool:
    from matplotlib.figure import Figure

    usable = {k: v for k, v in doc["semantic"].items() if v.get("available") and v.get("per_quality")}
    if not usable:
        return False
    panels = [_near_duplicate_panel, _cosine_panel]
    if doc["images"].get("captioned"):
        panels.insert(0, _hits_panel)
    fig = Figure(figsize=(6 * len(panels), 5), dpi=110)
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for i, (label, sem) in enumerate(usable.items()):
            panel(ax, label, sem, 3 * i)
        ax.set_xlabel("bits per pixel")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(_title(doc, "Semantic fidelity"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    return True


def write_plots(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """Writes the figures described in the module docstring into ``out_dir``; returns their paths."""
    need("matplotlib", "eval", "plots (--plots)")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--plots {out_dir} is a file", hint="give a folder for the PNG files")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (
        ("rd_psnr.png", lambda p: _rd_plot(doc, p, "psnr")),
        ("rd_msssim.png", lambda p: _rd_plot(doc, p, "ms_ssim")),
        ("semantic.png", lambda p: _semantic_plot(doc, p)),
    ):
        if draw(out_dir / name):
            written.append(out_dir / name)
    return written
