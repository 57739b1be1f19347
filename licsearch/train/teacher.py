"""CLIP's image tower as the adapter's teacher: the target embedding of the very crop the codec sees."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..model.text import load_clip_model
from ..model.weights import state_dict_sha256

if TYPE_CHECKING:
    import torch


class ClipTeacher:
    """Embeds image batches with a frozen CLIP image tower, preprocessing as open_clip does at inference.

    The input is the augmented square crop in [0, 1]; it is resized (bicubic, antialiased) to the tower's
    input size and normalised with the model's mean and standard deviation. A square crop resized to a
    square is what open_clip's resize-shorter-side-then-centre-crop does to it.

    Args:
        model: an open_clip CLIP model.
        name: its open_clip model name.
        device: where to run it.
    """

    def __init__(self, model: Any, name: str, device: torch.device) -> None:
        import open_clip
        import torch

        self.name = name
        self.weights_sha256 = state_dict_sha256(model.state_dict())
        self.model = model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD), device=device).view(1, 3, 1, 1)
        model_cfg = open_clip.get_model_config(name) or {}
        self.embed_dim = int(model_cfg.get("embed_dim") or model.visual.output_dim)

    @classmethod
    def load(cls, name: str, tag: str | None, weights: str, device: torch.device, *, seed: int = 0) -> ClipTeacher:
        """From ``pretrained`` (with ``tag``), ``random`` (seeded) or a checkpoint path."""
        return cls(load_clip_model(name, tag, weights, seed=seed), name, device)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        return (x - self.mean) / self.std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) crops in [0, 1] -> (B, D) unit vectors."""
        import torch

        with torch.no_grad():
            return self.model.encode_image(self.preprocess(x), normalize=True).float()
