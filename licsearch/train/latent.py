"""The codec's latent for training: y_hat exactly as at inference, and the differentiable training forward.

The adapter must be trained on the y_hat it will read from bitstreams, so :func:`inference_y_hat` follows
:meth:`licsearch.model.codec.Codec.compress` step by step (z symbols around the medians, means from the
canonical integer entropy path, y rounded around the means) and only leaves out the rANS coding, which does
not change y_hat. :func:`training_forward` is CompressAI's forward (additive uniform noise in place of
rounding, so that the rate is differentiable) that also hands out the latent for the adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..model.codec import CODEC_ARCHS, CodecArch, load_codec_model
from ..model.weights import RANDOM, seeded

if TYPE_CHECKING:
    import torch

    from ..model.codec import Codec


def check_crop(crop: int, arch: CodecArch) -> None:
    """Training crops must be whole multiples of the codec's downsampling (64) so that no padding is needed."""
    if crop < arch.downsampling or crop % arch.downsampling:
        raise InputError(
            f"--crop {crop} is not a multiple of {arch.downsampling}",
            hint=f"use e.g. {max(arch.downsampling, crop // arch.downsampling * arch.downsampling)}",
        )


def build_trainable_codec(arch_name: str, quality: int, init: str, *, seed: int) -> Any:
    """A CompressAI model in training mode with gradients on.

    Args:
        arch_name: a registered codec architecture.
        quality: the zoo quality, which fixes the channel counts.
        init: ``random`` (CompressAI's default initialisation, seeded), ``pretrained`` or a checkpoint path.
        seed: seed of the random initialisation.
    """
    arch = CODEC_ARCHS.get(arch_name)
    arch.check_quality(quality)
    if init == RANDOM:
        from compressai.zoo.image import cfgs, model_architectures

        # Not Codec.load's random model: that one scales g_a up so that untrained codecs tell images apart,
        # which is a poor starting point for optimisation.
        with seeded(seed):
            model = model_architectures[arch_name](*cfgs[arch_name][quality])
    else:
        model = load_codec_model(arch_name, quality, init, seed=seed)
    for p in model.parameters():
        p.requires_grad_(True)
    return model.train()


def inference_y_hat(codec: Codec, x: torch.Tensor) -> torch.Tensor:
    """y_hat of a batch of images (B, 3, H, W in [0, 1], H and W multiples of 64) as ``Codec.compress`` makes it.

    The heavy transforms run where the codec's model is (CPU or GPU); the canonical entropy path runs on the
    CPU in exact integer arithmetic, as at inference.
    """
    import torch

    with torch.no_grad():
        y = codec.transforms.g_a(x).float()
        z = codec.transforms.h_a(y).float()
        if not codec.arch.has_means:
            return torch.round(y)  # the canonical path's means are exactly zero for scale-only models
        medians = codec.z_medians.to(z.device).view(1, -1, 1, 1)
        z_sym = torch.round(z - medians)
        means = codec.entropy_path(z_sym.cpu()).means.to(y.device)
        return torch.round(y - means) + means


def training_forward(model: Any, arch: CodecArch, x: torch.Tensor) -> dict[str, Any]:
    """CompressAI's training forward, plus ``y_adapter``: the latent to feed the adapter.

    ``x_hat`` and the likelihoods come from the noisy latent, as in CompressAI. The adapter reads y rounded
    around the predicted means (what it reads at inference), with a straight-through gradient to y, so that
    joint training does not teach it a noise distribution it never sees in a bitstream.

    Returns:
        ``{"x_hat", "likelihoods": {"y", "z"}, "y_adapter"}``.
    """
    import torch

    y = model.g_a(x)
    z = model.h_a(torch.abs(y) if arch.abs_before_h_a else y)
    z_hat, z_likelihoods = model.entropy_bottleneck(z)
    params = model.h_s(z_hat)
    if arch.has_means:
        scales, means = params.chunk(2, 1)
        y_hat, y_likelihoods = model.gaussian_conditional(y, scales, means=means)
        centred = y - means
    else:
        y_hat, y_likelihoods = model.gaussian_conditional(y, params)
        centred = y
    y_adapter = y + (torch.round(centred) - centred).detach()
    return {"x_hat": model.g_s(y_hat), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}, "y_adapter": y_adapter}
