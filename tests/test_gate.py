"""Parity gate: an exact copy passes, a damaged candidate fails, and the figures mean what they say."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from licsearch.errors import InputError
from licsearch.metrics import psnr, recall_overlap
from licsearch.model.adapter import Adapter, AdapterShape
from licsearch.model.models import ModelSet
from licsearch.model.weights import save_state_dict
from licsearch.ops.gate import GateThresholds, run_gate

from .conftest import make_image, tiny_models


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


def test_perturbed_adapter_fails(reference: ModelSet, images: list[np.ndarray], tmp_path: Path) -> None:
    shape = AdapterShape(reference.codec.latent_channels, reference.embed_dim)
    state = Adapter.load(shape, "random").module.state_dict()
    gen = torch.Generator().manual_seed(1)
    noisy = {k: v + 0.5 * v.std() * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
             for k, v in state.items()}  # fmt: skip
    path = tmp_path / "adapter.safetensors"
    save_state_dict(noisy, path)
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
