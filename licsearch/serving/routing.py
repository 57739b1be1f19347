"""Canary routing of ``licsearch`` client traffic: a small JSON file the rollout writes and the client reads.

While a rollout with ``--canary PERCENT`` is in its canary window it writes ``<state dir>/routing.json``::

    {"rollout": ID, "expires_at": EPOCH_SECONDS,
     "models": {"encode": {"version": CANDIDATE, "percent": P}, "decode": {...}, "embed": {...}}}

and removes it when the window closes. A client that has ``$LICSEARCH_ROUTING_FILE`` pointing at that file (the
CLI's ``--server`` mode, :class:`~licsearch.serving.client.ServingClient`) sends each request for a listed model to
``/predictions/MODEL/CANDIDATE`` with probability P/100, and to the default version otherwise. A missing,
unreadable or expired file routes nothing, so a rollout killed in its window cannot strand clients on a
candidate for longer than the window (the expiry is the window's end plus a minute).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write

ROUTING_ENV = "LICSEARCH_ROUTING_FILE"
ROUTING_FILE = "routing.json"
EXPIRY_MARGIN_S = 60.0

_cache: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}


def write_routing(path: Path, rollout: str, models: dict[str, str], percent: float, window_s: float) -> None:
    """Opens the canary window: ``percent`` of client requests for each model go to its candidate version."""
    doc = {
        "rollout": rollout,
        "expires_at": time.time() + window_s + EXPIRY_MARGIN_S,
        "models": {m: {"version": v, "percent": percent} for m, v in models.items()},
    }
    atomic_write(path, (json.dumps(doc, indent=1) + "\n").encode())


def clear_routing(path: Path) -> None:
    path.unlink(missing_ok=True)


def _load(path: str) -> dict[str, Any]:
    try:
        st = os.stat(path)
    except OSError:
        return {}
    key = (st.st_ino, st.st_mtime_ns, st.st_size)  # a rewrite (atomic rename) changes the inode
    cached = _cache.get(path)
    if cached and cached[0] == key:
        return cached[1]
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = {}
    doc = doc if isinstance(doc, dict) else {}
    _cache[path] = (key, doc)
    return doc


def pick_version(model: str, *, path: str | None = None, rng: random.Random | None = None) -> str | None:
    """The version a client should send this request for ``model`` to; None for the default version."""
    path = path if path is not None else os.environ.get(ROUTING_ENV)
    if not path:
        return None
    doc = _load(path)
    try:
        if float(doc.get("expires_at", 0)) < time.time():
            return None
        entry = doc["models"][model]
        version, percent = str(entry["version"]), float(entry["percent"])
    except (KeyError, TypeError, ValueError):
        return None
    draw = (rng or random).random() * 100.0
    return version if draw < percent else None
