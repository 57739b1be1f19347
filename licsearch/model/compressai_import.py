"""Importing CompressAI without its point-cloud half, which every licsearch process would otherwise pay for.

Why this goes around the library: ``import compressai`` (1.2.x) imports every subpackage from its ``__init__``,
and two of them are for point clouds: ``compressai.registry.transforms`` builds a table of every
``torchvision.transforms`` and ``torch_geometric.transforms`` class at import time, and
``compressai.transforms.point`` imports ``torch_geometric`` directly. Those two pull in torch_geometric, torchvision
and, through both, ``torch._dynamo``: measured on this 2-core machine, ``import compressai.zoo`` cost 5.8-6.0 s of
CPU against 3.1 s with the two modules below in their place (``import torch`` alone: 1.9-2.1 s). licsearch uses
neither: it builds image codecs from the zoo and never looks a transform up by name.

:func:`load` puts two small modules in their place before CompressAI is first imported: the registry with the same
two names (``TRANSFORMS``, filled only by ``register_transform``, and the decorator) and an empty ``point`` module.
The rest of CompressAI's ``__init__`` runs as shipped. If CompressAI was imported already, nothing changes.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

REGISTRY = "compressai.registry.transforms"
POINT_TRANSFORMS = "compressai.transforms.point"


def load() -> None:
    """Makes the next ``import compressai...`` skip the point-cloud modules (a no-op once CompressAI is imported)."""
    if "compressai" in sys.modules:
        return
    registry = types.ModuleType(REGISTRY, "CompressAI's transform registry, without the point-cloud transforms.")
    table: dict[str, Callable[..., Any]] = {}

    def register_transform(name: str) -> Callable[[Any], Any]:
        def decorator(cls: Any) -> Any:
            table[name] = cls
            return cls

        return decorator

    vars(registry).update(TRANSFORMS=table, register_transform=register_transform)
    vars(registry)["__all__"] = ["TRANSFORMS", "register_transform"]
    point = types.ModuleType(POINT_TRANSFORMS, "CompressAI's point-cloud transforms: not loaded by licsearch.")
    vars(point)["__all__"] = []
    sys.modules.setdefault(REGISTRY, registry)
    sys.modules.setdefault(POINT_TRANSFORMS, point)
