"""TorchServe handler of the ``search`` model: a text or vector query in; hits from a Qdrant server out.

A shell over :mod:`licsearch.serving.search`, which explains why the embedded local store is refused.
"""

from licsearch.serving.search import SearchEndpoint


class SearchHandler(SearchEndpoint):
    """The class TorchServe instantiates (it takes the one class defined in this module)."""
