"""TorchServe handler of the ``encode`` model: image bytes in; ``.lics`` bitstream, embedding and bpp out.

A shell over :mod:`licsearch.serving.encode`; ``licsearch archive`` packs it with a bundle into ``encode.mar``.
"""

from licsearch.serving.encode import EncodeEndpoint


class EncodeHandler(EncodeEndpoint):
    """The class TorchServe instantiates (it takes the one class defined in this module)."""
