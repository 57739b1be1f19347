"""`licsearch bench` through the real CLI: the documented JSON schema, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from licsearch.errors import InputError
from licsearch.release.bench import load_bench_images
from tests.conftest import TINY_FLAGS, run_cli

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

    assert set(doc["backends"]) == {"baseline", "fp32", "int8"}
    for name, b in doc["backends"].items():
        assert b["precision"] in ("fp32", "int8", "mixed"), name
        assert b["bytes_per_image"] > 0 and b["model_bytes"] > 0, name
        assert set(b["stages"]) == STAGES, name
        assert set(b["end_to_end"]) == END_TO_END, name
        assert all(_summary_ok(s) for s in b["end_to_end"].values()), name
        assert all(s is None or _summary_ok(s) for s in b["stages"].values()), name
    base, fp32 = doc["backends"]["baseline"], doc["backends"]["fp32"]
    assert base["bundle"] is None and Path(fp32["bundle"]).name.startswith("fp32-")
    assert base["stages"]["entropy_encode"] is None and base["stages"]["compress"] is not None
    assert fp32["stages"]["compress"] is None and fp32["stages"]["entropy_encode"] is not None

    assert isinstance(doc["gate"]["passed"], bool)
    assert (doc["gate"]["reference"], doc["gate"]["candidate"]) == ("fp32", "int8")
    assert set(doc["ratios"]) == set(doc["ratio_backend"]) == END_TO_END
    for key, r in doc["ratios"].items():
        assert isinstance(r, float) and math.isfinite(r) and r > 0, key
        assert doc["ratio_backend"][key] in (("fp32", "int8") if doc["gate"]["passed"] else ("fp32",))
    assert set(doc["random_weights"]) == {"codec", "clip", "adapter"}

    assert set(doc["throughput"]) == {"ingest", "decode"}
    for key, per in doc["throughput"].items():
        assert set(per) == {"baseline", "fp32", "int8"} and all(v > 0 for v in per.values()), key
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
