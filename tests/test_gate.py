"""Parity gate: an exact copy passes, a damaged candidate fails, and the figures mean what they say."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from licsearch.bundle.export import export_bundle
from licsearch.bundle.manifest import Manifest
from licsearch.bundle.runtime import BundleModelSet
from licsearch.errors import InputError
from licsearch.metrics import psnr, recall_overlap
from licsearch.model.adapter import Adapter, AdapterShape
from licsearch.model.models import ModelSet
from licsearch.model.weights import save_state_dict
from licsearch.release.gate import CheckFailure, GateThresholds, run_gate

from .conftest import make_image, run_cli, tiny_models, write_png
from .test_bundle import TinyBundles, cli_inprocess, tiny_bundles


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [make_image(i, 64, 96) for i in range(6)]


@pytest.fixture(scope="module")
def reference() -> ModelSet:
    return ModelSet(tiny_models())


def test_exact_copy_passes(reference: ModelSet, images: list[np.ndarray]) -> None:
    rep = run_gate(reference, ModelSet(tiny_models()), images, ["a red circle", "a blue square"])
    assert rep.passed, rep.failures
    assert rep.psnr_delta == 0 and rep.bpp_delta_pct == 0
    assert rep.image_cos_min > 0.9999 and rep.text_cos_min > 0.9999
    assert rep.recall_at_10_overlap == 1.0 and rep.cross_decode_failures == 0
    d = rep.to_dict()
    assert d["passed"] is True and set(d["thresholds"]) == {f.name for f in dataclasses.fields(GateThresholds)}


def noisy_adapter(reference: ModelSet, path: Path) -> Path:
    """The random adapter's weights plus seeded noise of half their spread, saved to ``path``."""
    shape = AdapterShape(reference.codec.latent_channels, reference.embed_dim)
    state = Adapter.load(shape, "random").module.state_dict()
    gen = torch.Generator().manual_seed(1)
    noisy = {k: v + 0.5 * v.std() * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
             for k, v in state.items()}  # fmt: skip
    save_state_dict(noisy, path)
    return path


def test_perturbed_adapter_fails(reference: ModelSet, images: list[np.ndarray], tmp_path: Path) -> None:
    path = noisy_adapter(reference, tmp_path / "adapter.safetensors")
    cfg = tiny_models()
    cand = ModelSet(dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, weights=str(path))))
    rep = run_gate(reference, cand, images, ["a red circle"])
    assert not rep.passed
    assert any("image cosine" in f for f in rep.failures)
    assert rep.psnr_delta == 0, "the codec is unchanged, so pixels are too"


def test_other_codec_is_refused(reference: ModelSet, images: list[np.ndarray]) -> None:
    with pytest.raises(InputError, match="differ"):
        run_gate(reference, ModelSet(tiny_models("mbt2018-mean", 1)), images[:1])


def test_recall_overlap_known_answers() -> None:
    rng = np.random.default_rng(0)
    e = rng.normal(size=(20, 8))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert recall_overlap(e, e) == 1.0
    shuffled = e[rng.permutation(20)]
    assert recall_overlap(e, shuffled) < 0.9
    assert recall_overlap(e[:1], e[:1]) == 1.0


def test_psnr() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255
    assert psnr(a, a) == 100.0
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 / (255**2 / 48)))


# -- every check fails on cue, through the real `licsearch gate` -------------------------------------------------


@pytest.fixture(scope="module")
def bundles(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TinyBundles:
    return tiny_bundles(request.config, tmp_path_factory)


@pytest.fixture(scope="module")
def image_dir(images: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("gate-images")
    for i, img in enumerate(images):
        write_png(d / f"{i}.png", img)
    return d


def copy_bundle(src: Path, dst: Path, space_id: str | None = None) -> Path:
    shutil.copytree(src, dst)
    if space_id is not None:
        dataclasses.replace(Manifest.load(dst), space_id=space_id).save(dst)
    return dst


def gate_cli(reference: Path, candidate: Path, images: Path, *flags: str) -> tuple[int, dict[str, Any]]:
    res = cli_inprocess("gate", "--reference", str(reference), "--candidate", str(candidate), "--images",
                        str(images), "--json", *flags)  # fmt: skip
    return res.returncode, json.loads(res.stdout)


# An exact copy measures delta 0, cosine 1 and overlap 1; each flag sets its bound just past that.
TIGHTENED = {
    "psnr_delta": (["--psnr-delta-min", "0.001"], ["psnr_delta"], "decode"),
    "bpp_delta": (["--bpp-delta-max", "-0.001"], ["bpp_delta"], "encode"),
    "cos_mean": (["--cos-mean-min", "1.001"], ["image_cos_mean", "text_cos_mean"], None),
    "recall_overlap": (["--recall-overlap-min", "1.001"], ["recall_overlap"], "embed"),
}
FIGURE = {"psnr_delta": "psnr_delta", "bpp_delta": "bpp_delta_pct", "image_cos_mean": "image_cos_mean",
          "text_cos_mean": "text_cos_mean", "recall_overlap": "recall_at_10_overlap"}  # fmt: skip


@pytest.mark.parametrize("case", sorted(TIGHTENED))
def test_each_threshold_fails_alone_when_tightened(
    bundles: TinyBundles, image_dir: Path, tmp_path: Path, case: str
) -> None:
    flags, expected, model = TIGHTENED[case]
    cand = copy_bundle(bundles.fp32, tmp_path / "cand")
    rc, doc = gate_cli(bundles.fp32, cand, image_dir, *flags)
    assert rc == 1 and doc["passed"] is False
    failed = doc["failed_checks"]
    assert [f["check"] for f in failed] == expected
    assert doc["failures"] == [f["message"] for f in failed], "the old message list stays, in the same order"
    for f in failed:
        assert f["measured"] == pytest.approx(doc[FIGURE[f["check"]]]) and f["threshold"] == float(flags[1])
        assert model is None or f["model"] == model
    assert {f["model"] for f in failed} <= {"encode", "decode", "embed"}


def test_a_candidate_with_other_adapter_weights_fails_on_images_not_pixels(
    bundles: TinyBundles, image_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny_models()
    noisy = noisy_adapter(bundles.eager, tmp_path / "adapter.safetensors")
    cand = tmp_path / "cand"
    export_bundle(dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, weights=str(noisy))), cand,
                  space_id=bundles.space_id)  # fmt: skip
    rc, doc = gate_cli(bundles.fp32, cand, image_dir)
    checks = {f["check"]: f for f in doc["failed_checks"]}
    assert rc == 1 and "image_cos_mean" in checks and checks["image_cos_mean"]["model"] == "encode"
    assert "text_cos_mean" not in checks and "psnr_delta" not in checks and "bpp_delta" not in checks
    assert doc["psnr_delta"] == 0 and doc["bpp_delta_pct"] == 0, "the codec is the same, so are pixels and rate"


def test_image_cosine_min_and_latency_ratio_fail_when_held(bundles: TinyBundles, images: list[np.ndarray]) -> None:
    th = GateThresholds(cos_min_min=1.001, latency_ratio_max=0.0)  # an exact copy's least cosine is at most 1
    rep = run_gate(BundleModelSet(bundles.fp32), BundleModelSet(bundles.fp32), images[:2], ["a red circle"], th)
    assert [(f.check, f.model) for f in rep.failed_checks] == [("image_cos_min", "encode"), ("latency_ratio", "encode")]
    cos_min, latency = rep.failed_checks
    assert cos_min.measured == rep.image_cos_min and cos_min.threshold == 1.001 and cos_min.parity
    assert latency.measured == rep.latency_ratio > 0 and latency.threshold == 0.0 and not latency.parity
    assert rep.to_dict()["failed_checks"][1] == latency.to_dict()
    assert CheckFailure.from_dict(latency.to_dict()) == latency


def test_image_cosine_min_and_latency_ratio_flags_fail_the_gate_cli(bundles: TinyBundles, image_dir: Path) -> None:
    rc, doc = gate_cli(bundles.fp32, bundles.fp32, image_dir, "--max-images", "2")
    assert rc == 0 and doc["passed"], "neither bound is held by default"
    rc, doc = gate_cli(bundles.fp32, bundles.fp32, image_dir, "--max-images", "2", "--cos-min-min", "1.001",
                       "--latency-ratio-max", "0")  # fmt: skip
    assert rc == 1 and not doc["passed"]
    failed = {f["check"]: f for f in doc["failed_checks"]}
    assert sorted(failed) == ["image_cos_min", "latency_ratio"]
    assert failed["image_cos_min"]["measured"] == doc["image_cos_min"] and failed["image_cos_min"]["threshold"] == 1.001
    assert failed["latency_ratio"]["measured"] == doc["latency_ratio"] > 0 and failed["latency_ratio"]["threshold"] == 0


class _OutOfStepDecoder(BundleModelSet):
    """A runtime whose entropy decoder disagrees with the encoder's by one quantization step in one place."""

    def entropy_decode(self, data: bytes) -> tuple[Any, torch.Tensor]:
        bs, y_hat = super().entropy_decode(data)
        y_hat = y_hat.clone()
        y_hat.view(-1)[0] += 1
        return bs, y_hat


def test_cross_decode_fails_for_a_decoder_out_of_step(bundles: TinyBundles, images: list[np.ndarray]) -> None:
    """Not reachable with a valid bundle (the loader refuses any codec checkpoint but the manifest's), hence a
    runtime whose decoder is off by one step."""
    rep = run_gate(BundleModelSet(bundles.fp32), _OutOfStepDecoder(bundles.fp32), images[:3], ["a red circle"])
    assert rep.cross_decode_failures == 2 * 3, "each side's bitstream fails on the other side"
    cross = [f for f in rep.failed_checks if f.check == "cross_decode"]
    assert len(cross) == 1 and cross[0].model == "decode" and cross[0].measured == 6.0 and cross[0].threshold == 0.0


def test_assign_space_gives_the_reference_space_only_on_a_pass(
    bundles: TinyBundles, image_dir: Path, tmp_path: Path
) -> None:
    passing = copy_bundle(bundles.fp32, tmp_path / "pass", space_id="its-own-space")
    rc, doc = gate_cli(bundles.fp32, passing, image_dir, "--assign-space")
    assert rc == 0 and doc["passed"] and doc["candidate_space_id"] == bundles.space_id
    assert Manifest.load(passing).space_id == bundles.space_id

    failing = copy_bundle(bundles.fp32, tmp_path / "fail")  # starts in the reference's space
    proc = run_cli("gate", "--reference", str(bundles.fp32), "--candidate", str(failing), "--images", str(image_dir),
                   "--assign-space", "--psnr-delta-min", "0.001", "--json")  # fmt: skip
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1 and doc["passed"] is False, proc.stderr
    assert doc["candidate_space_id"] != bundles.space_id
    assert Manifest.load(failing).space_id == doc["candidate_space_id"], "the manifest on disk says the same"
