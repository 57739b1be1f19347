"""licsearch: images kept as learned-compression bitstreams that stay searchable.

Layout follows the three planes of the design: ``licsearch.model`` (codec, adapter, text encoder),
``licsearch.storage`` (blob store and vector index), and the control plane (``licsearch.ops`` and the
``licsearch.cli`` shell). Nothing heavy is imported here.
"""

__version__ = "0.1.0"
