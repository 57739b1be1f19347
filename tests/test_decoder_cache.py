"""Decoding on the cached decoder (ONNX ``g_s``, the entropy path in NumPy): the same latent as the eager codec and
pixels within one level; a warm ``get`` imports neither torch nor CompressAI; a damaged entry is rebuilt; a decoder
that fails its probes and an unwritable cache keep the eager path; a bad bitstream is refused as the eager decoder
refuses it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from licsearch.bitstream import Bitstream
from licsearch.bundle import decoder_cache
from licsearch.errors import BitstreamError
from licsearch.model.latent import STREAM_Y
from licsearch.ops.search import decode_stored, fetch_bitstream
from licsearch.storage.store import Store
from tests.conftest import MakeDir, make_image, run_cli


@pytest.fixture(scope="module")
def decode_store(tiny_store_template: Path, module_tmp: MakeDir) -> Iterator[tuple[Path, list[str]]]:
    """A tiny store of three images of two sizes, with a decoder cache made for this module by its first decode."""
    root = module_tmp("decoder-cache")
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
        mp.setenv("LICSEARCH_DECODE_CACHE", "on")
        mp.setenv("LICSEARCH_CACHE_DIR", str(root / "cache"))
        decoder_cache.forget_loaded()
        yield store, ids
        decoder_cache.forget_loaded()


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
            assert int(np.abs(cached.astype(np.int16) - eager).max()) <= decoder_cache.PIXEL_DIFF_MAX
            decoder, _ = decoder_cache.cached_decoder(s.models)
            assert decoder is not None, "the decode ran on the cached decoder"
            bs = Bitstream.from_bytes(data)
            y = decoder.latent.entropy_decode(bs.streams, bs.width, bs.height, bs.latent_hash, version=bs.version)
            assert np.array_equal(y, s.models.entropy_decode(data)[1].numpy()), "the latent is exactly the eager one"
        entry = decoder_cache.read_entry(decoder_cache.entry_dir(s.config.models.codec) or Path())
    assert entry is not None and entry.usable and entry.pixel_max_diff <= decoder_cache.PIXEL_DIFF_MAX
    assert entry.profile_id == s.models.codec.profile_id and 0 <= entry.pixels_differing < 0.01


def test_a_warm_get_imports_neither_torch_nor_compressai(decode_store: tuple[Path, list[str]], tmp_path: Path) -> None:
    store, ids = decode_store
    with Store.open(store) as s:
        want = decode_stored(s, ids[1])  # warms the cache
    out = tmp_path / "out.png"
    code = (
        "import sys, json; from licsearch.cli.main import main; "
        f"code = main(['get', '--store', {str(store)!r}, {ids[1]!r}, '-o', {str(out)!r}, '--json']); "
        # The packages themselves (compressai_import's two stand-in submodules are not CompressAI).
        "print(json.dumps([m for m in ('torch', 'compressai', 'open_clip') if m in sys.modules]), file=sys.stderr); "
        "sys.exit(code)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["width"] == want.shape[1]
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
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

    def rebuild(ms: object, folder: Path) -> decoder_cache.DecoderCacheEntry | None:
        assert not folder.exists(), "the damaged entry is removed before the rebuild"
        built.append(folder)
        shutil.copytree(tmp_path / "pristine", folder)
        return decoder_cache.read_entry(folder)

    with Store.open(store) as s:
        folder = decoder_cache.entry_dir(s.config.models.codec)
        assert folder is not None
        want = decode_stored(s, ids[0])
        shutil.copytree(folder, tmp_path / "pristine")
        tables = folder / decoder_cache.TABLES_FILE
        data = bytearray(tables.read_bytes())
        data[len(data) // 2] ^= 0xFF
        tables.write_bytes(bytes(data))
        with pytest.raises(decoder_cache.DamagedEntry, match=r"latent\.npz does not match its hash"):
            decoder_cache.read_entry(folder)
        decoder_cache.forget_loaded()
        monkeypatch.setattr(decoder_cache, "build_entry", rebuild)
        assert np.array_equal(decode_stored(s, ids[0]), want)
        assert built == [folder]
        assert "was damaged (latent.npz does not match its hash): rebuilt" in caplog.text
        decoder_cache.decode(s.models, fetch_bitstream(s, ids[0])[0])
        assert built == [folder], "rebuilt once"


def test_a_bad_bitstream_is_refused_by_the_cached_decoder(decode_store: tuple[Path, list[str]]) -> None:
    store, ids = decode_store
    with Store.open(store) as s:
        decoder, _ = decoder_cache.cached_decoder(s.models)
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
    monkeypatch.setattr(decoder_cache, "PIXEL_DIFF_MAX", -1)  # no decoder can pass: the probes must refuse it
    decoder_cache.forget_loaded()
    with Store.open(store) as s:
        data, _ = fetch_bitstream(s, ids[0])
        eager = s.models.decode(data)
        assert np.array_equal(decode_stored(s, ids[0]), eager)
        folder = decoder_cache.entry_dir(s.config.models.codec)
        assert folder is not None
        entry = decoder_cache.read_entry(folder)
        assert entry is not None and not entry.usable and "pixels differ" in entry.reason
        assert sorted(p.name for p in folder.iterdir()) == [decoder_cache.ENTRY_FILE], "nothing was kept"
        assert decoder_cache.cached_decoder(s.models) == (None, [])

        (tmp_path / "a-file").write_text("")
        monkeypatch.setenv("LICSEARCH_CACHE_DIR", str(tmp_path / "a-file" / "cache"))  # no folder can be made there
        assert np.array_equal(decode_stored(s, ids[0]), eager)
    decoder_cache.forget_loaded()
