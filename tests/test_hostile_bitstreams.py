"""Hostile bitstreams: the rANS decoder is bit-exact with CompressAI's and no crafted file crashes a decoder.

Every hostile file is decoded in a child process, so a segfault is a failed test that names its case instead of a
dead pytest. The counts (cases tried, refused cleanly, crashes) are printed with ``-s``.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from licsearch.bitstream import Bitstream, hash_context
from licsearch.config import ModelsConfig
from licsearch.errors import BitstreamError
from licsearch.model import rans
from licsearch.model.codec import STREAM_Y, STREAM_Z, Codec, latent_hash
from licsearch.model.models import ModelSet
from licsearch.presets import preset_models

from .conftest import TINY_FLAGS, make_image, run_cli, tiny_models
from .hostile_bitstreams import Raw, fuzz_cases, hostile_cases

ARCHS = ("bmshj2018-hyperprior", "mbt2018-mean")
FUZZ_SEED = 16
FUZZ_CASES = 2000
FUZZ_SECONDS = 60.0
CLI_CASES = ("y-cut-to-0", "y-zeros-8", "width=1", "stream-names=swapped", "profile=other-weights")

# Decodes pickled (name, bytes) cases one by one and appends one JSON line per case, flushed before the next:
# after a crash, the first case without a line is the one that killed the process.
CHILD = r"""
import json, pickle, sys, time
sys.path.insert(0, sys.argv[1])
from licsearch.errors import BitstreamError, LicsearchError
from licsearch.model.models import ModelSet

import torch
torch.set_num_threads(1)  # small tensors: threads only contend
cases_path, out_path, seconds = sys.argv[2], sys.argv[3], float(sys.argv[4])
models, valid, cases = pickle.load(open(cases_path, "rb"))
plane = ModelSet(models)
_, y_ref = plane.entropy_decode(valid)
x_ref = plane.decode(valid)
start = time.perf_counter()
with open(out_path, "w") as out:
    for name, data in cases:
        if time.perf_counter() - start > seconds:
            break
        doc = {"name": name}
        try:
            bs, y_hat = plane.entropy_decode(data)
            x = plane.decode(data)
            h, w = min(x.shape[0], x_ref.shape[0]), min(x.shape[1], x_ref.shape[1])
            doc["outcome"] = "decoded"
            doc["same"] = bool((y_hat == y_ref).all()) and bool((x[:h, :w] == x_ref[:h, :w]).all())
            doc["size"] = [bs.width, bs.height]
        except BitstreamError as e:
            doc["outcome"], doc["message"] = "refused", str(e)
        except LicsearchError as e:
            doc["outcome"], doc["message"] = "other-error", f"{type(e).__name__}: {e}"
        except Exception as e:
            doc["outcome"], doc["message"] = "exception", f"{type(e).__name__}: {e}"
        out.write(json.dumps(doc) + "\n")
        out.flush()
"""


def codec_models(name: str) -> ModelsConfig:
    """The tiny random models of an architecture, or with the shipped (trained) codec for ``shipped``."""
    if name == "shipped":
        return replace(tiny_models(), codec=preset_models("offline").codec)
    return tiny_models(name)


@pytest.fixture(scope="module", params=[*ARCHS, "shipped"])
def pair(request: pytest.FixtureRequest) -> tuple[ModelsConfig, bytes, bytes]:
    """(models, valid, other): two files of different images of one size by a codec: tiny random ones, and the
    shipped trained one, whose sharp CDFs made CompressAI's decoder read far past a short stream."""
    models = codec_models(request.param)
    plane = ModelSet(models)
    return models, plane.encode(make_image(0, 80, 112)).data, plane.encode(make_image(1, 80, 112)).data


def decode_in_child(
    tmp_path: Path, models: ModelsConfig, valid: bytes, cases: list[tuple[str, bytes]], seconds: float = 600.0
) -> tuple[list[dict[str, Any]], int]:
    """Decodes ``cases`` in a child process; returns the per-case results and the child's exit status."""
    cases_path, out_path = tmp_path / "cases.pickle", tmp_path / "results.jsonl"
    cases_path.write_bytes(pickle.dumps((models, valid, cases)))
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, root, str(cases_path), str(out_path), str(seconds)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    results = [json.loads(line) for line in out_path.read_text().splitlines()] if out_path.exists() else []
    if proc.returncode != 0:
        crashed = cases[len(results)][0] if len(results) < len(cases) else "(after the last case)"
        pytest.fail(f"decoder process died with status {proc.returncode} on case {crashed!r}:\n{proc.stderr[-3000:]}")
    return results, proc.returncode


def tables_of(codec: Codec) -> list[tuple[str, Any, rans.RansTables]]:
    eb, gc = codec.model.entropy_bottleneck, codec.model.gaussian_conditional
    return [
        (STREAM_Z, eb, rans.RansTables.from_entropy_model(eb)),
        (STREAM_Y, gc, rans.RansTables.from_entropy_model(gc)),
    ]


def compressai_decode(em: Any, data: bytes, indexes: np.ndarray) -> np.ndarray:
    from compressai import ans

    lists = em._quantized_cdf.tolist(), em._cdf_length.reshape(-1).tolist(), em._offset.reshape(-1).tolist()
    return np.array(ans.RansDecoder().decode_with_indexes(data, indexes.tolist(), *lists), dtype=np.int32)


def compressai_encode(em: Any, symbols: np.ndarray, indexes: np.ndarray) -> bytes:
    from compressai import ans

    lists = em._quantized_cdf.tolist(), em._cdf_length.reshape(-1).tolist(), em._offset.reshape(-1).tolist()
    return bytes(ans.RansEncoder().encode_with_indexes(symbols.tolist(), indexes.tolist(), *lists))


# -- the decoder against CompressAI's ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "quality"), [("bmshj2018-hyperprior", 1), ("bmshj2018-hyperprior", 6), ("mbt2018-mean", 1)]
)
def test_decoder_is_bit_exact_with_compressai_on_codec_streams(arch: str, quality: int) -> None:
    codec = Codec.load(arch, quality, "random", seed=quality)
    (_, eb, zt), (_, gc, yt) = tables_of(codec)
    checked = 0
    for seed, (h, w) in enumerate([(64, 64), (80, 112), (136, 200), (33, 250)]):
        comp = codec.compress(make_image(seed, h, w))
        z_shape = (1, codec.z_medians.numel(), -(-h // 64), -(-w // 64))
        z_idx = np.repeat(np.arange(z_shape[1], dtype=np.int32), z_shape[2] * z_shape[3])
        z_ref = compressai_decode(eb, comp.streams[STREAM_Z], z_idx)
        z_ours = rans.decode_with_indexes(comp.streams[STREAM_Z], z_idx, zt, stream=STREAM_Z)
        assert np.array_equal(z_ours, z_ref)
        y_idx = codec.entropy_path(torch.from_numpy(z_ours).reshape(z_shape).float()).indexes.numpy().reshape(-1)
        y_ref = compressai_decode(gc, comp.streams[STREAM_Y], y_idx)
        y_ours = rans.decode_with_indexes(comp.streams[STREAM_Y], y_idx, yt, stream=STREAM_Y)
        assert np.array_equal(y_ours, y_ref)
        sym = torch.from_numpy(y_ours).reshape(comp.y_hat.shape).float()
        context = hash_context(codec.profile_id, w, h, {k: len(v) for k, v in comp.streams.items()})
        assert latent_hash(torch.from_numpy(z_ours).reshape(z_shape), sym, context) == comp.latent_hash
        checked += 2
    assert checked == 8


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_is_bit_exact_with_compressai_on_escaped_values(arch: str) -> None:
    """Symbols far outside every CDF's range take CompressAI's bypass path, up to 26-bit magnitudes."""
    codec = Codec.load(arch, 1, "random")
    rng = np.random.default_rng(0)
    escaped = 0
    for name, em, tables in tables_of(codec):
        for trial, spread in enumerate([2, 40, 3000, 1 << 16, 1 << 24]):
            n = int(rng.integers(1, 3000))
            idx = rng.integers(0, len(tables.sizes), n).astype(np.int32)
            symbols = np.clip(rng.normal(0, spread, n).round(), -(1 << 26), 1 << 26).astype(np.int32)
            symbols[: min(n, 4)] = tables.offsets[idx[: min(n, 4)]] + [-1, 0, 1, 2][: min(n, 4)]
            data = compressai_encode(em, symbols, idx)
            ours = rans.decode_with_indexes(data, idx, tables, stream=name)
            assert np.array_equal(ours, compressai_decode(em, data, idx)), (name, trial)
            assert np.array_equal(ours, symbols)
            lo, hi = tables.length_bounds(n, np.bincount(idx, minlength=len(tables.sizes)).astype(np.float64))
            assert lo <= len(data) <= hi
            escaped += int(((symbols - tables.offsets[idx]) >= tables.sizes[idx] - 2).sum())
    assert escaped > 1000  # the bypass path was exercised


def test_the_decoder_checks_its_bounds_on_bytes_crafted_for_the_coder() -> None:
    codec = Codec.load("bmshj2018-hyperprior", 1, "random")
    (_, _, zt), _ = tables_of(codec)
    idx = np.zeros(1000, dtype=np.int32)
    low_word, high_word = (1 << 31).to_bytes(4, "little"), bytes(4)
    cases = {
        "state 2**31, no words": (low_word + high_word, "ended before"),
        "state of all ones": (b"\xff" * 8, "valid interval"),
        "state zero": (bytes(8), "valid interval"),
        "not whole words": (bytes(9), "whole number"),
        "shorter than the flush": (bytes(4), "at least 8"),
    }
    for name, (data, message) in cases.items():
        with pytest.raises(BitstreamError, match=message):
            rans.decode_with_indexes(data, idx, zt, stream="z")
        assert name
    with pytest.raises(BitstreamError, match="CDF index is out of range"):
        rans.decode_with_indexes(
            compressai_encode(codec.model.entropy_bottleneck, idx, idx), idx + 10_000, zt, stream="z"
        )
    # Nothing but escapes with a run of fifteen "more nibbles" markers: CompressAI loops on such bytes unbounded.
    escape_state = ((1 << 62) | 0xFFFF).to_bytes(8, "little")
    with pytest.raises(BitstreamError):
        rans.decode_with_indexes(escape_state + b"\xff" * 64, idx, zt, stream="z")


def test_a_well_coded_hyper_latent_out_of_range_is_the_files_fault() -> None:
    """A z stream that rANS-decodes to absurd values is refused as a damaged file (exit 2), not a model error."""
    plane = ModelSet(tiny_models())
    valid = plane.encode(make_image(0, 80, 112)).data
    raw = Raw.parse(valid)
    codec = plane.codec
    eb = codec.model.entropy_bottleneck
    n = codec.z_medians.numel() * 2 * 2
    idx = np.repeat(np.arange(codec.z_medians.numel(), dtype=np.int32), 4)
    huge = compressai_encode(eb, np.full(n, 1 << 26, dtype=np.int32), idx)
    with pytest.raises(BitstreamError, match="hyper-latent values out of this codec's range"):
        plane.decode(raw.with_stream(b"z", huge).pack())


KERNEL_PROBE = (
    "import time, numpy as np\n"
    "t = time.perf_counter()\n"
    "from licsearch.model import rans\n"
    "tables = rans.RansTables.from_arrays(np.array([[0, 1 << 15, 1 << 16]]), np.array([3]), np.array([0]))\n"
    "data = rans.STATE_LOW.to_bytes(8, 'little')\n"
    "assert rans.decode_with_indexes(data, np.zeros(0, np.int32), tables, stream='z').size == 0\n"
    "assert rans.decoder_name() == 'numba'\n"
    "print(time.perf_counter() - t, type(rans._numba_kernel().kernel._cache).__name__)\n"
)


def test_the_rans_kernel_compiles_once_then_loads_from_numba_cache(tmp_path: Path) -> None:
    """First-call cost with an empty NUMBA_CACHE_DIR against a second process that finds the cache (figures only)."""
    cache = tmp_path / "numba-cache"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), rans.DECODER_ENV: "numba"}
    times = []
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", KERNEL_PROBE], capture_output=True, text=True, env=env, timeout=300
        )
        assert proc.returncode == 0, proc.stderr
        seconds, kind = proc.stdout.split()
        assert kind == "FunctionCache"
        times.append(float(seconds))
    assert any(cache.rglob("*.nbi")), "numba wrote no cache index under NUMBA_CACHE_DIR"
    print(f"\nrANS kernel: first call {times[0]:.2f} s, cached {times[1]:.2f} s ({times[0] / times[1]:.1f}x)")


def test_the_rans_kernel_runs_where_no_cache_directory_is_writable() -> None:
    """numba refuses ``cache=True`` when it finds no writable place (read-only site-packages and home)."""
    no_locator = "import numba.core.caching as c\nc.CacheImpl._locator_classes = []\n"
    env = {**os.environ, rans.DECODER_ENV: "numba"}
    proc = subprocess.run(
        [sys.executable, "-c", no_locator + KERNEL_PROBE], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[1] == "NullCache"


# -- hostile files ----------------------------------------------------------------------------------------------


def test_every_hostile_case_is_refused_cleanly_in_a_child(
    tmp_path: Path, pair: tuple[ModelsConfig, bytes, bytes]
) -> None:
    models, valid, other = pair
    cases = hostile_cases(valid, other)
    assert len(cases) > 250 and len({n for n, _ in cases}) == len(cases)
    # The two valid files go last, as controls: the harness tells a decode from a refusal.
    results, _ = decode_in_child(tmp_path, models, valid, [*cases, ("valid", valid), ("other", other)])
    assert len(results) == len(cases) + 2
    *hostile, valid_result, other_result = results
    assert (valid_result["outcome"], valid_result["same"]) == ("decoded", True)
    assert (other_result["outcome"], other_result["same"]) == ("decoded", False)
    not_refused = [(r["name"], r["outcome"], r.get("message")) for r in hostile if r["outcome"] != "refused"]
    assert not not_refused, not_refused
    assert all("Traceback" not in r["message"] and r["message"] for r in hostile)
    label = f"{models.codec.arch} q{models.codec.quality} {Path(models.codec.weights).name}"
    print(f"\n{label}: {len(cases)} hostile cases tried, {len(hostile)} refused cleanly, 0 crashes")


def test_fuzzed_files_are_refused_or_decode_exactly(tmp_path: Path) -> None:
    models = tiny_models()
    valid = ModelSet(models).encode(make_image(0, 80, 112)).data
    cases = list(fuzz_cases(valid, FUZZ_SEED, FUZZ_CASES))
    assert cases == list(fuzz_cases(valid, FUZZ_SEED, FUZZ_CASES))  # deterministic in the seed
    results, _ = decode_in_child(tmp_path, models, valid, cases, seconds=FUZZ_SECONDS)
    assert len(results) >= 200, "the fuzz loop ran too few cases to mean anything"
    decoded = [r for r in results if r["outcome"] == "decoded"]
    refused = [r for r in results if r["outcome"] == "refused"]
    assert len(decoded) + len(refused) == len(results), [
        r for r in results if r["outcome"] not in ("decoded", "refused")
    ]
    # In format 2 the latent hash covers the header, so every mutated file is refused (in format 1 a size changed
    # within the codec's blocks decoded, to a crop of the image).
    assert all(data != valid for _, data in cases)
    assert decoded == [], [r["name"] for r in decoded]
    print(f"\nfuzz: {len(results)} cases tried, {len(refused)} refused cleanly, 0 decoded, 0 crashes")


def test_hostile_files_through_the_cli(tmp_path: Path) -> None:
    plane = ModelSet(tiny_models())
    valid, other = (plane.encode(make_image(i, 80, 112)).data for i in (0, 1))
    cases = dict(hostile_cases(valid, other))
    for name in CLI_CASES:
        path, out = tmp_path / f"{name}.lics", tmp_path / f"{name}.png"
        path.write_bytes(cases[name])
        proc = run_cli("decode", str(path), "-o", str(out), *TINY_FLAGS)
        assert proc.returncode == 2, (name, proc.returncode, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and proc.stderr.strip(), (name, proc.stderr)
        assert "bitstream" in proc.stderr or ".lics" in proc.stderr, (name, proc.stderr)
        assert not out.exists() and not list(tmp_path.glob(f"{name}.png*")), name


def test_declared_size_change_is_blamed_on_the_file() -> None:
    """Formerly "hyperprior activations too large ... weights are out of range" (a ModelError, exit 1)."""
    plane = ModelSet(tiny_models())
    bs = Bitstream.from_bytes(plane.encode(make_image(0, 80, 112)).data)
    for w, h in [(1, 80), (112, 1), (4000, 3000), (224, 160)]:
        altered = Bitstream(bs.profile_id, w, h, bs.latent_hash, bs.streams).to_bytes()
        with pytest.raises(BitstreamError, match="'z' stream"):
            plane.decode(altered)
