"""DESIGN invariant 2: decoding is deterministic across backends, thread counts and batch sizes.

The matrix: three backends (eager torch, ONNX Runtime fp32 bundle, ONNX Runtime int8 bundle), each encoding a
few hundred crops of random sizes (16-96 px) from generated images and, when present, the shared photos; every
backend entropy-decodes every other backend's bitstreams. A decoder either returns exactly the latent the
encoder had (``torch.equal``) or refuses with :class:`BitstreamError`; a decode that returns anything else is a
silent failure, and there must be none. Thread counts (1 and 2) and batch sizes (1 and 3) must not change
the bytes an encoder writes. Decoding uses the cheap path (entropy decoding only); synthesis runs on a handful.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from licsearch.bitstream import Bitstream
from licsearch.bundle.runtime import BundleModelSet, RuntimeOptions
from licsearch.errors import BitstreamError
from licsearch.model.models import ModelPlane

from .conftest import SHARED_DATA, make_image
from .test_bundle import TinyBundles, tiny_bundles

BACKENDS = ("eager", "onnx-fp32", "onnx-int8")
N_GROUPS = 68  # groups of 3 same-size crops: 204 crops
N_GROUPS_TWO_THREADS = 4  # the 2-thread runs re-encode the first groups only (2 threads are slow on 2 busy cores)
MAX_PHOTOS = 3


@pytest.fixture(scope="session")
def bundles(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TinyBundles:
    return tiny_bundles(request.config, tmp_path_factory)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def backend(name: str, bundles: TinyBundles, threads: int) -> ModelPlane:
    """A backend's model plane; ONNX Runtime sessions get ``threads`` (torch's count is set by the caller)."""
    if name == "eager":
        return bundles.eager
    root = bundles.fp32 if name == "onnx-fp32" else bundles.int8
    return BundleModelSet(root, RuntimeOptions(threads=threads))


def sources() -> list[np.ndarray]:
    imgs = [make_image(1000 + i, 160, 224) for i in range(4)]
    photos = SHARED_DATA / "photos"
    if photos.is_dir():
        from licsearch.imageio import load_image

        imgs += [load_image(p).pixels for p in sorted(photos.glob("*.png"))[:MAX_PHOTOS]]
    return imgs


def crop_groups() -> list[list[np.ndarray]]:
    """Groups of three crops of one random size (16-96 px a side), each from a random source and place."""
    rng = np.random.default_rng(2024)
    srcs = sources()
    groups = []
    for _ in range(N_GROUPS):
        h, w = (int(v) for v in rng.integers(16, 97, 2))
        group = []
        for _ in range(3):
            s = srcs[int(rng.integers(len(srcs)))]
            y, x = int(rng.integers(0, s.shape[0] - h + 1)), int(rng.integers(0, s.shape[1] - w + 1))
            group.append(np.ascontiguousarray(s[y : y + h, x : x + w]))
        groups.append(group)
    return groups


@dataclass(frozen=True)
class Run:
    """One encoder configuration's output over the crops: the ``.lics`` bytes and the y_hat it coded."""

    data: list[bytes]
    y_hat: list[torch.Tensor]


def encode_all(model: ModelPlane, groups: list[list[np.ndarray]], batch: int) -> Run:
    """Encodes through ``ModelPlane.encode_batch``, recording the encoder's y_hat from the same pass."""
    seen = []
    compress = model.codec.compress_batch

    def spy(images: list[np.ndarray]) -> list:
        out = compress(images)
        seen.extend(out)
        return out

    data: list[bytes] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model.codec, "compress_batch", spy)
        for group in groups:
            batches = [group] if batch == 3 else [[im] for im in group]
            for b in batches:
                data += [e.data for e in model.encode_batch(b)]
    return Run(data, [c.y_hat for c in seen])


@dataclass(frozen=True)
class Matrix:
    crops: list[np.ndarray]
    runs: dict[tuple[str, int, int], Run]  # (backend, threads, batch size)
    decoders: dict[str, ModelPlane]  # one thread

    def base(self, name: str) -> Run:
        return self.runs[(name, 1, 1)]


@pytest.fixture(scope="module")
def matrix(bundles: TinyBundles) -> Matrix:
    groups = crop_groups()
    runs: dict[tuple[str, int, int], Run] = {}
    decoders: dict[str, ModelPlane] = {}
    with torch_threads(1):
        for name in BACKENDS:
            decoders[name] = model = backend(name, bundles, 1)
            for batch in (1, 3):
                runs[(name, 1, batch)] = encode_all(model, groups, batch)
    with torch_threads(2):
        for name in BACKENDS:
            model = backend(name, bundles, 2)
            for batch in (1, 3):
                runs[(name, 2, batch)] = encode_all(model, groups[:N_GROUPS_TWO_THREADS], batch)
    return Matrix([c for g in groups for c in g], runs, decoders)


# -- the crops ----------------------------------------------------------------------------------------------------


def test_the_matrix_covers_a_few_hundred_crops_of_many_sizes(matrix: Matrix) -> None:
    sizes = {c.shape[:2] for c in matrix.crops}
    assert len(matrix.crops) >= 200
    assert len(sizes) >= 50
    assert all(16 <= h <= 96 and 16 <= w <= 96 for h, w in sizes)
    for run in matrix.runs.values():
        assert len(run.data) == len(run.y_hat)


def test_the_matrix_is_not_vacuous(matrix: Matrix) -> None:
    """The backends' encoders really differ (int8 analysis moves many symbols) but share one codec profile."""
    profiles = {m.codec.profile_id for m in matrix.decoders.values()}
    assert len(profiles) == 1
    eager, int8 = matrix.base("eager").data, matrix.base("onnx-int8").data
    differing = sum(a != b for a, b in zip(eager, int8, strict=True))
    assert differing > len(eager) // 2, f"only {differing} of {len(eager)} int8 bitstreams differ from eager ones"


# -- every encoder against every decoder --------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", BACKENDS)
@pytest.mark.parametrize("encoder", BACKENDS)
def test_every_decoder_recovers_every_encoders_latent_exactly(matrix: Matrix, encoder: str, decoder: str) -> None:
    run, dec = matrix.base(encoder), matrix.decoders[decoder]
    silent, loud = [], []
    with torch_threads(1):
        for i, (data, y_hat) in enumerate(zip(run.data, run.y_hat, strict=True)):
            try:
                bs, got = dec.entropy_decode(data)
            except Exception as e:  # counted, then reported all together
                loud.append(f"crop {i}: {type(e).__name__}: {e}")
                continue
            h, w = matrix.crops[i].shape[:2]
            if (bs.width, bs.height) != (w, h) or not torch.equal(got, y_hat):
                silent.append(i)
    assert silent == [], f"{len(silent)} silent failures ({encoder} -> {decoder}): crops {silent[:20]}"
    assert loud == [], f"{len(loud)} refused decodes ({encoder} -> {decoder}): {loud[:5]}"


@pytest.mark.parametrize("decoder", BACKENDS)
def test_two_thread_decoders_recover_every_encoders_latent_exactly(
    matrix: Matrix, bundles: TinyBundles, decoder: str
) -> None:
    with torch_threads(2):
        dec = backend(decoder, bundles, 2)
        for encoder in BACKENDS:
            run = matrix.base(encoder)
            for i in range(0, len(run.data), len(run.data) // 4):
                assert torch.equal(dec.entropy_decode(run.data[i])[1], run.y_hat[i]), (encoder, i)
        two = [dec.decode(matrix.base(e).data[7]) for e in BACKENDS]
    with torch_threads(1):
        one = [matrix.decoders[decoder].decode(matrix.base(e).data[7]) for e in BACKENDS]
    assert all(np.array_equal(a, b) for a, b in zip(one, two, strict=True)), "pixels depend on the thread count"


def test_synthesis_of_a_handful_never_fails_and_agrees_across_fp32_backends(matrix: Matrix) -> None:
    picks = [0, 50, 101, 203]
    with torch_threads(1):
        for encoder in BACKENDS:
            run = matrix.base(encoder)
            for i in picks:
                h, w = matrix.crops[i].shape[:2]
                out = {name: dec.decode(run.data[i]) for name, dec in matrix.decoders.items()}
                for name, px in out.items():
                    assert px.shape == (h, w, 3) and px.dtype == np.uint8, (encoder, name, i)
                    assert np.array_equal(px, matrix.decoders[name].decode(run.data[i]))
                diff = np.abs(out["eager"].astype(int) - out["onnx-fp32"].astype(int)).max()
                assert diff <= 1, f"eager and ONNX fp32 synthesis differ by {diff} levels ({encoder}, crop {i})"


# -- encoding is deterministic for a fixed backend -----------------------------------------------------------------


@pytest.mark.parametrize("name", BACKENDS)
def test_encoding_does_not_depend_on_thread_count_or_batch_size(matrix: Matrix, name: str) -> None:
    base = matrix.base(name)
    for threads, batch in ((1, 3), (2, 1), (2, 3)):
        run = matrix.runs[(name, threads, batch)]
        n = len(run.data)
        assert n in (len(base.data), 3 * N_GROUPS_TWO_THREADS)
        differing = [i for i in range(n) if run.data[i] != base.data[i]]
        assert differing == [], f"{name}: {threads} thread(s), batch {batch} changes crops {differing[:20]}"
        assert all(torch.equal(a, b) for a, b in zip(run.y_hat, base.y_hat[:n], strict=True))


# -- a decoder out of step is caught ------------------------------------------------------------------------------


def _with_latent_hash(data: bytes, change: int) -> bytes:
    bs = Bitstream.from_bytes(data)
    lh = bytearray(bs.latent_hash)
    lh[change % len(lh)] ^= 1 << (change % 8)
    out = Bitstream(bs.profile_id, bs.width, bs.height, bytes(lh), bs.streams).to_bytes()
    assert Bitstream.from_bytes(out).streams == bs.streams, "the container itself stays valid (CRC recomputed)"
    return out


@pytest.mark.parametrize("encoder", BACKENDS)
def test_a_wrong_latent_hash_is_refused_by_every_backend(matrix: Matrix, encoder: str) -> None:
    run = matrix.base(encoder)
    with torch_threads(1):
        for i in (3, 99, 180):
            bad = _with_latent_hash(run.data[i], change=i)
            for name, dec in matrix.decoders.items():
                for op in (dec.entropy_decode, dec.decode, dec.embed_bitstream):
                    with pytest.raises(BitstreamError, match="latent hash mismatch"):
                        op(bad)
                assert torch.equal(dec.entropy_decode(run.data[i])[1], run.y_hat[i]), name
