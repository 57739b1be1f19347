"""Pixels spaces and ``licsearch distill`` on a small store of world scenes.

The offline preset's codec plays the store's codec and the shipped world CLIP plays the real CLIP (it is trained
on the procedural world, so its image tower is a meaningful teacher offline). Scenes are 64 px, the world CLIP's
input size, so a store of 72 scenes ingests and distils in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from licsearch.config import ClipConfig, CodecConfig, ModelsConfig, StoreConfig
from licsearch.spaces import ADAPTER_KIND, PIXELS_KIND

from .conftest import MakeDir, write_png
from .test_cli import cli_inprocess

SIDE = 64
N_SCENES = 72
STEPS = "60"
WORLD_MODELS = ModelsConfig(
    codec=CodecConfig(arch="bmshj2018-hyperprior", quality=3, weights="shipped:offline/codec-q3.safetensors"),
    clip=ClipConfig(model="licsearch-world", tag=None, weights="shipped:offline/clip-world.safetensors"),
)


def _scenes(n: int, seed: int, split: str = "train") -> list[np.ndarray]:
    from licsearch.world import render, sample_specs

    return [render(spec, (SIDE, SIDE)) for spec in sample_specs(n, seed=seed, split=split)]  # type: ignore[arg-type]


def _write(folder: Path, images: list[np.ndarray]) -> Path:
    for i, im in enumerate(images):
        write_png(folder / f"{i:04d}.png", im)
    return folder


@pytest.fixture(scope="module")
def world_template(module_tmp: MakeDir) -> Path:
    """A pixels store of world scenes (made once; tests copy it)."""
    from licsearch.ops.ingest import ingest
    from licsearch.storage.store import Store

    base = module_tmp("distill")
    images = _write(base / "scenes", _scenes(N_SCENES, seed=3))
    with Store.create(base / "store", WORLD_MODELS, kind=PIXELS_KIND) as store:
        rep = ingest(store, [images], progress=False)
    assert rep.ingested == N_SCENES
    return base / "store"


@pytest.fixture
def world_store(world_template: Path, tmp_path: Path) -> Iterator[Path]:
    dst = tmp_path / "world"
    shutil.copytree(world_template, dst)
    yield dst


def _vectors(root: Path, space: str) -> dict[str, np.ndarray]:
    from licsearch.storage.store import Store

    with Store.open(root) as store:
        ids = [pid for pid, _ in store.index.iter_points()]
        rows = store.index.retrieve(ids, with_vectors=[space])
    return {pid: np.asarray(vecs[space], dtype=np.float32) for pid, _, vecs in rows if space in vecs}


def _distill(capsys: pytest.CaptureFixture[str], root: Path, *extra: str) -> tuple[int, dict]:
    res = cli_inprocess(
        capsys, "distill", "--store", str(root), "--steps", STEPS, "--threads", "1", "--no-progress", "--json", *extra
    )
    return res.returncode, json.loads(res.stdout)


def test_pixels_space_holds_clip_on_the_ingested_pixels(world_template: Path, capsys: pytest.CaptureFixture) -> None:
    """Each stored vector is the world CLIP's image tower on the scene as ingested, and text search ranks by it."""
    import torch

    from licsearch.model.text import load_clip_model
    from licsearch.storage.store import Store
    from licsearch.train.teacher import ClipTeacher

    cfg = StoreConfig.load(world_template)
    assert cfg.kind == PIXELS_KIND
    clip = WORLD_MODELS.clip
    teacher = ClipTeacher(load_clip_model(clip.model, clip.tag, clip.weights), clip.model, torch.device("cpu"))
    scenes = _scenes(N_SCENES, seed=3)
    expected = teacher(torch.from_numpy(np.stack(scenes)).permute(0, 3, 1, 2).float().div(255)).numpy()
    with Store.open(world_template) as store:
        by_path = {Path(p["source_path"]).name: pid for pid, p in store.index.iter_points()}
    stored = _vectors(world_template, cfg.space_id)
    got = np.stack([stored[by_path[f"{i:04d}.png"]] for i in range(N_SCENES)])
    np.testing.assert_allclose(got, expected, atol=2e-5)

    res = cli_inprocess(capsys, "search", "--store", str(world_template), "--text", "a red circle", "--json")
    doc = json.loads(res.stdout)
    assert res.returncode == 0 and doc["kind"] == PIXELS_KIND and doc["space_id"] == cfg.space_id
    with Store.open(world_template) as store:
        q = store.models.embed_texts(["a red circle"]).vectors.numpy()[0]
    ids = list(stored)
    best = ids[int(np.argmax(np.stack([stored[i] for i in ids]) @ q))]
    assert doc["hits"][0]["id"] == best
    stats = json.loads(cli_inprocess(capsys, "stats", "--store", str(world_template), "--json").stdout)
    assert stats["space_kinds"] == {cfg.space_id: PIXELS_KIND} and stats["random_weights"] == []


def test_init_without_adapter_weights_makes_a_pixels_space(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Plain init (no adapter for the pair) is pixels; --adapter-weights random stays an adapter space, labelled."""
    flags = ["--codec", "bmshj2018-hyperprior:1", "--codec-weights", "random", "--clip", "licsearch-tiny"]
    flags += ["--clip-weights", "random"]
    res = cli_inprocess(capsys, "init", "--store", str(tmp_path / "p"), *flags, "--json")
    doc = json.loads(res.stdout)
    assert res.returncode == 0 and doc["kind"] == PIXELS_KIND and "-pixels-" in doc["space_id"]
    assert "adapter" not in doc["random_weights"] and "licsearch distill" in res.stderr
    res = cli_inprocess(capsys, "init", "--store", str(tmp_path / "a"), *flags, "--adapter-weights", "random", "--json")
    doc = json.loads(res.stdout)
    assert doc["kind"] == ADAPTER_KIND and "adapter" in doc["random_weights"] and "RANDOM WEIGHTS" in res.stderr


def test_old_store_json_loads_as_an_adapter_space(tiny_store: Path, capsys: pytest.CaptureFixture) -> None:
    """A store.json without any kind field (as written before kinds) loads, opens and searches as before."""
    path = tiny_store / "store.json"
    doc = json.loads(path.read_text())
    doc.pop("kind")
    for sp in doc.get("spaces", {}).values():
        sp.pop("kind", None)
    path.write_text(json.dumps(doc))
    cfg = StoreConfig.load(tiny_store)
    assert cfg.kind == ADAPTER_KIND
    assert {k: v for k, v in cfg.to_dict().items() if k != "kind"} == doc
    res = cli_inprocess(capsys, "search", "--store", str(tiny_store), "--text", "x", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["kind"] == ADAPTER_KIND
    doc["kind"] = "photos"
    path.write_text(json.dumps(doc))
    res = cli_inprocess(capsys, "stats", "--store", str(tiny_store), "--json")
    assert res.returncode == 1 and "store.kind 'photos' is unknown" in json.loads(res.stdout)["error"]["message"]
    doc["kind"] = ADAPTER_KIND
    doc["models"]["adapter"]["weights"] = "store:../elsewhere.safetensors"
    path.write_text(json.dumps(doc))
    res = cli_inprocess(capsys, "stats", "--store", str(tiny_store), "--json")
    assert res.returncode == 1 and "must name a file inside the store" in json.loads(res.stdout)["error"]["message"]


def test_distill_beats_a_random_adapter_and_builds_the_space(world_store: Path, capsys: pytest.CaptureFixture) -> None:
    """The held-out figures of the distilled adapter beat a random adapter's; the space is complete, not active."""
    from licsearch.model.adapter import Adapter, AdapterShape
    from licsearch.ops.distill import heldout_split, load_pairs, measure_heldout, teacher_space
    from licsearch.storage.store import Store

    pixels = StoreConfig.load(world_store).space_id
    code, doc = _distill(capsys, world_store)
    assert code == 0 and not doc["activated"] and doc["state"] == "complete"
    assert doc["reasons"] and doc["reasons"][-1].startswith("not asked to activate")
    assert doc["teacher_space"] == pixels and doc["points"] == N_SCENES
    assert Path(doc["weights"]).parent == world_store / "adapters"
    h = doc["heldout"]
    with Store.open(world_store) as store:
        assert store.space_id == pixels and store.config.spaces[doc["space_id"]].kind == ADAPTER_KIND
        ids = sorted(pid for pid, _ in store.index.iter_points())
        held = load_pairs(store, heldout_split(ids, 0.1)[1], teacher_space(store))
        texts = store.models.embed_texts(["a red circle", "a blue square", "two green triangles"]).vectors.numpy()
    assert h["points"] == len(held) > 0
    shape = AdapterShape(held.y_hats[0].shape[1], held.teacher.shape[1])
    rnd = Adapter.load(shape, "random", seed=1)
    base = measure_heldout(np.concatenate([rnd.embed(y).numpy() for y in held.y_hats]), held.teacher, texts)
    assert h["cos_mean"] > base.cos_mean + 0.2
    assert h["recall_at_10_overlap"] > base.recall_at_10_overlap
    assert len(_vectors(world_store, doc["space_id"])) == N_SCENES


def test_distill_from_a_related_adapter(world_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--init starts from another adapter (the shipped one of the same codec architecture): after the same few steps
    its held-out cosine is above a fresh run's, the run is named by the weights; weights that do not fit are refused
    before anything is written."""
    import torch

    from licsearch.model.weights import save_state_dict
    from licsearch.presets import offline_adapter_file

    bad = tmp_path / "bad.safetensors"
    save_state_dict({"w": torch.zeros(3)}, bad)
    before = (world_store / "store.json").read_bytes()
    code, doc = _distill(capsys, world_store, "--init", str(bad), "--activate", "--force")
    assert code == 2 and "do not fit" in doc["error"]["message"], doc
    assert (world_store / "store.json").read_bytes() == before
    assert not (world_store / "distill").exists() and not (world_store / "adapters").exists()

    code, fresh = _distill(capsys, world_store, "--steps", "10")
    warm_src = f"shipped:offline/{offline_adapter_file(3)}"
    code2, warm = _distill(capsys, world_store, "--steps", "10", "--init", warm_src)
    assert code == code2 == 0 and warm["space_id"] != fresh["space_id"]
    assert warm["heldout"]["cos_mean"] > fresh["heldout"]["cos_mean"] + 0.05
    assert len(list((world_store / "distill").iterdir())) == 2


def test_distill_activate_then_ingest_never_runs_the_image_tower(
    world_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing space is not activated without --force; once active (and the store moved: its adapter is recorded
    store-relative), ingest embeds with the adapter only."""
    from licsearch.model.image_tower import ImageTower
    from licsearch.ops.ingest import ingest
    from licsearch.storage.store import Store

    before = (world_store / "store.json").read_bytes()
    code, doc = _distill(capsys, world_store, "--activate", "--recall-min", "1.01")
    assert code == 1 and not doc["activated"] and doc["state"] == "complete"
    assert any("recall@10 overlap" in r and "--recall-min 1.0100" in r for r in doc["reasons"])
    assert json.loads(before)["space_id"] == StoreConfig.load(world_store).space_id
    code, doc = _distill(capsys, world_store, "--activate", "--recall-min", "1.01", "--force")
    assert code == 0 and doc["activated"] and doc["reasons"][-1] == "activated anyway: --force"
    cfg = StoreConfig.load(world_store)
    assert cfg.space_id == doc["space_id"] and cfg.kind == ADAPTER_KIND
    assert cfg.spaces[doc["teacher_space"]].kind == PIXELS_KIND
    recorded = json.loads((world_store / "store.json").read_text())["models"]["adapter"]["weights"]
    assert recorded == "store:adapters/" + Path(doc["weights"]).name  # relative, so the store can move
    moved = tmp_path / "moved"
    world_store.rename(moved)
    assert StoreConfig.load(moved).models.adapter.weights == str(moved.resolve() / "adapters" / Path(recorded).name)

    calls: list[int] = []
    real = ImageTower.embed

    def counting(self: ImageTower, images: list[np.ndarray]):  # type: ignore[no-untyped-def]
        calls.append(len(images))
        return real(self, images)

    monkeypatch.setattr(ImageTower, "embed", counting)
    new = _write(tmp_path / "new", _scenes(5, seed=11))
    with Store.open(moved) as store:  # the moved store still finds its distilled adapter
        assert ingest(store, [new], progress=False).ingested == 5
    assert calls == []
    assert len(_vectors(moved, cfg.space_id)) == N_SCENES + 5
    pixels_copy = tmp_path / "pixels"
    shutil.copytree(moved, pixels_copy)  # the same images into a pixels store run the tower once per image
    cfg_pixels = dataclasses.replace(cfg, space_id=doc["teacher_space"], kind=PIXELS_KIND, spaces={})
    cfg_pixels = dataclasses.replace(cfg_pixels, models=cfg.spaces[doc["teacher_space"]].models)
    cfg_pixels.save(pixels_copy)
    more = _write(tmp_path / "more", _scenes(3, seed=12))
    with Store.open(pixels_copy) as store:
        assert ingest(store, [more], progress=False).ingested == 3
    assert sum(calls) == 3


@pytest.mark.slow
def test_distill_resumes_after_sigkill_to_the_same_end_state(world_store: Path, tmp_path: Path) -> None:
    """Killed in training, then killed in the re-index, then run again: the same space as an uninterrupted run."""
    clean = tmp_path / "clean"
    shutil.copytree(world_store, clean)
    args = [sys.executable, "-m", "licsearch", "distill", "--steps", STEPS, "--activate", "--force", "--json"]
    args += ["--no-progress", "--threads", "1"]

    def run(root: Path, crash: str | None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "LICSEARCH_CRASH_AT"}
        if crash:
            env["LICSEARCH_CRASH_AT"] = crash
        return subprocess.run([*args, "--store", str(root)], capture_output=True, text=True, env=env, timeout=600)

    assert run(world_store, "distill_step:45").returncode == -9
    checkpoints = list((world_store / "distill").glob("*/checkpoint/state.json"))
    assert len(checkpoints) == 1 and json.loads(checkpoints[0].read_text())["step"] == 42
    assert run(world_store, "reindex_batch:1").returncode == -9
    resumed = run(world_store, None)
    assert resumed.returncode == 0, resumed.stderr
    doc = json.loads(resumed.stdout)
    assert doc["resumed_from"] == int(STEPS) and doc["activated"]
    ref = run(clean, None)
    assert ref.returncode == 0, ref.stderr
    want = json.loads(ref.stdout)
    assert doc["space_id"] == want["space_id"] and doc["adapter_sha256"] == want["adapter_sha256"]
    assert doc["heldout"] == want["heldout"]
    a, b = _vectors(world_store, doc["space_id"]), _vectors(clean, want["space_id"])
    assert a.keys() == b.keys() and len(a) == N_SCENES
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert StoreConfig.load(world_store).space_id == StoreConfig.load(clean).space_id == doc["space_id"]


def test_distill_refuses_bad_stores(
    world_store: Path, tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """No pixels space, too few points, a bitstream that fails to decode: exit 2 or 1, a message, nothing activated."""
    from licsearch.ops.ingest import ingest
    from licsearch.storage.store import Store

    code, doc = _distill(capsys, tiny_store)
    assert code == 2 and "has no pixels space to distil from" in doc["error"]["message"]
    code, doc = _distill(capsys, world_store, "--flip", "1.5")
    assert code == 2 and "--flip 1.5 is not a probability" in doc["error"]["message"]

    few = tmp_path / "few"
    with Store.create(few, WORLD_MODELS, kind=PIXELS_KIND) as store:
        ingest(store, [_write(tmp_path / "six", _scenes(6, seed=5))], progress=False)
    code, doc = _distill(capsys, few)
    assert code == 2 and "has 6 points; distilling an adapter needs at least 50" in doc["error"]["message"]

    before = (world_store / "store.json").read_bytes()
    blob = next((world_store / "blobs" / "objects").rglob("*.lics"))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    code, doc = _distill(capsys, world_store, "--activate", "--force")
    assert code == 1 and "fails to decode" in doc["error"]["message"] and "fsck" in doc["error"]["message"]
    assert (world_store / "store.json").read_bytes() == before
    assert not (world_store / "distill").exists() and not (world_store / "adapters").exists()


def test_pixels_space_refuses_reindex_and_bundle_export(world_template: Path, capsys: pytest.CaptureFixture) -> None:
    """A pixels space cannot be rebuilt from bitstreams (reindex names distill and migrate) nor exported."""
    cfg = StoreConfig.load(world_template)
    res = cli_inprocess(capsys, "reindex", "--store", str(world_template), "--space", cfg.space_id, "--json")
    msg = json.loads(res.stdout)["error"]["message"]
    assert (
        res.returncode == 2 and "without decoding" in msg and "licsearch distill" in msg and "licsearch migrate" in msg
    )
    res = cli_inprocess(capsys, "export", "--store", str(world_template), "--out", "/nonexistent/b", "--json")
    msg = json.loads(res.stdout)["error"]["message"]
    assert res.returncode == 2 and "pixels space" in msg and "no adapter graph" in msg


def test_a_threshold_that_a_random_ranking_meets_cannot_pass() -> None:
    """On 10 held-out points every top-10 overlaps fully, so recall@10 overlap 1.0 says nothing: the gate refuses it
    and names the split's size; on 100 points the same figure passes and a low one fails as before."""
    from licsearch.ops.distill import Heldout, Thresholds, chance_levels, decide

    assert chance_levels(10) == {"recall@10 overlap": 1.0, "text top-10 agreement": 1.0}
    assert chance_levels(101)["recall@10 overlap"] == pytest.approx(0.1)
    small = decide(Heldout(10, 0.9, 1.0, 1.0, 200), Thresholds(recall_min=0.9, text_min=0.5))
    assert len(small) == 2 and all("cannot fail" in r and "10 held-out points" in r for r in small), small
    assert decide(Heldout(100, 0.9, 0.95, 0.8, 200), Thresholds(recall_min=0.9, text_min=0.5)) == []
    low = decide(Heldout(100, 0.9, 0.5, 0.8, 200), Thresholds(recall_min=0.9))
    assert low == ["held-out recall@10 overlap 0.5000 is below --recall-min 0.9000"]
    assert decide(Heldout(10, 0.9, 1.0, 1.0, 200), Thresholds(recall_min=0.0)) == []  # a bound of 0 checks nothing
