"""The ``decode`` endpoint: ``.lics`` bytes in, an image out (PNG by default, JPEG or WebP when asked).

The format comes from a ``format`` multipart field or JSON field when given, else from the ``Accept`` header
(``image/png``, ``image/jpeg``, ``image/webp``). TorchServe does not pass URL query parameters to handlers, so
``?format=`` cannot be read. The bitstream travels as the raw body, a multipart file field, or base64 in a JSON
body ``{"bitstream": "...", "format": "webp"}``. A bitstream that claims more pixels than the limit is refused
before anything is decoded.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import InputError
from .endpoint import Endpoint
from .request import Request, negotiate
from .responses import PayloadTooLarge, Reply

if TYPE_CHECKING:
    import numpy as np

FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}
_ALIASES = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp", **FORMATS}


@dataclass(frozen=True)
class DecodeInput:
    """A parsed bitstream's bytes and the image format to answer in."""

    data: bytes
    fmt: str


def image_format(name: str) -> str:
    """``png``, ``jpeg`` or ``webp`` from a format name or MIME type."""
    fmt = _ALIASES.get(name.strip().lower())
    if fmt is None:
        raise InputError(f"unknown image format {name!r}", hint="use png, jpeg or webp")
    return fmt


class DecodeEndpoint(Endpoint[DecodeInput, "np.ndarray"]):
    """Decodes bitstreams to images."""

    name = "decode"
    components = ("codec",)

    def parse(self, request: Request) -> DecodeInput:
        part = request.payload()
        fmt = request.option("format")
        if part.is_json:
            doc = part.json()
            if not isinstance(doc, dict) or not isinstance(doc.get("bitstream"), str):
                raise InputError(
                    'a JSON body must be an object with a base64 "bitstream"',
                    hint='send {"bitstream": "<base64>", "format": "png"}, or the raw .lics bytes',
                )
            try:
                data = base64.b64decode(doc["bitstream"], validate=True)
            except (binascii.Error, ValueError):
                raise InputError('"bitstream" is not valid base64') from None
            fmt = str(doc.get("format") or fmt or "") or None
            if not data:
                raise InputError("empty bitstream")
            if len(data) > self.limits.max_bytes:
                raise PayloadTooLarge(f"bitstream of {len(data)} bytes is over the limit of {self.limits.max_bytes}")
        else:
            data = self.binary(part, "a .lics bitstream")
        chosen = image_format(fmt) if fmt else FORMATS[negotiate(request.header("accept"), tuple(FORMATS))]
        self.bitstream(data)
        return DecodeInput(data, chosen)

    def compute(self, inputs: dict[int, DecodeInput]) -> dict[int, np.ndarray | Exception]:
        with self.clock.stage("entropy_coding"):
            return self.each(inputs, lambda item: self.plane.decode(item.data))

    def reply(self, item: DecodeInput, result: np.ndarray) -> Reply:
        from ..imageio import encode_image

        return Reply(encode_image(result, item.fmt), f"image/{item.fmt}")
