"""The .lics container: exact round trip; every truncation and sampled bit flips are refused clearly."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from licsearch.bitstream import MAGIC, VERSION, Bitstream
from licsearch.errors import BitstreamError
from licsearch.model.codec import Codec
from licsearch.model.models import ModelSet
from licsearch.model.weights import save_state_dict

from .conftest import make_image, tiny_models


@pytest.fixture(scope="module")
def models() -> ModelSet:
    return ModelSet(tiny_models())


@pytest.fixture(scope="module")
def real(models: ModelSet) -> bytes:
    return models.encode(make_image(0, 80, 112)).data


def test_round_trip(real: bytes) -> None:
    bs = Bitstream.from_bytes(real)
    assert bs.to_bytes() == real
    assert list(bs.streams) == ["z", "y"]
    assert (bs.width, bs.height) == (112, 80)
    assert real[:4] == MAGIC and real[4] == VERSION


def test_every_truncation_is_refused(models: ModelSet, real: bytes) -> None:
    for n in range(len(real)):
        with pytest.raises(BitstreamError):
            models.decode(real[:n])


def test_sampled_bit_flips_are_refused(models: ModelSet, real: bytes) -> None:
    rng = random.Random(0)
    positions = sorted(rng.sample(range(len(real) * 8), min(400, len(real) * 8)))
    for bit in positions:
        damaged = bytearray(real)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(BitstreamError):
            models.decode(bytes(damaged))


def test_appended_bytes_are_refused(models: ModelSet, real: bytes) -> None:
    with pytest.raises(BitstreamError, match="truncated or padded"):
        models.decode(real + b"\0")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"JUNK" + b[4:], "bad magic"),
        (lambda b: b[:4] + bytes([VERSION + 1]) + b[5:], "unsupported .lics format version"),
        (lambda b: b"", "bad magic"),
        (lambda b: b"LICS", "truncated"),
    ],
)
def test_header_errors_name_the_problem(models: ModelSet, real: bytes, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BitstreamError, match=message):
        models.decode(mutate(real))


def test_another_codec_profile_is_refused(real: bytes) -> None:
    other = ModelSet(tiny_models("mbt2018-mean", 1))
    with pytest.raises(BitstreamError, match="made by codec profile"):
        other.decode(real)


def test_same_arch_other_weights_is_refused(real: bytes, tmp_path: Path) -> None:
    """Decoding with a model set of the same architecture and quality but other weights fails clearly, and so does
    the entropy decoder itself when the profile check is bypassed: never pixels from the wrong tables."""
    other = Codec.load("bmshj2018-hyperprior", 1, "random", seed=1)
    weights = tmp_path / "other.safetensors"
    save_state_dict(other.model.state_dict(), weights)
    cfg = tiny_models()
    other_set = ModelSet(dataclasses.replace(cfg, codec=dataclasses.replace(cfg.codec, weights=str(weights))))
    bs = Bitstream.from_bytes(real)
    assert other_set.codec.profile_id == other.profile_id != bs.profile_id
    with pytest.raises(BitstreamError, match="made by codec profile"):
        other_set.decode(real)
    with pytest.raises(BitstreamError):  # a damaged stream, a failed entropy decode or a latent hash mismatch
        other.entropy_decode(bs.streams, bs.width, bs.height, bs.latent_hash)


def test_header_overhead_is_small(real: bytes) -> None:
    bs = Bitstream.from_bytes(real)
    # magic+version+flags (6) + profile id (~37) + size (8) + latent hash (16) + 2 stream entries (12) + CRC (4)
    assert len(real) - bs.payload_bytes <= 96


GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDEN_MODELS = {"offline-q3": "offline", "mbt2018-mean-q1-random": "mbt2018-mean"}


@pytest.mark.parametrize("name", sorted(GOLDEN_MODELS))
def test_golden_v1_files_decode_to_the_same_pixels(name: str) -> None:
    """Files written in format 1 (by the encoder of that time) decode to the latent and pixels they did then."""
    import hashlib
    import json

    import numpy as np
    from PIL import Image

    from licsearch.presets import preset_models

    expected = json.loads((GOLDEN / "expected.json").read_text())[name]
    data = (GOLDEN / f"{name}.v1.lics").read_bytes()
    assert data[4] == 1 and hashlib.sha256(data).hexdigest() == expected["bytes_sha256"]
    source = GOLDEN_MODELS[name]
    models = ModelSet(preset_models(source) if source == "offline" else tiny_models(source, 1))
    _, y_hat = models.entropy_decode(data)
    assert hashlib.sha256(y_hat.numpy().astype("<f4").tobytes()).hexdigest() == expected["y_hat_sha256"]
    pixels = models.decode(data)
    assert np.array_equal(pixels, np.asarray(Image.open(GOLDEN / f"{name}.v1.png").convert("RGB")))
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == expected["pixels_sha256"]


def test_new_files_are_v2_and_a_parsed_file_keeps_its_version(real: bytes) -> None:
    assert real[4] == VERSION == 2
    v1 = (GOLDEN / "offline-q3.v1.lics").read_bytes()
    bs = Bitstream.from_bytes(v1)
    assert bs.version == 1 and bs.hash_context == b"" and bs.to_bytes() == v1
    assert Bitstream.from_bytes(real).hash_context.startswith(MAGIC + bytes([2]))


@pytest.mark.parametrize("size", [(111, 80), (112, 79), (128, 128), (113, 65), (80, 112)])
def test_v2_refuses_a_declared_size_that_v1_would_decode_to_a_crop(
    models: ModelSet, real: bytes, size: tuple[int, int]
) -> None:
    """Within the codec's 64-pixel blocks a size change keeps the latent shape; the v2 hash covers the size."""
    bs = Bitstream.from_bytes(real)
    altered = dataclasses.replace(bs, width=size[0], height=size[1]).to_bytes()
    with pytest.raises(BitstreamError, match=r"latent hash mismatch|stream"):
        models.decode(altered)


def test_v1_golden_file_with_a_size_change_within_its_blocks_still_decodes_as_v1_did() -> None:
    """Format 1 is read as it was written: its hash never covered the size (the reason for format 2)."""
    data = (GOLDEN / "mbt2018-mean-q1-random.v1.lics").read_bytes()
    bs = Bitstream.from_bytes(data)
    models = ModelSet(tiny_models("mbt2018-mean", 1))
    cropped = models.decode(dataclasses.replace(bs, width=bs.width - 1).to_bytes())
    assert cropped.shape == (bs.height, bs.width - 1, 3)
    assert (cropped == models.decode(data)[:, : bs.width - 1]).all()


def test_v2_file_relabelled_as_v1_is_refused(models: ModelSet, real: bytes) -> None:
    """A v2 file called v1 would skip the header in the hash; its hash then matches neither rule."""
    altered = dataclasses.replace(Bitstream.from_bytes(real), version=1).to_bytes()
    with pytest.raises(BitstreamError, match="latent hash mismatch"):
        models.decode(altered)
