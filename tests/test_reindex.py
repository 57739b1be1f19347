"""Re-indexing between embedding spaces: vectors rebuilt from stored bitstreams (entropy decode + adapter), spaces
that switch only when complete, queries that never mix spaces, a SIGKILL mid-way and a resume, removal on request.

Models are the tiny random-weight set of the other suites; the new space comes from adapter weights of another
seed (as a file, and exported into a real ONNX bundle). A store with six ingested images is made once per module
and copied for each test; Qdrant's local mode lets one client hold a store, so stores are opened with ``with``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from licsearch.bundle.export import export_bundle
from licsearch.bundle.manifest import Manifest
from licsearch.bundle.runtime import BundleModelSet
from licsearch.config import CONFIG_FILE, SpaceConfig, StoreConfig
from licsearch.errors import InputError, StoreError
from licsearch.imageio import load_image
from licsearch.model.adapter import Adapter, AdapterShape
from licsearch.model.models import ModelSet
from licsearch.model.weights import save_state_dict
from licsearch.ops.ingest import ingest
from licsearch.ops.reindex import reindex
from licsearch.ops.search import search
from licsearch.ops.spaces import SpaceNotReadyError, remove_space, space_status
from licsearch.storage import space_vectors
from licsearch.storage.store import Store, point_id

from .conftest import MakeDir, make_image, run_cli, tiny_models, write_png
from .test_bundle import cli_inprocess as bundle_cli_inprocess

N_IMAGES = 6


@dataclass(frozen=True)
class World:
    store: Path  # six images ingested in the tiny models' space
    images: list[Path]
    extra: Path  # a seventh image, not ingested
    adapter: Path  # adapter weights of another seed: a new space
    bundle: Path  # a real bundle exported from the tiny models with that adapter
    other_codec_bundle: Path  # a bundle whose codec has other weights


def _cosines(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a), np.asarray(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


@pytest.fixture(scope="module")
def world(tiny_store_template: Path, module_tmp: MakeDir) -> World:
    base = module_tmp("reindex")
    images = [write_png(base / "images" / f"img{i}.png", make_image(i)) for i in range(4)]
    images += [write_png(base / "images" / f"img{i}.png", make_image(i, 64, 80)) for i in range(4, N_IMAGES)]
    extra = write_png(base / "extra" / "img9.png", make_image(9))
    root = base / "store"
    shutil.copytree(tiny_store_template, root)
    with Store.open(root) as store:
        report = ingest(store, [base / "images"], batch_size=4, progress=False)
        assert (report.ingested, report.failed) == (N_IMAGES, 0)
        shape = AdapterShape(store.models.codec.latent_channels, store.models.embed_dim)
    adapter = base / "adapter-seed7.safetensors"
    save_state_dict(Adapter.load(shape, "random", seed=7).module.state_dict(), adapter)
    cfg = tiny_models()
    new_models = dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, weights=str(adapter)))
    bundle = base / "bundle-a7"
    export_bundle(new_models, bundle, space_id="tiny-a7")
    other = base / "bundle-other-codec"
    export_bundle(dataclasses.replace(cfg, codec=dataclasses.replace(cfg.codec, seed=1)), other, space_id="tiny-c1")
    return World(root, images, extra, adapter, bundle, other)


@pytest.fixture
def store_dir(world: World, tmp_path: Path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(world.store, dst)
    return dst


def _new_models(world: World) -> ModelSet:
    cfg = tiny_models()
    return ModelSet(dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, weights=str(world.adapter))))


def _ids(paths: list[Path]) -> dict[str, Path]:
    return {point_id(load_image(p).pixels_sha256()): p for p in paths}


def _vectors(store: Store, space: str) -> dict[str, list[float]]:
    return {
        pid: vecs[space]
        for pid, _, vecs in store.index.retrieve(list(dict(store.index.iter_points())), with_vectors=[space])
        if space in vecs
    }


def cli_inprocess(*args: str) -> tuple[int, str, str]:
    """Runs the CLI's ``main`` in this process: (exit status, stdout, stderr)."""
    r = bundle_cli_inprocess(*args)
    return r.returncode, r.stdout, r.stderr


def test_adapter_reindex_matches_ingest_time_embedding_and_leaves_the_old_space(
    world: World, store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Store.open(store_dir) as store:
        old_space = store.space_id
        old_vectors = _vectors(store, old_space)
    report = reindex(store_dir, adapter_weights=str(world.adapter), batch=4, progress=True)
    bar = capsys.readouterr().err
    assert f"reindex {report.space_id}" in bar and "6/6" in bar  # the progress bar counted every point
    assert (report.state, report.points, report.already, report.reembedded, report.failed) == ("complete", 6, 0, 6, 0)
    assert report.space_id != old_space and report.active_space == old_space and not report.activated
    cfg = StoreConfig.load(store_dir)
    assert cfg.space_id == old_space and cfg.spaces[report.space_id].state == "complete"
    assert cfg.spaces[report.space_id].models.adapter.weights == str(world.adapter.resolve())

    expected = _new_models(world)
    ids = _ids(world.images)
    with Store.open(store_dir) as store:
        assert _vectors(store, old_space) == old_vectors  # the old space is untouched
        rebuilt = _vectors(store, report.space_id)
        assert sorted(rebuilt) == sorted(ids)
        for pid, path in ids.items():  # what ingest with the new adapter would have stored, without pixels
            np.testing.assert_allclose(rebuilt[pid], expected.encode(load_image(path).pixels).embedding, atol=1e-5)

        assert search(store, text="a red circle").space_id == old_space  # queries stay until activation
        by_image = search(store, image=world.images[1], top_k=3, space=report.space_id)
        assert by_image.space_id == report.space_id
        assert by_image.hits[0].id == next(p for p, q in ids.items() if q == world.images[1])
        assert by_image.hits[0].score == pytest.approx(1.0, abs=1e-4)
        by_text = search(store, text="a red circle", top_k=6, space=report.space_id)
        query = expected.embed_texts(["a red circle"]).vectors[0].tolist()  # the space's own text encoder
        want = sorted(((_cosines(query, v), pid) for pid, v in rebuilt.items()), reverse=True)
        assert [h.id for h in by_text.hits] == [pid for _, pid in want]
        assert [h.score for h in by_text.hits] == pytest.approx([s for s, _ in want], abs=1e-5)

    again = reindex(store_dir, space_id=report.space_id, progress=False)  # nothing left: a no-op
    assert (again.state, again.already, again.reembedded) == ("complete", 6, 0)


def test_bundle_space_activated_switches_queries_and_ingest_and_can_be_rolled_back(
    world: World, store_dir: Path
) -> None:
    old_space = StoreConfig.load(store_dir).space_id
    eager = _new_models(world)
    report = reindex(store_dir, bundle=world.bundle, activate=True, progress=False)
    assert (report.space_id, report.state, report.reembedded, report.activated) == ("tiny-a7", "active", 6, True)
    cfg = StoreConfig.load(store_dir)
    assert (cfg.space_id, cfg.bundle) == ("tiny-a7", str(world.bundle.resolve()))
    assert cfg.spaces[old_space].state == "retired" and "tiny-a7" not in cfg.spaces

    ids = _ids(world.images)
    with Store.open(store_dir) as store:
        assert isinstance(store.models, BundleModelSet)
        rebuilt = _vectors(store, "tiny-a7")
        for pid, path in ids.items():  # ONNX Runtime adapter vs eager
            assert _cosines(rebuilt[pid], eager.encode(load_image(path).pixels).embedding) > 0.9999
        result = search(store, text="a blue square", top_k=6)
        assert result.space_id == "tiny-a7"
        query = store.models.embed_texts(["a blue square"]).vectors[0].tolist()  # the bundle's text graph
        assert result.hits[0].score == pytest.approx(max(_cosines(query, v) for v in rebuilt.values()), abs=1e-5)

        assert ingest(store, [world.extra], progress=False).ingested == 1  # ingest writes the active space only
        new_id = next(iter(_ids([world.extra])))
        assert set(store.index.retrieve([new_id], with_vectors=True)[0][2]) == {"tiny-a7"}
        with pytest.raises(SpaceNotReadyError, match=rf"{old_space}.* 6 of 7 points"):
            search(store, text="a blue square", space=old_space)

    back = reindex(store_dir, space_id=old_space, activate=True, progress=False)  # the retired space is caught up
    assert (back.already, back.reembedded, back.points, back.activated) == (6, 1, 7, True)
    cfg = StoreConfig.load(store_dir)
    assert cfg.space_id == old_space and cfg.bundle is None and cfg.spaces["tiny-a7"].state == "retired"
    with Store.open(store_dir) as store:
        assert isinstance(store.models, ModelSet)
        assert search(store, image=world.extra, top_k=1).hits[0].id == new_id


def test_a_bundle_that_shares_the_live_space_goes_live_without_reindexing(
    world: World, store_dir: Path, tmp_path: Path
) -> None:
    cfg = StoreConfig.load(store_dir)
    gated = tmp_path / "gated"
    shutil.copytree(world.bundle, gated)
    manifest = Manifest.load(gated)  # what `licsearch gate --assign-space` writes when the gate passes
    dataclasses.replace(manifest, space_id=cfg.space_id).save(gated)
    before = (store_dir / CONFIG_FILE).read_bytes()
    report = reindex(store_dir, bundle=gated, progress=False)
    assert (report.state, report.reembedded, report.already) == ("active", 0, 6)
    assert "nothing to re-index" in report.note
    assert (store_dir / CONFIG_FILE).read_bytes() == before
    with Store.open(store_dir) as store:
        assert list(store.index.spaces()) == [cfg.space_id]


@pytest.mark.slow
def test_reindex_killed_resumes_with_exact_counts_and_picks_up_points_ingested_meanwhile(
    world: World, store_dir: Path
) -> None:
    base = ("--store", str(store_dir), "--json")
    killed = run_cli(
        "reindex", *base, "--adapter-weights", str(world.adapter), "--batch-size", "2", "--no-progress",
        env={"LICSEARCH_CRASH_AT": "reindex_batch:2"},
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert killed.stdout == ""
    space = next(iter(StoreConfig.load(store_dir).spaces))

    status = run_cli("reindex", *base, "--status")
    assert status.returncode == 0, status.stderr
    rows = {r["space_id"]: r for r in json.loads(status.stdout)["spaces"]}
    assert (rows[space]["state"], rows[space]["with_vector"], rows[space]["points"]) == ("building", 4, 6)

    refused = run_cli("search", *base, "--text", "a red circle", "--space", space)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    error = json.loads(refused.stdout)["error"]
    assert error["type"] == "SpaceNotReadyError"
    assert space in error["message"] and "still building: 4 of 6 points" in error["message"]

    with Store.open(store_dir) as store:  # the old space still serves queries, and ingest goes on meanwhile
        assert search(store, text="a red circle").space_id == StoreConfig.load(store_dir).space_id
        assert ingest(store, [world.extra], progress=False).ingested == 1

    resumed = run_cli("reindex", *base, "--space", space, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    doc = json.loads(resumed.stdout)
    assert (doc["state"], doc["already"], doc["reembedded"], doc["points"], doc["failed"]) == ("complete", 4, 3, 7, 0)

    ids = _ids([*world.images, world.extra])
    expected = _new_models(world)
    with Store.open(store_dir) as store:
        assert store.index.count() == 7 and space_vectors.count_with(store.index, space) == 7
        assert sorted(pid for pid, _ in store.index.iter_points()) == sorted(ids)  # no duplicates
        rebuilt = _vectors(store, space)
        for pid, path in ids.items():
            np.testing.assert_allclose(rebuilt[pid], expected.encode(load_image(path).pixels).embedding, atol=1e-5)
        assert search(store, text="a red circle", space=space, top_k=7).space_id == space


@pytest.mark.slow
def test_reindex_killed_before_its_vector_exists_is_resumed_from_the_record(world: World, store_dir: Path) -> None:
    killed = run_cli(
        "reindex", "--store", str(store_dir), "--adapter-weights", str(world.adapter), "--no-progress",
        env={"LICSEARCH_CRASH_AT": "reindex_recorded"},
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    ((space, recorded),) = StoreConfig.load(store_dir).spaces.items()
    assert recorded.state == "building" and recorded.models.adapter.weights == str(world.adapter.resolve())
    with Store.open(store_dir) as store:
        row = next(r for r in space_status(store) if r.space_id == space)
        assert (row.state, row.dim, row.with_vector, row.points) == ("building", None, 0, 6)
    report = reindex(store_dir, space_id=space, progress=False)
    assert (report.state, report.already, report.reembedded, report.points) == ("complete", 0, 6, 6)


def test_remove_refuses_the_active_space_and_drops_an_old_one_only_on_request(world: World, store_dir: Path) -> None:
    report = reindex(store_dir, adapter_weights=str(world.adapter), progress=False)
    with Store.open(store_dir) as store:
        active = store.space_id
        kept = _vectors(store, active)
        with pytest.raises(InputError, match="is the active space"):
            remove_space(store, active)
        with pytest.raises(InputError, match="unknown embedding space 'nope'"):
            remove_space(store, "nope")
        assert set(store.index.spaces()) == {active, report.space_id}
    rc, out, err = cli_inprocess("reindex", "--store", str(store_dir), "--remove", active, "--json")
    assert rc == 2 and json.loads(out)["error"]["type"] == "InputError" and "active space" in err

    rc, out, _ = cli_inprocess("reindex", "--store", str(store_dir), "--remove", report.space_id, "--json")
    assert rc == 0 and json.loads(out) == {"store": str(store_dir), "removed": report.space_id}
    assert report.space_id not in StoreConfig.load(store_dir).spaces
    with Store.open(store_dir) as store:
        assert set(store.index.spaces()) == {active}
        assert _vectors(store, active) == kept
        assert [s.space_id for s in space_status(store)] == [active]
        with pytest.raises(InputError, match="unknown embedding space"):
            search(store, text="a red circle", space=report.space_id)


def test_a_corrupt_bitstream_fails_only_its_point_and_keeps_the_space_building(world: World, store_dir: Path) -> None:
    with Store.open(store_dir) as store:
        victim, payload = next(iter(store.index.iter_points()))
        path = store.blobs.path(str(payload["blob"]))
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-7])
    failures: list[str] = []
    report = reindex(
        store_dir, adapter_weights=str(world.adapter), progress=False, on_error=lambda pid, _: failures.append(pid)
    )
    assert (report.state, report.reembedded, report.failed) == ("building", 5, 1)
    assert failures == [victim] and report.failures[0]["id"] == victim
    rc, out, _ = cli_inprocess("reindex", "--store", str(store_dir), "--space", report.space_id, "--activate", "--json")
    assert rc == 2 and json.loads(out)["error"]["type"] == "SpaceNotReadyError"
    assert StoreConfig.load(store_dir).spaces[report.space_id].state == "building"


def test_bad_targets_are_refused_before_anything_is_written(world: World, store_dir: Path) -> None:
    before = (store_dir / CONFIG_FILE).read_bytes()
    with pytest.raises(InputError, match="cannot change the codec"):
        reindex(store_dir, bundle=world.other_codec_bundle, progress=False)
    with pytest.raises(InputError, match="unknown embedding space 'nope'"):
        reindex(store_dir, space_id="nope", progress=False)
    with pytest.raises(InputError, match="either a bundle or adapter weights"):
        reindex(store_dir, bundle=world.bundle, adapter_weights=str(world.adapter), progress=False)
    with pytest.raises(InputError, match="embeds into space 'tiny-a7', not 'other'"):
        reindex(store_dir, bundle=world.bundle, space_id="other", progress=False)
    with pytest.raises(StoreError, match="no model bundle"):
        reindex(store_dir, bundle=world.extra.parent, progress=False)
    with pytest.raises(InputError, match="say which space"):
        reindex(store_dir, progress=False)
    rc, out, err = cli_inprocess("reindex", "--store", str(store_dir), "--bundle", str(world.other_codec_bundle))
    assert rc == 2 and "cannot change the codec" in err and "Traceback" not in err and out == ""
    assert (store_dir / CONFIG_FILE).read_bytes() == before
    with Store.open(store_dir) as store:
        assert list(store.index.spaces()) == [store.space_id]


def test_a_store_json_without_spaces_still_loads_and_spaces_round_trip(store_dir: Path, tmp_path: Path) -> None:
    data = json.loads((store_dir / CONFIG_FILE).read_text())
    data.pop("spaces", None)  # as written before spaces were recorded
    old = tmp_path / "old"
    old.mkdir()
    (old / CONFIG_FILE).write_text(json.dumps(data))
    cfg = StoreConfig.load(old)
    assert cfg.spaces == {} and cfg.space_id == data["space_id"]
    rc, out, _ = cli_inprocess("reindex", "--store", str(store_dir), "--status", "--json")
    assert rc == 0 and [r["state"] for r in json.loads(out)["spaces"]] == ["active"]

    with_space = dataclasses.replace(cfg, spaces={"s2": SpaceConfig(models=cfg.models, dim=64, bundle="/b")})
    with_space.save(old)
    assert StoreConfig.load(old) == with_space
    damaged = json.loads((old / CONFIG_FILE).read_text())
    damaged["spaces"]["s2"]["state"] = "half-done"
    (old / CONFIG_FILE).write_text(json.dumps(damaged))
    with pytest.raises(StoreError, match="damaged"):
        StoreConfig.load(old)
