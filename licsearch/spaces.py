"""Embedding-space identity: how a space id is derived, how a candidate's id forks when a gate fails, its states.

Vectors of different spaces never meet in one query. A space id names the models that produce its vectors: by
default a fingerprint of the codec, adapter and CLIP weights (:func:`space_id_for`). A bundle whose parity gate
passed shares the reference's id; one that failed gets an id of its own, forked from the reference's by the
candidate's file hashes (:func:`fork_space_id`), so the same candidate always forks to the same id. Ids are
opaque strings once recorded: stores and bundles keep whatever id they were given, and every one stays valid.

A space has a *kind* (:data:`SPACE_KINDS`): ``adapter`` spaces map the codec latent y_hat to CLIP's space through
the multi-scale adapter (Luo 2024, arXiv 2404.10234), so they are rebuilt from bitstreams by entropy decoding
alone; ``pixels`` spaces hold CLIP's image tower on the pixels as ingested (the teacher a store uses until it has an
adapter for its codec and CLIP, and from which ``licsearch distill`` trains one). A pixels space is rebuilt only by
decoding every image.

The store operations on spaces (status, activation, removal, re-index) are :mod:`licsearch.ops.spaces` and
:mod:`licsearch.ops.reindex`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import ModelsConfig

ACTIVE = "active"
"""The space queries and ingest use (the store config's ``space_id``); never recorded as a state."""
BUILDING = "building"
"""A re-index is writing the space's vectors; it cannot be queried or activated."""
COMPLETE = "complete"
"""Every point carries the space's vector (when it was built); it may be activated."""
RETIRED = "retired"
"""Formerly active; its vectors stay until removed."""
UNRECORDED = "unrecorded"
"""Vectors in the collection that the store config does not record (shown by status only)."""

SPACE_STATES = (BUILDING, COMPLETE, RETIRED)
"""States a non-active space is recorded with in ``store.json``."""

ADAPTER_KIND = "adapter"
"""A space of adapter vectors: y_hat -> vector, rebuildable from the bitstreams without decoding."""
PIXELS_KIND = "pixels"
"""A space of CLIP image-tower vectors of the ingested pixels: the teacher, not rebuildable from bitstreams alone."""
SPACE_KINDS = (ADAPTER_KIND, PIXELS_KIND)
"""Kinds a space is recorded with (absent in older ``store.json`` files: ``adapter``)."""


def space_id_for(models: ModelsConfig) -> str:
    """The default space id of fingerprinted models: the CLIP model's name and a hash of the three weights."""
    c = models
    h = hashlib.sha256(f"{c.codec.sha256}|{c.adapter.sha256}|{c.clip.model}|{c.clip.sha256}".encode())
    return f"{c.clip.model.lower()}-{h.hexdigest()[:12]}"


def pixels_space_id(models: ModelsConfig) -> str:
    """The space id of a ``pixels`` space: the CLIP model's name, ``pixels`` and a hash of the CLIP weights.

    Its vectors depend on CLIP alone (and the ingested pixels), not on the codec or any adapter.
    """
    c = models.clip
    h = hashlib.sha256(f"pixels|{c.model}|{c.sha256}".encode())
    return f"{c.model.lower()}-pixels-{h.hexdigest()[:12]}"


def files_digest(files: Mapping[str, str]) -> str:
    """Eight hex digits over a bundle's file hashes (its manifest's ``files``): the same files, the same digest."""
    return hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()[:8]


def fork_space_id(reference: str, candidate: str, candidate_files: Mapping[str, str]) -> str:
    """The space id a candidate bundle takes when its parity gate against ``reference`` failed.

    A candidate that already has an id of its own keeps it; one that still carries the reference's id (e.g. an
    fp32 re-export, or a bundle gated before) gets ``<reference>-x<digest of its files>``.

    Args:
        reference: the reference (live) bundle's space id.
        candidate: the candidate's current space id.
        candidate_files: the candidate manifest's file hashes.
    """
    if candidate != reference:
        return candidate
    return f"{reference}-x{files_digest(candidate_files)}"


def unproven_space_id(source: str, precision: str) -> str:
    """The space id of a bundle exported with unproven parity (int8): ``<source>-<precision>-<hex time>``, its own
    until a parity gate against the source says otherwise (:func:`gated_space_id`)."""
    return f"{source}-{precision}-{int(time.time()):x}"


def gated_space_id(reference: str, candidate: str, candidate_files: Mapping[str, str], *, passed: bool) -> str:
    """The candidate's space id after a parity gate: the reference's on a pass, else :func:`fork_space_id`."""
    return reference if passed else fork_space_id(reference, candidate, candidate_files)
