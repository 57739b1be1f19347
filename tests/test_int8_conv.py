"""The int8 path of the canonical ``h_s`` gives the float64 reference's integers, element for element.

Two backends of one operation compared (``IntegerHyperSynthesis.__call__`` against ``.reference``): single layers of
every kind the codecs use, with weights and inputs at the ends of the two-digit range; the shipped codecs' ``h_s`` on
real latents (and a random ``mbt2018-mean``, whose LeakyReLU the shipped ones lack); and the fallback, which an input
or a weight out of the digits' range takes, giving the reference's result all the same.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from licsearch.errors import ModelError
from licsearch.model import entropy
from licsearch.model.codec import Codec, _to_tensor
from licsearch.model.entropy import ACT_BITS, WEIGHT_BITS, IntegerHyperSynthesis, _subpixel_kernel
from licsearch.model.int8_conv import VALUE_MAX, VALUE_MIN

from .conftest import make_image

SHIPPED_CODEC = (3, "shipped:offline/codec-q3.safetensors")  # the offline preset's quality, which bench times


@pytest.fixture
def float_layers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the layers that run on the float64 path (the reference, or the int8 path's fallback)."""
    calls: list[int] = []
    real = entropy._float_layer

    def spy(x: np.ndarray, layer: entropy.IntegerLayer) -> np.ndarray:
        calls.append(1)
        return real(x, layer)

    monkeypatch.setattr(entropy, "_float_layer", spy)
    return calls


def _edge_ints(rng: np.random.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Integers over the whole two-digit range, a quarter of them at its two ends."""
    v = rng.integers(VALUE_MIN, VALUE_MAX + 1, size=shape)
    ends = rng.random(shape) < 0.25
    v[ends] = rng.choice([VALUE_MIN, VALUE_MAX], size=int(ends.sum()))
    return torch.from_numpy(v).double()


def _layer(module: nn.Module, rng: np.random.Generator, act: nn.Module | None) -> IntegerHyperSynthesis:
    """``module`` with integer weights at the range's edges (exact in float32 once divided by 2**WEIGHT_BITS)."""
    assert isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))
    with torch.no_grad():
        module.weight.copy_(_edge_ints(rng, tuple(module.weight.shape)) / 2**WEIGHT_BITS)
        bias = rng.integers(
            -(2**23), 2**23, size=module.weight.shape[1 if isinstance(module, nn.ConvTranspose2d) else 0]
        )
        module.bias.copy_(torch.from_numpy(bias).double() / 2 ** (WEIGHT_BITS + ACT_BITS))
    return IntegerHyperSynthesis(nn.Sequential(module, *([act] if act is not None else [])))


LAYERS = {
    "conv3": lambda c, o: nn.Conv2d(c, o, 3, padding=1),
    "conv5s2": lambda c, o: nn.Conv2d(c, o, 5, stride=2, padding=2),
    "deconv5s2": lambda c, o: nn.ConvTranspose2d(c, o, 5, stride=2, padding=2, output_padding=1),
    "deconv3s2": lambda c, o: nn.ConvTranspose2d(c, o, 3, stride=2, padding=1, output_padding=1),
    "deconv4s2": lambda c, o: nn.ConvTranspose2d(c, o, 4, stride=2, padding=1),
}


@pytest.mark.parametrize("act", [None, nn.ReLU(), nn.LeakyReLU()], ids=["none", "relu", "leaky"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_every_layer_kind_equals_the_reference_at_the_ends_of_the_range(
    kind: str, act: nn.Module | None, float_layers: list[int]
) -> None:
    rng = np.random.default_rng(sum(map(ord, kind)))
    hs = _layer(LAYERS[kind](12, 8), rng, act)
    assert hs.int8[0] is not None, "weights in range get the int8 path"
    for size in [(1, 1), (2, 3), (5, 4), (7, 9)]:
        x = _edge_ints(rng, (1, 12, *size))
        fast = hs(x)
        assert not float_layers, "the int8 path ran"
        ref = hs.reference(x)
        assert fast.dtype == ref.dtype == torch.float64 and fast.shape == ref.shape
        assert torch.equal(fast, ref), f"{kind} at {size}"
        float_layers.clear()


def test_the_shipped_codecs_h_s_is_the_reference_on_real_latents(float_layers: list[int]) -> None:
    codec = Codec.load("bmshj2018-hyperprior", *SHIPPED_CODEC)
    x = torch.stack([_to_tensor(make_image(seed, 128, 192)) for seed in (7, 8)])
    with torch.inference_mode():
        z = codec.transforms.h_a(codec.transforms.g_a(x))
    path = codec.entropy_path
    fixed = torch.round(z - codec.z_medians.view(1, -1, 1, 1)).double() * 2**ACT_BITS + path.z_medians_fixed
    fast = path.h_s(fixed)
    assert not float_layers, "every layer of a shipped codec's h_s fits the int8 path"
    assert torch.equal(fast, path.h_s.reference(fixed))


def test_a_mean_scale_codec_with_leaky_relu_is_the_reference(float_layers: list[int]) -> None:
    codec = Codec.load("mbt2018-mean", 1, "random", seed=3)
    rng = np.random.default_rng(3)
    z = torch.from_numpy(rng.integers(-4, 5, size=(1, codec.z_medians.numel(), 3, 5))).double()
    x = z * 2**ACT_BITS + codec.entropy_path.z_medians_fixed
    fast = codec.entropy_path.h_s(x)
    assert not float_layers
    assert torch.equal(fast, codec.entropy_path.h_s.reference(x))


@pytest.mark.parametrize("value", [VALUE_MAX + 1, VALUE_MIN - 1, 0.5])
def test_an_input_the_digits_cannot_hold_falls_back_to_the_reference(value: float, float_layers: list[int]) -> None:
    hs = _layer(LAYERS["deconv5s2"](12, 8), np.random.default_rng(5), nn.ReLU())
    x = _edge_ints(np.random.default_rng(6), (1, 12, 3, 4))
    x[0, 3, 1, 2] = value
    fast = hs(x)
    assert float_layers == [1], "the layer fell back"
    assert torch.equal(fast, hs.reference(x))


def test_a_weight_the_digits_cannot_hold_keeps_that_layer_on_the_reference(float_layers: list[int]) -> None:
    rng = np.random.default_rng(9)
    first, second = nn.ConvTranspose2d(6, 6, 5, stride=2, padding=2, output_padding=1), nn.Conv2d(6, 4, 3, padding=1)
    hs = _layer(second, rng, None)  # for its weights
    with torch.no_grad():
        first.weight.normal_(0, 0.01)
        first.weight[0, 0, 0, 0] = (VALUE_MAX + 1) / 2**WEIGHT_BITS
    hs = IntegerHyperSynthesis(nn.Sequential(first, nn.ReLU(), second))
    assert hs.int8[0] is None and hs.int8[1] is not None
    x = torch.from_numpy(rng.integers(-3000, 3000, size=(1, 6, 4, 5))).double()
    fast = hs(x)
    assert float_layers == [1], "only the first layer fell back"
    assert torch.equal(fast, hs.reference(x))


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "mbt2018-mean"])
def test_the_entropy_parameters_from_the_int8_path_are_the_references(arch: str) -> None:
    codec = Codec.load(arch, 1, "random", seed=4)
    path = codec.entropy_path
    rng = np.random.default_rng(4)
    z = torch.from_numpy(rng.integers(-5, 6, size=(1, codec.z_medians.numel(), 3, 4))).double()
    ref = path.h_s.reference(z * 2**ACT_BITS + path.z_medians_fixed)
    scales, means = ref.chunk(2, dim=1) if codec.arch.has_means else (ref, torch.zeros_like(ref))
    params = path(z)
    assert torch.equal(params.indexes, torch.searchsorted(path.thresholds, scales / 2**ACT_BITS).int())
    assert params.indexes.is_contiguous() and params.means.dtype == torch.float32
    assert torch.equal(params.means, (means / 2**ACT_BITS).float())


# -- the torch-free evaluation (NumPy float64), held to the same reference ----------------------------------


@pytest.mark.parametrize("act", [None, nn.ReLU(), nn.LeakyReLU()], ids=["none", "relu", "leaky"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_the_torch_free_layers_equal_the_reference(kind: str, act: nn.Module | None) -> None:
    rng = np.random.default_rng(sum(map(ord, kind)) + 1)
    ref = _layer(LAYERS[kind](12, 8), rng, act)
    numpy_path = IntegerHyperSynthesis(ref.layers, torch_free=True)
    assert numpy_path.int8 == (None,), "no layer runs on torch's int8 products"
    # the hyperprior's transposed convolutions run as phases at the input's resolution, the others by spreading
    assert (_subpixel_kernel(ref.layers[0]) is not None) == (kind in ("deconv5s2", "deconv4s2"))
    for size in [(1, 1), (2, 3), (5, 4), (7, 9)]:
        x = _edge_ints(rng, (1, 12, *size))
        assert torch.equal(numpy_path(x), ref.reference(x)), f"{kind} at {size}"
    # Values past the two digits' range, which the int8 path hands to the reference, are exact here too.
    big = torch.from_numpy(rng.integers(-(2**20), 2**20, size=(2, 12, 3, 5))).double()
    assert torch.equal(numpy_path(big), ref.reference(big))


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "mbt2018-mean"])
def test_a_latent_codec_rebuilt_from_its_arrays_without_torch_decodes_the_same_latent(arch: str) -> None:
    from licsearch.model.latent import LatentCodec

    codec = Codec.load(arch, *(SHIPPED_CODEC if arch == "bmshj2018-hyperprior" else (1, "random")))
    meta, arrays = codec.latent.arrays()
    lean = LatentCodec.from_arrays(meta, arrays, torch_free=True)
    assert lean.entropy_path.h_s.torch_free and lean.profile_id == codec.profile_id
    for seed, (h, w) in ((11, (96, 160)), (12, (130, 70))):
        comp = codec.compress(make_image(seed, h, w))
        y_eager = codec.entropy_decode(comp.streams, w, h, comp.latent_hash).numpy()
        y_lean = lean.entropy_decode(comp.streams, w, h, comp.latent_hash)
        assert y_lean.dtype == np.float32 and np.array_equal(y_lean, y_eager)
        assert np.array_equal(y_lean, comp.y_hat.numpy())
    broken = dict(arrays)
    del broken["y_cdfs"]
    with pytest.raises(ModelError, match="incomplete or inconsistent"):
        LatentCodec.from_arrays(meta, broken)
