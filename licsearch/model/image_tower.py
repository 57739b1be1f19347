"""CLIP's image tower on ingested pixels: the vectors of a ``pixels`` space (the store's teacher).

Images are preprocessed exactly as open_clip does at inference (:func:`open_clip.transform.image_transform_v2` with
the model's own preprocessing config: resize of the shorter side, centre crop, the model's mean and standard
deviation). For the world CLIP, whose scenes are rendered at the tower's input size, that is its training
normalisation and nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch


class ImageTower:
    """A frozen open_clip model's image tower with its inference preprocessing.

    Args:
        model: an open_clip CLIP model (the one whose text tower embeds queries, shared with it).
    """

    def __init__(self, model: Any) -> None:
        import open_clip
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.model = model
        cfg = {k: v for k, v in open_clip.get_model_preprocess_cfg(model).items() if k in PreprocessCfg.__annotations__}
        self.transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)

    def embed(self, images: list[np.ndarray]) -> torch.Tensor:
        """(H, W, 3) uint8 images of any sizes -> (B, D) unit vectors."""
        import torch
        from PIL import Image

        batch = torch.stack([self.transform(Image.fromarray(im)) for im in images])
        with torch.inference_mode():
            return self.model.encode_image(batch, normalize=True).float()
