"""The models this project trained and ships (``licsearch/shipped/offline``) and the ``offline`` preset.

These tests reload the shipped files and measure them on the procedural world's held-out test scenes, which every
checkout can render (no development data needed): the figures recorded next to them (reference.json) are reproduced,
and the rate order and the margin over chance are checked on the measurement, not on the record.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from licsearch.errors import LicsearchError, ModelError
from licsearch.model.weights import SHIPPED_PREFIX, load_state_dict_file, resolve_source, shipped_dir
from licsearch.presets import PRESETS, offline_adapter_file, preset_models
from licsearch.train.ship import REFERENCE_FILE, reference_figures
from licsearch.world import render, sample_specs
from tests.conftest import run_cli

OFFLINE = shipped_dir() / "offline"
MAX_FILE_BYTES = 25 * 1024 * 1024


def test_shipped_files_exist_are_small_and_have_provenance() -> None:
    preset = PRESETS.get("offline")
    preset.check_present()
    files = sorted(OFFLINE.glob("*.safetensors"))
    assert {p.name for p in files} >= {"codec-q3.safetensors", "clip-world.safetensors", offline_adapter_file(3)}
    for path in files:
        assert path.stat().st_size <= MAX_FILE_BYTES, f"{path.name} is over 25 MB"
        prov = json.loads(path.with_name(path.name.replace(".safetensors", ".provenance.json")).read_text())
        for key in ("command", "data", "steps", "environment", "options"):
            assert key in prov, f"{path.name}: provenance lacks {key}"
        assert prov["steps"] > 0
        # Never trained on the Kodak evaluation set.
        assert "kodak" not in json.dumps(prov["data"]).lower()


@pytest.fixture(scope="module")
def measured() -> dict[str, Any]:
    """The shipped models' figures, measured now on the world's held-out test scenes (the slow part: once)."""
    return reference_figures("offline")


def test_shipped_models_reproduce_their_recorded_figures(measured: dict[str, Any]) -> None:
    recorded = json.loads((OFFLINE / REFERENCE_FILE).read_text())
    assert set(measured["codec"]) == set(recorded["codec"])
    for q, rec in recorded["codec"].items():
        got = measured["codec"][q]
        assert got["bpp"] == pytest.approx(rec["bpp"], rel=0.01), f"quality {q} bpp"
        assert got["psnr"] == pytest.approx(rec["psnr"], abs=0.05), f"quality {q} PSNR"
    rec_s, got_s = recorded["semantic"], measured["semantic"]
    for key in ("hit1_adapter", "hit1_clip_pixels", "hit5_adapter", "hit5_clip_pixels"):
        assert got_s[key] == pytest.approx(rec_s[key], abs=0.02), key
    assert got_s["cos_mean"] == pytest.approx(rec_s["cos_mean"], abs=0.005)


def test_shipped_codec_qualities_are_ordered_by_rate(measured: dict[str, Any]) -> None:
    codec = measured["codec"]
    qs = sorted(codec, key=int)
    assert qs == ["1", "2", "3", "4"]
    bpps = [codec[q]["bpp"] for q in qs]
    psnrs = [codec[q]["psnr"] for q in qs]
    assert all(b > a for a, b in itertools.pairwise(bpps)), f"bpp must rise with quality: {bpps}"
    assert all(b > a for a, b in itertools.pairwise(psnrs)), f"PSNR must rise with quality: {psnrs}"


def test_shipped_semantics_beat_chance_by_far(measured: dict[str, Any]) -> None:
    s = measured["semantic"]
    chance = 1.0 / s["scenes"]  # hit@1 of a random ranking for a caption of one scene
    assert s["hit1_clip_pixels"] > 20 * chance
    assert s["hit1_adapter"] > 20 * chance


def test_init_with_the_offline_preset_makes_a_store_of_shipped_models(tmp_path: Path) -> None:
    proc = run_cli("init", "--store", str(tmp_path / "s"), "--preset", "offline", "--json", check=True)
    doc = json.loads(proc.stdout)
    assert doc["random_weights"] == []
    assert "RANDOM WEIGHTS" not in proc.stderr
    models = doc["models"]
    assert models["codec"]["weights"] == f"{SHIPPED_PREFIX}offline/codec-q3.safetensors"
    assert models["clip"]["model"] == "licsearch-world"
    assert all(models[m]["sha256"] for m in ("codec", "clip", "adapter"))


def test_preset_excludes_model_flags_and_unknown_presets_are_named(tmp_path: Path) -> None:
    proc = run_cli("init", "--store", str(tmp_path / "a"), "--preset", "offline", "--codec-weights", "random")
    assert proc.returncode != 0 and "--preset" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("init", "--store", str(tmp_path / "b"), "--preset", "nope", "--json")
    assert proc.returncode != 0
    doc = json.loads(proc.stdout)
    assert "offline" in json.dumps(doc)
    assert not (tmp_path / "b" / "store.json").exists()


def test_preset_models_are_the_registered_ones() -> None:
    m = preset_models("offline")
    assert m.clip.tag is None and m.codec.quality == 3


@pytest.mark.parametrize(
    "name", ["shipped:", "shipped:../weights.py", "shipped:/etc/passwd", "shipped:offline/../../x"]
)
def test_shipped_names_cannot_escape_the_shipped_folder(name: str) -> None:
    with pytest.raises(ModelError, match="shipped"):
        resolve_source(name)


def test_a_missing_shipped_file_is_a_clear_error() -> None:
    with pytest.raises(LicsearchError, match="not found"):
        load_state_dict_file("shipped:offline/nothing.safetensors", what="codec")


def test_shipped_clip_and_adapters_are_float16_and_codec_float32() -> None:
    clip = load_state_dict_file("shipped:offline/clip-world.safetensors", what="CLIP")
    codec = load_state_dict_file("shipped:offline/codec-q3.safetensors", what="codec")
    assert {str(v.dtype) for v in clip.values() if v.is_floating_point()} == {"torch.float16"}
    assert {str(v.dtype) for v in codec.values() if v.is_floating_point()} == {"torch.float32"}
    for q in (1, 2, 3, 4):
        adapter = load_state_dict_file(f"shipped:offline/{offline_adapter_file(q)}", what="adapter")
        assert {str(v.dtype) for v in adapter.values() if v.is_floating_point()} == {"torch.float16"}


# The first shipped adapters, byte for byte (sha256 of the files): the stores made with them record their weights.
FIRST_ADAPTERS = {
    "adapter-q1.safetensors": "2ac8fb8b7018b3b78571710f247639e8de64f9fda10b434469622b378eb77c17",
    "adapter-q2.safetensors": "99dd883057d5188aa16e426382adff752aa8f6213aeeb14e37254bb7b7081553",
    "adapter-q3.safetensors": "c740b91e6abfe3ca3435f94ed7462af5d193254419ec2fdc76e775b97041d3bb",
    "adapter-q4.safetensors": "3f45fdabfef931da2406d2e75433ea8dc15714891ee6f722b6dca3ee063306a7",
    # replaced at q1, q2 and q3 by adapter-views-long-qN (presets.OFFLINE_LONG_QUALITIES)
    "adapter-views-q1.safetensors": "5bc0d1a82cd926d79e6bb614f11e155c200fad2adf71c1bbb64f21830601cb8f",
    "adapter-views-q2.safetensors": "412cbc4ca2980849ac1510445fdd5161776e6a780d3d8f73323c82e86330fdd2",
    "adapter-views-q3.safetensors": "1b545c39e63f3ee853227ac29a3cc2d8ce7c0f4fee4976a2d0ac2343bf938357",
}


def test_a_store_made_with_the_first_shipped_adapter_still_opens_and_ingests(tmp_path: Path) -> None:
    """The adapters that ``adapter-views-qN`` replaced stay in the package byte for byte, so old stores keep working."""
    import hashlib

    for name, sha in FIRST_ADAPTERS.items():
        assert (OFFLINE / name).is_file(), f"{name} must stay shipped: stores made with it record its fingerprint"
        assert hashlib.sha256((OFFLINE / name).read_bytes()).hexdigest() == sha, f"{name} changed"
    store = str(tmp_path / "old")
    old = ("--codec", "bmshj2018-hyperprior:3", "--codec-weights", "shipped:offline/codec-q3.safetensors")
    old += ("--clip", "licsearch-world", "--clip-weights", "shipped:offline/clip-world.safetensors")
    run_cli("init", "--store", store, *old, "--adapter-weights", "shipped:offline/adapter-q3.safetensors", check=True)
    image = tmp_path / "scene.png"
    Image.fromarray(render(sample_specs(1, seed=0, split="test")[0], (128, 128))).save(image)
    run_cli("ingest", "--store", store, str(image), check=True)
    stats = json.loads(run_cli("stats", "--store", store, "--json", check=True).stdout)
    assert stats["images"] == 1 and not stats["random_weights"]
    new = f"shipped:offline/{offline_adapter_file(3)}"  # and it moves to the new adapter from its bitstreams
    run_cli("reindex", "--store", store, "--adapter-weights", new, "--activate", check=True)
    moved = json.loads(run_cli("stats", "--store", store, "--json", check=True).stdout)
    assert moved["space_id"] != stats["space_id"] and moved["images"] == 1


def test_shipping_refuses_runs_without_the_presets_own_adapter(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The preset's adapter is the long run's (presets.offline_adapter_run): a runs folder that has only the base
    adapter-q3 run is refused before anything is copied, where other qualities' missing runs are skipped."""
    from licsearch.presets import OFFLINE_QUALITY, offline_adapter_run
    from licsearch.train.ship import main

    (tmp_path / f"adapter-q{OFFLINE_QUALITY}").mkdir()
    before = sorted(p.name for p in OFFLINE.iterdir())
    assert main(["--runs", str(tmp_path)]) == 2
    assert f"has no {offline_adapter_run(OFFLINE_QUALITY)} run" in capsys.readouterr().err
    assert sorted(p.name for p in OFFLINE.iterdir()) == before
