"""Codec contracts: round trips at any size, bit-exact determinism, and the canonical integer entropy path."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from licsearch.errors import BitstreamError, InputError, ModelError
from licsearch.model.codec import CODEC_ARCHS, Codec, parse_codec
from licsearch.model.entropy import ACT_BITS, IntegerHyperSynthesis
from licsearch.model.weights import save_state_dict

from .conftest import make_image


@pytest.fixture(scope="module", params=CODEC_ARCHS.names())
def codec(request: pytest.FixtureRequest) -> Codec:
    return Codec.load(request.param, 1, "random", seed=0)


@pytest.mark.parametrize("size", [(1, 1), (17, 33), (64, 64), (96, 128), (130, 70)])
def test_round_trip_keeps_size_and_is_deterministic(codec: Codec, size: tuple[int, int]) -> None:
    h, w = size
    img = make_image(h * 1000 + w, max(h, 8), max(w, 8))[:h, :w].copy()
    comp = codec.compress(img)
    y1 = codec.entropy_decode(comp.streams, w, h, comp.latent_hash)
    assert torch.equal(y1, comp.y_hat), "decoder's y_hat must equal the encoder's exactly"
    out1 = codec.synthesize(y1, w, h)
    out2 = codec.synthesize(codec.entropy_decode(comp.streams, w, h, comp.latent_hash), w, h)
    assert out1.shape == (h, w, 3) and out1.dtype == np.uint8
    assert np.array_equal(out1, out2)
    again = codec.compress(img)
    assert again.streams == comp.streams and again.latent_hash == comp.latent_hash


def test_batch_equals_single(codec: Codec) -> None:
    imgs = [make_image(i) for i in range(3)]
    batch = codec.compress_batch(imgs)
    for img, b in zip(imgs, batch, strict=True):
        single = codec.compress(img)
        assert single.streams == b.streams


def test_batch_of_mixed_sizes_is_refused(codec: Codec) -> None:
    with pytest.raises(InputError):
        codec.compress_batch([make_image(0), make_image(1, 64, 64)])


def test_thread_count_does_not_change_bitstreams(codec: Codec) -> None:
    img = make_image(7)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = codec.compress(img)
        torch.set_num_threads(max(2, before))
        many = codec.compress(img)
    finally:
        torch.set_num_threads(before)
    assert one.streams == many.streams


def test_wrong_latent_hash_is_refused(codec: Codec) -> None:
    comp = codec.compress(make_image(3))
    with pytest.raises(BitstreamError, match="latent hash"):
        codec.entropy_decode(comp.streams, comp.width, comp.height, bytes(16))


def test_swapped_streams_never_decode(codec: Codec) -> None:
    a, b = codec.compress(make_image(1)), codec.compress(make_image(2))
    mixed = {"z": a.streams["z"], "y": b.streams["y"]}
    with pytest.raises(BitstreamError):
        codec.entropy_decode(mixed, a.width, a.height, a.latent_hash)


def test_bitstream_from_another_process_decodes_identically(tmp_path: Path) -> None:
    """Each process decodes the other's bitstream to exactly the pixels the other decodes it to."""
    img = make_image(11)
    h, w = img.shape[:2]
    c = Codec.load("bmshj2018-hyperprior", 1, "random", seed=0)
    mine = c.compress(img)
    np.save(tmp_path / "img.npy", img)
    (tmp_path / "parent.pkl").write_bytes(pickle.dumps((mine.streams, mine.latent_hash)))
    script = textwrap.dedent(
        f"""
        import pickle
        from pathlib import Path
        import numpy as np
        from licsearch.model.codec import Codec
        d = Path({str(tmp_path)!r})
        c = Codec.load("bmshj2018-hyperprior", 1, "random", seed=0)
        comp = c.compress(np.load(d / "img.npy"))
        (d / "child.pkl").write_bytes(pickle.dumps((comp.streams, comp.latent_hash)))
        np.save(d / "child_own.npy", c.synthesize(c.entropy_decode(comp.streams, {w}, {h}, comp.latent_hash), {w}, {h}))
        streams, lhash = pickle.loads((d / "parent.pkl").read_bytes())
        np.save(d / "child_of_parent.npy", c.synthesize(c.entropy_decode(streams, {w}, {h}, lhash), {w}, {h}))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    streams, lhash = pickle.loads((tmp_path / "child.pkl").read_bytes())
    assert streams == mine.streams and lhash == mine.latent_hash
    ours_of_child = c.synthesize(c.entropy_decode(streams, w, h, lhash), w, h)
    ours_of_ours = c.synthesize(c.entropy_decode(mine.streams, w, h, mine.latent_hash), w, h)
    assert ours_of_child.shape == img.shape
    assert np.array_equal(ours_of_child, np.load(tmp_path / "child_own.npy"))
    assert np.array_equal(ours_of_ours, np.load(tmp_path / "child_of_parent.npy"))


def test_random_weights_are_seeded() -> None:
    a = Codec.load("bmshj2018-hyperprior", 1, "random", seed=0)
    b = Codec.load("bmshj2018-hyperprior", 1, "random", seed=0)
    c = Codec.load("bmshj2018-hyperprior", 1, "random", seed=1)
    assert a.profile_id == b.profile_id != c.profile_id
    assert a.random_weights


def test_checkpoint_path_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = Codec.load("mbt2018-mean", 1, "random", seed=3)
    path = tmp_path / "codec.safetensors"
    save_state_dict(a.model.state_dict(), path)
    b = Codec.load("mbt2018-mean", 1, str(path))
    assert b.weights_sha256 == a.weights_sha256 and not b.random_weights
    img = make_image(5)
    assert b.compress(img).streams == a.compress(img).streams


def test_bad_checkpoints_are_clear_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelError, match="not found"):
        Codec.load("bmshj2018-hyperprior", 1, str(tmp_path / "nope.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read"):
        Codec.load("bmshj2018-hyperprior", 1, str(junk))
    other = tmp_path / "other.safetensors"
    save_state_dict(Codec.load("mbt2018-mean", 1, "random").model.state_dict(), other)
    with pytest.raises(ModelError):
        Codec.load("bmshj2018-hyperprior", 1, str(other))


def test_pickled_code_is_never_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (open, (str(tmp_path / "pwned"), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(ModelError):
        Codec.load("bmshj2018-hyperprior", 1, str(path))
    assert not (tmp_path / "pwned").exists()


def test_pretrained_offline_names_cache_and_alternatives(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch.hub

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    try:
        Codec.load("bmshj2018-hyperprior", 1, "pretrained")
    except ModelError as e:
        msg = str(e)
        assert str(tmp_path) in msg and "--codec-weights" in msg and "random" in msg
    else:  # pragma: no cover - only with network
        pytest.skip("network available: the pretrained download worked")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("bmshj2018-hyperprior:3", ("bmshj2018-hyperprior", 3)), ("mbt2018-mean", ("mbt2018-mean", 3))],
)
def test_parse_codec(text: str, expected: tuple[str, int]) -> None:
    assert parse_codec(text) == expected


@pytest.mark.parametrize("text", ["nope:3", "bmshj2018-hyperprior:99", "bmshj2018-hyperprior:x"])
def test_parse_codec_errors(text: str) -> None:
    with pytest.raises(InputError):
        parse_codec(text)


# -- the canonical entropy-parameter path ---------------------------------------------------------------


def _int_reference(h_s: IntegerHyperSynthesis, x: torch.Tensor) -> torch.Tensor:
    """The same fixed-point network in int64 arithmetic, layer by layer (slow but exact by construction)."""
    import torch.nn.functional as F

    xi = x.to(torch.int64)
    for layer in h_s.layers:
        w = torch.from_numpy(layer.weight).to(torch.int64)
        if layer.kind == "conv":
            cols = F.unfold(xi.double(), w.shape[-1], padding=layer.padding, stride=layer.stride).to(torch.int64)
            acc = (w.reshape(w.shape[0], -1) @ cols).reshape(1, w.shape[0], *_out_hw(xi, layer))
        else:
            acc = _deconv_int(xi, w, layer)
        acc = acc + torch.from_numpy(layer.bias).to(torch.int64).view(1, -1, 1, 1)
        xi = torch.div(acc, 2**14, rounding_mode="floor")
        if layer.activation == "relu":
            xi = xi.clamp_min(0)
        elif layer.activation == "leaky_relu":
            xi = torch.where(xi >= 0, xi, torch.div(xi * layer.leaky_num, 2**16, rounding_mode="floor"))
    return xi.double()


def _out_hw(x: torch.Tensor, layer) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    k = layer.weight.shape[-1]
    return tuple((s + 2 * layer.padding - k) // layer.stride + 1 for s in x.shape[-2:])  # type: ignore[return-value]


def _deconv_int(x: torch.Tensor, w: torch.Tensor, layer) -> torch.Tensor:  # type: ignore[no-untyped-def]
    # Transposed convolution as scatter-add of integer products.
    _, _cin, h, wd = x.shape
    cout, k, s, p, op = w.shape[1], w.shape[-1], layer.stride, layer.padding, layer.output_padding
    oh, ow = (h - 1) * s - 2 * p + k + op, (wd - 1) * s - 2 * p + k + op
    full = torch.zeros(1, cout, (h - 1) * s + k + op, (wd - 1) * s + k + op, dtype=torch.int64)
    for i in range(k):
        for j in range(k):
            contrib = torch.einsum("bchw,co->bohw", x, w[:, :, i, j])
            full[:, :, i : i + (h - 1) * s + 1 : s, j : j + (wd - 1) * s + 1 : s] += contrib
    return full[:, :, p : p + oh, p : p + ow]


@pytest.mark.parametrize("arch", CODEC_ARCHS.names())
def test_integer_path_is_exact(arch: str) -> None:
    c = Codec.load(arch, 1, "random", seed=0)
    rng = np.random.default_rng(0)
    z = torch.from_numpy(rng.integers(-6, 7, size=(1, c.z_medians.numel(), 2, 3))).double()
    x = z * 2**ACT_BITS + c.entropy_path.z_medians_fixed
    fast = c.entropy_path.h_s(x)
    assert torch.equal(fast, _int_reference(c.entropy_path.h_s, x))
    assert torch.equal(fast, torch.round(fast)), "every activation must be an integer"


def test_integer_path_tracks_the_float_network(codec: Codec) -> None:
    rng = np.random.default_rng(1)
    z = torch.from_numpy(rng.integers(-4, 5, size=(1, codec.z_medians.numel(), 3, 3))).float()
    with torch.inference_mode():
        ref = codec.model.h_s(z + codec.z_medians.view(1, -1, 1, 1)).double()
    fixed = codec.entropy_path.h_s(z.double() * 2**ACT_BITS + codec.entropy_path.z_medians_fixed) / 2**ACT_BITS
    assert (fixed - ref).abs().max().item() < 0.05 * max(1.0, ref.abs().max().item())


def test_indexes_match_compressai_build_indexes(codec: Codec) -> None:
    gc = codec.model.gaussian_conditional
    scales = torch.cat([gc.scale_table, gc.scale_table * 1.01, torch.tensor([0.0, 0.05, 1e6])]).double()
    ours = torch.searchsorted(codec.entropy_path.thresholds, scales, right=False).int()
    assert torch.equal(ours, gc.build_indexes(scales.float()).int())
