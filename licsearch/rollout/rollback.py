"""``licsearch rollout --rollback`` and ``--status``.

Rollback: with an unfinished rollout in the journal, undo it (defaults put back, the candidate unregistered;
outcome ``aborted``). Otherwise make the previous default (one below the top of the journal's default stack)
the default again: registered anew from its archives if the server no longer has it, then set-default for each
model, encode first (the reverse of promotion); when that promotion had switched a store to the candidate's
embedding space (``--store``), the store's previous space is activated again. The history of defaults keeps every
switch.

Status: the journal (current operation with its timeline, default stack, recent history) next to what the
management API says, and whether the two agree: every model's server default must be the live version or, for the
models the journal says it switched, the candidate; a candidate version on the server must be one the journal
registered or reused. ``problems`` lists disagreements; ``next`` says what a rerun would do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from .canary import MODELS
from .management import ManagementClient, ManagementRefused, ManagementUnavailable
from .metrics import rollout_state, write_metrics
from .operation import PROMOTE_ORDER, Hooks, new_operation, reactivate_space, report, run_step, undo
from .state import Journal, Operation, lock_held, locked


def run_rollback(
    state_dir: Path,
    model_store: Path,
    management: str,
    *,
    token: str | None = None,
    pushgateway: str | None = None,
    hooks: Hooks | None = None,
) -> dict[str, Any]:
    """Undoes an unfinished rollout, or returns to the previous default; returns the operation's report."""
    hooks = hooks or Hooks()
    mgmt = ManagementClient(management, token=token)
    with locked(state_dir):
        j = Journal.load(state_dir)
        op = j.current
        try:
            if op is not None and op.kind == "rollout":
                rollout = op
                rollout.error = None
                run_step(j, rollout, "undo", lambda: undo(mgmt, j, rollout, model_store, state_dir), hooks.log)
                j.finish(rollout, "aborted")
                return report(rollout, state_dir)
            if op is None:
                stack = j.doc["stack"]
                if len(stack) < 2:
                    raise InputError(
                        f"no earlier default to roll back to in {state_dir}",
                        hint="only versions promoted by `licsearch rollout` can be rolled back",
                    )
                target, current = stack[-2], stack[-1]
                op = new_operation("rollback", str(j.doc["versions"].get(target, {}).get("bundle", "")), target)
                op.live = dict.fromkeys(MODELS, current)
                op.from_version = current
                j.current = op
                j.save()
            op.error = None
            target = op.candidate_version

            def ensure() -> dict[str, Any]:
                archives = j.doc["versions"].get(target, {}).get("archives", {})
                for m in MODELS:
                    if mgmt.describe(m, target) is None:
                        if m not in archives:
                            raise InputError(f"{m} version {target} is not registered and its archive is unknown")
                        op.registered.append(m)
                        j.save()
                        mgmt.register(archives[m], m)
                return {"registered": list(op.registered)}

            def switch() -> dict[str, Any]:
                for m in reversed(PROMOTE_ORDER):
                    if m not in op.switched:
                        op.switched.append(m)
                        j.save()
                    if mgmt.default_version(m).version != target:
                        mgmt.set_default(m, target)
                j.push_default(target, "rollback")
                return {"default": target}

            def space() -> dict[str, Any]:
                """The store the rolled-back promotion had switched to the candidate's space goes back too."""
                promoted = _promotion_of(j.doc, op.from_version)
                if not promoted or not promoted.get("space_activated"):
                    return {"store": None}
                reactivate_space(Path(promoted["store"]), promoted["live_space"])
                return {"store": promoted["store"], "space_id": promoted["live_space"]}

            run_step(j, op, "ensure", ensure, hooks.log)
            run_step(j, op, "switch", switch, hooks.log)
            run_step(j, op, "space", space, hooks.log)
            j.finish(op, "rolled back")
        except (ManagementUnavailable, ManagementRefused) as e:
            if op is None:
                raise
            op.error = {"type": type(e).__name__, "message": str(e)}
            j.save()
            hooks.log(f"rollout: rollback stopped: {e}; rerun `licsearch rollout --rollback` to continue")
        finally:
            write_metrics(state_dir, j.doc, pushgateway=pushgateway, log=hooks.log)
        return report(op, state_dir)


def _promotion_of(doc: dict[str, Any], version: str | None) -> dict[str, Any] | None:
    """The latest rollout that promoted ``version``."""
    for h in reversed(doc["history"]):
        if h.get("kind") == "rollout" and h.get("outcome") == "promoted" and h.get("candidate_version") == version:
            return h
    return None


def rollout_status(state_dir: Path, management: str | None, *, token: str | None = None) -> dict[str, Any]:
    """The journal next to the server's view (see the module docstring)."""
    j = Journal.load(state_dir)  # atomic writes: a reader always sees a whole document, no lock needed
    doc = j.doc
    op = j.current
    current = report(op, state_dir) if op else None
    running = lock_held(state_dir)
    if current is not None and current["outcome"] == "in progress" and not running:
        current["outcome"] = "interrupted"  # no process holds the lock: it was killed mid-step
    out: dict[str, Any] = {
        "state": rollout_state(doc),
        "state_dir": str(state_dir),
        "running": running,
        "current": current,
        "stack": doc["stack"],
        "defaults": doc["defaults"][-10:],
        "history": [
            {k: h.get(k) for k in ("id", "kind", "candidate_version", "outcome", "reasons", "finished")}
            for h in doc["history"][-10:]
        ],
        "server": None,
        "problems": [],
    }
    if management:
        try:
            server = _server_view(ManagementClient(management, token=token))
        except (ManagementUnavailable, ManagementRefused, InputError) as e:
            out["server"] = {"error": str(e)}
        else:
            out["server"] = server
            out["problems"] = _problems(doc, op, server)
    out["consistent"] = (
        not out["problems"] if isinstance(out["server"], dict) and "error" not in out["server"] else None
    )
    out["next"] = _next(op)
    return out


def _server_view(mgmt: ManagementClient) -> dict[str, Any]:
    view = {}
    for m in MODELS:
        default = mgmt.describe(m)
        view[m] = {
            "default": default.version if default else None,
            "versions": {
                v.version: {"workers": [w.status for w in v.workers], "pids": v.pids} for v in mgmt.versions(m)
            },
        }
    return view


def _problems(doc: dict[str, Any], op: Operation | None, server: dict[str, Any]) -> list[str]:
    problems = []
    if op is None:
        top = doc["stack"][-1] if doc["stack"] else None
        for m, s in server.items():
            if top is not None and s["default"] != top:
                problems.append(f"{m}: the server's default is {s['default']}, the journal's is {top}")
        return problems
    cand = op.candidate_version
    owned = set(op.registered) | set(op.reused)
    for m, s in server.items():
        live = (op.live or {}).get(m)
        if s["default"] == cand and m not in op.switched:
            problems.append(f"{m}: the candidate {cand} is the default but the journal did not switch it")
        elif live is not None and s["default"] not in (live, cand):
            problems.append(f"{m}: the default {s['default']} is neither the live {live} nor the candidate {cand}")
        if cand in s["versions"] and m not in owned and op.kind == "rollout":
            problems.append(f"{m}: version {cand} is registered but the journal did not register it")
    return problems


def _next(op: Operation | None) -> str:
    if op is None:
        return "nothing in progress"
    if op.kind == "rollback":
        return "rerun `licsearch rollout --rollback` to finish the rollback"
    what = {"reject": "clean up the rejected candidate", "promote": "finish promoting the candidate"}.get(
        str(op.decision), f"continue after step {op.phase}"
    )
    flags = f" --version {op.version_flag}" if op.version_flag else ""
    return (
        f"rerun `licsearch rollout --candidate {op.candidate}{flags}` to {what}, "
        "or `licsearch rollout --rollback` to undo it"
    )
