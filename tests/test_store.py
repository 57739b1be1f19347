"""The store at library level, in-process: idempotent ingest, payload contract, decode and re-embed on demand,
fsck find-and-repair, and refusal of models that differ from the store's.

Qdrant's local mode lets one client hold a store path, so every test opens its store with ``with``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from licsearch.bitstream import Bitstream
from licsearch.config import AdapterConfig, ClipConfig, CodecConfig, ModelsConfig
from licsearch.errors import ConfigMismatchError
from licsearch.imageio import load_image
from licsearch.model.models import ModelSet
from licsearch.ops.ingest import ingest
from licsearch.ops.maintenance import fsck, stats
from licsearch.ops.search import decode_stored, search
from licsearch.storage.store import Store, point_id

from .conftest import MakeDir, make_image, tiny_models, write_png

PAYLOAD_FIELDS = {
    "blob",
    "bitstream_sha256",
    "source_sha256",
    "pixels_sha256",
    "bytes",
    "bpp",
    "width",
    "height",
    "codec_profile",
    "space_id",
    "source_path",
    "source_format",
    "created_at",
    "created",
}


def _write_images(d: Path) -> list[Path]:
    paths = [write_png(d / f"img{i}.png", make_image(i)) for i in range(4)]
    paths += [write_png(d / "sub" / f"img{i}.png", make_image(i, 64, 80)) for i in range(4, 6)]
    return paths


@pytest.fixture(scope="module")
def filled_template(tiny_store_template: Path, module_tmp: MakeDir) -> tuple[Path, list[Path]]:
    """A tiny store holding six ingested images (made once per module; copy it with `filled`)."""
    base = module_tmp("filled")
    root = base / "store"
    shutil.copytree(tiny_store_template, root)
    paths = _write_images(base / "images")
    with Store.open(root) as store:
        report = ingest(store, [base / "images"], batch_size=4, progress=False)
    assert (report.ingested, report.failed) == (6, 0)
    return root, paths


@pytest.fixture
def filled(filled_template: tuple[Path, list[Path]], tmp_path: Path) -> tuple[Path, list[Path]]:
    root, paths = filled_template
    dst = tmp_path / "store"
    shutil.copytree(root, dst)
    return dst, paths


def _points(store: Store) -> dict[str, dict]:
    return dict(store.index.iter_points())


def _ref_of(store: Store, pid: str) -> str:
    return str(_points(store)[pid]["blob"])


def _cosine(a: list[float], b: list[float]) -> float:
    va, vb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


# -- idempotent ingest ----------------------------------------------------------------------------------------


def test_reingest_of_the_same_folder_skips_everything(filled: tuple[Path, list[Path]]) -> None:
    root, paths = filled
    with Store.open(root) as store:
        before = set(_points(store))
        report = ingest(store, [paths[0].parent], batch_size=2, progress=False)
        assert (report.ingested, report.skipped, report.failed) == (0, 6, 0)
        assert set(report.ids) == before
        assert set(_points(store)) == before
        assert stats(store)["images"] == 6


def test_same_pixels_under_another_name_or_format_are_duplicates(
    filled: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    root, paths = filled
    from PIL import Image

    pixels = load_image(paths[0]).pixels
    other = tmp_path / "other"
    write_png(other / "renamed.png", pixels)
    other.mkdir(exist_ok=True)
    Image.fromarray(pixels).save(other / "as_bitmap.bmp")
    with Store.open(root) as store:
        original = point_id(load_image(paths[0]).pixels_sha256())
        report = ingest(store, [other], progress=False)
        assert (report.ingested, report.skipped, report.failed) == (0, 2, 0)
        assert report.ids == [original, original]
        assert stats(store)["images"] == 6


def test_duplicates_within_one_run_are_stored_once(tiny_store: Path, tmp_path: Path) -> None:
    from PIL import Image

    d = tmp_path / "dups"
    pixels = make_image(7, 64, 64)
    write_png(d / "a.png", pixels)
    Image.fromarray(pixels).save(d / "b.bmp")
    write_png(d / "c.png", make_image(8, 64, 64))
    with Store.open(tiny_store) as store:
        report = ingest(store, [d], batch_size=8, progress=False)
        assert (report.ingested, report.skipped, report.failed) == (2, 1, 0)
        statuses = {Path(i["path"]).name: i["status"] for i in report.items}
        assert statuses == {"a.png": "ingested", "b.bmp": "skipped", "c.png": "ingested"}
        assert stats(store)["images"] == 2
        assert len(list(store.blobs.iter_refs())) == 2


# -- payload contract -----------------------------------------------------------------------------------------


def test_payload_fields_are_present_and_consistent(filled: tuple[Path, list[Path]]) -> None:
    root, paths = filled
    sources = {str(p.resolve()): load_image(p) for p in paths}
    with Store.open(root) as store:
        points = _points(store)
        assert len(points) == 6
        profile = store.models.codec.profile_id
        for pid, payload in points.items():
            assert set(payload) >= PAYLOAD_FIELDS, f"missing {PAYLOAD_FIELDS - set(payload)}"
            ref = payload["blob"]
            assert store.blobs.exists(ref)
            data = store.blobs.get(ref)
            assert payload["bitstream_sha256"] == hashlib.sha256(data).hexdigest()
            assert ref == f"sha256:{payload['bitstream_sha256']}"
            assert payload["bytes"] == len(data)
            w, h = payload["width"], payload["height"]
            assert payload["bpp"] == pytest.approx(8 * len(data) / (w * h), rel=1e-9)
            assert payload["codec_profile"] == profile == Bitstream.from_bytes(data).profile_id
            assert payload["space_id"] == store.space_id
            src = sources[payload["source_path"]]
            assert (w, h) == (src.width, src.height)
            assert payload["source_sha256"] == src.source_sha256
            assert payload["pixels_sha256"] == src.pixels_sha256()
            assert point_id(payload["pixels_sha256"]) == pid
            assert payload["source_format"] == "PNG"
            assert isinstance(payload["created_at"], float)
            assert 0 <= time.time() - payload["created_at"] < 24 * 3600


def test_decode_on_demand_equals_a_direct_decode_of_the_blob(filled: tuple[Path, list[Path]]) -> None:
    root, paths = filled
    sizes = {str(p.resolve()): load_image(p).pixels.shape for p in paths}
    with Store.open(root) as store:
        fresh = ModelSet(store.config.models)  # an independent load of the store's models
        for pid, payload in _points(store).items():
            on_demand = decode_stored(store, pid)
            direct = fresh.decode(store.blobs.get(payload["blob"]))
            assert on_demand.dtype == np.uint8
            assert on_demand.shape == sizes[payload["source_path"]]
            np.testing.assert_array_equal(on_demand, direct)


def test_embedding_rebuilt_from_the_bitstream_equals_the_stored_vector(filled: tuple[Path, list[Path]]) -> None:
    root, _ = filled
    with Store.open(root) as store:
        ids = list(_points(store))
        records = store.index.retrieve(ids, with_vectors=[store.space_id])
        assert len(records) == 6
        for _pid, payload, vectors in records:
            rebuilt = store.models.embed_bitstream(store.blobs.get(payload["blob"]))
            assert _cosine(rebuilt, vectors[store.space_id]) > 0.9999


# -- fsck -----------------------------------------------------------------------------------------------------


def test_fsck_of_a_clean_store_is_ok(filled: tuple[Path, list[Path]]) -> None:
    root, _ = filled
    with Store.open(root) as store:
        rep = fsck(store)
        assert rep.ok
        assert (rep.points, rep.bitstreams) == (6, 6)
        assert rep.missing == rep.corrupt == rep.orphans == []


def test_fsck_reports_and_repairs_a_missing_bitstream(filled: tuple[Path, list[Path]]) -> None:
    root, _ = filled
    with Store.open(root) as store:
        victim = sorted(_points(store))[0]
        path = store.blobs.path(_ref_of(store, victim))
        path.chmod(0o644)
        path.unlink()
        rep = fsck(store)
        assert not rep.ok
        assert rep.missing == [victim]
        assert rep.corrupt == rep.orphans == []
        rep = fsck(store, repair=True)
        assert rep.repaired and rep.missing == [victim]
        assert victim not in _points(store)
        again = fsck(store)
        assert again.ok and (again.points, again.bitstreams) == (5, 5)


def test_fsck_reports_and_repairs_an_orphan_bitstream(filled: tuple[Path, list[Path]]) -> None:
    root, _ = filled
    with Store.open(root) as store:
        ref = store.blobs.put(store.models.encode(make_image(99, 64, 64)).data)
        leftover = store.blobs.root / "tmp" / "deadbeef.part"  # a temp file of an interrupted write
        leftover.write_bytes(b"partial")
        rep = fsck(store)
        assert not rep.ok
        assert rep.orphans == [ref]
        assert rep.missing == rep.corrupt == []
        rep = fsck(store, repair=True)
        assert rep.repaired and rep.orphans == [ref]
        assert rep.temp_files_removed == 1
        assert not store.blobs.exists(ref)
        assert not leftover.exists()
        again = fsck(store)
        assert again.ok and (again.points, again.bitstreams) == (6, 6)


def test_fsck_reports_and_repairs_a_corrupt_bitstream(filled: tuple[Path, list[Path]]) -> None:
    root, _ = filled
    with Store.open(root) as store:
        victim = sorted(_points(store))[-1]
        ref = _ref_of(store, victim)
        path = store.blobs.path(ref)
        path.chmod(0o644)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
        assert fsck(store, verify=False).ok  # only re-hashing finds it
        rep = fsck(store)
        assert not rep.ok
        assert rep.corrupt == [victim]
        assert rep.missing == rep.orphans == []
        rep = fsck(store, repair=True)
        assert rep.repaired
        assert victim not in _points(store)
        assert not store.blobs.exists(ref)
        again = fsck(store)
        assert again.ok and (again.points, again.bitstreams) == (5, 5)


# -- models that differ from the store's ----------------------------------------------------------------------


def test_check_models_refuses_other_models(tiny_store: Path) -> None:
    with Store.open(tiny_store) as store:
        store.check_models(None)
        store.check_models(tiny_models())  # the same models, whatever their fingerprints
        mine = tiny_models()
        for other in (
            tiny_models(quality=2),
            tiny_models(arch="mbt2018-mean"),
            dataclasses.replace(mine, codec=dataclasses.replace(mine.codec, seed=1)),
            dataclasses.replace(mine, clip=dataclasses.replace(mine.clip, model="ViT-B-32")),
            dataclasses.replace(mine, adapter=dataclasses.replace(mine.adapter, weights="/some/adapter.pt")),
        ):
            with pytest.raises(ConfigMismatchError, match="other models"):
                store.check_models(other)


def test_a_store_whose_codec_weights_file_changed_is_refused(tmp_path: Path) -> None:
    from licsearch.model.codec import load_codec_model
    from licsearch.model.weights import save_state_dict

    weights = tmp_path / "codec.safetensors"
    save_state_dict(load_codec_model("bmshj2018-hyperprior", 1, "random").state_dict(), weights)
    models = ModelsConfig(
        codec=CodecConfig(arch="bmshj2018-hyperprior", quality=1, weights=str(weights)),
        clip=ClipConfig(model="licsearch-tiny", tag=None, weights="random"),
        adapter=AdapterConfig(weights="random"),
    )
    root = tmp_path / "store"
    image = write_png(tmp_path / "images" / "a.png", make_image(3, 64, 64))
    with Store.create(root, models) as store:
        assert ingest(store, [image], progress=False).ingested == 1
        pid = next(iter(_points(store)))
    with Store.open(root) as store:
        decode_stored(store, pid)  # unchanged weights: usable

    save_state_dict(load_codec_model("bmshj2018-hyperprior", 1, "random", seed=1).state_dict(), weights)
    with Store.open(root) as store:
        with pytest.raises(ConfigMismatchError, match="codec weights"):
            store.models.codec  # noqa: B018
        with pytest.raises(ConfigMismatchError):
            decode_stored(store, pid)
        with pytest.raises(ConfigMismatchError):
            search(store, image=image)
        # A store-level problem stops the whole run with one error before any file is read or written.
        with pytest.raises(ConfigMismatchError, match="not the ones this store was made with"):
            ingest(store, [write_png(tmp_path / "images" / "b.png", make_image(4, 64, 64))], progress=False)
        assert stats(store)["images"] == 1


def test_a_new_store_is_on_edge_and_stats_shows_its_index(filled: tuple[Path, list[Path]]) -> None:
    root, _ = filled
    import json

    assert json.loads((root / "store.json").read_text())["qdrant"]["engine"] == "edge"
    with Store.open(root) as store:
        doc = stats(store)["index"]
        assert doc["engine"] == "edge" and doc["points"] == 6 and doc["segments"] >= 1
        assert doc["vectors"] == {store.space_id: "float32"}
        assert doc["indexed_vectors"] == 0  # a small store stays below the threshold: searched exactly


def test_reindex_with_compact_vectors_records_and_applies_the_setting(filled: tuple[Path, list[Path]]) -> None:
    import json

    from licsearch.errors import InputError
    from licsearch.ops.reindex import reindex

    root, _ = filled
    report = reindex(root, adapter_weights="random", space_id="int8-space", progress=False, vectors="int8")
    assert report.state == "complete" and report.reembedded == 6
    assert json.loads((root / "store.json").read_text())["qdrant"]["vectors"] == {"int8-space": "int8"}
    edge = json.loads((root / "edge" / "edge_config.json").read_text())
    assert "scalar" in edge["vectors"]["int8-space"]["quantization_config"]
    with Store.open(root) as store:
        assert store.index.setting("int8-space").name == "int8"
        assert stats(store)["index"]["vectors"]["int8-space"] == "int8"
    with pytest.raises(InputError, match="keeps its vectors as int8"):
        reindex(root, adapter_weights="random", space_id="int8-space", progress=False, vectors="binary")
