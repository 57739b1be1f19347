"""One journalled operation (a rollout or a rollback): its record, its steps, its report, and how it is undone.

An operation is an :class:`~licsearch.rollout.state.Operation` in the journal (:mod:`licsearch.rollout.state`);
:func:`run_step` runs one of its steps (``running`` journalled first, then ``done`` or ``failed``), a
:class:`Rejected` candidate being a completed step with the decision ``reject``. :func:`undo` takes back what an
operation did on the server and in the model store.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LicsearchError
from ..faults import crash_point
from ..serving.routing import ROUTING_FILE, clear_routing
from .management import ManagementClient
from .state import Journal, Operation

PROMOTE_ORDER = ("decode", "embed", "encode")
"""Decoders first: once the new encoder is the default, every decoder already reads what it writes."""
RETRY_HINT = "rerun the same command to continue, or `licsearch rollout --rollback` to undo it"


@dataclass
class Hooks:
    """Callbacks for progress (the CLI logs through ``log``; tests interrupt a canary through ``on_round``)."""

    log: Callable[[str], None] = lambda _: None
    on_round: Callable[[int], None] = lambda _: None


class Rejected(LicsearchError):
    """The candidate is refused; the run goes on to ``cleanup``."""


def run_step(
    journal: Journal,
    op: Operation,
    name: str,
    fn: Callable[[], Any],
    log: Callable[[str], None],
    *,
    on_start: Callable[[], None] = lambda: None,
) -> None:
    """Runs one journalled step unless it is done: ``running`` first, then ``done`` (or ``failed`` and re-raised).

    A :class:`Rejected` candidate is a completed step: the decision becomes ``reject`` with the reason.
    """
    if name in op.done_steps:
        return
    entry = journal.begin(name, op)
    log(f"rollout: {name} ...")
    on_start()
    try:
        detail = fn()
    except Rejected as e:
        op.decision = "reject"
        op.reasons.append(str(e))
        journal.end(entry, "done", {"rejected": str(e)})
        log(f"rollout: {name}: candidate rejected: {e}")
        return
    except LicsearchError as e:
        journal.end(entry, "failed", {"error": str(e)})
        raise
    journal.end(entry, "done", detail)
    log(f"rollout: {name} done in {entry.duration_s:.2f} s" + (f": {_short(detail)}" if detail else ""))
    crash_point(f"rollout.{name}")


def undo(mgmt: ManagementClient, journal: Journal, op: Operation, model_store: Path, state_dir: Path) -> dict[str, Any]:
    """Puts back the live defaults an operation switched, unregisters what it registered, removes its files."""
    version = op.candidate_version
    restored = []
    for m in reversed(op.switched):
        live = (op.live or {})[m]
        if mgmt.default_version(m).version != live:
            mgmt.set_default(m, live)
        restored.append(m)
    if op.space_activated and op.store and op.live_space:  # the store's queries had switched: switch them back
        reactivate_space(Path(op.store), op.live_space)
        op.space_activated = False
        journal.save()
    removed = [m for m in op.registered if mgmt.unregister(m, version)]
    if op.archived and not op.reused:  # a reused version stays registered: keep its files
        for name in op.archived.values():
            (model_store / name).unlink(missing_ok=True)
        journal.doc["versions"].pop(version, None)
        shutil.rmtree(state_dir / "bundles" / version, ignore_errors=True)
    clear_routing(state_dir / ROUTING_FILE)
    return {"restored_defaults": restored, "unregistered": removed}


def reactivate_space(store: Path, space_id: str) -> None:
    """Makes ``space_id`` the store's active space again (completing it for points ingested meanwhile)."""
    from ..ops.reindex import reindex

    reindex(store, space_id=space_id, progress=False, activate=True)


def new_operation(kind: str, candidate: str, version: str) -> Operation:
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    return Operation(kind=kind, id=f"{stamp}-{version}", candidate=candidate, candidate_version=version, started=now)


def report(op: Operation, state_dir: Path) -> dict[str, Any]:
    """The rollout's document: outcome, decision and reasons, the timeline of steps, gate and canary figures."""
    outcome = op.outcome or ("interrupted" if op.error else "in progress")
    steps = [{"detail": None, **s.to_dict()} for s in op.steps]
    total = (steps[-1]["finished"] or time.time()) - steps[0]["started"] if steps else 0.0
    doc = {
        "rollout": op.id,
        "kind": op.kind,
        "candidate": op.candidate,
        "candidate_version": op.candidate_version,
        "live": op.live,
        "outcome": outcome,
        "decision": op.decision,
        "reasons": op.reasons,
        "timeline": {"steps": steps, "total_s": round(total, 3)},
        "gate": op.gate,
        "canary": op.canary,
        "registered": op.registered,
        "switched": op.switched,
        "state_dir": str(state_dir),
    }
    if op.error:
        doc["error"] = op.error
    return doc


def _short(detail: Any) -> str:
    text = str(detail)
    return text if len(text) <= 160 else text[:157] + "..."
