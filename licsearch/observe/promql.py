"""The PromQL that ``deploy/`` ships, read out of the Grafana dashboard and the Prometheus rule files.

A dashboard expression uses Grafana's variables (``$model``, ``$version``, ``$__rate_interval``);
:func:`dashboard_queries` replaces them with what "All" and a rate window mean to Prometheus, so the expression
can be sent to ``/api/v1/query`` as it is. :func:`rule_queries` yields every recording and alert rule's
expression. The template queries of the dashboard (``label_values(metric, label)``) are Grafana functions, not
PromQL: they become the series selector they read (:func:`label_values_selector`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it comes from.

    Attributes:
        kind: ``dashboard``, ``variable`` (a dashboard template query), ``record`` or ``alert``.
        name: the panel title and target ref id, the variable name, the recorded series or the alert name.
        expr: the expression, ready for Prometheus.
        source: the file it was read from.
    """

    kind: str
    name: str
    expr: str
    source: str


def grafana_variables(rate_interval: str) -> dict[str, str]:
    """What the dashboard's variables stand for with "All" selected and the given rate window."""
    return {"$__rate_interval": rate_interval, "$model": ".*", "$version": ".*"}


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """``expr`` with every variable replaced, longest name first (``$__rate_interval`` before a shorter one)."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(name, variables[name])
    if re.search(r"\$\w+", expr):
        raise InputError(f"unknown Grafana variable left in {expr!r}", hint=f"known: {', '.join(sorted(variables))}")
    return expr


def label_values_selector(query: str) -> tuple[str, str]:
    """``label_values(selector, label)`` as (selector, label)."""
    m = _LABEL_VALUES.match(query.strip())
    if not m:
        raise InputError(f"not a label_values(...) query: {query!r}")
    return m["selector"].strip(), m["label"]


def _load(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from e
    if path.suffix == ".json":
        return json.loads(text)
    import yaml  # type: ignore[import-untyped]

    return yaml.safe_load(text)


def dashboard_queries(path: Path, *, rate_interval: str = "1m") -> list[Query]:
    """Every panel target and template variable query of a Grafana dashboard JSON, ready for Prometheus."""
    doc = _load(path)
    variables = grafana_variables(rate_interval)
    out: list[Query] = []
    for var in doc.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var.get("query"), dict) else var["query"]
            selector, _ = label_values_selector(query)
            out.append(Query("variable", var["name"], substitute(selector, variables), str(path)))
    for panel in doc.get("panels", []):
        for target in panel.get("targets", []):
            name = f"{panel.get('title', panel.get('id'))} [{target.get('refId', '?')}]"
            out.append(Query("dashboard", name, substitute(target["expr"], variables), str(path)))
    return out


def rule_queries(paths: Iterable[Path]) -> list[Query]:
    """Every recording rule (``record``) and alert rule (``alert``) expression of Prometheus rule files."""
    out: list[Query] = []
    for path in paths:
        for group in (_load(path) or {}).get("groups", []):
            for rule in group.get("rules", []):
                kind = "record" if "record" in rule else "alert"
                out.append(Query(kind, str(rule[kind]), str(rule["expr"]).strip(), str(path)))
    return out


def metric_names(expr: str, prefixes: tuple[str, ...] = ("licsearch_", "ts_")) -> set[str]:
    """The metric names an expression reads, without histogram suffixes (for checking them against metrics.py)."""
    pattern = r"\b(?:" + "|".join(re.escape(p) for p in prefixes) + r")\w+"
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in re.findall(pattern, expr)}
