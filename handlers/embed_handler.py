"""TorchServe handler of the ``embed`` model: text, image or ``.lics`` bytes in; vectors in the bundle's space out.

A shell over :mod:`licsearch.serving.embed`; ``licsearch archive`` packs it with a bundle into ``embed.mar``.
"""

from licsearch.serving.embed import EmbedEndpoint


class EmbedHandler(EmbedEndpoint):
    """The class TorchServe instantiates (it takes the one class defined in this module)."""
