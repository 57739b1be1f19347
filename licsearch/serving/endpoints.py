"""The endpoints by name: one registry, read by ``licsearch archive`` to build one model archive each."""

from __future__ import annotations

from typing import Any

from ..registry import Registry
from .decode import DecodeEndpoint
from .embed import EmbedEndpoint
from .encode import EncodeEndpoint
from .endpoint import Endpoint
from .search import SearchEndpoint

ENDPOINTS: Registry[type[Endpoint[Any, Any]]] = Registry("serving endpoint")
for _endpoint in (EncodeEndpoint, DecodeEndpoint, EmbedEndpoint, SearchEndpoint):
    ENDPOINTS.register(_endpoint.name, _endpoint)


def handler_file(name: str) -> str:
    """The handler module of an endpoint in ``handlers/``: a thin subclass TorchServe loads from the archive."""
    ENDPOINTS.get(name)
    return f"{name}_handler.py"
