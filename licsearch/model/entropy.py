"""The canonical entropy-parameter path: z symbols -> h_s -> Gaussian scales (and means) -> CDF indexes.

Why this exists: an entropy decoder must pick exactly the same CDF for every symbol as the encoder did.
In CompressAI the scales come from ``h_s`` run in floating point, so two backends (or two thread counts,
or two CPUs) that round one multiply-add differently can move a scale across a scale-table boundary and
the rest of the image decodes as garbage (CompressAI issues 279 and 309; Ballé et al. 2019, "Integer
networks for data compression with latent-variable models").

Here ``h_s`` is evaluated in exact integer arithmetic: weights and activations are fixed-point integers,
every product and sum is an integer far below 2**53, so float64 convolution computes it exactly in any
summation order, on any machine, with any thread count. After each layer the accumulator is rescaled by
a floor division by a power of two (exact), then the activation is applied in fixed point. Every encoder
and every decoder, whichever backend runs the heavy transforms, calls this one implementation.

The integerised ``h_s`` differs from the float one by ~2**-10 per activation: a negligible change in rate,
and none in correctness because both ends use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..errors import ModelError

if TYPE_CHECKING:
    import torch
    from torch import nn

ACT_BITS = 10  # fractional bits of activations (resolution 1/1024)
WEIGHT_BITS = 14  # fractional bits of weights
LEAKY_BITS = 16  # fractional bits of the LeakyReLU slope
EXACT_LIMIT = 2.0**52  # float64 represents every integer below 2**53 exactly; keep one bit of headroom

Activation = Literal["none", "relu", "leaky_relu"]


@dataclass(frozen=True)
class IntegerLayer:
    """One convolution of the integerised hyper-synthesis transform.

    Attributes:
        kind: "conv" or "deconv" (transposed convolution).
        weight: float64 tensor of integers (weight * 2**WEIGHT_BITS, rounded).
        bias: float64 tensor of integers at the accumulator's scale.
        stride, padding, output_padding: as in the float layer.
        activation: the activation after the layer.
        leaky_num: the LeakyReLU slope times 2**LEAKY_BITS.
        l1_max: the largest per-output-channel L1 norm of ``weight``, for the exactness bound.
    """

    kind: Literal["conv", "deconv"]
    weight: torch.Tensor
    bias: torch.Tensor
    stride: int
    padding: int
    output_padding: int
    activation: Activation
    leaky_num: int
    l1_max: float


class IntegerHyperSynthesis:
    """``h_s`` of a CompressAI hyperprior model, evaluated exactly in fixed point.

    Args:
        h_s: the float ``nn.Sequential`` of Conv2d / ConvTranspose2d / ReLU / LeakyReLU layers.
    """

    def __init__(self, h_s: nn.Sequential) -> None:
        import torch
        from torch import nn

        layers: list[IntegerLayer] = []
        mods = list(h_s)
        i = 0
        while i < len(mods):
            m = mods[i]
            if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                raise ModelError(f"unsupported layer in h_s: {type(m).__name__}")
            act: Activation = "none"
            leaky_num = 0
            if i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU):
                act, i = "relu", i + 1
            elif i + 1 < len(mods) and isinstance(mods[i + 1], nn.LeakyReLU):
                act, i = "leaky_relu", i + 1
                leaky_num = round(float(getattr(mods[i], "negative_slope", 0.01)) * 2**LEAKY_BITS)
            w = torch.round(m.weight.detach().to(torch.float64) * 2**WEIGHT_BITS)
            b = (
                m.bias.detach()
                if m.bias is not None
                else torch.zeros(w.shape[1 if isinstance(m, nn.ConvTranspose2d) else 0])
            )
            b = torch.round(b.to(torch.float64) * 2 ** (WEIGHT_BITS + ACT_BITS))
            # Conv2d weights are (out, in, k, k); ConvTranspose2d weights are (in, out, k, k).
            per_out = w.abs().sum(dim=(1, 2, 3)) if isinstance(m, nn.Conv2d) else w.abs().sum(dim=(0, 2, 3))
            layers.append(
                IntegerLayer(
                    kind="deconv" if isinstance(m, nn.ConvTranspose2d) else "conv",
                    weight=w,
                    bias=b,
                    stride=int(m.stride[0]),
                    padding=int(m.padding[0]),
                    output_padding=int(m.output_padding[0]) if isinstance(m, nn.ConvTranspose2d) else 0,
                    activation=act,
                    leaky_num=leaky_num,
                    l1_max=float(per_out.max()),
                )
            )
            i += 1
        self.layers = tuple(layers)

    def __call__(self, x_fixed: torch.Tensor) -> torch.Tensor:
        """Runs the layers on a float64 tensor of integers at scale 2**ACT_BITS; returns the same kind."""
        import torch
        import torch.nn.functional as F

        x = x_fixed
        for layer in self.layers:
            bound = float(x.abs().max()) * layer.l1_max + float(layer.bias.abs().max())
            if bound >= EXACT_LIMIT:
                raise ModelError(
                    "hyperprior activations too large for exact integer evaluation",
                    hint="this codec's weights are out of the range the canonical entropy path supports",
                )
            if layer.kind == "conv":
                acc = F.conv2d(x, layer.weight, layer.bias, stride=layer.stride, padding=layer.padding)
            else:
                acc = F.conv_transpose2d(
                    x,
                    layer.weight,
                    layer.bias,
                    stride=layer.stride,
                    padding=layer.padding,
                    output_padding=layer.output_padding,
                )
            x = torch.floor(acc / 2**WEIGHT_BITS)
            if layer.activation == "relu":
                x = torch.clamp_min(x, 0.0)
            elif layer.activation == "leaky_relu":
                x = torch.where(x >= 0, x, torch.floor(x * layer.leaky_num / 2**LEAKY_BITS))
        return x


@dataclass(frozen=True)
class EntropyParams:
    """What the canonical path hands to the Gaussian conditional coder.

    Attributes:
        indexes: int32 CDF indexes, one per element of y.
        means: float32 means of y (zeros for scale-only models); y_hat = symbols + means.
    """

    indexes: torch.Tensor
    means: torch.Tensor


class CanonicalEntropyPath:
    """z symbols -> (CDF indexes, means) for y, identical on every backend and machine.

    Args:
        h_s: the model's float hyper-synthesis transform.
        z_medians: the entropy bottleneck's per-channel medians, shape (C,).
        scale_table: the Gaussian conditional's scale table.
        has_means: True for mean-scale models, whose h_s emits scales then means.
    """

    def __init__(
        self, h_s: nn.Sequential, z_medians: torch.Tensor, scale_table: torch.Tensor, *, has_means: bool
    ) -> None:
        import torch

        self.h_s = IntegerHyperSynthesis(h_s)
        self.has_means = has_means
        self.z_medians_fixed = torch.round(z_medians.detach().to(torch.float64) * 2**ACT_BITS).view(1, -1, 1, 1)
        # Scales below the first entry share index 0, as in CompressAI's GaussianConditional.build_indexes;
        # the last entry is never compared against (it is the top bucket).
        self.thresholds = scale_table.detach().to(torch.float64)[:-1].contiguous()

    def __call__(self, z_symbols: torch.Tensor) -> EntropyParams:
        """Computes y's entropy parameters from integer z symbols (float tensor of integers, (B, C, h, w))."""
        import torch

        x = z_symbols.to(torch.float64) * 2**ACT_BITS + self.z_medians_fixed
        out = self.h_s(x)
        if self.has_means:
            scales_fixed, means_fixed = out.chunk(2, dim=1)
            means = (means_fixed / 2**ACT_BITS).to(torch.float32)
        else:
            scales_fixed = out
            means = torch.zeros(out.shape, dtype=torch.float32)
        scales = (scales_fixed / 2**ACT_BITS).contiguous()
        # Equivalent to GaussianConditional.build_indexes: the index is the number of thresholds below the scale.
        indexes = torch.searchsorted(self.thresholds, scales.reshape(-1), right=False).reshape(scales.shape)
        return EntropyParams(indexes=indexes.to(torch.int32), means=means.contiguous())
