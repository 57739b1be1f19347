"""The numba rANS encoder writes exactly the bytes of CompressAI's ``RansEncoder.encode_with_indexes``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compressai.ans import RansEncoder

from licsearch.model.codec import CODEC_ARCHS, Codec
from licsearch.model.rans import RansTables, decode_with_indexes, encode_with_indexes
from licsearch.presets import preset_models

from .conftest import make_image

CODECS = [*CODEC_ARCHS.names(), "shipped"]


def load(name: str) -> Codec:
    if name == "shipped":
        c = preset_models("offline").codec
        return Codec.load(c.arch, c.quality, c.weights)
    return Codec.load(name, 1, "random", seed=0)


@pytest.fixture(scope="module", params=CODECS)
def codec(request: pytest.FixtureRequest) -> Codec:
    return load(request.param)


def reference(symbols: np.ndarray, indexes: np.ndarray, tables: RansTables) -> bytes:
    return RansEncoder().encode_with_indexes(
        symbols.astype(np.int32).tolist(),
        indexes.astype(np.int32).tolist(),
        tables.cdfs.tolist(),
        tables.sizes.tolist(),
        tables.offsets.tolist(),
    )


def random_case(rng: np.random.Generator, tables: RansTables, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Symbols mostly inside each CDF's range, some just outside, some far outside (long escapes)."""
    idx = rng.integers(0, len(tables.sizes), n).astype(np.int32)
    lo, hi = tables.offsets[idx], tables.offsets[idx] + tables.sizes[idx] - 2
    sym = rng.integers(lo - 3, hi + 4)
    far = rng.random(n) < 0.02
    # CompressAI's encoder loops forever on raw values of 2**28 and more (it shifts a uint32 by 32 bits), so the
    # reference reaches seven nibbles at most.
    sym[far] = rng.integers(-(1 << 26), 1 << 26, int(far.sum()))
    return sym.astype(np.int32), idx


@pytest.mark.parametrize("stream", ["z", "y"])
def test_random_symbols_encode_byte_identical(codec: Codec, stream: str) -> None:
    tables = codec._z_tables if stream == "z" else codec._y_tables
    rng = np.random.default_rng(13)
    for trial in range(40):
        n = int(rng.integers(1, 3000))  # CompressAI's encoder writes out of bounds for zero symbols
        sym, idx = random_case(rng, tables, n)
        ours = encode_with_indexes(sym, idx, tables)
        assert ours == reference(sym, idx, tables), f"trial {trial}: {n} symbols differ from CompressAI's bytes"
        assert np.array_equal(decode_with_indexes(ours, idx, tables, stream=stream), sym)


def test_eight_nibble_escapes_decode() -> None:
    """Values CompressAI's encoder cannot write (it hangs) are written here and read back by our decoder."""
    tables = load("bmshj2018-hyperprior")._y_tables
    sym = np.array([1 << 28, -(1 << 28), (1 << 29) + 7, 0], dtype=np.int32)
    idx = np.zeros(sym.size, dtype=np.int32)
    data = encode_with_indexes(sym, idx, tables)
    assert np.array_equal(decode_with_indexes(data, idx, tables, stream="y"), sym)


def test_image_streams_equal_compressai_entropy_model(codec: Codec) -> None:
    """A real image's latents through the codec equal CompressAI's EntropyModel.compress on the same symbols."""
    from compressai.entropy_models.entropy_models import EntropyModel

    img = make_image(5, 128, 192)
    comp = codec.compress(img)
    x = codec._pad(torch.from_numpy(img).permute(2, 0, 1).float().div(255).unsqueeze(0))
    with torch.inference_mode():
        y = codec.transforms.g_a(x)
        z = codec.transforms.h_a(y)
    z_sym = torch.round(z - codec.z_medians.view(1, -1, 1, 1))
    params = codec.entropy_path(z_sym)
    y_sym = torch.round(y - params.means)
    assert comp.streams["z"] == EntropyModel.compress(codec._eb, z_sym, codec._z_indexes(z_sym.shape))[0]
    assert comp.streams["y"] == EntropyModel.compress(codec._gc, y_sym, params.indexes)[0]


def test_mismatched_lengths_and_bad_indexes_are_refused(codec: Codec) -> None:
    tables = codec._y_tables
    with pytest.raises(ValueError, match="one index per symbol"):
        encode_with_indexes(np.zeros(3, np.int32), np.zeros(2, np.int32), tables)
    with pytest.raises(ValueError, match="do not fit"):
        encode_with_indexes(np.zeros(1, np.int32), np.array([len(tables.sizes)], np.int32), tables)


def test_the_background_warm_up_loads_both_kernels_in_a_fresh_interpreter() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from licsearch.model import rans\n"
        "assert 'numba' not in sys.modules\n"
        "t = rans.warm_up_in_background()\n"
        "t.join(300)\n"
        "assert not t.is_alive() and t.daemon\n"
        "assert rans._encoder_kernel.cache_info().currsize == 1 and rans._kernel.cache_info().currsize == 1\n"
        "print('warm')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "warm", done.stderr
