"""Decoding is deterministic across backends, thread counts and batch sizes.

The matrix: three backends (eager torch, ONNX Runtime fp32 bundle, ONNX Runtime int8 bundle), each encoding
crops of random sizes (16-96 px) cut from generated images and, when present, the shared photos; every backend
entropy-decodes every other backend's bitstreams. Every decode must return exactly the latent the encoder had
(``torch.equal``): no refusals, and above all no silent failures (a decode that returns without error but with
another latent). A decoder out of step must refuse with :class:`BitstreamError`. Thread counts (1 and 2) and
batch sizes (1 and 3) must not change the bytes an encoder writes. Decoding uses the cheap path (entropy
decoding only); synthesis runs on a handful.

Two codecs run the matrix. ``tiny`` is ``tiny_models()`` itself, whose random hyperprior is dead: z quantizes to
zero and every y symbol gets the first CDF, so the scale selection that determinism is about is never exercised.
``live`` is the same codec with the last layers of ``h_a`` and ``h_s`` scaled up (a checkpoint file, like any
trained one) so that z varies and y's scales spread over the whole scale table; it carries the full matrix of a
few hundred crops, ``tiny`` a smaller one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from licsearch.bitstream import Bitstream
from licsearch.bundle.runtime import BundleModelSet, RuntimeOptions
from licsearch.config import ModelsConfig
from licsearch.errors import BitstreamError
from licsearch.model.codec import Codec, load_codec_model
from licsearch.model.models import ModelPlane, ModelSet
from licsearch.model.threads import torch_threads
from licsearch.model.weights import save_state_dict

from .conftest import SHARED_DATA, make_image, tiny_models
from .test_bundle import TinyBundles, export_bundles, tiny_bundles

BACKENDS = ("eager", "onnx-fp32", "onnx-int8")
MAX_PHOTOS = 3
LIVE_GAINS = (40.0, 100.0)  # last conv of h_a, last conv of h_s


@dataclass(frozen=True)
class Plan:
    """How many groups of three same-size crops each kind of run encodes."""

    groups: int  # one thread, batch size 1: the decoding matrix
    batched: int  # one thread, batch size 3 (the first groups)
    two_threads: int  # two threads, batch sizes 1 and 3 (the first groups; slow on two busy cores)


PLANS = {"live": Plan(groups=68, batched=16, two_threads=4), "tiny": Plan(groups=4, batched=2, two_threads=1)}


# -- models, bundles and crops ------------------------------------------------------------------------------------


def live_models(path: Path) -> ModelsConfig:
    """``tiny_models()`` with a codec checkpoint whose hyperprior is alive (see the module docstring)."""
    model = load_codec_model("bmshj2018-hyperprior", 1, "random")
    h_a, h_s = model.h_a[-1], model.h_s[-2]
    assert isinstance(h_a, torch.nn.Conv2d) and isinstance(h_s, torch.nn.Conv2d)
    with torch.no_grad():
        for layer, gain in zip((h_a, h_s), LIVE_GAINS, strict=True):
            layer.weight.mul_(gain)
            layer.bias.mul_(gain)
    save_state_dict(model.state_dict(), path)
    tiny = tiny_models()
    return dataclasses.replace(tiny, codec=dataclasses.replace(tiny.codec, weights=str(path)))


@pytest.fixture(scope="session")
def bundles(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TinyBundles:
    return tiny_bundles(request.config, tmp_path_factory)


@pytest.fixture(scope="session")
def live_bundles(tmp_path_factory: pytest.TempPathFactory) -> TinyBundles:
    base = tmp_path_factory.mktemp("live")
    return export_bundles(live_models(base / "codec.safetensors"), base)


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


def crop_groups(n: int) -> list[list[np.ndarray]]:
    """Groups of three crops of one random size (16-96 px a side), each from a random source and place."""
    rng = np.random.default_rng(2024)
    srcs = sources()
    groups = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(16, 97, 2))
        group = []
        for _ in range(3):
            s = srcs[int(rng.integers(len(srcs)))]
            y, x = int(rng.integers(0, s.shape[0] - h + 1)), int(rng.integers(0, s.shape[1] - w + 1))
            group.append(np.ascontiguousarray(s[y : y + h, x : x + w]))
        groups.append(group)
    return groups


def scale_indexes(codec: Codec, pixels: np.ndarray) -> torch.Tensor:
    """The CDF indexes the canonical entropy path picks for y of an image."""
    from licsearch.model.codec import _to_tensor

    with torch.inference_mode():
        z = codec.transforms.h_a(codec.transforms.g_a(codec._pad(_to_tensor(pixels)[None])))
        return codec.entropy_path(torch.round(z - codec.z_medians.view(1, -1, 1, 1))).indexes


# -- the runs -----------------------------------------------------------------------------------------------------


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
            for b in [group] if batch == 3 else [[im] for im in group]:
                data += [e.data for e in model.encode_batch(b)]
    return Run(data, [c.y_hat for c in seen])


@dataclass(frozen=True)
class Matrix:
    codec: str
    plan: Plan
    bundles: TinyBundles
    crops: list[np.ndarray]
    runs: dict[tuple[str, int, int], Run]  # (backend, threads, batch size)
    decoders: dict[str, ModelPlane]  # one thread

    def base(self, name: str) -> Run:
        return self.runs[(name, 1, 1)]


@pytest.fixture(scope="module", params=list(PLANS))
def matrix(request: pytest.FixtureRequest) -> Matrix:
    plan = PLANS[request.param]
    bundles = request.getfixturevalue("live_bundles" if request.param == "live" else "bundles")
    groups = crop_groups(plan.groups)
    runs: dict[tuple[str, int, int], Run] = {}
    decoders: dict[str, ModelPlane] = {}
    with torch_threads(1):
        for name in BACKENDS:
            decoders[name] = model = backend(name, bundles, 1)
            runs[(name, 1, 1)] = encode_all(model, groups, 1)
            runs[(name, 1, 3)] = encode_all(model, groups[: plan.batched], 3)
    with torch_threads(2):
        for name in BACKENDS:
            model = backend(name, bundles, 2)
            for batch in (1, 3):
                runs[(name, 2, batch)] = encode_all(model, groups[: plan.two_threads], batch)
    return Matrix(request.param, plan, bundles, [c for g in groups for c in g], runs, decoders)


# -- the matrix is what it claims ---------------------------------------------------------------------------------


def test_the_crops_are_many_and_of_many_sizes(matrix: Matrix) -> None:
    sizes = {c.shape[:2] for c in matrix.crops}
    assert len(matrix.crops) == 3 * matrix.plan.groups
    assert len(sizes) >= 0.7 * matrix.plan.groups
    assert all(16 <= h <= 96 and 16 <= w <= 96 for h, w in sizes)
    if matrix.codec == "live":
        assert len(matrix.crops) >= 200
    for run in matrix.runs.values():
        assert len(run.data) == len(run.y_hat)


def test_the_backends_really_differ_but_share_one_codec_profile(matrix: Matrix) -> None:
    assert len({m.codec.profile_id for m in matrix.decoders.values()}) == 1
    eager, int8 = matrix.base("eager").data, matrix.base("onnx-int8").data
    differing = sum(a != b for a, b in zip(eager, int8, strict=True))
    assert differing > len(eager) // 2, f"only {differing} of {len(eager)} int8 bitstreams differ from eager ones"


def test_the_live_codec_spreads_y_over_the_scale_table(live_bundles: TinyBundles) -> None:
    picks = [make_image(7), make_image(8, 40, 72)]
    live = torch.cat([scale_indexes(live_bundles.eager.codec, p).flatten() for p in picks])
    assert len(live.unique()) >= 20, "the live codec must exercise the scale selection"


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
def test_two_thread_decoders_recover_every_encoders_latent_exactly(matrix: Matrix, decoder: str) -> None:
    with torch_threads(2):
        dec = backend(decoder, matrix.bundles, 2)
        for encoder in BACKENDS:
            run = matrix.base(encoder)
            for i in range(0, len(run.data), max(1, len(run.data) // 4)):
                assert torch.equal(dec.entropy_decode(run.data[i])[1], run.y_hat[i]), (encoder, i)
        two = [dec.decode(matrix.base(e).data[1]) for e in BACKENDS]
    with torch_threads(1):
        one = [matrix.decoders[decoder].decode(matrix.base(e).data[1]) for e in BACKENDS]
    assert all(np.array_equal(a, b) for a, b in zip(one, two, strict=True)), "pixels depend on the thread count"


def test_synthesis_of_a_handful_never_fails_and_agrees_across_fp32_backends(matrix: Matrix) -> None:
    n = len(matrix.crops)
    with torch_threads(1):
        for encoder in BACKENDS:
            run = matrix.base(encoder)
            for i in (0, n // 3, n - 1):
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
        assert n == 3 * (matrix.plan.two_threads if threads == 2 else matrix.plan.batched)
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
        for i in (0, len(run.data) // 2, len(run.data) - 1):
            bad = _with_latent_hash(run.data[i], change=i)
            for name, dec in matrix.decoders.items():
                for op in (dec.entropy_decode, dec.decode, dec.embed_bitstream):
                    with pytest.raises(BitstreamError, match="latent hash mismatch"):
                        op(bad)
                assert torch.equal(dec.entropy_decode(run.data[i])[1], run.y_hat[i]), name


def test_a_decoder_whose_entropy_path_is_out_of_step_refuses_and_never_returns_garbage(
    live_bundles: TinyBundles,
) -> None:
    """As if one backend computed the scales in its own floating point: nudged scale thresholds."""
    groups = crop_groups(8)
    with torch_threads(1):
        runs = {name: encode_all(backend(name, live_bundles, 1), groups, 1) for name in BACKENDS}
        stray = ModelSet(live_bundles.eager.cfg)
        stray.codec.entropy_path.thresholds = stray.codec.entropy_path.thresholds * 1.05
        refused, silent, other = 0, [], []
        for name, run in runs.items():
            for i, (data, y_hat) in enumerate(zip(run.data, run.y_hat, strict=True)):
                try:
                    got = stray.entropy_decode(data)[1]
                except BitstreamError:
                    refused += 1
                except Exception as e:
                    other.append(f"{name} crop {i}: {type(e).__name__}: {e}")
                else:
                    if not torch.equal(got, y_hat):
                        silent.append((name, i))
    assert silent == [], f"silent failures: {silent}"
    assert other == [], f"errors other than BitstreamError: {other[:5]}"
    assert refused > len(groups) * 3 * len(BACKENDS) // 2, "the out-of-step decoder should fail on most crops"
