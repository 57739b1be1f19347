"""The README's figures are the committed records they come from, or labelled as one-off measurements.

Cheap checks (no model runs): the tables and figures of "Shipped models" against the committed evaluation records
(``licsearch/shipped/offline/eval/*.json``) and the ``.provenance.json`` files, derived figures (sums, ratios) against
the tables they come from, and the one-off measurements (serving, rollout timings) labelled with the command that
produced them. One slow test measures the Kodak rate-distortion table again when ``../shared/data/kodak`` is present.
A figure agrees when the record rounds to it (half up) at the precision the README writes it with.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
OFFLINE = ROOT / "licsearch" / "shipped" / "offline"
EVAL = OFFLINE / "eval"
CODEC = "eager bmshj2018-hyperprior"
COMPRESSAI = "compressai-bmshj2018-hyperprior_mse_cpu"
KODAK = SHARED_DATA / "kodak"


def load(name: str) -> dict[str, Any]:
    return json.loads((EVAL / name).read_text(encoding="utf-8"))


def table(header: str) -> dict[str, list[str]]:
    """The README table whose header row starts with ``header``: {first cell of each row: the other cells}."""
    lines = README.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith(header)), None)
    assert start is not None, f"README has no table starting with {header!r}"
    rows: dict[str, list[str]] = {}
    for line in lines[start:]:
        line = line.strip()
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not set(cells[0]) <= set("-: "):
            rows[cells[0]] = cells[1:]
    return rows


def numbers(cells: list[str]) -> list[float]:
    """The first number of each cell ("40.5 %" -> 40.5, "1,500 × batch 32" -> 1500)."""
    out = []
    for c in cells:
        m = re.search(r"[-+−]?\d[\d,]*(?:\.\d+)?", c)
        assert m, f"no number in {c!r}"
        out.append(float(m.group().replace(",", "").replace("−", "-")))
    return out


def decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


def same(stated: str, value: float) -> bool:
    """Whether ``value`` rounds (half up) to the README's ``stated`` number, at the precision it is written with."""
    return abs(value - float(stated)) <= 0.5 * 10 ** -decimals(stated) + 1e-9


def codec_points(doc: dict[str, Any]) -> dict[int, dict[str, float]]:
    curve = next(c for c in doc["curves"] if c["label"] == CODEC)
    return {int(p["quality"]): p for p in curve["points"]}


def bd(doc: dict[str, Any], reference: str, metric: str = "psnr") -> dict[str, Any]:
    return next(
        r for r in doc["bd_rates"] if r["curve"] == CODEC and r["reference"] == reference and r["metric"] == metric
    )


def stated(pattern: str) -> list[str]:
    """The groups of the README's (only) match of ``pattern``."""
    found = re.findall(pattern, README)
    assert len(found) == 1, f"{pattern!r} matches the README {len(found)} times"
    return list(found[0]) if isinstance(found[0], tuple) else [found[0]]


# -- Kodak -------------------------------------------------------------------------------------------------------


def test_kodak_table_is_kodak_json() -> None:
    doc, rows = load("kodak.json"), table("| Kodak, 24 images")
    assert doc["images"]["count"] == 24
    points = codec_points(doc)
    anchor = next(c for c in doc["curves"] if c["label"] == COMPRESSAI)
    rates, psnrs = [p["bpp"] for p in anchor["points"]], [p["psnr"] for p in anchor["points"]]
    for i, q in enumerate((1, 2, 3, 4)):
        assert same(rows["bpp (whole `.lics` container)"][i], points[q]["bpp"]), q
        assert same(rows["PSNR (dB, RGB)"][i], points[q]["psnr"]), q
        at_same_bpp = float(np.interp(points[q]["bpp"], rates, psnrs))
        assert same(rows["CompressAI's bmshj2018-hyperprior at the same bpp (interpolated)"][i], at_same_bpp), q


def test_kodak_bd_figures_are_kodak_json() -> None:
    doc = load("kodak.json")
    jpeg = bd(doc, "JPEG")
    rate, lo, hi = stated(r"BD-rate against JPEG \(Pillow, measured on the same images\): \*\*\+([\d.]+) %\*\* "
                          r"\(cubic fit over ([\d.]+)–([\d.]+) dB\)")  # fmt: skip
    assert same(rate, jpeg["bd_rate"]["value"]) and jpeg["bd_rate"]["method"] == "cubic"
    assert same(lo, jpeg["bd_rate"]["interval"][0]) and same(hi, jpeg["bd_rate"]["interval"][1])
    (bd_psnr,) = stated(r"BD-PSNR\s+against CompressAI's published curve: −([\d.]+) dB")
    published = bd(doc, COMPRESSAI)
    assert same(bd_psnr, -published["bd_psnr"]["value"]) and published["bd_rate"]["value"] is None
    rows = table("| Kodak, 24 images")
    gaps = [a - b for a, b in zip(numbers(rows["CompressAI's bmshj2018-hyperprior at the same bpp (interpolated)"]),
                                  numbers(rows["PSNR (dB, RGB)"]), strict=True)]  # fmt: skip
    low, high = stated(r"The codec is between ([\d.]+) and ([\d.]+) dB below it at matched bpp")
    assert same(low, min(gaps)) and same(high, max(gaps))


def test_adapter_fidelity_and_near_duplicates_are_the_eval_json() -> None:
    both = load("kodak-photos.json")["semantic"][CODEC]["per_quality"]["3"]
    kodak = load("kodak.json")["semantic"][CODEC]
    cos, cos_min, overlap, k_cos, k_overlap = stated(
        r"\(73 images\) cosine ([\d.]+) \(min ([\d.]+)\) and recall@10 overlap of the image-to-image\s+rankings "
        r"([\d.]+) \(target 0\.9; Kodak alone: ([\d.]+) and ([\d.]+)\)"
    )
    assert load("kodak-photos.json")["images"]["count"] == 73
    assert same(cos, both["cos_mean"]) and same(cos_min, both["cos_min"]) and same(overlap, both["recall_overlap"])
    q3 = kodak["per_quality"]["3"]
    assert same(k_cos, q3["cos_mean"]) and same(k_overlap, q3["recall_overlap"])
    figures = stated(r"JPEG q50\s+re-encoding ([\d.]+), a 90 % centre crop ([\d.]+) and a 50 % resize ([\d.]+) "
                     r"\(CLIP on pixels: ([\d.]+), ([\d.]+), ([\d.]+)\)")  # fmt: skip
    edits = ("jpeg_q50", "center_crop_90", "resize_50")
    measured = [q3["near_duplicate"][e]["recall_at_1"] for e in edits]
    measured += [kodak["clip_pixels"]["near_duplicate"][e]["recall_at_1"] for e in edits]
    assert all(same(s, m) for s, m in zip(figures, measured, strict=True)), (figures, measured)


def test_near_duplicate_search_table_is_the_eval_json() -> None:
    """Each cell of the query-views table is ``near_duplicate_search`` of its record and quality."""
    rows = table("| near-duplicate recall@1 through the query views")
    edits = ("jpeg_q50", "center_crop_90", "resize_50")
    for label, name in (("world, 400 test scenes", "world.json"), ("Kodak, 24 images", "kodak.json")):
        per = load(name)["semantic"][CODEC]["per_quality"]
        for i, q in enumerate(("1", "2", "3", "4")):
            cells = [x.strip() for x in rows[label][i].split("·")]
            measured = [per[q]["near_duplicate_search"][e]["recall_at_1"] for e in edits]
            assert all(same(c, m) for c, m in zip(cells, measured, strict=True)), (label, q, cells, measured)


# -- the world's test scenes ----------------------------------------------------------------------------------


HIT_ROWS = {
    "hit@1, adapter on the latent": "hit1_adapter",
    "hit@1, CLIP on the decoded pixels": "hit1_clip_decoded",
    "hit@5, adapter": "hit5_adapter",
}


def test_world_hit_rate_table_is_world_json() -> None:
    doc, rows = load("world.json"), table("| quality | q1")
    points = codec_points(doc)
    for i, q in enumerate((1, 2, 3, 4)):
        key = str(q)
        assert same(rows["bpp on these scenes"][i], points[q]["bpp"])
        for label, field in HIT_ROWS.items():
            assert same(rows[label][i].rstrip(" %"), 100 * doc[field][key]), (label, q)
    scenes, captions = stated(r"Semantic task: (\d+) held-out test scenes of the world \((\d+) distinct captions")
    assert int(scenes) == doc["images"]["count"] == doc["images"]["captioned"]
    rates = [v for k in ("hit1_adapter", "hit5_adapter", "hit1_clip_pixels") for v in doc[k].values()]
    assert all(abs(v * int(captions) - round(v * int(captions))) < 1e-9 for v in rates), "one query per caption"
    hit1, hit5 = stated(r"hit@1 of the CLIP image tower on the original pixels: ([\d.]+) % \(hit@5\s+([\d.]+) %\)")
    assert same(hit1, 100 * doc["hit1_clip_pixels"]["1"]) and same(hit5, 100 * doc["hit5_clip_pixels"]["1"])


def test_world_webp_comparison_is_world_json() -> None:
    doc = load("world.json")
    webp_bpp, webp_psnr, codec_bpp, codec_psnr = stated(
        r"WebP is far ahead of the codec \(([\d.]+) bpp at ([\d.]+) dB against the codec's ([\d.]+) bpp at "
        r"([\d.]+) dB\)"
    )
    webp = next(c for c in doc["curves"] if c["label"] == "WebP")
    assert any(same(webp_bpp, p["bpp"]) and same(webp_psnr, p["psnr"]) for p in webp["points"])
    assert any(same(codec_bpp, p["bpp"]) and same(codec_psnr, p["psnr"]) for p in codec_points(doc).values())


# -- training ----------------------------------------------------------------------------------------------------


def provenance(name: str) -> dict[str, Any]:
    return json.loads((OFFLINE / f"{name}.provenance.json").read_text(encoding="utf-8"))


TRAINING_ROWS = {
    "`codec-q3.safetensors`": ["codec-q3"],
    "`codec-q1/q2/q4.safetensors`": ["codec-q1", "codec-q2", "codec-q4"],
    "`clip-world.safetensors` (float16)": ["clip-world"],
    "`adapter-views-q3.safetensors` (float16)": ["adapter-views-q3"],
    "`adapter-views-q1/q2/q4.safetensors` (float16)": ["adapter-views-q1", "adapter-views-q2", "adapter-views-q4"],
    "`adapter-views-long-q1/q2.safetensors` (float16)": ["adapter-views-long-q1", "adapter-views-long-q2"],
    "`adapter-views-long-q3.safetensors` (float16)": ["adapter-views-long-q3"],
}


@pytest.mark.parametrize("row", sorted(TRAINING_ROWS))
def test_training_table_is_the_provenance(row: str) -> None:
    """Steps, batch and time of each shipped file, as its ``.provenance.json`` records them."""
    cells = table("| file | what | trained on")[row]
    steps_cell, time_cell = cells[-2], cells[-1]
    provs = [provenance(n) for n in TRAINING_ROWS[row]]
    assert {p["steps"] for p in provs} == {int(numbers([steps_cell])[0])}, steps_cell
    batch = re.search(r"batch (\d+)", f"{cells[1]} {steps_cell}")
    if batch:
        assert {p["options"]["batch_size"] for p in provs} == {int(batch.group(1))}
    minutes = [p["seconds"] / 60 for p in provs]
    span = re.match(r"([\d.]+)(?:–([\d.]+))? min", time_cell)
    assert span, time_cell
    lo, hi = span.group(1), span.group(2) or span.group(1)
    assert same(lo, min(minutes)) and same(hi, max(minutes)), f"{row}: {time_cell} vs provenance {minutes} min"
    threads = re.search(r"\((\d+) threads?\)", time_cell)
    if threads:
        commands = [" ".join(p["command"]) if isinstance(p["command"], list) else p["command"] for p in provs]
        assert all(f"--threads {threads.group(1)}" in c for c in commands), commands


# -- one-off measurements and their derived figures -----------------------------------------------------------


def test_serving_figures_are_labelled_and_consistent() -> None:
    assert "Measured once (not a controlled benchmark)" in README
    assert "licsearch bench --server" in README.split("| | in-process | HTTP | overhead |")[0].rsplit("###", 1)[1]
    rows = table("| | in-process | HTTP | overhead")
    for label, row in rows.items():
        if not label:
            continue
        local, http, overhead = numbers(row)
        assert overhead == pytest.approx(http - local, abs=1.0), row
    batching = table("| text embed, 8 clients")
    b1, b8 = numbers(batching["`embed_b1` (batch_size 1)"]), numbers(batching[next(k for k in batching if "b8" in k)])
    (ratio,) = stated(r"dynamic batching gave ([\d.]+)x the requests/s")
    half = 0.05  # the table's requests/s are rounded to one decimal, so their ratio is known to within this
    unit = 0.5 * 10 ** -decimals(ratio)
    assert (b8[0] - half) / (b1[0] + half) <= float(ratio) + unit
    assert float(ratio) - unit <= (b8[0] + half) / (b1[0] - half)
    assert b8[1] == pytest.approx(b1[1] / 2, rel=0.1), "half the p50 latency"


def test_rollout_timings_are_labelled_and_add_up() -> None:
    *steps, total = numbers(table("| step | discover")["seconds"])
    assert total == pytest.approx(sum(steps), abs=0.1)
    label = README.split("| step | discover")[0].rsplit("\n\n", 2)[-2]  # the paragraph before the table
    assert label.startswith("Measured")
    assert "`tests/test_rollout.py`, printed with `pytest -s`" in label, "a one-off figure names what produced it"
    assert 'print("TIMELINE"' in (ROOT / "tests" / "test_rollout.py").read_text(), "and that still prints it"


def test_hostile_bitstream_count_is_what_the_generator_makes() -> None:
    """The serving section's count of crafted bitstreams is the generator's for the serving test's two files.

    ``tests/test_serving_hostile.py`` sends ``hostile_cases`` of two 64x96 files of the test bundle; the eager tiny
    models give the same count (it depends on the streams' lengths only below ``LONG_STREAM`` bytes).
    """
    from licsearch.model.models import ModelSet

    from .conftest import make_image, tiny_models
    from .hostile_bitstreams import hostile_cases

    cases, requests, refused = stated(
        r"The ([\d,]+) crafted\s+bitstreams of `tests/hostile_bitstreams.py`"
        r"[^:]*\(([\d,]+) requests\): all ([\d,]+) refused"
    )
    plane = ModelSet(tiny_models())
    valid, other = (plane.encode(make_image(seed, 64, 96)).data for seed in (50, 51))
    made = len(hostile_cases(valid, other))
    assert int(cases.replace(",", "")) == made, f"the generator makes {made} cases: write that in the README"
    assert int(requests.replace(",", "")) == int(refused.replace(",", "")) == 2 * made, "one per case and endpoint"


# -- measured again ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not KODAK.is_dir(), reason=f"the Kodak images are not at {KODAK}")
def test_kodak_rate_distortion_is_measured_again() -> None:
    """The shipped codecs' bpp and PSNR on Kodak, measured now, equal the committed record the README states."""
    from licsearch.imageio import iter_image_files, load_image
    from licsearch.presets import preset_models
    from licsearch.train.codec import round_trip_figures

    images = [load_image(p).pixels for p, err in iter_image_files([KODAK]) if err is None]
    assert len(images) == 24
    points, codec = codec_points(load("kodak.json")), preset_models("offline").codec
    for q in (1, 2, 3, 4):
        weights = codec.weights.replace("codec-q3", f"codec-q{q}")
        got = round_trip_figures(codec.arch, q, weights, images)
        assert got["bpp"] == pytest.approx(points[q]["bpp"], rel=1e-6), q
        assert got["psnr"] == pytest.approx(points[q]["psnr"], abs=1e-3), q


# -- PROVENANCE.md ----------------------------------------------------------------------------------------------


def test_provenance_summary_is_the_provenance_files_and_reference_json() -> None:
    text = (OFFLINE / "PROVENANCE.md").read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0].endswith(".safetensors"):
            rows[cells[0]] = cells
    files = sorted(p.name for p in OFFLINE.glob("*.safetensors"))
    assert sorted(rows) == files
    for name, cells in rows.items():
        prov = provenance(name.removesuffix(".safetensors"))
        assert int(cells[2]) == prov["steps"] and float(cells[3]) == pytest.approx(prov["seconds"]), name
        command = " ".join(prov["command"]) if isinstance(prov["command"], list) else prov["command"]
        assert cells[5].strip("`").split(" --", 1)[1] in command, f"{name}: the command differs from its provenance"
    block = re.search(r"```json\n(.*?)```", text, flags=re.S)
    assert block, "PROVENANCE.md shows reference.json"
    assert json.loads(block.group(1)) == json.loads((OFFLINE / "reference.json").read_text(encoding="utf-8"))
