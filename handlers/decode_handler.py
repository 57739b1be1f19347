"""TorchServe handler of the ``decode`` model: ``.lics`` bytes in; a PNG, JPEG or WebP image out.

A shell over :mod:`licsearch.serving.decode`; ``licsearch archive`` packs it with a bundle into ``decode.mar``.
"""

from licsearch.serving.decode import DecodeEndpoint


class DecodeHandler(DecodeEndpoint):
    """The class TorchServe instantiates (it takes the one class defined in this module)."""
