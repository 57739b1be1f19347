"""Training tools: a few steps on tiny data lower the loss, resume is exact, and the outputs load where they are used.

Everything runs on the CPU with tiny settings (quality 1, 64-pixel crops, batches of 2 to 8, about ten steps);
a fixed tiny batch is overfitted, so the mean loss of the last steps must be below that of the first steps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from licsearch.config import AdapterConfig, ClipConfig, CodecConfig, ModelsConfig
from licsearch.errors import InputError
from licsearch.model.adapter import Adapter, AdapterShape
from licsearch.model.codec import CODEC_ARCHS, Codec
from licsearch.model.text import TextEncoder
from licsearch.model.weights import load_state_dict_file
from licsearch.train.adapter import AdapterTrainOptions, train_adapter
from licsearch.train.clip import ClipTrainOptions, retrieval_hits, train_clip
from licsearch.train.codec import CodecTrainOptions, train_codec
from licsearch.train.data import Augment, item_keys, item_rng
from licsearch.train.joint import JointTrainOptions, train_joint
from licsearch.train.latent import inference_y_hat
from licsearch.train.loop import LoopOptions
from licsearch.train.run import RunDir
from tests.conftest import make_image, write_png

TINY_ADAPTER = AdapterConfig(width=32, hidden=64)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread than on a shared, busy pair of cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 64x64 images: with batch 2, no flips and 64-pixel crops every step sees the same batch."""
    d = tmp_path_factory.mktemp("train") / "images"
    for i in range(2):
        write_png(d / f"{i}.png", make_image(i, 64, 64))
    return d


def tiny_models(codec_weights: str = "random", adapter_weights: str = "random") -> ModelsConfig:
    return ModelsConfig(
        codec=CodecConfig(arch="bmshj2018-hyperprior", quality=1, weights=codec_weights),
        clip=ClipConfig(model="licsearch-tiny", tag=None, weights="random"),
        adapter=AdapterConfig(weights=adapter_weights, width=TINY_ADAPTER.width, hidden=TINY_ADAPTER.hidden),
    )


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in RunDir(out).read_log() if "loss" in r]


def assert_lowered(values: list[float], k: int = 3) -> None:
    first, last = float(np.mean(values[:k])), float(np.mean(values[-k:]))
    assert last < first, f"loss did not go down: first {values[:k]}, last {values[-k:]}"


def codec_options(images: Path, out: Path, steps: int, **kw: object) -> CodecTrainOptions:
    loop = LoopOptions(steps=steps, log_every=1, checkpoint_every=3, progress=False)
    base: dict[str, object] = {"quality": 1, "crop": 64, "batch_size": 2, "flip": False, "device": "cpu"}
    return CodecTrainOptions(images=images, out=out, loop=loop, **{**base, "eval_images": 1, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("arch", CODEC_ARCHS.names())
def test_inference_y_hat_is_the_encoders(arch: str) -> None:
    """The adapter trains on the y_hat that Codec.compress puts in the bitstream, bit for bit."""
    codec = Codec.load(arch, 1, "random")
    pixels = np.stack([make_image(7, 64, 128), make_image(8, 64, 128)])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
    got = inference_y_hat(codec, x)
    for i in range(2):
        assert torch.equal(got[i : i + 1], codec.compress(pixels[i]).y_hat)


def test_codec_training_lowers_the_loss_and_the_output_round_trips(tiny_images: Path, tmp_path: Path) -> None:
    report = train_codec(codec_options(tiny_images, tmp_path / "codec", 10))
    assert_lowered(losses(tmp_path / "codec"))
    record = RunDir(tmp_path / "codec").read_log()[-1]
    assert {"step", "loss", "bpp", "psnr", "mse", "aux", "lr", "seconds"} <= set(record)
    codec = Codec.load("bmshj2018-hyperprior", 1, report.outputs["codec"]["path"])
    pixels = make_image(3, 64, 96)
    comp = codec.compress(pixels)
    y_hat = codec.entropy_decode(comp.streams, comp.width, comp.height, comp.latent_hash)
    assert codec.synthesize(y_hat, comp.width, comp.height).shape == pixels.shape
    prov = json.loads((tmp_path / "codec" / "provenance.json").read_text())
    assert prov["data"]["images"] == 2 and prov["steps"] == 10 and prov["lmbda"] == 0.0018
    assert prov["evaluation"]["images"] == 1 and prov["evaluation"]["bpp"] > 0
    assert {"environment", "command", "final_metrics", "outputs"} <= set(prov)


def test_codec_resume_continues_exactly(tiny_images: Path, tmp_path: Path) -> None:
    train_codec(codec_options(tiny_images, tmp_path / "straight", 4, flip=True))
    train_codec(codec_options(tiny_images, tmp_path / "resumed", 3, flip=True))
    with pytest.raises(InputError, match="--resume"):
        train_codec(codec_options(tiny_images, tmp_path / "resumed", 4, flip=True))
    with pytest.raises(InputError, match="quality was 1"):
        train_codec(codec_options(tiny_images, tmp_path / "resumed", 4, quality=2, resume=True))
    train_codec(codec_options(tiny_images, tmp_path / "resumed", 4, flip=True, resume=True))
    assert [r["step"] for r in RunDir(tmp_path / "resumed").read_log()] == [1, 2, 3, 4]
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    a = load_state_dict_file(tmp_path / "straight" / "codec.safetensors", what="codec")
    b = load_state_dict_file(tmp_path / "resumed" / "codec.safetensors", what="codec")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_adapter_training_lowers_the_loss_and_loads(tiny_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    options = AdapterTrainOptions(
        images=tiny_images,
        out=out,
        loop=LoopOptions(steps=10, log_every=1, checkpoint_every=5, progress=False),
        models=tiny_models(),
        batch_size=2,
        crop=64,
        augment=False,
        device="cpu",
        eval_images=2,
    )
    report = train_adapter(options)
    assert report.data["precomputed"]
    assert_lowered(losses(out))
    shape = AdapterShape(192, 64, width=TINY_ADAPTER.width, hidden=TINY_ADAPTER.hidden)
    adapter = Adapter.load(shape, report.outputs["adapter"]["path"])
    emb = adapter.embed(Codec.load("bmshj2018-hyperprior", 1, "random").compress(make_image(1, 64, 64)).y_hat)
    assert emb.shape == (1, 64) and torch.allclose(emb.norm(dim=-1), torch.ones(1))
    assert 0 < report.result.evaluation["cos"] <= 1


def test_adapter_cli_with_augmentations_and_resume(
    tiny_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from licsearch.cli.main import main

    out = tmp_path / "adapter"
    argv = ["train", "adapter", "--images", str(tiny_images), "--out", str(out), "--crop", "64", "--batch-size", "2"]
    argv += ["--codec", "bmshj2018-hyperprior:1", "--codec-weights", "random", "--clip", "licsearch-tiny"]
    argv += ["--clip-weights", "random", "--adapter-width", "32", "--adapter-hidden", "64", "--device", "cpu"]
    argv += ["--log-every", "1", "--checkpoint-every", "2", "--eval-images", "1", "--no-progress", "--json"]
    assert main([*argv, "--steps", "2"]) == 0
    capsys.readouterr()
    assert main([*argv, "--steps", "3", "--resume"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["steps"] == 3 and Path(doc["outputs"]["adapter"]["path"]).is_file()
    assert [r["step"] for r in RunDir(out).read_log()] == [1, 2, 3]
    assert main([*argv, "--steps", "3", "--store", str(tmp_path)]) == 2  # --store excludes model flags


def test_joint_training_writes_both_models(tiny_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "joint"
    options = JointTrainOptions(
        images=tiny_images,
        out=out,
        loop=LoopOptions(steps=3, log_every=1, progress=False),
        models=tiny_models(),
        lambda_s=2.0,
        batch_size=2,
        crop=64,
        lr=1e-4,
        device="cpu",
        eval_images=1,
    )
    report = train_joint(options)
    record = RunDir(out).read_log()[-1]
    assert {"loss", "bpp", "mse", "ds", "cos", "aux"} <= set(record)
    codec = Codec.load("bmshj2018-hyperprior", 1, report.outputs["codec"]["path"])
    shape = AdapterShape(codec.latent_channels, 64, width=TINY_ADAPTER.width, hidden=TINY_ADAPTER.hidden)
    adapter = Adapter.load(shape, report.outputs["adapter"]["path"])
    assert adapter.embed(codec.compress(make_image(2, 64, 64)).y_hat).shape == (1, 64)
    assert json.loads((out / "provenance.json").read_text())["lambda_s"] == 2.0


def test_world_clip_training_lowers_the_loss_and_loads_as_text_encoder(tmp_path: Path) -> None:
    out = tmp_path / "clip"
    options = ClipTrainOptions(
        out=out,
        loop=LoopOptions(steps=10, log_every=1, checkpoint_every=10, progress=False),
        n_train=8,
        n_eval=8,
        batch_size=8,
        lr=1e-3,
        warmup=0,
        device="cpu",
    )
    report = train_clip(options)
    assert_lowered(losses(out))
    figures = report.result.evaluation["test"]
    assert {"hit@1", "hit@5", "chance@1", "chance@5", "queries"} <= set(figures)
    encoder = TextEncoder.load("licsearch-world", None, report.outputs["clip"]["path"])
    assert encoder.context_length == 32
    assert encoder.embed(["a small red circle on the left on a plain background"]).vectors.shape == (1, 128)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["evaluation"]["test"]["hit@5"] == figures["hit@5"] and prov["data"]["splits"]["test"] == 8


def test_retrieval_hits_counts_identical_captions_as_hits() -> None:
    captions = ["a", "b", "a", "c"]
    images = torch.eye(4)
    queries = torch.stack([images[2], images[1], images[3]])  # "a" finds its second image, "b" and "c" their own
    figures = retrieval_hits(images, queries, captions)
    assert figures["hit@1"] == 1.0 and figures["queries"] == 3
    assert figures["chance@1"] == pytest.approx((2 / 4 + 1 / 4 + 1 / 4) / 3)
    wrong = torch.stack([images[1], images[0], images[0]])
    assert retrieval_hits(images, wrong, captions)["hit@1"] == 0.0


def test_sampling_and_augmentation_are_functions_of_seed_and_step() -> None:
    epoch = [i for s in range(3) for i, _ in item_keys(6, 2, seed=1, step=s)]
    assert sorted(epoch) == list(range(6))  # every image once per epoch
    assert item_keys(6, 2, seed=1, step=4) == item_keys(6, 2, seed=1, step=4)
    x = torch.rand(3, 40, 50)
    aug = Augment(64, mode="resized", flip=True, jitter=0.1)
    assert torch.equal(aug(x, item_rng(0, 5)), aug(x, item_rng(0, 5)))
    assert Augment(64, mode="random")(x, item_rng(0, 1)).shape == (3, 64, 64)  # padded when smaller than the crop
