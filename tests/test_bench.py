"""`licsearch bench` through the real CLI: the documented JSON schema, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from licsearch.bundle.runtime import OPENVINO_GRAPHS, BundleModelSet, RuntimeOptions
from licsearch.errors import InputError, StoreError
from licsearch.release.bench import OPENVINO_BACKEND, OPENVINO_BENCH_GRAPHS, load_bench_images, openvino_installed
from tests.conftest import TINY_FLAGS, make_image, run_cli, tiny_models

STAGES = {
    "analysis",
    "entropy_encode",
    "adapter",
    "synthesis",
    "entropy_decode",
    "text_short",
    "text_long",
    "search",
    "compress",
    "decompress",
    "image_tower",
}
END_TO_END = {"ingest", "reembed", "decode", "text"}


def _summary_ok(s: object) -> bool:
    return (
        isinstance(s, dict)
        and set(s) == {"median_s", "p90_s"}
        and all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in s.values())
    )


@pytest.mark.slow
def test_quick_bench_json_schema() -> None:
    proc = run_cli("bench", "--quick", "--json", "--threads", "2", "--profile", *TINY_FLAGS)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert "RANDOM WEIGHTS" in proc.stderr

    assert doc["schema"] == 1
    assert {"cpu_count", "threads", "platform", "torch", "onnxruntime"} <= set(doc["machine"])
    assert doc["machine"]["threads"] == 2
    assert doc["images"]["count"] == 2
    assert (doc["images"]["width"], doc["images"]["height"]) == (128, 96)
    assert doc["settings"]["repeats"] == 1

    bundles = {"fp32", "int8", *([OPENVINO_BACKEND] if openvino_installed() else [])}
    assert set(doc["backends"]) == {"baseline", *bundles}
    assert (doc["machine"]["openvino"] is None) == (not openvino_installed())
    for name, b in doc["backends"].items():
        assert b["precision"] in ("fp32", "int8", "mixed"), name
        assert b["bytes_per_image"] > 0 and b["model_bytes"] > 0, name
        assert set(b["stages"]) == STAGES, name
        assert set(b["end_to_end"]) == END_TO_END, name
        assert all(_summary_ok(s) for s in b["end_to_end"].values()), name
        assert all(s is None or _summary_ok(s) for s in b["stages"].values()), name
    base, fp32 = doc["backends"]["baseline"], doc["backends"]["fp32"]
    assert base["bundle"] is None and Path(fp32["bundle"]).name.startswith("fp32-")
    assert base["openvino"] is None and fp32["openvino"] == doc["backends"]["int8"]["openvino"] == []
    if openvino_installed():
        ov = doc["backends"][OPENVINO_BACKEND]
        assert ov["bundle"] == fp32["bundle"] and ov["openvino"] == list(OPENVINO_BENCH_GRAPHS)
        assert doc["gates"][OPENVINO_BACKEND]["passed"], doc["gates"][OPENVINO_BACKEND]
    assert base["stages"]["entropy_encode"] is None and base["stages"]["compress"] is not None
    assert fp32["stages"]["compress"] is None and fp32["stages"]["entropy_encode"] is not None

    assert isinstance(doc["gate"]["passed"], bool)
    assert (doc["gate"]["reference"], doc["gate"]["candidate"]) == ("fp32", "int8")
    assert set(doc["ratios"]) == set(doc["ratio_backend"]) == END_TO_END
    for key, r in doc["ratios"].items():
        assert isinstance(r, float) and math.isfinite(r) and r > 0, key
        assert doc["ratio_backend"][key] in {"fp32"} | {n for n, g in doc["gates"].items() if g["passed"]}
    assert set(doc["random_weights"]) == {"codec", "clip", "adapter"}

    assert set(doc["throughput"]) == {"ingest", "decode"}
    for key, per in doc["throughput"].items():
        assert set(per) == {"baseline", *bundles} and all(v > 0 for v in per.values()), key
    _check_profile(doc["profile"])
    assert "profile (fp32" in run_cli("bench", "--quick", "--threads", "1", "--profile", *TINY_FLAGS).stdout


def _check_profile(prof: dict) -> None:  # type: ignore[type-arg]
    assert (prof["backend"], prof["images"]) == ("fp32", 2)
    assert set(prof["entropy"]) == {"encode", "decode"}
    for phase, p in prof["entropy"].items():
        stages = p["stages"]
        assert {"z.rans", "h_s.0.deconv", "h_s.2.conv", "index", "y.rans", "hash", "unaccounted"} <= set(stages)
        assert p["total_s"] > 0 and all(v >= 0 for k, v in stages.items() if k != "unaccounted"), phase
        assert sum(v for k, v in stages.items() if k != "unaccounted") <= p["total_s"] * 1.5, phase
    assert "checks" in prof["entropy"]["decode"]["stages"]
    assert set(prof["graphs"]) == {"g_a", "h_a", "g_s", "adapter", "text"}
    for graph, ops in prof["graphs"].items():
        assert ops and all(isinstance(o["op"], str) and o["seconds"] >= 0 for o in ops), graph
        assert 0 < sum(o["share"] for o in ops) <= 1 + 1e-9, graph
    assert prof["graphs"]["g_s"][0]["op"] in ("ConvTranspose", "Conv", "Mul", "Div", "Sqrt", "Add"), prof["graphs"]


def test_default_bench_models_are_the_shipped_codec_and_vit_b_32_compute() -> None:
    from licsearch.presets import preset_models
    from licsearch.release.bench import default_bench_models

    m = default_bench_models()
    assert m.codec == preset_models("offline").codec and m.codec.weights.endswith("codec-q3.safetensors")
    assert (m.clip.model, m.clip.weights, m.adapter.weights) == ("ViT-B-32", "random", "random")


def test_bench_refuses_missing_images(tmp_path: Path) -> None:
    proc = run_cli("bench", "--quick", "--json", "--images", str(tmp_path / "nope"), *TINY_FLAGS)
    assert proc.returncode == 2
    err = json.loads(proc.stdout)["error"]
    assert err["type"] == "InputError" and "nope" in err["message"]

    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found"):
        load_bench_images(tmp_path / "empty", quick=True)


def test_provider_selection_prefers_cuda_when_present_and_names_what_is_missing() -> None:
    """The [gpu] extra's provider choice, decided on a CPU machine from the list ONNX Runtime reports."""
    import onnxruntime as ort

    from licsearch.bundle.runtime import resolve_providers
    from licsearch.errors import StoreError

    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(("auto",), gpu) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(("auto",), ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert resolve_providers(("CPUExecutionProvider",), gpu) == ["CPUExecutionProvider"]
    assert resolve_providers((), ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(StoreError, match="CUDAExecutionProvider is not available") as e:
        resolve_providers(("CUDAExecutionProvider",), ["CPUExecutionProvider"])
    assert "CPUExecutionProvider" in (e.value.hint or "")
    assert resolve_providers(("auto",)) == [
        p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()
    ]


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from licsearch.bundle.export import export_bundle

    root = tmp_path_factory.mktemp("bench-bundle") / "fp32"
    export_bundle(tiny_models(), root, space_id="test")
    return root


def test_openvino_transforms_decode_the_same_latents_to_the_same_pixels_at_any_thread_count(fp32_bundle: Path) -> None:
    """The codec transforms on OpenVINO against ONNX Runtime: bitstreams cross-decode to the same latent, pixels within
    one grey level of ONNX Runtime's and equal across thread counts."""
    pytest.importorskip("openvino")
    import numpy as np
    import torch

    ort_plane = BundleModelSet(fp32_bundle, RuntimeOptions(threads=1))
    ov = {t: BundleModelSet(fp32_bundle, RuntimeOptions(threads=t, openvino=OPENVINO_GRAPHS)) for t in (1, 2)}
    for seed, (h, w) in enumerate([(96, 128), (70, 150), (96, 128)]):  # two shapes, one met again
        px = make_image(500 + seed, h, w)
        enc_ort, enc_ov = ort_plane.encode(px), ov[1].encode(px)
        for data in (enc_ort.data, enc_ov.data):
            assert torch.equal(ov[2].entropy_decode(data)[1], ort_plane.entropy_decode(data)[1])
        decoded = {t: p.decode(enc_ort.data) for t, p in ov.items()}
        assert np.array_equal(decoded[1], decoded[2]), "OpenVINO pixels depend on the thread count"
        reference = ort_plane.decode(enc_ort.data)
        assert decoded[1].shape == reference.shape == (h, w, 3)
        assert int(np.abs(decoded[1].astype(int) - reference.astype(int)).max()) <= 1
        assert enc_ov.data == ov[2].encode(px).data
    assert len(ov[1].codec.transforms._g["g_s"]._compiled) == 2  # type: ignore[union-attr]


def test_openvino_graph_keeps_only_the_last_shapes_compiled(fp32_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino")
    import numpy as np

    from licsearch.bundle import runtime

    monkeypatch.setattr(runtime, "OPENVINO_SHAPES", 2)
    plane = BundleModelSet(fp32_bundle, RuntimeOptions(threads=1, openvino=("g_s",)))
    g_s = plane.codec.transforms._g["g_s"]  # type: ignore[attr-defined]
    for w in (2, 3, 4, 2):
        out = g_s(np.zeros((1, 192, 2, w), dtype=np.float32))
        assert out.shape == (1, 3, 32, 16 * w)
    assert list(g_s._compiled) == [(1, 192, 2, 4), (1, 192, 2, 2)]


def test_openvino_option_names_the_fix(fp32_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    with pytest.raises(StoreError, match=r"OpenVINO cannot run the graph\(s\) text") as e:
        RuntimeOptions(openvino=("g_s", "text"))
    assert "g_s" in (e.value.hint or "")
    monkeypatch.setenv("LICSEARCH_OPENVINO", "g_s, g_a")
    assert RuntimeOptions.from_env().openvino == ("g_s", "g_a")
    monkeypatch.delenv("LICSEARCH_OPENVINO")
    assert RuntimeOptions.from_env().openvino == ()

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    plane = BundleModelSet(fp32_bundle, RuntimeOptions(openvino=("g_s",)))
    with pytest.raises(StoreError, match=r"OpenVINO was asked to run g_s\.onnx but is not installed") as e:
        _ = plane.codec
    assert "pip install openvino" in (e.value.hint or "")
