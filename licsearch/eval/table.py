"""The human summary of an evaluation document: one compact table and a few lines.

Codec points with their semantic figures (adapter-vs-teacher cosine, recall@10 overlap, hit@1 and hit@5 for the
adapter / CLIP on decoded pixels / CLIP on original pixels, near-duplicate recall@1 per edit), the range of each
Pillow baseline, the BD-rates on PSNR (references without one named together, with the reason), and the notes.
"""

from __future__ import annotations

import math
from typing import Any

from .report import SIDES, json_safe
from .semantic import EDITS


def _f(value: Any, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)


def _codec_rows(doc: dict[str, Any]) -> list[str]:
    edits = list(EDITS)
    short = "/".join(e.split("_")[0] for e in edits)
    lines = [
        f"{'curve':<40} {'q':>2} {'bpp':>7} {'PSNR':>6} {'MS-SSIM':>7} {'cos':>6} {'r@10ov':>6} "
        f"{'hit@1 ad/dec/pix':>17} {'hit@5 ad/dec/pix':>17}  near-dup r@1 {short} (as search ranks)"
    ]
    for c in doc["curves"]:
        if c["kind"] != "codec":
            continue
        sem = doc["semantic"].get(c["label"], {})
        label = c["label"] + (" [RANDOM]" if c["random_weights"] else "")
        for p in c["points"]:
            s = sem.get("per_quality", {}).get(str(p["quality"]), {})
            hits = ["/".join(_f(s.get(f"hit{k}_{side}"), ".2f") for side in SIDES) for k in (1, 5)]
            nd = "/".join(_f(s.get("near_duplicate", {}).get(e, {}).get("recall_at_1"), ".2f") for e in edits)
            if "near_duplicate_search" in s:
                searched = s["near_duplicate_search"]
                nd += " (" + "/".join(_f(searched.get(e, {}).get("recall_at_1"), ".2f") for e in edits) + ")"
            lines.append(
                f"{label[:40]:<40} {p['quality']:>2} {_f(p['bpp'], '.4f'):>7} {_f(p['psnr'], '.2f'):>6} "
                f"{_f(p['ms_ssim'], '.4f'):>7} {_f(s.get('cos_mean'), '.3f'):>6} "
                f"{_f(s.get('recall_overlap'), '.2f'):>6} {hits[0]:>17} {hits[1]:>17}  {nd}"
            )
    return lines


def _bd_lines(doc: dict[str, Any]) -> list[str]:
    """Finite BD-rates one per line; the references without one named together, with the first reason."""
    lines = [f"BD-rate on PSNR ({doc['settings']['bd_method']} fit; negative = fewer bits than the reference):"]
    by_curve: dict[str, list[dict[str, Any]]] = {}
    for r in doc["bd_rates"]:
        if r["metric"] == "psnr":
            by_curve.setdefault(r["curve"], []).append(r)
    for curve, rows in by_curve.items():
        missing = [r for r in rows if r["bd_rate"]["value"] is None]
        for r in rows:
            b = r["bd_rate"]
            if b["value"] is not None:
                note = f" ({b['note']})" if b["note"] else ""
                lines.append(f"  {curve} vs {r['reference']}: {b['value']:+.2f} %{note}")
        if missing:
            names = ", ".join(r["reference"] for r in missing)
            lines.append(f"  {curve}: n/a vs {len(missing)} reference(s): {names}")
            lines.append(f"    e.g. vs {missing[0]['reference']}: {missing[0]['bd_rate']['note']}")
    return lines


def format_report(doc: dict[str, Any]) -> str:
    """A compact table: codec points with semantic figures, baseline ranges, BD-rates, notes."""
    doc = json_safe(doc)
    img = doc["images"]
    sizes = {tuple(s) for s in img["sizes"]}
    size = "x".join(map(str, next(iter(sizes)))) if len(sizes) == 1 else "mixed sizes"
    captioned = f", {img['captioned']} captioned" if img["captioned"] else ""
    lines = [f"{img['count']} images from {img['source']} ({size}){captioned}", "", *_codec_rows(doc)]
    base = [c for c in doc["curves"] if c["kind"] == "baseline"]
    if base:
        lines.append("")
    for c in base:
        pts = c["points"]
        psnrs = [p["psnr"] for p in pts]
        lines.append(
            f"{c['label']:<5} q{pts[0]['quality']}-{pts[-1]['quality']}: {_f(pts[0]['bpp'], '.3f')}-"
            f"{_f(pts[-1]['bpp'], '.3f')} bpp, {_f(min(psnrs), '.2f')}-{_f(max(psnrs), '.2f')} dB"
        )
    if doc["bd_rates"]:
        lines += ["", *_bd_lines(doc)]
    lines.append(f"\nbd_rate_vs_jpeg: {_f(doc['bd_rate_vs_jpeg'], '+.2f')} %")
    lines += [f"note: {n}" for n in doc["notes"]]
    lines += [f"plot: {p}" for p in doc["plots"]]
    return "\n".join(lines)
