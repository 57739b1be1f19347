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

In memory the current operation is an :class:`Operation` with :class:`Step` entries (``to_dict`` / ``from_dict``
give the JSON above; keys this version does not know are kept in ``extra`` and written back as they were), so a
journal written before the types existed loads unchanged. Finished operations stay documents in ``history``.

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
from dataclasses import dataclass, field, fields
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
class Step:
    """One journalled step of an operation (``STEP`` in the module docstring)."""

    name: str
    status: str
    started: float
    finished: float | None = None
    duration_s: float | None = None
    detail: Any = None

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "status": self.status, "started": self.started, "finished": self.finished,
             "duration_s": self.duration_s}  # fmt: skip
        if self.detail is not None:
            d["detail"] = self.detail
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Step:
        return cls(str(d["name"]), str(d["status"]), float(d["started"]), d.get("finished"), d.get("duration_s"),
                   d.get("detail"))  # fmt: skip


@dataclass
class Operation:
    """A rollout or a rollback in progress (``OPERATION`` in the module docstring); mutate it, then save the journal.

    Attributes:
        kind: ``rollout`` or ``rollback``.
        id: time and candidate version.
        candidate, candidate_version: the bundle being rolled out (a rollback's: the version it returns to).
        phase: the step last begun (``done`` when finished).
        decision, outcome, reasons: the verdict so far.
        registered, reused, switched: what it did on the server (journalled before each call).
        steps: its timeline.
        live, live_version, live_bundle, live_space: the version it started from.
        space_id: the candidate's embedding space.
        archived: the candidate's archives, by model.
        store, space_activated: a ``--store`` whose queries it switched to the candidate's space.
        gate, canary: their reports.
        error: the last error that stopped it (``type``, ``message``).
        version_flag: ``--version`` as given (to rerun the same command).
        from_version: a rollback's starting default.
        finished: when it ended.
        extra: keys of the journal this version does not know, kept as they were.
    """

    kind: str
    id: str
    candidate: str
    candidate_version: str
    started: float
    phase: str = "start"
    decision: str | None = None
    outcome: str | None = None
    reasons: list[str] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    switched: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    live: dict[str, str] | None = None
    live_version: str | None = None
    live_bundle: str | None = None
    live_space: str | None = None
    space_id: str | None = None
    archived: dict[str, str] | None = None
    store: str | None = None
    space_activated: bool = False
    gate: dict[str, Any] | None = None
    canary: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    version_flag: str | None = None
    from_version: str | None = None
    finished: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def done_steps(self) -> set[str]:
        return {s.name for s in self.steps if s.status == "done"}

    def to_dict(self) -> dict[str, Any]:
        """The journal document (unset optional keys left out, as the journal always wrote them)."""
        d: dict[str, Any] = dict(self.extra)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.name not in _ALWAYS):
                continue
            d[f.name] = [s.to_dict() for s in value] if f.name == "steps" else value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Operation:
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in known and v is not None}
        kwargs["steps"] = [Step.from_dict(s) for s in d.get("steps", [])]
        kwargs.setdefault("reasons", [])
        return cls(**kwargs, extra={k: v for k, v in d.items() if k not in known})


_ALWAYS = frozenset({"decision", "outcome"})  # keys every operation document has, null until set


@dataclass
class Journal:
    """The state document of one state dir, and how to persist it.

    Attributes:
        root: the state dir.
        doc: the state document (see the module docstring); mutate it (or :attr:`current`), then :meth:`save`.
    """

    root: Path
    doc: dict[str, Any]
    _current: Operation | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        cur = self.doc.get("current")
        self._current = Operation.from_dict(cur) if isinstance(cur, dict) else None

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
        try:
            return cls(root, {**empty_state(), **doc})
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"rollout state {path}: the current operation is damaged ({e!r})",
                             hint="restore it or move it away") from e  # fmt: skip

    def save(self) -> None:
        self.doc["current"] = self._current.to_dict() if self._current is not None else None
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / STATE_FILE, (json.dumps(self.doc, indent=1, sort_keys=True) + "\n").encode())

    @property
    def current(self) -> Operation | None:
        """The unfinished operation (a rerun resumes it)."""
        return self._current

    @current.setter
    def current(self, op: Operation | None) -> None:
        self._current = op
        self.doc["current"] = op.to_dict() if op is not None else None

    def begin(self, step: str, op: Operation) -> Step:
        """Journals ``step`` as running (an earlier running entry of any step becomes ``interrupted``)."""
        for s in op.steps:
            if s.status == "running":
                s.status = "interrupted"
        entry = Step(step, "running", time.time())
        op.steps.append(entry)
        op.phase = step
        self.save()
        return entry

    def end(self, entry: Step, status: str = "done", detail: Any = None) -> None:
        entry.status = status
        entry.finished = time.time()
        entry.duration_s = round(entry.finished - entry.started, 3)
        if detail is not None:
            entry.detail = detail
        self.save()

    def finish(self, op: Operation, outcome: str) -> None:
        """Moves the current operation to the history with its outcome."""
        op.outcome = outcome
        op.phase = "done"
        op.finished = time.time()
        self.doc["history"].append(op.to_dict())
        self.current = None
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
