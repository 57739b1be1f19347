"""The ``encode`` endpoint: image bytes in; the ``.lics`` bitstream, its embedding and its figures out.

Answers JSON (``bitstream`` in base64, ``embedding``, ``bpp``, ``width``, ``height``, ``codec_profile``,
``space_id``) by default, or the raw ``.lics`` bytes when the request sends ``Accept: application/octet-stream``.
Images of one size in a batch go through the transforms and the adapter together.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .endpoint import Endpoint
from .metrics import ENCODED_BPP
from .request import Request, negotiate
from .responses import JSON, Reply, json_reply

if TYPE_CHECKING:
    import numpy as np

    from ..model.models import Encoded

OCTET = "application/octet-stream"


@dataclass(frozen=True)
class EncodeInput:
    """A decoded image and whether to answer with raw ``.lics`` bytes."""

    pixels: np.ndarray
    raw: bool


class EncodeEndpoint(Endpoint[EncodeInput, "Encoded"]):
    """Compresses and embeds images."""

    name = "encode"
    components = ("codec", "adapter")

    def parse(self, request: Request) -> EncodeInput:
        from ..imageio import load_image

        raw = negotiate(request.header("accept"), (JSON, OCTET)) == OCTET
        data = self.binary(request.payload(), "an image")
        image = load_image(data, max_pixels=self.limits.max_pixels, max_bytes=self.limits.max_bytes, name="image")
        return EncodeInput(image.pixels, raw)

    def compute(self, inputs: dict[int, EncodeInput]) -> dict[int, Encoded | Exception]:
        by_size: dict[tuple[int, ...], dict[int, EncodeInput]] = {}
        for i, item in inputs.items():
            by_size.setdefault(item.pixels.shape, {})[i] = item
        out: dict[int, Encoded | Exception] = {}
        with self.clock.stage("entropy_coding"):
            for group in by_size.values():
                out.update(self.batched(group, lambda items: self.plane.encode_batch([x.pixels for x in items])))
        return out

    def reply(self, item: EncodeInput, result: Encoded) -> Reply:
        self.recorder.add(ENCODED_BPP, result.bpp)
        if item.raw:
            return Reply(result.data, OCTET)
        return json_reply(
            {
                "bitstream": base64.b64encode(result.data).decode("ascii"),
                "bytes": len(result.data),
                "embedding": result.embedding,
                "bpp": result.bpp,
                "width": result.width,
                "height": result.height,
                "codec_profile": self.plane.codec.profile_id,
                "space_id": self.bundle.space_id,
            }
        )
