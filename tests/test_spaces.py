"""Embedding-space identity (licsearch.spaces): derived ids, forks on a failed gate, and the recorded states."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from licsearch import spaces
from licsearch.config import AdapterConfig, ClipConfig, CodecConfig, ModelsConfig, SpaceConfig, StoreConfig
from licsearch.errors import StoreError

FILES = {"encoder.onnx": "a" * 64, "adapter.onnx": "b" * 64}


def fingerprinted(adapter_sha: str) -> ModelsConfig:
    return ModelsConfig(
        codec=CodecConfig(sha256="c" * 64), clip=ClipConfig(sha256="d" * 64), adapter=AdapterConfig(sha256=adapter_sha)
    )


def test_space_id_names_the_clip_model_and_changes_with_any_weights() -> None:
    a, b = spaces.space_id_for(fingerprinted("1" * 64)), spaces.space_id_for(fingerprinted("2" * 64))
    assert a.startswith("vit-b-32-") and b.startswith("vit-b-32-") and a != b
    assert spaces.space_id_for(fingerprinted("1" * 64)) == a, "a function of the weights alone"


def test_a_failed_gate_forks_the_reference_id_by_the_candidates_files() -> None:
    fork = spaces.fork_space_id("ref", "ref", FILES)
    assert fork == f"ref-x{spaces.files_digest(FILES)}" and len(spaces.files_digest(FILES)) == 8
    assert spaces.fork_space_id("ref", "ref", dict(reversed(FILES.items()))) == fork, "file order does not matter"
    assert spaces.fork_space_id("ref", "ref", {**FILES, "adapter.onnx": "e" * 64}) != fork
    assert spaces.fork_space_id("ref", "its-own", FILES) == "its-own", "an id of its own is kept"


def test_a_gate_verdict_decides_between_the_reference_and_a_fork() -> None:
    assert spaces.gated_space_id("ref", "its-own", FILES, passed=True) == "ref"
    assert spaces.gated_space_id("ref", "ref", FILES, passed=False) == spaces.fork_space_id("ref", "ref", FILES)


def test_unproven_int8_ids_start_with_their_source() -> None:
    sid = spaces.unproven_space_id("vit-b-32-0123", "int8")
    assert sid.startswith("vit-b-32-0123-int8-") and sid != "vit-b-32-0123"


def test_recorded_states_round_trip_and_an_unknown_one_is_refused(tmp_path: Path) -> None:
    models = fingerprinted("1" * 64)
    recorded = {s: SpaceConfig(models=models, dim=8, state=s) for s in spaces.SPACE_STATES}
    cfg = StoreConfig(models=models, space_id="active-one", spaces=recorded)
    cfg.save(tmp_path)
    assert {k: v.state for k, v in StoreConfig.load(tmp_path).spaces.items()} == {s: s for s in spaces.SPACE_STATES}
    assert spaces.ACTIVE not in spaces.SPACE_STATES, "the active space is the config's space_id, not a state"
    raw = json.loads((tmp_path / "store.json").read_text())
    raw["spaces"]["building"]["state"] = "half-done"
    (tmp_path / "store.json").write_text(json.dumps(raw))
    with pytest.raises(StoreError, match="half-done"):
        StoreConfig.load(tmp_path)
