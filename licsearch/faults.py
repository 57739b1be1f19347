"""Crash points for testing crash safety with a real SIGKILL.

``LICSEARCH_CRASH_AT=NAME:N`` makes the process kill itself (SIGKILL, no cleanup) the N-th time it passes
the crash point ``NAME`` (N defaults to 1). Unset, a crash point costs one dictionary lookup. Used by the
test suite to interrupt a real ingest at chosen moments; never set it in production.
"""

from __future__ import annotations

import os
import signal

_ENV = "LICSEARCH_CRASH_AT"
_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Kills the process here if ``LICSEARCH_CRASH_AT`` names this point and its count is reached."""
    spec = os.environ.get(_ENV)
    if not spec:
        return
    target, _, n = spec.partition(":")
    if target != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
