"""The multi-scale adapter of Luo 2024 (arXiv 2404.10234): codec latent y_hat -> CLIP-aligned embedding.

Three resolution-alignment branches read y_hat at 1/16, 1/32 and 1/64 of the image resolution (the
identity, then one and two strided 3x3 convolutions); each is pooled globally (mean and max) so that any
image size and aspect ratio gives a fixed-length vector. The branches are concatenated and an MLP maps
them to the CLIP embedding size; the output is L2-normalised. Only global pooling is used (no adaptive
pooling to a grid), so the graph exports to ONNX with dynamic spatial axes.

Because it reads y_hat, an embedding can be rebuilt from a stored bitstream by entropy decoding alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ModelError
from .weights import RANDOM, load_state_dict_file, seeded, state_dict_sha256

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class AdapterShape:
    """Hyper-parameters that fix the adapter's tensor shapes.

    Attributes:
        in_channels: channels of y_hat (the codec's M).
        embed_dim: the CLIP embedding size.
        width: channels of the strided branches.
        hidden: width of the MLP's hidden layer.
    """

    in_channels: int
    embed_dim: int
    width: int = 256
    hidden: int = 1024

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def build_adapter(shape: AdapterShape) -> nn.Module:
    """An untrained adapter module (weights from torch's default init under the caller's RNG)."""
    import torch
    from torch import nn

    class MultiScaleAdapter(nn.Module):
        def __init__(self, s: AdapterShape) -> None:
            super().__init__()
            self.shape = s
            self.norm = nn.GroupNorm(1, s.in_channels, affine=False)  # latents' scale varies with the codec
            self.down1 = nn.Sequential(nn.Conv2d(s.in_channels, s.width, 3, stride=2, padding=1), nn.GELU())
            self.down2 = nn.Sequential(nn.Conv2d(s.width, s.width, 3, stride=2, padding=1), nn.GELU())
            pooled = 2 * (s.in_channels + 2 * s.width)
            self.mlp = nn.Sequential(
                nn.LayerNorm(pooled), nn.Linear(pooled, s.hidden), nn.GELU(), nn.Linear(s.hidden, s.embed_dim)
            )

        def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
            x0 = self.norm(y_hat)
            x1 = self.down1(x0)
            x2 = self.down2(x1)
            feats = [torch.cat([t.mean(dim=(2, 3)), t.amax(dim=(2, 3))], dim=1) for t in (x0, x1, x2)]
            emb = self.mlp(torch.cat(feats, dim=1))
            return nn.functional.normalize(emb, dim=-1)

    return MultiScaleAdapter(shape)


class Adapter:
    """A loaded adapter and its fingerprint.

    Args:
        module: the adapter network.
        shape: its hyper-parameters.
        weights_sha256: fingerprint of its weights.
        random_weights: True when untrained (results must be labelled).
    """

    def __init__(self, module: nn.Module, shape: AdapterShape, weights_sha256: str, *, random_weights: bool) -> None:
        self.module = module.eval()
        self.shape = shape
        self.weights_sha256 = weights_sha256
        self.random_weights = random_weights

    @classmethod
    def load(cls, shape: AdapterShape, weights: str, *, seed: int = 0) -> Adapter:
        """Random (seeded) or from a checkpoint whose tensors must fit ``shape``."""
        with seeded(seed):
            module = build_adapter(shape)
        if weights != RANDOM:
            state = load_state_dict_file(weights, what="adapter")
            try:
                module.load_state_dict(state)
            except RuntimeError as e:
                raise ModelError(
                    f"adapter weights in {weights} do not fit {shape}: {str(e).splitlines()[0]}",
                    hint="the adapter must be trained for this codec's latent channels and this CLIP's embedding size",
                ) from e
        for p in module.parameters():
            p.requires_grad_(False)
        return cls(module, shape, state_dict_sha256(module.state_dict()), random_weights=weights == RANDOM)

    def embed(self, y_hat: torch.Tensor) -> torch.Tensor:
        """(B, M, h, w) latents -> (B, D) unit vectors."""
        import torch

        with torch.inference_mode():
            return self.module(y_hat.float())

    def metadata(self) -> dict[str, Any]:
        return {"kind": "adapter", **{k: str(v) for k, v in self.shape.to_dict().items()}}
