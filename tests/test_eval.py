"""`licsearch eval`: BD-rate on curves with known answers, metrics, Pillow baselines, weights per quality, and the
JSON document of a real run on generated images."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from licsearch.errors import InputError
from licsearch.eval.baselines import PILLOW_CODECS
from licsearch.eval.bdrate import METHODS, bd_psnr, bd_rate
from licsearch.eval.planes import eager_planes, parse_qualities, weights_for_quality
from licsearch.eval.rd import load_anchor, load_anchors, sweep_pillow
from licsearch.eval.semantic import EDITS, SearchViews, caption_queries, near_duplicate_recall, search_view_images
from licsearch.metrics import hits_at_k, ms_ssim, ms_ssim_reference
from licsearch.query_views import THUMBNAIL_MIN_RATIO, thumbnail_min_width

from .conftest import TINY_FLAGS, make_image, run_cli, tiny_models

ANCHORS = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "compressai-kodak"
needs_anchors = pytest.mark.skipif(not ANCHORS.is_dir(), reason=f"published anchors not found at {ANCHORS}")

# A smooth, JPEG-like curve (bpp, PSNR) with uneven spacing.
RATES = [0.15, 0.25, 0.4, 0.6, 0.9, 1.4, 2.2]
PSNRS = [26.0, 28.4, 30.5, 32.3, 34.2, 36.4, 39.0]


# -- BD-rate ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_bd_rate_of_a_curve_against_itself_is_zero(method: str) -> None:
    res = bd_rate(RATES, PSNRS, RATES, PSNRS, method)  # type: ignore[arg-type]
    assert res.value == pytest.approx(0.0, abs=1e-9)
    assert res.interval == (PSNRS[0], PSNRS[-1]) and res.note == ""
    assert bd_psnr(RATES, PSNRS, RATES, PSNRS, method).value == pytest.approx(0.0, abs=1e-9)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("scale", "expected"), [(0.8, -20.0), (1.25, 25.0), (0.5, -50.0)])
def test_bd_rate_of_scaled_rates_is_the_scale(method: str, scale: float, expected: float) -> None:
    res = bd_rate(RATES, PSNRS, [r * scale for r in RATES], PSNRS, method)  # type: ignore[arg-type]
    assert res.value == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_bd_psnr_of_a_shifted_curve_is_the_shift(method: str) -> None:
    res = bd_psnr(RATES, PSNRS, RATES, [p + 1.5 for p in PSNRS], method)  # type: ignore[arg-type]
    assert res.value == pytest.approx(1.5, abs=1e-9)


def test_non_overlapping_curves_give_nan_and_say_why() -> None:
    res = bd_rate(RATES, PSNRS, RATES, [p - 20 for p in PSNRS])
    assert math.isnan(res.value) and res.interval is None
    assert "do not overlap" in res.note and "26.000-39.000" in res.note


def test_too_few_points_give_nan_and_say_why() -> None:
    res = bd_rate(RATES[:1], PSNRS[:1], RATES, PSNRS)
    assert math.isnan(res.value) and "at least 2 points" in res.note
    res = bd_rate(RATES, PSNRS, [1.0, 2.0], [math.nan, math.nan])
    assert math.isnan(res.value) and "finite" in res.note


def test_single_test_point_is_the_rate_difference_at_equal_quality() -> None:
    # pchip passes through the reference's points, so a point at 80 % of a reference rate is exactly -20 %.
    res = bd_rate(RATES, PSNRS, [0.8 * RATES[3]], [PSNRS[3]], "pchip")
    assert res.value == pytest.approx(-20.0, abs=1e-9)
    assert "single test point" in res.note
    outside = bd_rate(RATES, PSNRS, [1.0], [50.0], "pchip")
    assert math.isnan(outside.value) and "outside" in outside.note


def test_cubic_fit_of_few_points_says_its_degree() -> None:
    res = bd_rate(RATES, PSNRS, RATES[:3], PSNRS[:3])
    assert math.isfinite(res.value) and "degree 2" in res.note


def _bd_rate_independently(ref: tuple[list[float], list[float]], test: tuple[list[float], list[float]]) -> float:
    """Cubic BD-rate by another route: numpy's Polynomial.fit and a dense trapezoid instead of exact integrals."""
    from numpy.polynomial import Polynomial

    (r1, d1), (r2, d2) = ref, test
    f1 = Polynomial.fit(d1, np.log10(r1), 3)
    f2 = Polynomial.fit(d2, np.log10(r2), 3)
    grid = np.linspace(max(min(d1), min(d2)), min(max(d1), max(d2)), 20001)
    diff = f2(grid) - f1(grid)
    mean = float(np.sum((diff[1:] + diff[:-1]) / 2 * np.diff(grid)) / (grid[-1] - grid[0]))
    return (10**mean - 1) * 100


@needs_anchors
def test_webp_against_jpeg_from_the_published_anchors() -> None:
    jpeg, webp = load_anchor(ANCHORS / "jpeg.json"), load_anchor(ANCHORS / "webp.json")
    args = (jpeg.rates(), jpeg.metric("psnr"), webp.rates(), webp.metric("psnr"))
    cubic = bd_rate(*args, "cubic")
    assert cubic.value == pytest.approx(_bd_rate_independently((args[0], args[1]), (args[2], args[3])), abs=1e-3)
    assert -50 < cubic.value < -20, "WebP saves roughly a third of JPEG's bits on Kodak"
    pchip = bd_rate(*args, "pchip")
    assert abs(pchip.value - cubic.value) < 2.0
    # The learned codec beats both, and JPEG against WebP is the mirror image in sign.
    hyper = load_anchor(ANCHORS / "compressai-bmshj2018-hyperprior_mse_cpu.json")
    assert bd_rate(jpeg.rates(), jpeg.metric("psnr"), hyper.rates(), hyper.metric("psnr")).value < cubic.value
    assert bd_rate(webp.rates(), webp.metric("psnr"), jpeg.rates(), jpeg.metric("psnr")).value > 20


def test_pchip_matches_scipy() -> None:
    interpolate = pytest.importorskip("scipy.interpolate", reason="scipy is the independent reference here")
    from licsearch.eval.bdrate import _Pchip

    x = [1.0, 2.0, 4.0, 5.0, 9.0, 10.0]
    y = [0.0, 3.0, 2.0, 5.0, 4.0, 4.0]
    ours, ref = _Pchip(x, y), interpolate.PchipInterpolator(x, y)
    for t in (1.0, 1.7, 3.3, 5.0, 8.2, 10.0):
        assert ours(t) == pytest.approx(float(ref(t)), abs=1e-12)
    assert ours.integral(1.5, 9.5) == pytest.approx(float(ref.integrate(1.5, 9.5)), abs=1e-12)


# -- anchors ------------------------------------------------------------------------------------------------


@needs_anchors
def test_anchors_load_with_and_without_ms_ssim() -> None:
    curves = {c.label: c for c in load_anchors(ANCHORS)}
    assert {"jpeg", "webp", "compressai-bmshj2018-hyperprior_mse_cpu"} <= set(curves)
    assert all(math.isfinite(v) for v in curves["jpeg"].metric("ms_ssim"))
    elic = curves["paper-elic2022_mse"]
    assert all(math.isnan(v) for v in elic.metric("ms_ssim")) and len(elic.points) == 6
    assert curves["jpeg"].rates() == sorted(curves["jpeg"].rates())


def test_a_bad_anchor_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"name": "x", "results": {"bpp": [0.1]}}')
    with pytest.raises(InputError, match="not an anchor results file"):
        load_anchors(tmp_path)


# -- metrics and Pillow baselines ---------------------------------------------------------------------------


def test_ms_ssim_of_identical_images_is_one() -> None:
    img = make_image(3, 176, 192)
    assert ms_ssim(img, img) == pytest.approx(1.0, abs=1e-6)
    assert ms_ssim_reference(img, img) == pytest.approx(1.0, abs=1e-12)


def test_ms_ssim_reference_matches_pytorch_msssim() -> None:
    pytest.importorskip("pytorch_msssim")
    img = make_image(4, 177, 203)  # odd sides exercise the padding between scales
    noisy = np.clip(img.astype(int) + np.random.default_rng(0).integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
    value = ms_ssim(img, noisy)
    assert 0.8 < value < 1.0
    assert ms_ssim_reference(img, noisy) == pytest.approx(value, abs=2e-5)


def test_ms_ssim_of_small_images_is_undefined() -> None:
    img = make_image(0, 96, 128)
    assert math.isnan(ms_ssim(img, img)) and math.isnan(ms_ssim_reference(img, img))


@pytest.mark.parametrize("name", ["JPEG", "WebP"])
def test_pillow_baselines_are_monotone_in_quality(name: str) -> None:
    curve = sweep_pillow(PILLOW_CODECS.get(name), [make_image(1, 176, 176)])
    qualities = [p.quality for p in curve.points]  # points are sorted by rate
    assert qualities == sorted(qualities) and len(qualities) == len(PILLOW_CODECS.get(name).qualities)
    rates, psnrs = curve.rates(), curve.metric("psnr")
    assert all(b > a for a, b in itertools.pairwise(rates))
    assert all(b > a for a, b in itertools.pairwise(psnrs))
    assert all(0.5 < p.ms_ssim <= 1.0 for p in curve.points)


# -- which weights each quality gets -----------------------------------------------------------------------


def test_qualities_parse() -> None:
    assert parse_qualities("1,2,3,4") == parse_qualities("1-4") == parse_qualities("4,1-3") == [1, 2, 3, 4]
    with pytest.raises(InputError, match="--qualities"):
        parse_qualities("one")


def test_weights_for_quality(tmp_path: Path) -> None:
    arch = "bmshj2018-hyperprior"
    assert weights_for_quality("random", arch, 5, 3, what="codec") == "random"
    assert weights_for_quality("/w/hyper-q{q}.safetensors", arch, 2, 3, what="codec") == "/w/hyper-q2.safetensors"
    (tmp_path / "q1.safetensors").touch()
    (tmp_path / f"{arch}-2-5c6f152b.pth.tar").touch()
    assert weights_for_quality(str(tmp_path), arch, 1, 3, what="codec") == str(tmp_path / "q1.safetensors")
    assert weights_for_quality(str(tmp_path), arch, 2, 3, what="codec").endswith("-2-5c6f152b.pth.tar")
    with pytest.raises(InputError, match="0 checkpoints for quality 4"):
        weights_for_quality(str(tmp_path), arch, 4, 3, what="codec")
    single = str(tmp_path / "q1.safetensors")
    assert weights_for_quality(single, arch, 3, 3, what="adapter") == single
    assert weights_for_quality(single, arch, 2, 3, what="adapter") is None


def test_eager_planes_one_per_quality(tmp_path: Path) -> None:
    planes = eager_planes(tiny_models(), [1, 2])
    assert [(p.curve, p.quality, p.plane.cfg.codec.quality) for p in planes] == [
        ("eager bmshj2018-hyperprior", 1, 1),
        ("eager bmshj2018-hyperprior", 2, 2),
    ]
    assert all(p.semantic_note == "" for p in planes)
    cfg = tiny_models()
    fixed = type(cfg)(codec=cfg.codec, clip=cfg.clip, adapter=type(cfg.adapter)(weights=str(tmp_path / "a.pt")))
    planes = eager_planes(fixed, [1, 2])
    assert planes[0].semantic_note == "" and "for quality 1" in planes[1].semantic_note
    codec_file = type(cfg)(codec=type(cfg.codec)(quality=1, weights=str(tmp_path / "c.pt")), clip=cfg.clip)
    with pytest.raises(InputError, match="hold quality 1 only"):
        eager_planes(codec_file, [1, 2])


# -- semantic helpers ---------------------------------------------------------------------------------------


def test_hits_at_k_and_near_duplicate_recall() -> None:
    gallery = np.eye(4, dtype=np.float32)
    queries = np.array([[1, 0, 0, 0], [0, 0.6, 0.8, 0]], dtype=np.float32)  # 2nd query prefers image 2
    assert hits_at_k(queries, gallery, [{0}, {1}], ks=(1, 2)) == {1: 0.5, 2: 1.0}
    assert hits_at_k(queries, gallery, [{0}, {1, 2}], ks=(1,)) == {1: 1.0}  # two images share the caption
    edited = np.array([[0.9, 0.1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32)
    assert near_duplicate_recall(gallery, edited, ks=(1,)) == {"recall_at_1": 0.75}


def test_near_duplicates_ranked_as_search_ranks_them_with_their_views() -> None:
    """A view scores only against originals at least its ``min_width`` wide, each original at its better score:
    query 1's view finds its wide original, query 2's view would find its original but that one is too narrow for
    it, so query 2 keeps its single-view miss."""
    gallery = np.eye(3, dtype=np.float32)
    edited = np.array([[1, 0, 0], [0, 0, 1], [0.9, 0, 0.1]], dtype=np.float32)  # queries 1 and 2 miss as given
    views = SearchViews(
        [(1, 150, np.array([0, 1, 0], dtype=np.float32)), (2, 150, np.array([0, 0, 1], dtype=np.float32))],
        stored_widths=np.array([200, 200, 149]),
    )
    assert near_duplicate_recall(gallery, edited, ks=(1,)) == {"recall_at_1": pytest.approx(1 / 3)}
    assert near_duplicate_recall(gallery, edited, ks=(1,), views=views) == {"recall_at_1": pytest.approx(2 / 3)}
    everywhere = SearchViews([(2, 0, np.array([0, 0, 1], dtype=np.float32))], stored_widths=np.array([200, 200, 149]))
    assert near_duplicate_recall(gallery, edited, ks=(1,), views=everywhere) == {"recall_at_1": pytest.approx(2 / 3)}
    assert thumbnail_min_width(100) == 150 == math.ceil(THUMBNAIL_MIN_RATIO * 100)


def test_search_view_images_are_the_query_views() -> None:
    originals = [np.zeros((64, 96, 3), np.uint8)]
    edited = [np.zeros((32, 48, 3), np.uint8), np.zeros((58, 86, 3), np.uint8)]  # a 50 % resize, a 90 % crop
    views = search_view_images(edited, originals)
    # Both get the three shift views; only the resize is narrow enough for the thumbnail view.
    assert [(i, v.min_width) for i, v in views] == [(0, 0), (0, 0), (0, 0), (0, 72), (1, 0), (1, 0), (1, 0)]
    assert views[3][1].pixels.shape == (64, 96, 3)
    assert search_view_images(edited, originals, max_pixels=32 * 48) == [], "a view never passes the limit"


def test_captions_match_images_by_relative_path(tmp_path: Path) -> None:
    paths = [tmp_path / "a.png", tmp_path / "sub" / "b.png", tmp_path / "c.png"]
    q = caption_queries(paths, {"a.png": "red", "sub/b.png": "blue", "x.png": "red"}, tmp_path)
    assert q.gallery == [0, 1] and q.texts == ["blue", "red"] and q.relevant == [{1}, {0}]
    with pytest.raises(InputError, match="no evaluated image has a caption"):
        caption_queries(paths[2:], {"a.png": "red"}, tmp_path)


# -- the command --------------------------------------------------------------------------------------------


def independent_figures(folder: Path, n: int) -> dict[str, float]:
    """Mean bpp and PSNR of the tiny codec's round trip and mean adapter-vs-CLIP cosine of the first ``n`` images,
    computed here from the model plane and open_clip, without the evaluation code."""
    import open_clip
    import torch
    from PIL import Image

    from licsearch.imageio import iter_image_files, load_image
    from licsearch.model.models import ModelSet

    ms = ModelSet(tiny_models())
    clip = ms.text.model
    preprocess = open_clip.image_transform(clip.visual.image_size, is_train=False)
    bpp, ps, cos = [], [], []
    for path, _ in list(iter_image_files([folder]))[:n]:
        px = load_image(path).pixels
        enc = ms.encode(px)
        decoded = ms.decode(enc.data)
        bpp.append(8 * len(enc.data) / (px.shape[0] * px.shape[1]))
        mse = np.mean((px.astype(np.float64) - decoded.astype(np.float64)) ** 2)
        ps.append(10 * np.log10(255.0**2 / mse))
        with torch.inference_mode():
            teacher = clip.encode_image(preprocess(Image.fromarray(px))[None], normalize=True)[0].double().numpy()
        cos.append(float(np.dot(enc.embedding, teacher)))
    return {"bpp": float(np.mean(bpp)), "psnr": float(np.mean(ps)), "cos_mean": float(np.mean(cos))}


def test_eval_json_on_generated_images(tmp_path: Path) -> None:
    from licsearch.world import write_dataset

    captions = write_dataset(tmp_path / "ds", 4, seed=0, size=(96, 64))
    plots = tmp_path / "plots"
    args = ["eval", "--images", str(tmp_path / "ds"), "--captions", str(captions), "--max-images", "2"]
    args += [*TINY_FLAGS, "--baselines", "JPEG", "--plots", str(plots), "--json"]
    if ANCHORS.is_dir():
        args += ["--anchors", str(ANCHORS)]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM WEIGHTS" in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == 1 and doc["images"]["count"] == 2 and doc["images"]["captioned"] == 2
    assert set(doc["random_weights"]) == {"codec", "clip", "adapter"}
    assert "bd_rate_vs_jpeg" in doc and (doc["bd_rate_vs_jpeg"] is None or isinstance(doc["bd_rate_vs_jpeg"], float))
    if doc["bd_rate_vs_jpeg"] is None:
        assert any("bd_rate_vs_jpeg" in n for n in doc["notes"]), "a missing BD-rate says why"
    for side in ("adapter", "clip_pixels", "clip_decoded"):
        for k in (1, 5):
            hits = doc[f"hit{k}_{side}"]
            assert set(hits) == {"1"} and 0.0 <= hits["1"] <= 1.0
    curves = {c["label"]: c for c in doc["curves"]}
    codec = curves["eager bmshj2018-hyperprior"]
    assert codec["kind"] == "codec" and codec["random_weights"] and len(codec["points"]) == 1
    point = codec["points"][0]
    assert point["quality"] == 1 and point["bpp"] > point["bpp_streams"] > 0
    here = independent_figures(tmp_path / "ds", 2)
    assert point["bpp"] == pytest.approx(here["bpp"], rel=1e-9)
    assert point["psnr"] == pytest.approx(here["psnr"], rel=1e-9)
    assert point["ms_ssim"] is None, "MS-SSIM is undefined below 161 px a side"
    assert curves["JPEG"]["kind"] == "baseline" and len(curves["JPEG"]["points"]) == 10
    assert any(r["curve"] == codec["label"] and r["reference"] == "JPEG" for r in doc["bd_rates"])
    sem = doc["semantic"]["eager bmshj2018-hyperprior"]
    assert sem["available"] is True
    q1 = sem["per_quality"]["1"]
    assert q1["cos_mean"] == pytest.approx(here["cos_mean"], abs=1e-5)
    assert q1["recall_overlap"] == 1.0, "two images: each one's only neighbour is the other, under both towers"
    assert set(q1["near_duplicate"]) == {"jpeg_q50", "center_crop_90", "resize_50"}
    assert set(q1["near_duplicate_search"]) == set(q1["near_duplicate"])
    assert set(sem["clip_pixels"]) == {"hit1", "hit5", "near_duplicate"}
    # MS-SSIM plot only when some curve has MS-SSIM: here, the published anchors.
    expected = {"rd_psnr.png", "semantic.png"} | ({"rd_msssim.png"} if ANCHORS.is_dir() else set())
    assert {Path(p).name for p in doc["plots"]} == expected
    assert all((plots / name).stat().st_size > 10_000 for name in expected)
    if ANCHORS.is_dir():
        assert sum(c["kind"] == "anchor" for c in doc["curves"]) == len(list(ANCHORS.glob("*.json")))


def test_eval_without_images_is_a_json_error(capsys: pytest.CaptureFixture[str]) -> None:
    from licsearch.cli.main import main

    assert main(["eval", *TINY_FLAGS, "--json"]) == 2
    assert "--images" in json.loads(capsys.readouterr().out)["error"]["message"]


def test_eval_retrieval_reports_near_duplicates_as_search_ranks_them(tmp_path: Path) -> None:
    """``eval --retrieval`` end to end on tiny random models: world scenes and a folder, both near-duplicate figures."""
    from licsearch.world import write_dataset

    write_dataset(tmp_path / "ds", 4, seed=0, size=(96, 64))
    args = ["eval", "--images", str(tmp_path / "ds"), "--max-images", "2", *TINY_FLAGS, "--baselines", "none"]
    args += ["--retrieval", "--retrieval-world", "6", "--json"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    entries = doc["retrieval"]["entries"]
    assert len(entries) == 1
    sets = next(iter(entries.values()))["sets"]
    assert set(sets) == {"world", "ds"}
    for figures in sets.values():
        assert set(figures["near_duplicate_search"]) == set(figures["near_duplicate"]) == set(EDITS.names())
        for edit in EDITS.names():
            assert 0.0 <= figures["near_duplicate_search"][edit]["recall_at_1"] <= 1.0
