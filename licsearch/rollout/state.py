"""The rollout journal: one JSON file, rewritten atomically after every step, so a SIGKILL never loses or tears it.

``<state dir>/state.json`` (the state dir defaults to ``<model store>/.rollout``)::

    {"format": 1,
     "versions": {VERSION: {"bundle", "source", "manifest_sha256", "space_id", "archives": {MODEL: FILE}}},
     "stack": [VERSION, ...],            # defaults in force, oldest first: promote pushes, rollback pops
     "defaults": [{"version", "at", "by"}],   # every default switch ever made (the history; never shortened)
     "current": null | OPERATION,         # an unfinished rollout or rollback: a rerun resumes it
     "history": [OPERATION, ...],         # finished operations, newest last
     "parity_failures": {"MODEL\\tVERSION": N}}   # cumulative, for the Prometheus counter

    OPERATION = {"kind": "rollout" | "rollback", "id", "candidate", "candidate_version", "live": {MODEL: VERSION},
                 "phase", "decision": null | "promote" | "reject", "outcome": null | "promoted" | "rejected" |
                 "rolled back" | "aborted", "reasons": [...], "error": null | {"type", "message"},
                 "live_space", "space_id", "archived": {MODEL: FILE},
                 "registered": [MODEL],   # registered by this operation (journalled *before* each call)
                 "reused": [MODEL],       # the version was registered already (same archive): left registered
                 "switched": [MODEL],     # defaults this operation switched (journalled before each call)
                 "store", "space_activated",   # --store: whose queries were switched to the candidate's space
                 "gate": {...}, "canary": {...}, "steps": [STEP]}
    STEP = {"name", "status": "running" | "done" | "failed" | "interrupted", "started", "finished",
            "duration_s", "detail"}

A step is journalled as ``running`` before it does anything and ``done`` (or ``failed``, with the error) after; a
``running`` step found by the next run was interrupted, is marked so, and is done again (every step is idempotent).
One process at a time holds ``state.lock`` (``flock``); another rollout or rollback on the same state dir is refused
at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, StoreError
from ..fsutil import atomic_write

STATE_FORMAT = 1
STATE_FILE = "state.json"
LOCK_FILE = "state.lock"


def empty_state() -> dict[str, Any]:
    return {
        "format": STATE_FORMAT,
        "versions": {},
        "stack": [],
        "defaults": [],
        "current": None,
        "history": [],
        "parity_failures": {},
    }


@dataclass
class Journal:
    """The state document of one state dir, and how to persist it.

    Attributes:
        root: the state dir.
        doc: the state document (see the module docstring); mutate it, then :meth:`save`.
    """

    root: Path
    doc: dict[str, Any]

    @classmethod
    def load(cls, root: Path) -> Journal:
        path = root / STATE_FILE
        if not path.is_file():
            return cls(root, empty_state())
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise StoreError(f"rollout state {path} is unreadable: {e}", hint="restore it or move it away") from e
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise StoreError(f"rollout state {path} has an unknown format", hint=f"expected format {STATE_FORMAT}")
        return cls(root, {**empty_state(), **doc})

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / STATE_FILE, (json.dumps(self.doc, indent=1, sort_keys=True) + "\n").encode())

    @property
    def current(self) -> dict[str, Any] | None:
        cur = self.doc.get("current")
        return cur if isinstance(cur, dict) else None

    def begin(self, step: str, op: dict[str, Any]) -> dict[str, Any]:
        """Journals ``step`` as running (an earlier running entry of any step becomes ``interrupted``)."""
        for s in op["steps"]:
            if s["status"] == "running":
                s["status"] = "interrupted"
        entry = {"name": step, "status": "running", "started": time.time(), "finished": None, "duration_s": None}
        op["steps"].append(entry)
        op["phase"] = step
        self.save()
        return entry

    def end(self, entry: dict[str, Any], status: str = "done", detail: Any = None) -> None:
        entry["status"] = status
        entry["finished"] = time.time()
        entry["duration_s"] = round(entry["finished"] - entry["started"], 3)
        if detail is not None:
            entry["detail"] = detail
        self.save()

    def finish(self, op: dict[str, Any], outcome: str) -> None:
        """Moves the current operation to the history with its outcome."""
        op["outcome"] = outcome
        op["phase"] = "done"
        op["finished"] = time.time()
        self.doc["history"].append(op)
        self.doc["current"] = None
        self.save()

    def push_default(self, version: str, by: str) -> None:
        self.doc["defaults"].append({"version": version, "at": time.time(), "by": by})
        stack = self.doc["stack"]
        if by == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != version:
                stack.append(version)
        elif not stack or stack[-1] != version:
            stack.append(version)

    def count_parity_failures(self, models: list[str], version: str) -> None:
        counts = self.doc["parity_failures"]
        for m in models:
            key = f"{m}\t{version}"
            counts[key] = int(counts.get(key, 0)) + 1


def done_steps(op: dict[str, Any]) -> set[str]:
    return {s["name"] for s in op["steps"] if s["status"] == "done"}


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Holds the state dir's lock for one rollout or rollback; refuses when another process holds it."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK_FILE).open("a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                f"another rollout is running on {root}", hint="wait for it, or look at `licsearch rollout --status`"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def lock_held(root: Path) -> bool:
    """Whether a rollout or rollback process is running on this state dir now."""
    path = root / LOCK_FILE
    if not path.is_file():
        return False
    with path.open("a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return False
