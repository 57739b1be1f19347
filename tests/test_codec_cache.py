"""The cached codec and adapter (ONNX transforms, the entropy path in NumPy): decodes give the eager codec's latent and
its pixels within one level, image queries the eager top-k; a warm ``get`` or ``search --image`` imports neither torch
nor CompressAI; a damaged entry is rebuilt; a codec that fails its probes, an unwritable cache and a pixels space keep
the eager path; a bad bitstream is refused as the eager decoder refuses it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from licsearch.bitstream import Bitstream
from licsearch.bundle import codec_cache
from licsearch.errors import BitstreamError
from licsearch.model.latent import STREAM_Y
from licsearch.ops.search import decode_stored, fetch_bitstream, search
from licsearch.storage.store import Store
from tests.conftest import MakeDir, make_image, run_cli, run_cli_watching

HEAVY = ("torch", "compressai", "open_clip")
"""The packages a warm command on the cache must not import (compressai_import's two stand-in submodules are not
CompressAI: only the packages themselves are looked for)."""


@pytest.fixture(scope="module")
def decode_store(tiny_store_template: Path, module_tmp: MakeDir) -> Iterator[tuple[Path, list[str]]]:
    """A tiny store of three images of two sizes, with a codec cache made for this module by its first decode."""
    root = module_tmp("codec-cache")
    store = root / "store"
    shutil.copytree(tiny_store_template, store)
    images = root / "images"
    images.mkdir()
    for seed, (h, w) in enumerate([(96, 128), (70, 130), (96, 128)]):
        Image.fromarray(make_image(seed + 30, h, w)).save(images / f"{seed}.png")
    run_cli("ingest", "--store", str(store), str(images), check=True)
    with Store.open(store) as s:
        ids = [pid for pid, _ in s.index.iter_points()]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LICSEARCH_CODEC_CACHE", "on")
        mp.setenv("LICSEARCH_CACHE_DIR", str(root / "cache"))
        codec_cache.forget_loaded()
        yield store, ids
        codec_cache.forget_loaded()


def test_the_cached_decoder_decodes_the_eager_latent_and_its_pixels_within_a_level(
    decode_store: tuple[Path, list[str]],
) -> None:
    store, ids = decode_store
    with Store.open(store) as s:
        for pid in ids:
            cached = decode_stored(s, pid)
            data, _ = fetch_bitstream(s, pid)
            eager = s.models.decode(data)
            assert cached.shape == eager.shape and cached.dtype == np.uint8
            assert int(np.abs(cached.astype(np.int16) - eager).max()) <= codec_cache.PIXEL_DIFF_MAX
            decoder, _ = codec_cache.cached_codec(s.models)
            assert decoder is not None, "the decode ran on the cached decoder"
            bs = Bitstream.from_bytes(data)
            y = decoder.latent.entropy_decode(bs.streams, bs.width, bs.height, bs.latent_hash, version=bs.version)
            assert np.array_equal(y, s.models.entropy_decode(data)[1].numpy()), "the latent is exactly the eager one"
        entry = codec_cache.read_codec_entry(codec_cache.codec_dir(s.config.models.codec) or Path())
    assert entry is not None and entry.usable and entry.pixel_max_diff <= codec_cache.PIXEL_DIFF_MAX
    assert entry.profile_id == s.models.codec.profile_id and 0 <= entry.pixels_differing < 0.01


def test_a_warm_get_imports_neither_torch_nor_compressai(decode_store: tuple[Path, list[str]], tmp_path: Path) -> None:
    store, ids = decode_store
    with Store.open(store) as s:
        want = decode_stored(s, ids[1])  # warms the cache
    out = tmp_path / "out.png"
    doc, imported = run_cli_watching(["get", "--store", str(store), ids[1], "-o", str(out)], HEAVY)
    assert doc["width"] == want.shape[1]
    assert imported == []
    assert np.array_equal(np.asarray(Image.open(out)), want)


def test_a_damaged_entry_is_rebuilt_not_used(
    decode_store: tuple[Path, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The rebuild is the export the first decode ran (tests above); here a copy of its entry stands in for it."""
    store, ids = decode_store
    built: list[Path] = []

    def rebuild(ms: object, folder: Path) -> codec_cache.CodecCacheEntry | None:
        assert not folder.exists(), "the damaged entry is removed before the rebuild"
        built.append(folder)
        shutil.copytree(tmp_path / "pristine", folder)
        return codec_cache.read_codec_entry(folder)

    with Store.open(store) as s:
        folder = codec_cache.codec_dir(s.config.models.codec)
        assert folder is not None
        want = decode_stored(s, ids[0])
        shutil.copytree(folder, tmp_path / "pristine")
        tables = folder / codec_cache.TABLES_FILE
        data = bytearray(tables.read_bytes())
        data[len(data) // 2] ^= 0xFF
        tables.write_bytes(bytes(data))
        with pytest.raises(codec_cache.DamagedEntry, match=r"latent\.npz does not match its hash"):
            codec_cache.read_codec_entry(folder)
        codec_cache.forget_loaded()
        monkeypatch.setattr(codec_cache, "build_codec_entry", rebuild)
        assert np.array_equal(decode_stored(s, ids[0]), want)
        assert built == [folder]
        assert "was damaged (latent.npz does not match its hash): rebuilt" in caplog.text
        codec_cache.decode(s.models, fetch_bitstream(s, ids[0])[0])
        assert built == [folder], "rebuilt once"


def test_a_bad_bitstream_is_refused_by_the_cached_decoder(decode_store: tuple[Path, list[str]]) -> None:
    store, ids = decode_store
    with Store.open(store) as s:
        decoder, _ = codec_cache.cached_codec(s.models)
        assert decoder is not None
        bs = Bitstream.from_bytes(fetch_bitstream(s, ids[0])[0])
        y = bytearray(bs.streams[STREAM_Y])
        y[len(y) // 2] ^= 0x10
        altered = Bitstream(bs.profile_id, bs.width, bs.height, bs.latent_hash, {**bs.streams, STREAM_Y: bytes(y)})
        with pytest.raises(BitstreamError):
            decoder.decode(altered.to_bytes())
        other = Bitstream("bmshj2018-hyperprior:q2:0123456789ab", bs.width, bs.height, bs.latent_hash, bs.streams)
        with pytest.raises(BitstreamError, match="made by codec profile bmshj2018-hyperprior:q2"):
            decoder.decode(other.to_bytes())


def test_a_decoder_that_fails_its_probes_and_an_unwritable_cache_keep_the_eager_path(
    decode_store: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, ids = decode_store
    monkeypatch.setenv("LICSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(codec_cache, "PIXEL_DIFF_MAX", -1)  # no decoder can pass: the probes must refuse it
    codec_cache.forget_loaded()
    with Store.open(store) as s:
        data, _ = fetch_bitstream(s, ids[0])
        eager = s.models.decode(data)
        assert np.array_equal(decode_stored(s, ids[0]), eager)
        folder = codec_cache.codec_dir(s.config.models.codec)
        assert folder is not None
        entry = codec_cache.read_codec_entry(folder)
        assert entry is not None and not entry.usable and "pixels differ" in entry.reason
        assert sorted(p.name for p in folder.iterdir()) == [codec_cache.ENTRY_FILE], "nothing was kept"
        assert codec_cache.cached_codec(s.models) == (None, [])
        shutil.rmtree(folder)  # the refusal is remembered: this process neither re-reads nor rebuilds the entry
        assert codec_cache.cached_codec(s.models) == (None, []) and not folder.exists()

        (tmp_path / "a-file").write_text("")
        monkeypatch.setenv("LICSEARCH_CACHE_DIR", str(tmp_path / "a-file" / "cache"))  # no folder can be made there
        assert np.array_equal(decode_stored(s, ids[0]), eager)
    codec_cache.forget_loaded()


def test_an_image_query_on_the_cached_codec_and_adapter_gives_the_eager_top_k(
    decode_store: tuple[Path, list[str]], tmp_path: Path
) -> None:
    store, _ = decode_store
    query = tmp_path / "query.png"
    Image.fromarray(make_image(31, 70, 130)).save(query)
    with Store.open(store) as s:
        eager = np.asarray(s.models.encode(np.array(Image.open(query))).embedding)
        want = [h.id for h in s.index.search(s.space_id, eager.tolist(), top_k=3)]
        got = search(s, image=query, top_k=3)
        adapter, _ = codec_cache.cached_adapter(s.models)
        assert adapter is not None, "the query ran on the cached adapter"
        fast = np.asarray(codec_cache.embed_image(s.models, np.array(Image.open(query))))
        entry = codec_cache.read_adapter_entry(codec_cache.adapter_dir(s.config.models) or Path())
    assert [h.id for h in got.hits] == want
    assert float(fast @ eager / np.linalg.norm(fast) / np.linalg.norm(eager)) >= codec_cache.IMAGE_COSINE_MIN
    assert entry is not None and entry.usable and entry.cosine_min >= codec_cache.IMAGE_COSINE_MIN
    doc, imported = run_cli_watching(["search", "--store", str(store), "--image", str(query), "--top-k", "3"], HEAVY)
    assert [h["id"] for h in doc["hits"]] == want
    assert imported == []


def test_a_pixels_space_keeps_its_image_tower_for_image_queries(decode_store: tuple[Path, list[str]]) -> None:
    from licsearch.model.models import ModelSet
    from licsearch.spaces import PIXELS_KIND

    store, _ = decode_store
    with Store.open(store) as s:
        pixels_plane = ModelSet(s.config.models, kind=PIXELS_KIND)
        assert codec_cache.cached_adapter(pixels_plane) == (None, [])
        image = make_image(5, 64, 64)
        want = pixels_plane.encode(image).embedding
        assert np.allclose(codec_cache.embed_image(pixels_plane, image), want)


def test_ingest_on_the_cache_writes_bitstreams_every_decoder_decodes_without_importing_torch(
    decode_store: tuple[Path, list[str]], tmp_path: Path
) -> None:
    store, _ = decode_store
    with Store.open(store) as s:
        assert codec_cache.cached_encoder(s.models) is not None  # the entries exist (built here if this runs alone)
    for seed, (h, w) in ((60, (96, 128)), (61, (80, 72))):
        Image.fromarray(make_image(seed, h, w)).save(tmp_path / f"{seed}.png")
    doc, imported = run_cli_watching(["ingest", "--store", str(store), str(tmp_path)], HEAVY)
    assert doc["ingested"] == 2
    assert imported == []
    from licsearch.imageio import load_image
    from licsearch.storage.store import point_id

    with Store.open(store) as s:
        for seed in (60, 61):
            image = load_image(tmp_path / f"{seed}.png")
            pid = point_id(image.pixels_sha256())
            ((_, payload, vectors),) = s.index.retrieve([pid], with_vectors=[s.space_id])
            data = s.blobs.get(str(payload["blob"]))
            eager = s.models.encode(image.pixels)
            assert payload["codec_profile"] == s.models.codec.profile_id
            decoded = s.models.decode(data)  # the eager decoder: any decoder decodes the cache's bitstreams
            assert decoded.shape == image.pixels.shape
            # g_a on ONNX Runtime may round a few latent elements the other way: the same rate and fidelity.
            assert abs(len(data) - len(eager.data)) <= 0.01 * len(eager.data) + 8
            assert abs(_psnr(decoded, image.pixels) - _psnr(s.models.decode(eager.data), image.pixels)) < 0.05
            vec, want = np.asarray(vectors[s.space_id]), np.asarray(eager.embedding)
            assert float(vec @ want / np.linalg.norm(vec) / np.linalg.norm(want)) >= codec_cache.IMAGE_COSINE_MIN


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return 10 * float(np.log10(255**2 / max(mse, 1e-12)))
