"""Model bundles: graphs checked and hashed, ONNX Runtime against eager torch, round trips, damage and the CLI.

The tiny models are exported once per session (one fp32 bundle, one static int8 bundle calibrated on generated
images) and shared read-only with ``test_determinism.py``; tests that damage a bundle work on a copy.
The int8 bundle is exported with every quantized graph kept (the keep-if-faster rule is timing-dependent, and
the tests need a bundle whose make-up does not change with the machine's load).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from licsearch.bundle import accuracy, quantize
from licsearch.bundle.export import export_bundle, graph_specs
from licsearch.bundle.manifest import GRAPHS, MANIFEST, Manifest, file_sha256
from licsearch.bundle.runtime import BundleModelSet, make_session
from licsearch.config import ModelsConfig
from licsearch.errors import InputError, StoreError
from licsearch.metrics import psnr
from licsearch.model.models import ModelSet, space_id_for

from .conftest import TINY_FLAGS, make_image, run_cli, tiny_models, write_png

KINDS = ("fp32", "int8")
# Axes that must stay dynamic, per graph: (input axes, output axes).
DYNAMIC_AXES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "g_a": ((0, 2, 3), (0, 2, 3)),  # batch, height, width -> batch, h/16, w/16
    "h_a": ((0, 2, 3), (0, 2, 3)),
    "g_s": ((0, 2, 3), (0, 2, 3)),
    "adapter": ((0, 2, 3), (0,)),  # any latent size -> one embedding per image
    "text": ((0, 1), (0,)),  # batch, sequence (queries run only up to their end-of-text token)
}
CALIBRATION_SEEDS = range(100, 104)  # the int8 bundle's calibration images
TEXTS = [
    "a",
    "a photo of a red circle",
    "two small blue squares at the bottom on a striped background, seen from far away",
    "x y",
]


# -- the shared bundles -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyBundles:
    """Eager tiny models and the two bundles exported from them (read-only: copy before damaging)."""

    eager: ModelSet
    fp32: Path
    int8: Path
    space_id: str

    def root(self, kind: str) -> Path:
        return self.fp32 if kind == "fp32" else self.int8


_BUNDLES = pytest.StashKey[TinyBundles]()


def export_bundles(models: ModelsConfig, base: Path) -> TinyBundles:
    """Exports ``models`` as an fp32 bundle and a static int8 bundle with every quantized graph kept."""
    eager = ModelSet(models)
    space = space_id_for(eager.fingerprinted())
    export_bundle(models, base / "fp32", space_id=space)
    calibration = [make_image(seed) for seed in CALIBRATION_SEEDS]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quantize, "KEEP_IF_FASTER_BY", float("inf"))
        export_bundle(models, base / "int8", space_id=space, int8="static", calibration=calibration)
    return TinyBundles(eager, base / "fp32", base / "int8", space)


def tiny_bundles(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> TinyBundles:
    """The tiny models' bundles, exported once per session (shared with ``test_determinism.py``)."""
    if _BUNDLES not in config.stash:
        config.stash[_BUNDLES] = export_bundles(tiny_models(), tmp_path_factory.mktemp("bundles"))
    return config.stash[_BUNDLES]


@pytest.fixture(scope="session")
def bundles(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TinyBundles:
    return tiny_bundles(request.config, tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(bundles: TinyBundles) -> dict[str, BundleModelSet]:
    return {kind: BundleModelSet(bundles.root(kind)) for kind in KINDS}


def cosine(a: torch.Tensor | list[float], b: torch.Tensor | list[float]) -> float:
    ta, tb = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float(torch.nn.functional.cosine_similarity(ta, tb, dim=-1).min())


def dims(value_info: Any) -> list[tuple[str, int]]:
    """(dim_param, dim_value) of each axis of an ONNX graph input or output."""
    return [(d.dim_param, d.dim_value) for d in value_info.type.tensor_type.shape.dim]


def fresh_case(ms: ModelSet, name: str) -> tuple[np.ndarray, torch.Tensor]:
    """An input of a shape (and batch) not used by the export, and torch's output for it."""
    g = torch.Generator().manual_seed(1234)
    m = ms.codec.latent_channels
    x = torch.rand(3, 3, 48, 80, generator=g)
    y = torch.randn(3, m, 3, 5, generator=g) * 3
    with torch.inference_mode():
        if name == "text":
            full = ms.text.tokenizer(TEXTS[:3])
            n = int(full.argmax(dim=1).max()) + 1
            return full[:, :n].numpy(), ms.text.model.encode_text(full, normalize=True).float()
        module, inp = {
            "g_a": (ms.codec.model.g_a, x),
            "h_a": (ms.codec.transforms.h_a, y),
            "g_s": (ms.codec.model.g_s, y),
            "adapter": (ms.adapter.module, y),
        }[name]
        return inp.numpy(), module(inp).float()


def export_check_case(ms: ModelSet, name: str) -> tuple[np.ndarray, torch.Tensor]:
    """The input the export checked graph ``name`` on, and torch's output for it."""
    spec = next(s for s in graph_specs(ms) if s.name == name)
    with torch.inference_mode():
        return spec.check.numpy(), spec.module(spec.check).float()


def ort_vs_torch(bundles: TinyBundles, kind: str, name: str) -> tuple[float, float]:
    """(max abs difference, tolerance) of the bundle's graph against eager torch on a fresh input."""
    manifest = Manifest.load(bundles.root(kind))
    inp, ref = fresh_case(bundles.eager, name)
    sess = make_session(bundles.root(kind) / manifest.graphs[name].file)
    got = sess.run(None, {sess.get_inputs()[0].name: inp})[0]
    assert got.shape == tuple(ref.shape)
    tol = 1e-3 * max(1.0, float(ref.abs().max()))
    return float(np.abs(got - ref.numpy()).max()), tol


# -- graphs -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_graph_exists_matches_its_hash_and_passes_the_checker(bundles: TinyBundles, kind: str, name: str) -> None:
    import onnx

    root = bundles.root(kind)
    manifest = Manifest.load(root)
    assert set(manifest.graphs) == set(GRAPHS)
    info = manifest.graphs[name]
    path = root / info.file
    assert path.is_file()
    assert file_sha256(path) == info.sha256 == manifest.files[info.file]
    onnx.checker.check_model(str(path), full_check=True)


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("kind", KINDS)
def test_batch_and_spatial_or_sequence_axes_are_dynamic(bundles: TinyBundles, kind: str, name: str) -> None:
    import onnx

    root = bundles.root(kind)
    info = Manifest.load(root).graphs[name]
    graph = onnx.load(str(root / info.file)).graph
    assert [i.name for i in graph.input] == list(info.inputs)
    assert [o.name for o in graph.output] == list(info.outputs)
    for values, declared, dynamic in (
        (graph.input, info.inputs, DYNAMIC_AXES[name][0]),
        (graph.output, info.outputs, DYNAMIC_AXES[name][1]),
    ):
        for vi in values:
            shape, axes = dims(vi), declared[vi.name]
            assert len(shape) == len(axes), (vi.name, shape, axes)
            for i in dynamic:
                assert isinstance(axes[i], str), (vi.name, i, axes)
                assert shape[i][0] and shape[i][1] == 0, f"{name}.{vi.name} axis {i} is fixed: {shape}"


_FIXED_AXIS_CASES = [pytest.param(kind, name) for kind in KINDS for name in GRAPHS]


@pytest.mark.parametrize(("kind", "name"), _FIXED_AXIS_CASES)
def test_fixed_axes_of_each_graph_are_the_manifests(bundles: TinyBundles, kind: str, name: str) -> None:
    import onnx

    root = bundles.root(kind)
    info = Manifest.load(root).graphs[name]
    graph = onnx.load(str(root / info.file)).graph
    for vi in [*graph.input, *graph.output]:
        axes = {**info.inputs, **info.outputs}[vi.name]
        for (param, value), axis in zip(dims(vi), axes, strict=True):
            if isinstance(axis, int):
                assert (param, value) == ("", axis), f"{name}.{vi.name}: {dims(vi)} vs manifest {axes}"


# -- parity -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GRAPHS)
def test_recorded_parity_is_reproduced_by_a_fresh_measurement(bundles: TinyBundles, name: str) -> None:
    """The manifest's ONNX-vs-torch figure is what measuring the graph on the export's own check input gives."""
    info = Manifest.load(bundles.fp32).graphs[name]
    inp, ref = export_check_case(bundles.eager, name)
    sess = make_session(bundles.fp32 / info.file)
    diff = float(np.abs(sess.run(None, {sess.get_inputs()[0].name: inp})[0] - ref.numpy()).max())
    assert info.parity_max_abs == pytest.approx(diff, rel=1e-5, abs=1e-9)
    assert info.parity_tolerance == pytest.approx(1e-3 * max(1.0, float(ref.abs().max())))


@pytest.mark.parametrize("name", GRAPHS)
def test_fp32_graphs_match_torch_on_a_shape_not_used_by_the_export(bundles: TinyBundles, name: str) -> None:
    diff, tol = ort_vs_torch(bundles, "fp32", name)
    assert diff < tol, f"{name}: ONNX Runtime differs from torch by {diff:.3g} (tolerance {tol:.3g})"


@pytest.mark.parametrize("name", GRAPHS)
def test_int8_accuracy_recorded_at_export_is_reproduced(bundles: TinyBundles, name: str) -> None:
    """Every int8 graph records its figures and bounds; measuring again on the calibration set gives the same."""
    info, fp32 = Manifest.load(bundles.int8).graphs[name], Manifest.load(bundles.fp32)
    assert info.precision == "int8"
    assert {b.metric: b.bound for b in info.int8_bounds} == accuracy.INT8_BOUNDS[name]
    assert all(b.ok for b in info.int8_bounds), info.int8_bounds
    calibration = [make_image(seed) for seed in CALIBRATION_SEEDS]
    files = {n: bundles.fp32 / g.file for n, g in fp32.graphs.items()}
    codec = bundles.eager.codec
    samples = quantize._samples(bundles.fp32, fp32.graphs, calibration, codec.arch.downsampling)[name]
    fresh = accuracy.measure(name, files, bundles.int8 / info.file, codec, calibration, samples)
    assert fresh == pytest.approx({b.metric: b.measured for b in info.int8_bounds}, rel=1e-6, abs=1e-9)


@pytest.fixture(scope="module")
def fresh_images() -> list[np.ndarray]:
    """Images of a size and content the export never saw."""
    return [make_image(300 + i, 80, 112) for i in range(3)]


def one_int8_graph(bundles: TinyBundles, name: str, tmp_path: Path) -> tuple[BundleModelSet, BundleModelSet]:
    """(the fp32 bundle, a copy of it whose graph ``name`` is the int8 bundle's), loaded."""
    root = tmp_path / f"fp32-but-{name}"
    shutil.copytree(bundles.fp32, root)
    m, int8 = Manifest.load(root), Manifest.load(bundles.int8).graphs[name]
    shutil.copyfile(bundles.int8 / int8.file, root / int8.file)
    replace(m, graphs={**m.graphs, name: int8}).save(root)
    return BundleModelSet(bundles.fp32), BundleModelSet(root, verify=False)


@pytest.mark.parametrize("name", GRAPHS)
def test_int8_graphs_hold_their_bounds_on_inputs_the_export_never_saw(
    bundles: TinyBundles, fresh_images: list[np.ndarray], name: str, tmp_path: Path
) -> None:
    """Measured through the runtime's own encode, decode and embed with only graph ``name`` in int8."""
    bounds = {b.metric: b for b in Manifest.load(bundles.int8).graphs[name].int8_bounds}
    ref, cand = one_int8_graph(bundles, name, tmp_path)
    if name == "text":
        cos = cosine(ref.embed_texts(TEXTS).vectors, cand.embed_texts(TEXTS).vectors)
        fresh = {"cosine_min": cos}
    elif name == "adapter":
        fresh = {"cosine_min": min(cosine(ref.encode(im).embedding, cand.encode(im).embedding) for im in fresh_images)}
    elif name == "g_s":
        pairs = [(ref.decode(d), cand.decode(d)) for d in (ref.encode_bitstream(im) for im in fresh_images)]
        fresh = {"psnr_vs_fp32_db": float(np.mean([psnr(a, b) for a, b in pairs]))}
    else:
        e_ref, e_cand = [ref.encode(im) for im in fresh_images], [cand.encode(im) for im in fresh_images]
        bpp_ref, bpp_cand = np.mean([e.bpp for e in e_ref]), np.mean([e.bpp for e in e_cand])
        ps_ref = np.mean([psnr(im, ref.decode(e.data)) for im, e in zip(fresh_images, e_ref, strict=True)])
        ps_cand = np.mean([psnr(im, cand.decode(e.data)) for im, e in zip(fresh_images, e_cand, strict=True)])
        fresh = {"bpp_delta_pct": float(100 * (bpp_cand - bpp_ref) / bpp_ref), "psnr_delta_db": float(ps_cand - ps_ref)}
    assert set(fresh) == set(bounds)
    outside = {m: (v, bounds[m].bound) for m, v in fresh.items() if not bounds[m].holds(v)}
    assert outside == {}, f"{name}: fresh figure outside its recorded bound: {outside}"


def test_g_s_in_phases_is_the_transposed_convolutions(bundles: TinyBundles, tmp_path: Path) -> None:
    """The int8 ``g_s`` is quantized from a graph whose transposed convolutions run as convolutions into their
    output's phases: that graph gives the fp32 graph's pixels, and the int8 graph has no ConvTranspose left."""
    import onnx

    fp32 = bundles.fp32 / Manifest.load(bundles.fp32).graphs["g_s"].file
    phased = tmp_path / "g_s.phased.onnx"
    names = quantize.subpixel_graph(fp32, phased)
    before = [n.op_type for n in onnx.load(str(fp32)).graph.node]
    assert len(names) == before.count("ConvTranspose") > 0
    assert "ConvTranspose" not in [n.op_type for n in onnx.load(str(phased)).graph.node]
    outs = []
    for path in (fp32, phased):
        sess = make_session(path)
        y = np.random.default_rng(1).normal(0, 2, (1, sess.get_inputs()[0].shape[1], 5, 7)).round()
        outs.append(sess.run(None, {sess.get_inputs()[0].name: y.astype(np.float32)})[0])
    assert outs[0].shape == outs[1].shape == (1, 3, 5 * 16, 7 * 16)
    assert float(np.abs(outs[0] - outs[1]).max()) < 1e-4
    int8 = Manifest.load(bundles.int8).graphs["g_s"]
    nodes = onnx.load(str(bundles.int8 / int8.file)).graph.node
    assert "ConvTranspose" not in [n.op_type for n in nodes]
    assert [n.op_type for n in nodes].count("DepthToSpace") == len(names)
    made_by = {o: n.op_type for n in nodes for o in n.output}
    weights = {n.name: made_by.get(n.input[1]) for n in nodes if n.name in names}
    # every phase convolution reads int8 weights through a DequantizeLinear but the last, which writes the pixels
    assert weights == {**{m: "DequantizeLinear" for m in names[:-1]}, names[-1]: None}, weights


def test_an_int8_graph_outside_its_bound_is_kept_fp32(
    bundles: TinyBundles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "b"
    shutil.copytree(bundles.fp32, root)
    graphs = Manifest.load(root).graphs
    monkeypatch.setattr(quantize, "KEEP_IF_FASTER_BY", float("inf"))
    monkeypatch.setitem(accuracy.INT8_BOUNDS, "adapter", {"cosine_min": 1.5})  # no graph reaches it
    out = quantize.quantize_bundle(root, graphs, "dynamic", [make_image(5, 64, 64)], codec=bundles.eager.codec)
    assert out["adapter"].precision == "fp32" and out["adapter"].file == graphs["adapter"].file
    assert out["adapter"].int8_note.startswith("kept fp32, int8 outside its accuracy bound (cosine_min)")
    assert [b.ok for b in out["adapter"].int8_bounds] == [False]
    assert out["text"].precision == "int8", "the text graph is within its own bound"


# -- round trips and embeddings -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [(72, 100), (17, 33)])
def test_bundle_round_trip(loaded: dict[str, BundleModelSet], kind: str, size: tuple[int, int]) -> None:
    bms = loaded[kind]
    h, w = size
    img = make_image(h + w, max(h, 16), max(w, 16))[:h, :w].copy()
    enc = bms.encode(img)
    assert (enc.width, enc.height) == (w, h)
    out = bms.decode(enc.data)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    assert np.array_equal(out, bms.decode(enc.data))
    assert cosine(bms.embed_bitstream(enc.data), enc.embedding) > 0.9999
    assert len(enc.embedding) == bms.embed_dim == bms.manifest.embed_dim
    assert abs(float(np.linalg.norm(enc.embedding)) - 1.0) < 1e-4


def test_fp32_bundle_image_embeddings_match_eager(bundles: TinyBundles, loaded: dict[str, BundleModelSet]) -> None:
    bms = loaded["fp32"]
    assert bms.codec.profile_id == bundles.eager.codec.profile_id
    for seed, (h, w) in enumerate([(96, 128), (64, 80), (40, 200), (130, 70)]):
        img = make_image(200 + seed, h, w)
        got, ref = bms.encode(img), bundles.eager.encode(img)
        assert cosine(got.embedding, ref.embedding) >= 0.9999, (h, w)


def test_fp32_bundle_text_embeddings_match_eager(bundles: TinyBundles, loaded: dict[str, BundleModelSet]) -> None:
    texts = [*TEXTS, "word " * 120]  # the last one is truncated to the context length
    got, ref = loaded["fp32"].embed_texts(texts), bundles.eager.embed_texts(texts)
    assert got.vectors.shape == ref.vectors.shape == (len(texts), bundles.eager.embed_dim)
    assert cosine(got.vectors, ref.vectors) >= 0.9999
    assert got.truncated == ref.truncated == (False,) * len(TEXTS) + (True,)


@pytest.mark.parametrize(
    "texts",
    [[TEXTS[0]], [TEXTS[1]], TEXTS, ["a photo"] * 3, [TEXTS[2], TEXTS[0], TEXTS[1]], ["&nbsp;"]],
    ids=["one-word", "short", "mixed-lengths", "same-length", "longest-first", "no-tokens"],
)
def test_short_queries_are_trimmed_without_changing_the_embedding(
    loaded: dict[str, BundleModelSet], texts: list[str]
) -> None:
    enc = loaded["fp32"].text
    trimmed, full = enc.tokens(texts, trim=True), enc.tokens(texts, trim=False)
    assert full.shape == (len(texts), enc.context_length)
    assert 2 <= trimmed.shape[1] < enc.context_length
    assert np.array_equal(trimmed, full[:, : trimmed.shape[1]])
    assert not full[:, trimmed.shape[1] :].any(), "only padding may be cut"
    a, b = enc.embed(texts, trim=True).vectors, enc.embed(texts, trim=False).vectors
    assert float((a - b).abs().max()) < 1e-5


def test_a_query_at_the_context_length_is_not_trimmed(loaded: dict[str, BundleModelSet]) -> None:
    enc = loaded["fp32"].text
    texts = ["a", "word " * 120]
    assert enc.tokens(texts, trim=True).shape == (2, enc.context_length)
    emb = enc.embed(texts)
    assert emb.truncated == (False, True)
    assert float((emb.vectors - enc.embed(texts, trim=False).vectors).abs().max()) < 1e-5


# -- manifest -----------------------------------------------------------------------------------------------------


def test_fp32_manifest(bundles: TinyBundles) -> None:
    m = Manifest.load(bundles.fp32)
    raw = json.loads((bundles.fp32 / MANIFEST).read_text())
    assert m.int8 == "none" and m.precision == "fp32" and raw["precision"] == "fp32"
    assert m.space_id == bundles.space_id
    assert m.codec_profile == bundles.eager.codec.profile_id
    assert m.models == bundles.eager.fingerprinted()
    for name in GRAPHS:
        assert raw["graphs"][name]["precision"] == "fp32"
        assert m.graphs[name].int8_note == ""


def test_int8_manifest(bundles: TinyBundles) -> None:
    m, fp32 = Manifest.load(bundles.int8), Manifest.load(bundles.fp32)
    raw = json.loads((bundles.int8 / MANIFEST).read_text())
    assert m.int8 == "static" and m.precision == "int8"
    for name in GRAPHS:
        g = m.graphs[name]
        assert raw["graphs"][name]["precision"] == g.precision == "int8"
        assert g.int8_note.startswith("kept int8"), g.int8_note
        assert g.file.endswith("_int8.onnx")
        assert not (bundles.int8 / fp32.graphs[name].file).exists(), "the replaced fp32 graph must be gone"
    assert m.space_id != fp32.space_id, "an int8 bundle gets its own space until a parity gate says otherwise"
    assert m.space_id.startswith(fp32.space_id)
    assert m.extra["source_space_id"] == fp32.space_id
    assert m.codec_profile == fp32.codec_profile, "int8 transforms keep the codec profile (entropy path is shared)"
    on_disk = {str(p.relative_to(bundles.int8)) for p in bundles.int8.rglob("*") if p.is_file()}
    assert set(m.files) == on_disk - {MANIFEST}, "no stray files from quantization"


def test_int8_graphs_not_faster_are_kept_fp32_with_a_note(
    bundles: TinyBundles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "b"
    shutil.copytree(bundles.fp32, root)
    graphs = Manifest.load(root).graphs
    before = {p: file_sha256(p) for p in root.rglob("*.onnx")}
    monkeypatch.setattr(quantize, "KEEP_IF_FASTER_BY", 0.0)
    out = quantize.quantize_bundle(root, graphs, "dynamic", [make_image(5, 64, 64)], codec=bundles.eager.codec)
    for name in GRAPHS:
        assert out[name].file == graphs[name].file and out[name].precision == "fp32"
    for name in quantize.DYNAMIC_GRAPHS:
        assert out[name].int8_note.startswith("kept fp32, int8 not faster"), out[name].int8_note
    assert {p: file_sha256(p) for p in root.rglob("*.onnx")} == before, "no int8 leftovers, fp32 graphs untouched"


# -- damaged bundles and bad output directories -------------------------------------------------------------------


def _copy(bundles: TinyBundles, tmp_path: Path) -> Path:
    root = tmp_path / "bundle"
    shutil.copytree(bundles.fp32, root)
    return root


def test_a_flipped_byte_in_any_bundle_file_is_refused(bundles: TinyBundles, tmp_path: Path) -> None:
    files = Manifest.load(bundles.fp32).files
    assert {g.file for g in Manifest.load(bundles.fp32).graphs.values()} <= set(files)
    for rel in files:
        root = _copy(bundles, tmp_path / rel.replace("/", "_"))
        path = root / rel
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(StoreError, match="does not match its manifest hash"):
            BundleModelSet(root)


def test_a_missing_manifest_or_graph_is_refused(bundles: TinyBundles, tmp_path: Path) -> None:
    root = _copy(bundles, tmp_path)
    (root / "codec" / "g_s.onnx").unlink()
    with pytest.raises(StoreError, match=r"lacks codec/g_s\.onnx"):
        BundleModelSet(root)
    (root / MANIFEST).unlink()
    with pytest.raises(StoreError, match=r"missing manifest\.json"):
        BundleModelSet(root)
    with pytest.raises(StoreError, match=r"missing manifest\.json"):
        BundleModelSet(tmp_path / "nowhere")


def test_a_damaged_manifest_is_refused(bundles: TinyBundles, tmp_path: Path) -> None:
    root = _copy(bundles, tmp_path)
    text = (root / MANIFEST).read_text()
    (root / MANIFEST).write_text(text[: len(text) // 2])
    with pytest.raises(StoreError, match="damaged"):
        BundleModelSet(root)
    doc = json.loads(text)
    doc["format"] = 99
    (root / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="format 99"):
        BundleModelSet(root)


def test_export_into_a_non_empty_directory_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        export_bundle(tiny_models(), tmp_path, space_id="x")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_export_onto_an_existing_file_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    target.write_text("not a directory")
    with pytest.raises(InputError):
        export_bundle(tiny_models(), target, space_id="x")


# -- the CLI --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli_inprocess(*args: str) -> Result:
    """Runs the CLI's ``main`` in this process (no interpreter start-up), restoring the logging it changes."""
    from licsearch.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    root, level = logging.getLogger(), logging.getLogger().level
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        finally:
            root.setLevel(level)
    return Result(rc, out.getvalue(), err.getvalue())


@dataclass(frozen=True)
class CliExport:
    out: Path
    result: Result


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory: pytest.TempPathFactory) -> CliExport:
    out = tmp_path_factory.mktemp("cli-export") / "bundle"
    return CliExport(out, cli_inprocess("export", *TINY_FLAGS, "--out", str(out), "--json"))


def test_cli_export_writes_a_bundle_and_one_json_document(cli_export: CliExport, bundles: TinyBundles) -> None:
    res = cli_export.result
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["out"] == str(cli_export.out)
    assert doc["manifest"] == json.loads((cli_export.out / MANIFEST).read_text())
    assert set(doc["manifest"]["graphs"]) == set(GRAPHS)
    assert doc["manifest"]["precision"] == "fp32"
    assert doc["manifest"]["space_id"] == bundles.space_id, "same models, same space as the eager store"
    assert sorted(doc["random_weights"]) == ["adapter", "clip", "codec"]
    assert "RANDOM WEIGHTS" in res.stderr
    bms, ref = BundleModelSet(cli_export.out).manifest, Manifest.load(bundles.fp32)
    assert bms.models == ref.models and bms.codec_profile == ref.codec_profile
    assert {k: g.sha256 for k, g in bms.graphs.items()} == {k: g.sha256 for k, g in ref.graphs.items()}, (
        "the same models export to the same graphs"
    )


def test_cli_export_into_a_non_empty_directory_exits_2(cli_export: CliExport) -> None:
    assert cli_export.result.returncode == 0
    before = (cli_export.out / MANIFEST).read_bytes()
    res = cli_inprocess("export", *TINY_FLAGS, "--out", str(cli_export.out), "--json")
    assert res.returncode == 2, res.stderr
    assert "not empty" in json.loads(res.stdout)["error"]["message"]
    assert (cli_export.out / MANIFEST).read_bytes() == before
    BundleModelSet(cli_export.out)  # still whole


def test_cli_init_with_a_bundle_and_model_flags_is_refused(cli_export: CliExport, tmp_path: Path) -> None:
    res = cli_inprocess("init", "--store", str(tmp_path / "s"), "--bundle", str(cli_export.out), *TINY_FLAGS, "--json")
    assert res.returncode == 2, res.stderr
    assert "exclude each other" in json.loads(res.stdout)["error"]["message"]
    assert not (tmp_path / "s").exists()


def test_cli_store_on_a_bundle_ingests_and_searches(cli_export: CliExport, tmp_path: Path) -> None:
    assert cli_export.result.returncode == 0
    store = tmp_path / "store"
    res = cli_inprocess("init", "--store", str(store), "--bundle", str(cli_export.out), "--json")
    assert res.returncode == 0, res.stderr
    space = json.loads(res.stdout)["space_id"]
    assert space == Manifest.load(cli_export.out).space_id
    assert json.loads((store / "store.json").read_text())["bundle"] == str(cli_export.out.resolve())
    images = {f"img{i}.png": write_png(tmp_path / "images" / f"img{i}.png", make_image(300 + i)) for i in range(4)}
    images["small.png"] = write_png(tmp_path / "images" / "small.png", make_image(310, 40, 56))
    # Ingest and search in fresh processes: the store alone must lead them to the bundle.
    proc = run_cli("ingest", "--store", str(store), str(tmp_path / "images"), "--no-progress", "--json", check=True)
    doc = json.loads(proc.stdout)
    assert doc["ingested"] == 5 and doc["failed"] == 0
    ids = {Path(item["path"]).name: item["id"] for item in doc["items"]}
    proc = run_cli("search", "--store", str(store), "--image", str(images["small.png"]), "--json", check=True)
    res_doc = json.loads(proc.stdout)
    assert res_doc["space_id"] == space
    hits = res_doc["hits"]
    assert len(hits) == 5
    assert hits[0]["id"] == ids["small.png"]
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[1]["score"] < hits[0]["score"]
