"""Prometheus for real: the dashboard's and the rules' PromQL against metrics a real TorchServe exported.

A tiny bundle is archived and served with ``licsearch serve`` on free 127.0.0.1 ports (a server of this module's
own: tests/test_serving.py asserts exact request counts on its server, which this module's traffic would change);
Debian's Prometheus server scrapes its metrics port every second and evaluates deploy/prometheus's rules every
second; real encode, decode and embed requests are sent (licsearch.observe.prometheus, which ``make demo-observe`` runs
too), then every expression of deploy/grafana/licsearch-serving.json and of the rule files goes through
``/api/v1/query``. Every wait is bounded; both servers are stopped in teardown.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from licsearch.bundle.export import export_bundle
from licsearch.errors import InputError
from licsearch.observe import prometheus as observe
from licsearch.observe.promql import Query, dashboard_queries, label_values_selector, rule_queries, substitute

from .conftest import MakeDir, run_cli, tiny_models

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RULES = [DEPLOY / "prometheus" / name for name in observe.RULE_FILES]
DASHBOARD = DEPLOY / "grafana" / "licsearch-serving.json"
needs_servers = pytest.mark.skipif(
    not (shutil.which("java") or os.environ.get("JAVA_HOME")) or shutil.which("prometheus") is None,
    reason="needs Java 17 for TorchServe and Debian's prometheus server (apt-get install openjdk-17-jre-headless "
    "prometheus)",
)


@pytest.fixture(scope="module")
def served(module_tmp: MakeDir) -> Iterator[dict[str, str]]:
    root = module_tmp("observe")
    export_bundle(tiny_models(), root / "bundle", space_id="test")
    run_cli("archive", "--bundle", str(root / "bundle"), "--out", str(root / "model_store"), check=True)
    try:
        yield observe.serve(root / "model_store", root / "run", timeout_s=240, env={"LICSEARCH_ORT_THREADS": "1"})
    finally:
        observe.unserve(root / "run")


@pytest.fixture(scope="module")
def prom(served: dict[str, str], module_tmp: MakeDir) -> Iterator[observe.Prometheus]:
    work = module_tmp("prometheus")
    config = observe.scrape_config(
        {"torchserve": [urlsplit(served["metrics"]).netloc]}, observe.write_rules(RULES, work / "rules")
    )
    with observe.Prometheus.start(config, work) as p:
        yield p
    assert p.proc.poll() is not None, "Prometheus is still running after stop()"


@pytest.fixture(scope="module")
def sent(prom: observe.Prometheus, served: dict[str, str]) -> Counter[str]:
    """Traffic, waited for until scraped and evaluated by every rule."""
    return observe.exercise(prom, served["inference"], rounds=4)


@needs_servers
def test_scrape_target_is_up_and_every_rule_is_loaded_and_healthy(prom: observe.Prometheus, sent: Counter[str]) -> None:
    up = prom.query('up{job="torchserve"}')
    assert [float(s["value"][1]) for s in up] == [1.0]
    loaded = {r["name"]: r for g in prom.api("rules")["groups"] for r in g["rules"]}
    assert set(loaded) == {q.name for q in rule_queries(RULES)}
    assert all(r["health"] == "ok" and not r.get("lastError") for r in loaded.values()), loaded
    firing = [r["name"] for r in loaded.values() if r["type"] == "alerting" and r["state"] == "firing"]
    assert firing == [], "no alert fires on healthy traffic"
    # What the recording rules wrote is in Prometheus as series of their own.
    for record in (q.name for q in rule_queries(RULES) if q.kind == "record"):
        assert prom.query(record), f"{record} recorded nothing"


@needs_servers
def test_every_dashboard_and_rule_query_runs_on_real_metrics(prom: observe.Prometheus, sent: Counter[str]) -> None:
    queries = dashboard_queries(DASHBOARD) + rule_queries(RULES)
    results = observe.evaluate(prom, queries)
    assert len(results) == len(queries) >= 30
    failed = [(r.query.name, r.error) for r in results if r.error]
    assert failed == [], failed
    empty = [r.query.name for r in results if r.needs_data and r.series == 0]
    assert empty == [], f"returned no series: {empty}"

    # The request, latency, stage, batch and bpp queries have real (finite) values for the models sent to.
    by_name = {r.query.name: r for r in results}
    for name in (
        "Requests per second by status [A]", "Error ratio [A]", "Handler latency per request [A]",
        "Handler latency per request [C]", "Time per batch by stage (mean) [A]", "Stage latency p95 [A]",
        "Batch size [A]", "Bits per pixel of encoded images [A]", "endpoint:licsearch_requests:rate5m",
        "endpoint:licsearch_request_latency_seconds:p99_5m", "endpoint:licsearch_errors:ratio_rate5m",
        "model:licsearch_encoded_bits_per_pixel:mean1h",
    ):  # fmt: skip
        assert by_name[name].finite >= 1, f"{name}: {by_name[name]}"
    p99 = {s["metric"]["model_name"]: float(s["value"][1]) for s in prom.query(
        by_name["endpoint:licsearch_request_latency_seconds:p99_5m"].query.expr)}  # fmt: skip
    assert {"encode", "decode", "embed"} <= set(p99) and all(v > 0 for k, v in p99.items() if k in sent)
    rates = {s["metric"]["model_name"] for s in prom.query("endpoint:licsearch_requests:rate5m")}
    assert {"encode", "decode", "embed"} <= rates


@needs_servers
def test_a_broken_query_is_reported_not_hidden(prom: observe.Prometheus, sent: Counter[str]) -> None:
    (bad,) = observe.evaluate(prom, [Query("dashboard", "broken", "sum(rate(licsearch_requests_total[1m])", "")])
    assert not bad.ok and bad.error and "parse error" in bad.error
    (missing,) = observe.evaluate(prom, [Query("record", "missing", "licsearch_no_such_metric_total", "")])
    assert missing.error is None and not missing.ok  # runs, but a non-alert query must return data


def test_dashboard_variables_become_promql() -> None:
    queries = dashboard_queries(DASHBOARD, rate_interval="30s")
    assert queries and all("$" not in q.expr for q in queries)
    assert any("[30s]" in q.expr for q in queries)
    assert {q.name for q in queries if q.kind == "variable"} == {"model", "version"}
    with pytest.raises(InputError, match=r"\$instance"):
        substitute('up{instance="$instance"}', {"$model": ".*"})
    assert label_values_selector('label_values(up{job=~"a|b"}, instance)') == ('up{job=~"a|b"}', "instance")
    with pytest.raises(InputError):
        label_values_selector("query_result(up)")


def test_prometheus_missing_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(observe.ObserveError, match="apt-get install prometheus"):
        observe.Prometheus.start({"scrape_configs": []}, tmp_path / "prom")
