"""``licsearch migrate``: a store of world scenes moved from the shipped world CLIP to the second one by a sample.

The offline preset (codec, world CLIP and its adapter, all shipped) makes the store; ``clip-world-b`` (the second,
differently seeded world CLIP) is the CLIP it moves to. Scenes are 64 px, the world CLIP's input size, so a store of
64 scenes ingests and migrates in seconds. The migrated store is made once per module (through the CLI, in-process)
and read by several tests; tests that change a store copy the ingested template.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from licsearch.presets import preset_models

from .conftest import MakeDir, write_png
from .test_cli import cli_inprocess

SIDE = 64
N_SCENES = 96
SAMPLE = "64"
HOLDOUT = "0.4"
CLIP_B = "shipped:offline/clip-world-b.safetensors"
MIGRATE = (
    "migrate", "--clip", "licsearch-world", "--clip-weights", CLIP_B, "--sample", SAMPLE, "--holdout", HOLDOUT,
    "--threads", "1",
)  # fmt: skip
"""One thread everywhere: float results depend on the thread count in their last bits, and the fixture's run (in this
process) and the killed and resumed runs (subprocesses) must fit the same adapter, to the bit."""
COST_KEYS = {
    "points", "full_s_per_image", "sample_decode_s_per_image", "sample_embed_s_per_image", "reembed_s_per_image",
    "fit_s", "migrate_s", "full_s", "speedup",
}  # fmt: skip


@dataclass(frozen=True)
class Migrated:
    template: Path  # the ingested store, before any migration (copy it to change it)
    store: Path  # a copy migrated with --activate --force
    report: dict[str, Any]
    old_space: str


def _scenes(n: int) -> list[np.ndarray]:
    from licsearch.world import render, sample_specs

    return [render(spec, (SIDE, SIDE)) for spec in sample_specs(n, seed=5, split="test")]


@pytest.fixture(scope="module")
def migrated(module_tmp: MakeDir) -> Migrated:
    from licsearch.ops.ingest import ingest
    from licsearch.storage.store import Store

    base = module_tmp("migrate")
    for i, im in enumerate(_scenes(N_SCENES)):
        write_png(base / "scenes" / f"{i:04d}.png", im)
    with Store.create(base / "template", preset_models("offline")) as store:
        assert ingest(store, [base / "scenes"], progress=False).ingested == N_SCENES
        old_space = store.space_id
    shutil.copytree(base / "template", base / "store")
    import torch

    threads = torch.get_num_threads()
    rc, out, err = _main(*MIGRATE, "--store", str(base / "store"), "--activate", "--force", "--json")
    assert rc == 0, err
    assert torch.get_num_threads() == threads  # --threads 1 held for the run only
    return Migrated(base / "template", base / "store", json.loads(out), old_space)


def _main(*args: str) -> tuple[int, str, str]:
    """The CLI in this process for a module fixture (``cli_inprocess`` needs the function-scoped ``capsys``)."""
    import contextlib
    import io
    import logging

    from licsearch.cli.main import main

    out, err, level = io.StringIO(), io.StringIO(), logging.getLogger().level
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings_kept():
        try:
            rc = main(list(args))
        finally:
            logging.getLogger().setLevel(level)
    return rc, out.getvalue(), err.getvalue()


def warnings_kept() -> Any:
    import warnings

    return warnings.catch_warnings()


def _copy(template: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(template, dst)
    return dst


def _vectors(store_dir: Path, space: str) -> dict[str, np.ndarray]:
    from licsearch.storage.store import Store

    with Store.open(store_dir) as store:
        ids = [pid for pid, _ in store.index.iter_points()]
        records = store.index.retrieve(ids, with_vectors=[space])
    return {pid: np.asarray(v[space]) for pid, _, v in records if space in v}


def _run(store: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "licsearch", *MIGRATE, "--store", str(store), *extra],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def test_migrate_moves_the_store_to_the_new_clip_and_reports_its_cost(migrated: Migrated) -> None:
    from licsearch.ops.spaces import space_status
    from licsearch.spaces import ADAPTER_KIND
    from licsearch.storage.store import Store

    r = migrated.report
    assert (r["state"], r["activated"], r["method"]) == ("active", True, "ridge_head")
    assert r["sample"] == {"n": 64, "train": 38, "heldout": 26, "points": N_SCENES, "anchors": 0}
    assert set(r["cost"]) == COST_KEYS
    assert set(r["seconds"]) == {"sample_decode", "sample_embed", "fit", "reembed"}
    assert all(v > 0 for v in r["seconds"].values()), r["seconds"]
    c = r["cost"]
    assert c["full_s"] == pytest.approx(c["full_s_per_image"] * N_SCENES)
    assert c["speedup"] == pytest.approx(c["full_s"] / c["migrate_s"])
    assert r["reindex"]["reembedded"] == N_SCENES and r["reindex"]["failed"] == 0
    with Store.open(migrated.store) as store:
        assert store.space_id == r["space_id"] != migrated.old_space
        assert store.config.kind == ADAPTER_KIND
        assert store.config.models.clip.weights == CLIP_B
        assert store.config.models.clip.sha256 == r["clip"]["sha256"]
        assert store.config.spaces[migrated.old_space].state == "retired"
        assert store.config.models.codec == store.config.spaces[migrated.old_space].models.codec  # bitstreams' codec
        rows = {s.space_id: s for s in space_status(store)}
        assert rows[r["space_id"]].with_vector == rows[r["space_id"]].points == N_SCENES


def test_text_queries_after_activation_use_the_new_text_tower(migrated: Migrated) -> None:
    from licsearch.model.text import TextEncoder
    from licsearch.ops.search import query_vector, search
    from licsearch.storage.store import Store

    text = "a red circle on the left"
    new = TextEncoder.load("licsearch-world", None, CLIP_B).embed([text]).vectors[0].numpy()
    old = TextEncoder.load("licsearch-world", None, "shipped:offline/clip-world.safetensors").embed([text])
    vectors = _vectors(migrated.store, migrated.report["space_id"])
    with Store.open(migrated.store) as store:
        vec, _ = query_vector(store, text=text)
        hits = search(store, text=text, top_k=5)
    np.testing.assert_allclose(vec, new, atol=1e-6)
    assert float(np.abs(np.asarray(vec) - old.vectors[0].numpy()).max()) > 0.05
    ids = list(vectors)
    expected = [ids[i] for i in np.argsort(-(np.stack(list(vectors.values())) @ new), kind="stable")[:5]]
    assert [h.id for h in hits.hits] == expected and hits.space_id == migrated.report["space_id"]


def test_heldout_figures_are_the_new_spaces_and_beat_a_random_adapter(migrated: Migrated) -> None:
    from licsearch.model.adapter import Adapter, AdapterShape
    from licsearch.model.image_tower import ImageTower
    from licsearch.model.text import TextEncoder, load_clip_model
    from licsearch.ops.distill import measure_heldout, vocabulary_texts
    from licsearch.ops.migrate import sample_ids
    from licsearch.storage.store import Store

    r = migrated.report
    vectors = _vectors(migrated.store, r["space_id"])
    tower = ImageTower(load_clip_model("licsearch-world", None, CLIP_B))
    text = TextEncoder.load("licsearch-world", None, CLIP_B)
    texts = text.embed(vocabulary_texts(text.tokenizer)).vectors.numpy()
    with Store.open(migrated.template) as store:
        held = sample_ids(store, int(SAMPLE))[-r["sample"]["heldout"] :]
        payloads = {pid: p for pid, p, _ in store.index.retrieve(held)}
        blobs = [store.blobs.get(payloads[pid]["blob"]) for pid in held]
        teacher = tower.embed([store.models.decode(b) for b in blobs]).numpy()  # independently: decode, new tower
        shape = AdapterShape(store.models.codec.latent_channels, teacher.shape[1])
        random = Adapter.load(shape, "random", seed=3)
        rand = np.concatenate([random.embed(store.models.entropy_decode(b)[1]).numpy() for b in blobs])
    ours = measure_heldout(np.stack([vectors[pid] for pid in held]), teacher, texts)
    baseline = measure_heldout(rand, teacher, texts)
    assert ours.cos_mean == pytest.approx(r["heldout"]["cos_mean"], abs=1e-4)
    assert ours.recall_at_10_overlap == pytest.approx(r["heldout"]["recall_at_10_overlap"], abs=1e-6)
    assert ours.cos_mean > baseline.cos_mean + 0.3, (ours, baseline)
    assert ours.recall_at_10_overlap > baseline.recall_at_10_overlap, (ours, baseline)
    assert ours.text_top10_agreement > baseline.text_top10_agreement, (ours, baseline)


@pytest.mark.slow
@pytest.mark.parametrize("crash", ["migrate_teacher:2", "reindex_batch:1"])
def test_sigkill_mid_migrate_then_rerun_reaches_the_same_end_state(
    migrated: Migrated, tmp_path: Path, crash: str
) -> None:
    store = _copy(migrated.template, tmp_path)
    killed = _run(store, "--activate", "--force", "--json", env={"LICSEARCH_CRASH_AT": crash})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = _run(store, "--activate", "--force", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["space_id"] == migrated.report["space_id"]  # the same adapter weights, to the bit
    assert (report["state"], report["sample"]) == ("active", migrated.report["sample"])
    ours, theirs = _vectors(store, report["space_id"]), _vectors(migrated.store, report["space_id"])
    assert ours.keys() == theirs.keys() and len(ours) == N_SCENES
    for pid, vec in ours.items():
        np.testing.assert_allclose(vec, theirs[pid], atol=1e-6)


@pytest.mark.parametrize(
    ("weights", "clip", "code", "says"),
    [
        ("/nonexistent/clip.safetensors", "licsearch-world", 1, "not found"),
        ("shipped:offline/clip-world.safetensors", "licsearch-tiny", 1, "do not fit"),
        ("random", "no-such-clip", 2, "unknown CLIP model"),
    ],
)
def test_a_clip_that_cannot_load_is_refused_before_any_write(
    migrated: Migrated,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    weights: str,
    clip: str,
    code: int,
    says: str,
) -> None:
    store = _copy(migrated.template, tmp_path)
    before = {p.relative_to(store): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}
    r = cli_inprocess(capsys, "migrate", "--store", str(store), "--clip", clip, "--clip-weights", weights,
                      "--sample", SAMPLE, "--json")  # fmt: skip
    assert r.returncode == code and says in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and json.loads(r.stdout)["error"]
    after = {p.relative_to(store): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}
    assert after == before


def test_failing_thresholds_keep_the_space_complete_and_inactive_until_forced(
    migrated: Migrated, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from licsearch.storage.store import Store

    store = _copy(migrated.template, tmp_path)
    r = cli_inprocess(capsys, *MIGRATE, "--store", str(store), "--recall-min", "1.01", "--activate", "--json")
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    assert (report["state"], report["activated"], report["passed"]) == ("complete", False, False)
    assert any("recall@10 overlap" in why for why in report["reasons"])
    assert any("--force" in why for why in report["reasons"])
    with Store.open(store) as s:
        assert s.space_id == migrated.old_space and s.config.spaces[report["space_id"]].state == "complete"
    forced = cli_inprocess(capsys, *MIGRATE, "--store", str(store), "--recall-min", "1.01", "--activate", "--force",
                           "--json")  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    again = json.loads(forced.stdout)
    assert (again["state"], again["space_id"], again["reindex"]["reembedded"]) == ("active", report["space_id"], 0)
    assert "activated anyway: --force" in again["reasons"]


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (("--sample", "6"), "at least"),
        (("--sample", "1000"), "more than the store's"),
        (("--codec", "bmshj2018-hyperprior:3"), "cannot change the codec"),
        (("--force",), "--force only"),
        (("--holdout", "1.5"), "--holdout"),
    ],
)
def test_bad_options_are_refused_with_the_fix(
    migrated: Migrated, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], says: str
) -> None:
    store = _copy(migrated.template, tmp_path)
    r = cli_inprocess(capsys, *MIGRATE, "--store", str(store), *extra)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (store / "migrations").exists()


@pytest.mark.slow
def test_a_pixels_store_migrates_with_a_fresh_adapter_trained_on_the_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from licsearch.ops.ingest import ingest
    from licsearch.spaces import PIXELS_KIND
    from licsearch.storage.store import Store

    scenes = tmp_path / "scenes"
    for i, im in enumerate(_scenes(24)):
        write_png(scenes / f"{i:04d}.png", im)
    with Store.create(tmp_path / "pixels", preset_models("offline"), kind=PIXELS_KIND) as store:
        assert ingest(store, [scenes], progress=False).ingested == 24
        pixels_space, spaces_before = store.space_id, dict(store.config.spaces)
    # Text anchors need an adapter to map from: refused up front, not silently ignored.
    (tmp_path / "anchors.txt").write_text("a red circle\na blue square\n")
    refused = cli_inprocess(capsys, *MIGRATE[:5], "--sample", "20", "--store", str(tmp_path / "pixels"),
                            "--anchor-texts", str(tmp_path / "anchors.txt"), "--json")  # fmt: skip
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "--anchor-texts needs an active adapter space" in json.loads(refused.stdout)["error"]["message"]
    with Store.open(tmp_path / "pixels") as store:
        assert (store.space_id, store.config.spaces) == (pixels_space, spaces_before)
    r = cli_inprocess(capsys, *MIGRATE[:5], "--sample", "20", "--steps", "20", "--store", str(tmp_path / "pixels"),
                      "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert (report["method"], report["state"], report["activated"]) == ("trained", "complete", False)
    assert "not asked to activate (pass --activate)" in report["reasons"]
    with Store.open(tmp_path / "pixels") as store:
        assert store.space_id == pixels_space and store.config.spaces[report["space_id"]].kind == "adapter"


def test_anchor_texts_enter_the_fit_and_are_counted(
    migrated: Migrated, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from licsearch.world import sample_specs

    captions = sorted({spec.caption() for spec in sample_specs(60, seed=9, split="train")})
    (tmp_path / "captions.txt").write_text("\n".join(captions) + "\n")
    store = _copy(migrated.template, tmp_path)
    r = cli_inprocess(capsys, *MIGRATE, "--store", str(store), "--anchor-texts", str(tmp_path / "captions.txt"),
                      "--activate", "--force", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["sample"]["anchors"] == len(captions) > 2
    assert report["space_id"] != migrated.report["space_id"]  # another map, another adapter
    assert report["heldout"]["cos_mean"] > 0.5, report["heldout"]
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe not text")
    bad = cli_inprocess(capsys, *MIGRATE, "--store", str(store), "--anchor-texts", str(tmp_path / "bad.txt"), "--json")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and json.loads(bad.stdout)["error"]
