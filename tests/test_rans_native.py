"""The C rANS decoder (``licsearch/model/_rans.c``) against the numba kernel it was written from.

Both get the same streams: valid ones (the encoder's bytes of random symbols, escapes included), and the same
streams damaged (truncated, bytes flipped, words appended, random bytes). Each pair must agree exactly on the outcome
(the failure code and the symbol it names) and, where they decode, on every symbol. A decoding-only command must
not import numba where the C decoder is built.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable

import numpy as np
import pytest

from licsearch.model import rans
from licsearch.model.codec import Codec

NATIVE = rans._native_kernel()
needs_native = pytest.mark.skipif(NATIVE is None, reason="the C rANS decoder is not built (no C compiler at install)")


@pytest.mark.skipif(
    shutil.which(sysconfig.get_config_var("CC").split()[0] if sysconfig.get_config_var("CC") else "cc") is None,
    reason="no C compiler here, so the install fell back to the numba decoder",
)
def test_the_c_decoder_is_built_wherever_a_compiler_is() -> None:
    assert NATIVE is not None, "pip install built no licsearch.model._rans although a C compiler is present"
    assert rans.decoder_name() == "c"


def outcome(kernel: Callable[..., tuple[int, int]], data: bytes, idx: np.ndarray, tables: rans.RansTables, run: int):
    out = np.full(idx.size * run, -7, dtype=np.int32)
    code, where = kernel(data, idx, run, tables.cdfs, tables.sizes, tables.offsets, out)
    return code, where, (out if code == 0 else None)


def damaged(rng: np.random.Generator, data: bytes) -> list[tuple[str, bytes]]:
    cases = [("cut-4", data[:-4]), ("cut-half", data[: len(data) // 8 * 4 or 8]), ("extra-word", data + b"\0\0\0\x80")]
    for k in range(6):
        b = bytearray(data)
        i = int(rng.integers(0, len(b)))
        b[i] ^= 1 << int(rng.integers(0, 8))
        cases.append((f"flip-{k}", bytes(b)))
    cases.append(("random", rng.bytes(len(data))))
    cases.append(("all-ff", b"\xff" * len(data)))
    return [(n, d) for n, d in cases if len(d) >= rans.FLUSH_BYTES and len(d) % rans.WORD_BYTES == 0]


@needs_native
@pytest.mark.parametrize("stream", ["z", "y"])
def test_c_and_numba_decoders_agree_on_valid_and_damaged_streams(stream: str) -> None:
    codec = Codec.load("bmshj2018-hyperprior", 1, "random", seed=0)
    tables = codec._z_tables if stream == "z" else codec._y_tables
    numba_kernel = rans._numba_kernel()
    rng = np.random.default_rng(29)
    decoded = refused = 0
    for trial in range(60):
        n = int(rng.integers(1, 2500))
        idx = rng.integers(0, len(tables.sizes), n).astype(np.int32)
        lo, hi = tables.offsets[idx], tables.offsets[idx] + tables.sizes[idx] - 2
        sym = rng.integers(lo - 3, hi + 4)
        far = rng.random(n) < 0.02
        sym[far] = rng.integers(-(1 << 29), 1 << 29, int(far.sum()))
        data = rans.encode_with_indexes(sym.astype(np.int32), idx, tables)
        for name, case in [("valid", data), *damaged(rng, data)]:
            ours, ref = outcome(NATIVE, case, idx, tables, 1), outcome(numba_kernel, case, idx, tables, 1)
            assert ours[:2] == ref[:2], f"trial {trial} {name}: C says {ours[:2]}, numba {ref[:2]}"
            if ref[2] is not None:
                assert np.array_equal(ours[2], ref[2]), f"trial {trial} {name}: the symbols differ"
                decoded += 1
            else:
                refused += 1
            if name == "valid":
                assert ours[0] == 0 and np.array_equal(ours[2], sym), f"trial {trial}: a valid stream was not decoded"
        # A CDF index out of the table and a run shared by several symbols (z's channel planes).
        bad = idx.copy()
        bad[n // 2] = len(tables.sizes)
        assert outcome(NATIVE, data, bad, tables, 1)[:2] == outcome(numba_kernel, data, bad, tables, 1)[:2]
    assert decoded >= 60 and refused >= 300, (decoded, refused)


@needs_native
def test_c_decoder_decodes_runs_of_one_cdf_as_numba() -> None:
    """z is coded plane by plane, one CDF index for each channel's ``run`` symbols."""
    tables = Codec.load("bmshj2018-hyperprior", 1, "random", seed=0)._z_tables
    channels = np.arange(len(tables.sizes), dtype=np.int32)
    plane = 12
    sym = np.random.default_rng(2).integers(-2, 3, channels.size * plane).astype(np.int32)
    data = rans.encode_with_indexes(sym, np.repeat(channels, plane), tables)
    c = outcome(NATIVE, data, channels, tables, plane)
    assert c[0] == 0 and np.array_equal(c[2], sym)
    assert c[:2] == outcome(rans._numba_kernel(), data, channels, tables, plane)[:2]
    cut = outcome(NATIVE, data[:-8], channels, tables, plane)
    assert cut[0] != 0 and cut[:2] == outcome(rans._numba_kernel(), data[:-8], channels, tables, plane)[:2]


@needs_native
def test_c_decoder_refuses_wrong_array_types_with_an_error_not_a_crash() -> None:
    tables = rans.RansTables.from_arrays(np.array([[0, 1 << 15, 1 << 16]]), np.array([3]), np.array([0]))
    data = rans.STATE_LOW.to_bytes(8, "little")
    out = np.empty(0, dtype=np.int32)
    with pytest.raises(TypeError, match="int32"):
        NATIVE(data, np.zeros(0, np.int64), 1, tables.cdfs, tables.sizes, tables.offsets, out)
    with pytest.raises(ValueError, match="inconsistent"):
        NATIVE(data, np.zeros(1, np.int32), 1, tables.cdfs, tables.sizes, tables.offsets, np.empty(5, np.int32))
    with pytest.raises(ValueError, match="CDF size"):
        NATIVE(data, np.zeros(0, np.int32), 1, tables.cdfs, np.array([9], np.int32), tables.offsets, out)
    assert NATIVE(data, np.zeros(0, np.int32), 1, tables.cdfs, tables.sizes, tables.offsets, out) == (0, 0)


@needs_native
def test_decoding_alone_does_not_import_numba() -> None:
    probe = (
        "import sys, numpy as np\n"
        "from licsearch.model import rans\n"
        "t = rans.RansTables.from_arrays(np.array([[0, 1 << 15, 1 << 16]]), np.array([3]), np.array([0]))\n"
        "assert rans.decode_with_indexes(rans.STATE_LOW.to_bytes(8, 'little'), np.zeros(0, np.int32), t,"
        " stream='z').size == 0\n"
        "print(rans.decoder_name(), 'numba' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.split() == ["c", "False"]
