"""Classical codecs through Pillow, the baselines every learned codec is compared with.

One registry, :data:`PILLOW_CODECS`, from a name to how Pillow writes that format and which quality settings
are swept. Settings are Pillow's defaults apart from quality (JPEG: libjpeg(-turbo), 4:2:0 chroma subsampling,
no ``optimize``; WebP: lossy, method 4; AVIF: libavif with its default speed and 4:2:0), which is also how
CompressAI's published JPEG and WebP anchors were made. A format this Pillow build cannot write (AVIF before
Pillow 11.3, or a build without libavif) is left out with a note rather than failing the evaluation.

Rates count every byte of the file, headers included, as the anchors do.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..registry import Registry

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class PillowCodec:
    """A format Pillow can write, with the quality settings to sweep.

    Attributes:
        name: display name ("JPEG").
        pillow_format: Pillow's format id for ``Image.save``.
        feature: the ``PIL.features`` name that says whether this build can write it.
        qualities: settings swept, low to high; higher means more bytes and less distortion.
        options: further ``Image.save`` keyword arguments.
    """

    name: str
    pillow_format: str
    feature: str
    qualities: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)

    def available(self) -> bool:
        from PIL import features

        return bool(features.check(self.feature))

    def version(self) -> str | None:
        from PIL import features

        return features.version(self.feature)

    def encode(self, pixels: np.ndarray, quality: int) -> bytes:
        """(H, W, 3) uint8 RGB -> file bytes at ``quality``."""
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format=self.pillow_format, quality=quality, **self.options)
        return buf.getvalue()

    def decode(self, data: bytes) -> np.ndarray:
        """File bytes -> (H, W, 3) uint8 RGB."""
        import numpy as np
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return np.array(im.convert("RGB"))  # a writable copy, as torch wants

    def describe(self) -> str:
        import PIL

        extra = "".join(f", {k}={v}" for k, v in self.options.items())
        lib = f"{self.feature} {self.version()}{extra}"
        return f"Pillow {PIL.__version__} {self.name} ({lib}), quality {self.qualities}"


PILLOW_CODECS: Registry[PillowCodec] = Registry("Pillow codec")
PILLOW_CODECS.register("JPEG", PillowCodec("JPEG", "JPEG", "jpg", tuple(range(5, 100, 10))))
PILLOW_CODECS.register("WebP", PillowCodec("WebP", "WEBP", "webp", tuple(range(0, 101, 10))))
PILLOW_CODECS.register("AVIF", PillowCodec("AVIF", "AVIF", "avif", tuple(range(10, 91, 10))))
