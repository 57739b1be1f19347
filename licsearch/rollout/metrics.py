"""Rollout metrics for Prometheus: a textfile for node_exporter's textfile collector, and an optional push.

Declared once here:

- ``licsearch_rollout_parity_failures_total{model_name, candidate_version}``: counter of failed parity checks
  (the gate's and the canary's), by the model a failed check concerns; cumulative over the state's life.
- ``licsearch_rollout_state``: gauge, 0 idle (no rollout yet), 1 canary (a rollout in progress: gate, register,
  canary), 2 promoted, 3 rolled back, 4 failed (the last rollout was not promoted, or stopped on an error).

Both are written to ``<state dir>/licsearch_rollout.prom`` after every change (``write_to_textfile`` writes a temp
file and renames it) and, with ``--pushgateway URL``, pushed to a Pushgateway under job ``licsearch_rollout``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

TEXTFILE = "licsearch_rollout.prom"
PUSH_JOB = "licsearch_rollout"
STATES = {"idle": 0, "canary": 1, "promoted": 2, "rolled back": 3, "failed": 4}


def rollout_state(doc: dict[str, Any]) -> str:
    """The gauge's state name for a state document."""
    current = doc.get("current")
    if isinstance(current, dict):
        return "failed" if current.get("error") else "canary"
    history = doc.get("history") or []
    if not history:
        return "idle"
    outcome = history[-1].get("outcome")
    return {"promoted": "promoted", "rolled back": "rolled back"}.get(str(outcome), "failed")


def write_metrics(
    state_dir: Path, doc: dict[str, Any], *, pushgateway: str | None = None, log: Callable[[str], None] = print
) -> None:
    """Writes the textfile (and pushes, when asked); a failed push is logged, never fatal."""
    from prometheus_client import CollectorRegistry, push_to_gateway, write_to_textfile
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    failures = CounterMetricFamily(
        "licsearch_rollout_parity_failures",
        "Failed parity checks of rollout candidates (gate and canary), by the model a check concerns.",
        labels=["model_name", "candidate_version"],
    )
    for key, n in sorted(doc.get("parity_failures", {}).items()):
        model, _, version = key.partition("\t")
        failures.add_metric([model, version], float(n))
    state = GaugeMetricFamily(
        "licsearch_rollout_state", "Rollout state: 0 idle, 1 canary (in progress), 2 promoted, 3 rolled back, 4 failed."
    )
    state.add_metric([], float(STATES[rollout_state(doc)]))

    class _Snapshot:
        """The journal's figures as they are now (a counter kept in the journal, not in this process)."""

        def collect(self) -> list[Any]:
            return [failures, state]

    registry = CollectorRegistry()
    registry.register(_Snapshot())
    state_dir.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(state_dir / TEXTFILE), registry)
    if pushgateway:
        try:
            push_to_gateway(pushgateway, job=PUSH_JOB, registry=registry, timeout=10)
        except OSError as e:
            log(f"rollout: warning: could not push metrics to {pushgateway}: {e}")
