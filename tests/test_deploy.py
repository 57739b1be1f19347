"""The deployment configuration under deploy/: it parses, Prometheus' own tools accept it, the Kubernetes objects
validate against the Kubernetes JSON schemas (kubernetes-validate bundles them, so this runs offline), and the
files agree with each other (compose mounts, ports, scrape targets, Job shards, the Qdrant collection body).

promtool comes with Debian's prometheus package (.ci/run installs it); without it those tests skip and say so.
The auth proxy's rules run in Debian's nginx (``nginx-light``, also installed by .ci/run) in front of a stub.
"""

from __future__ import annotations

import copy
import http.client
import json
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from licsearch.observe.promql import dashboard_queries, metric_names, rule_queries
from licsearch.serving import server as ts_server
from licsearch.serving.metrics import METRICS, TORCHSERVE_METRICS

from .nginx_proxy import TOKEN, auth_proxy, needs_nginx
from .serving_fixtures import OCTET_JSON, free_ports

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROM = DEPLOY / "prometheus"
RULES = [PROM / "recording.yml", PROM / "alerts.yml"]
K8S_VERSION = "1.31.0"
EXTERNAL = {  # created by hand (deploy/README.md), never kept in the repository
    ("Secret", "licsearch-inference-token"),
    ("Secret", "licsearch-qdrant-api-key"),
    ("ConfigMap", "licsearch-prometheus-rules"),
}
ROLLOUT_METRICS = {"licsearch_rollout_parity_failures_total", "licsearch_rollout_state"}  # pushed by licsearch rollout

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not found: apt-get install prometheus (Debian's package)"
)


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "kind" in doc and not doc["apiVersion"].startswith("kustomize."):
                out.append((path, doc))
    return out


def find(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in k8s_objects() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def containers(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = obj["spec"]["template"]["spec"]
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


# -- every file parses; Prometheus' tools accept the Prometheus files --------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_under_deploy_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs), f"{path} holds no mapping"


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    proc = promtool("check", "rules", *map(str, RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(RULES)


@needs_promtool
@pytest.mark.parametrize("config", [PROM / "prometheus.yml", K8S / "prometheus" / "prometheus.yml"], ids=str)
def test_promtool_checks_the_config(config: Path) -> None:
    proc = promtool("check", "config", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_alerts_fire_on_synthetic_series() -> None:
    """deploy/prometheus/tests/alerts_test.yml: each alert fires on the series it is for, and only then."""
    proc = promtool("test", "rules", str(PROM / "tests" / "alerts_test.yml"))
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr
    tested = {t["alertname"] for g in load(PROM / "tests" / "alerts_test.yml")["tests"] for t in g["alert_rule_test"]}
    assert tested == {q.name for q in rule_queries(RULES) if q.kind == "alert"}, "every alert has a unit test"


@needs_promtool
def test_promtool_refuses_a_broken_rule(tmp_path: Path) -> None:
    broken = load(PROM / "alerts.yml")
    broken["groups"][0]["rules"][0]["expr"] = "sum by (model_name) (rate(licsearch_requests_total[5m])"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(broken))
    assert promtool("check", "rules", str(tmp_path / "alerts.yml")).returncode != 0


def test_rules_and_dashboard_read_declared_metrics() -> None:
    declared = {m.name for m in METRICS} | {name for _, _, name, _, _ in TORCHSERVE_METRICS}
    queries = rule_queries(RULES) + dashboard_queries(DEPLOY / "grafana" / "licsearch-serving.json")
    used = set().union(*(metric_names(q.expr) for q in queries))
    assert used - ROLLOUT_METRICS <= declared, sorted(used - ROLLOUT_METRICS - declared)
    rule_exprs = " ".join(q.expr for q in rule_queries(RULES))
    for metric in ("licsearch_request_latency_seconds_bucket", "licsearch_errors_total", "licsearch_requests_total",
                   "licsearch_encoded_bits_per_pixel", "licsearch_rollout_parity_failures_total"):  # fmt: skip
        assert metric in rule_exprs, f"no rule reads {metric}"


# -- Kubernetes ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("obj", [d for _, d in k8s_objects()], ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_k8s_object_validates_against_the_schema(obj: dict[str, Any]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the dev extra has it)")
    kv.validate(obj, K8S_VERSION, strict=True)


def test_the_schema_validator_refuses_a_wrong_object() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the dev extra has it)")
    bad = copy.deepcopy(find("Deployment", "licsearch-torchserve"))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)
    bad = copy.deepcopy(find("HorizontalPodAutoscaler", "licsearch-torchserve"))
    bad["spec"]["minReplicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)


def test_kustomization_names_existing_files_and_every_reference_resolves() -> None:
    kust = load(K8S / "kustomization.yaml")
    for res in kust["resources"]:
        assert (K8S / res).is_file(), res
    generated = set()
    for gen in kust["configMapGenerator"]:
        generated.add(("ConfigMap", gen["name"]))
        for spec in gen["files"]:
            assert (K8S / spec.split("=", 1)[-1]).is_file(), spec
    declared = {(d["kind"], d["metadata"]["name"]) for _, d in k8s_objects()} | generated | EXTERNAL
    for path, obj in k8s_objects():
        if "template" not in obj.get("spec", {}):
            continue
        pod = obj["spec"]["template"]["spec"]
        refs = {("ConfigMap", v["configMap"]["name"]) for v in pod.get("volumes", []) if "configMap" in v}
        refs |= {("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])
                 for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}  # fmt: skip
        refs |= {("Secret", e["valueFrom"]["secretKeyRef"]["name"]) for c in containers(obj).values()
                 for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}  # fmt: skip
        assert refs <= declared, f"{path.name} {obj['metadata']['name']}: {sorted(refs - declared)}"
        mounts = {m["name"] for c in containers(obj).values() for m in c.get("volumeMounts", [])}
        assert mounts <= {v["name"] for v in pod.get("volumes", [])}, obj["metadata"]["name"]


def test_torchserve_deployment_probes_resources_token_and_autoscaler() -> None:
    dep = find("Deployment", "licsearch-torchserve")
    cs = containers(dep)
    props = ts_server.read_properties(K8S / "torchserve" / "config.properties")
    inference_port = urlsplit(props["inference_address"]).port
    metrics_port = urlsplit(props["metrics_address"]).port
    for c in cs.values():
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and set(c["resources"]["limits"]), c["name"]
        assert "livenessProbe" in c, c["name"]
    ts, proxy = cs["torchserve"], cs["auth-proxy"]
    for probe in (ts["startupProbe"], ts["livenessProbe"]):
        assert f"http://127.0.0.1:{inference_port}/ping" in " ".join(probe["exec"]["command"])
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/ping"
    management = props["management_address"]
    assert _readiness_probe(ts["readinessProbe"]["exec"]["command"]) == management, "readiness asks for live workers"
    proxy_port = {p["name"]: p["containerPort"] for p in proxy["ports"]}["inference"]
    assert proxy["readinessProbe"]["httpGet"]["port"] == "inference"
    assert {p["name"]: p["containerPort"] for p in ts["ports"]} == {"metrics": metrics_port}
    assert ts["args"][-1] == next(m["mountPath"] for m in ts["volumeMounts"] if m["name"] == "config")

    # The token: TorchServe's own is off (random per server); the proxy checks the Secret's.
    assert props["disable_token_authorization"] == "true"
    assert urlsplit(props["inference_address"]).hostname == "127.0.0.1"
    token_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in proxy["env"]}
    assert token_env["LICSEARCH_INFERENCE_TOKEN"]["name"] == "licsearch-inference-token"
    template = (K8S / "torchserve" / "auth-proxy.conf.template").read_text()
    assert f"listen {proxy_port};" in template
    assert '$http_authorization != "Bearer ${LICSEARCH_INFERENCE_TOKEN}"' in template
    assert template.count(f"proxy_pass http://127.0.0.1:{inference_port};") == 2 and "return 401" in template
    limit = re.search(r"client_max_body_size (\d+)m;", template)
    assert limit and int(limit.group(1)) << 20 == int(props["max_request_size"]), "the proxy refuses first, in JSON"

    svc = find("Service", "licsearch-torchserve")
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["inference"]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    metrics_svc = find("Service", "licsearch-torchserve-metrics")
    assert metrics_svc["spec"]["clusterIP"] == "None" and metrics_svc["spec"]["ports"][0]["port"] == metrics_port
    hpa = find("HorizontalPodAutoscaler", "licsearch-torchserve")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "licsearch-torchserve")
    assert 1 < hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_k8s_and_compose_torchserve_configs_differ_from_production_only_where_documented() -> None:
    prod = ts_server.read_properties(DEPLOY / "config.production.properties")
    k8s = ts_server.read_properties(K8S / "torchserve" / "config.properties")
    compose = ts_server.read_properties(DEPLOY / "compose" / "torchserve.properties")

    def diff(other: dict[str, str]) -> set[str]:
        return {k for k in prod.keys() | other.keys() if prod.get(k) != other.get(k)}

    assert diff(k8s) == {"inference_address", "metrics_address", "disable_token_authorization",
                         "token_expiration_min", "load_models"}  # fmt: skip
    assert diff(compose) == {"metrics_address", "load_models"}
    for cfg in (k8s, compose):
        assert urlsplit(cfg["metrics_address"]).hostname == "0.0.0.0"
        assert cfg["load_models"] == "encode.mar,decode.mar,embed.mar,search.mar"
        assert urlsplit(cfg["management_address"]).hostname == "127.0.0.1" and cfg["enable_model_api"] == "false"


def test_prometheus_finds_torchserve_on_its_metrics_port() -> None:
    k8s = load(K8S / "prometheus" / "prometheus.yml")
    jobs = {j["job_name"]: j for j in k8s["scrape_configs"]}
    port = urlsplit(ts_server.read_properties(K8S / "torchserve" / "config.properties")["metrics_address"]).port
    sd = jobs["torchserve"]["dns_sd_configs"][0]
    assert sd["port"] == port and sd["names"] == ["licsearch-torchserve-metrics.licsearch.svc.cluster.local"]
    assert jobs["rollout"]["honor_labels"] is True
    prom_dep = find("Deployment", "licsearch-prometheus")
    mounts = {m["name"]: m["mountPath"] for m in containers(prom_dep)["prometheus"]["volumeMounts"]}
    assert k8s["rule_files"] == [f"{mounts['rules']}/*.yml"]
    policy = find("NetworkPolicy", "licsearch-torchserve")
    admitted = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == port]
    assert admitted[0]["from"][0]["podSelector"]["matchLabels"] == prom_dep["spec"]["selector"]["matchLabels"]


def _shell(container: dict[str, Any]) -> str:
    return " ".join([*container.get("command", []), *container.get("args", [])])


def test_ingest_and_reindex_are_indexed_jobs_running_the_cli() -> None:
    ingest = find("Job", "licsearch-ingest")
    assert ingest["spec"]["completionMode"] == "Indexed" and ingest["spec"]["parallelism"] > 1
    (c,) = containers(ingest).values()
    env = {e["name"]: e for e in c["env"]}
    assert int(env["SHARDS"]["value"]) == ingest["spec"]["completions"]
    assert env["LICSEARCH_SERVER_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "licsearch-inference-token"
    script = _shell(c)
    assert "$JOB_COMPLETION_INDEX" in script and "licsearch ingest --store /data/store" in script
    assert "--server http://licsearch-torchserve:8080" in script
    svc_port = find("Service", "licsearch-torchserve")["spec"]["ports"][0]["port"]
    assert f":{svc_port}" in script

    reindex = find("Job", "licsearch-reindex")
    assert reindex["spec"]["completionMode"] == "Indexed"
    (c,) = containers(reindex).values()
    assert re.search(r"licsearch reindex --store /data/store .*--space \"\$SPACE_ID\"", _shell(c))


def _collection_body(job: dict[str, Any]) -> dict[str, Any]:
    """The JSON the setup Job PUTs to Qdrant, rendered by the Job's own shell lines."""
    c = containers(job)["create-collection"]
    script = c["args"][0]
    start = script.index("body='")
    end = script.index("}'", start) + 2
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    env["SPACE_ID"] = "test-space"
    proc = subprocess.run(
        ["sh", "-c", script[start:end] + '\nprintf %s "$body"'], env=env, capture_output=True, text=True, timeout=10
    )
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_setup_job_collection_is_sharded_replicated_and_opens_with_licsearch(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient
    from qdrant_client import models as qm

    from licsearch.errors import ConfigMismatchError
    from licsearch.storage.index import VectorIndex

    body = _collection_body(find("Job", "licsearch-setup"))
    spec = qm.CreateCollection(**body)  # the REST API's request model: unknown fields or bad types raise
    assert (spec.shard_number, spec.replication_factor, spec.write_consistency_factor) == (6, 2, 2)
    values = load(DEPLOY / "qdrant" / "values.yaml")
    assert values["replicaCount"] == 3 and values["config"]["cluster"]["enabled"] is True
    assert spec.replication_factor < values["replicaCount"]

    assert isinstance(spec.vectors, dict)
    client = QdrantClient(path=str(tmp_path / "qdrant"))  # local mode accepts and ignores the cluster settings
    client.create_collection(
        "licsearch", vectors_config=spec.vectors, shard_number=spec.shard_number,
        replication_factor=spec.replication_factor, write_consistency_factor=spec.write_consistency_factor,
    )  # fmt: skip
    client.close()
    dim = spec.vectors["test-space"].size
    with VectorIndex(path=tmp_path / "qdrant") as index:
        index.ensure_collection({"test-space": dim})
        assert index.spaces() == {"test-space": dim}
        with pytest.raises(ConfigMismatchError):
            index.ensure_collection({"test-space": dim + 1})


# -- compose -------------------------------------------------------------------------------------------------------


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (named volumes left out)."""
    out = {}
    for vol in service.get("volumes", []):
        host, container = vol.split(":")[:2]
        if host.startswith("."):
            out[container] = (DEPLOY / host).resolve()
    return out


def test_compose_mounts_existing_files_and_agrees_with_the_configs() -> None:
    compose = load(DEPLOY / "compose.yaml")
    services = compose["services"]
    assert {"torchserve", "qdrant", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        for container, host in _mounts(svc).items():
            assert host.exists(), f"{name}: {host} (mounted at {container}) is not in the repository"
        for vol in svc.get("volumes", []):
            if not vol.split(":")[0].startswith("."):
                assert vol.split(":")[0] in compose["volumes"], vol

    ts = services["torchserve"]
    ts_mounts = _mounts(ts)
    config_path = "/opt/licsearch/deploy/config.properties"  # the image's CMD (deploy/docker/Dockerfile)
    assert config_path in (DEPLOY / "docker" / "Dockerfile").read_text()
    props = ts_server.read_properties(ts_mounts[config_path])
    assert ts_mounts[props["metrics_config"]] == (DEPLOY / "metrics.yaml").resolve()
    assert ts_mounts[props["model_store"]] == (ROOT / "model_store").resolve()
    published = {int(p.rsplit(":", 1)[1]) for p in ts["ports"]}
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))
    inference, metrics = (urlsplit(props[f"{api}_address"]).port for api in ("inference", "metrics"))
    assert published == {inference, metrics}

    prom = services["prometheus"]
    prom_mounts = _mounts(prom)
    config_flag = next(a for a in prom["command"] if a.startswith("--config.file="))
    config_in_container = config_flag.split("=", 1)[1]
    prom_config = load(prom_mounts[config_in_container])
    assert prom_mounts[config_in_container] == (PROM / "prometheus.yml").resolve()
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in prom_config["scrape_configs"]}
    assert targets["torchserve"] == [f"torchserve:{metrics}"]
    assert {t.split(":")[0] for ts_ in targets.values() for t in ts_} <= set(services)
    base = Path(config_in_container).parent
    for rule in prom_config["rule_files"]:
        assert prom_mounts[str(base / rule)] == (PROM / rule).resolve()

    grafana = services["grafana"]
    g_mounts = _mounts(grafana)
    (datasource,) = load(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    prom_port = int(prom["ports"][0].rsplit(":", 1)[1])
    assert datasource["url"] == f"http://prometheus:{prom_port}" and datasource["type"] == "prometheus"
    (provider,) = load(DEPLOY / "grafana" / "provisioning" / "dashboards" / "licsearch.yml")["providers"]
    dashboards = [c for c in g_mounts if c.startswith(provider["options"]["path"] + "/")]
    assert [g_mounts[c] for c in dashboards] == [(DEPLOY / "grafana" / "licsearch-serving.json").resolve()]
    assert {"/etc/grafana/provisioning/datasources", "/etc/grafana/provisioning/dashboards"} <= set(g_mounts)
    assert ts["environment"]["LICSEARCH_QDRANT_URL"] == "http://qdrant:6333"


# -- the auth proxy, run for real -------------------------------------------------------------------------------


class _Echo(BaseHTTPRequestHandler):
    """A stand-in for TorchServe that answers with what it received."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        doc = {"path": self.path, "content_type": self.headers.get("Content-Type"), "length": len(body)}
        self._send(200, doc)

    def do_GET(self) -> None:
        self._send(200, {"status": "Healthy"})

    def _send(self, status: int, doc: dict[str, Any]) -> None:
        out = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


def _call(url: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    try:
        conn.request("POST" if body is not None else "GET", parts.path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(resp.read() or b"null")
    finally:
        conn.close()


@needs_nginx
def test_auth_proxy_rules_with_real_nginx(tmp_path: Path) -> None:
    echo = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with auth_proxy(echo.server_address[1], tmp_path / "nginx") as url:
            assert _call(f"{url}/ping", None, {})[0] == 200, "/ping is open for the probes"
            status, headers, doc = _call(f"{url}/predictions/encode", b"x", {"Content-Type": "image/png"})
            assert (
                status == 401 and headers["content-type"] == "application/json" and "Bearer" in doc["error"]["message"]
            )

            form = {"Content-Type": "application/x-www-form-urlencoded"}
            cases = [  # (path, request headers, Content-Type TorchServe must see)
                ("/predictions/encode", form, "application/octet-stream"),  # curl --data-binary's default
                ("/predictions/decode/fp32-1", form, "application/octet-stream"),
                ("/predictions/embed", {}, "application/octet-stream"),
                ("/predictions/encode", {"Content-Type": "image/png"}, "image/png"),
                ("/predictions/embed", {"Content-Type": "application/json"}, "application/json"),
                ("/predictions/search", form, "application/x-www-form-urlencoded"),  # a JSON endpoint: untouched
            ]
            for path, extra, want in cases:
                status, _, doc = _call(f"{url}{path}", b"%zz\x89PNG", {**auth, **extra})
                assert (status, doc["path"], doc["content_type"]) == (200, path, want), (path, extra)
                assert doc["length"] == 7

            conn = http.client.HTTPConnection("127.0.0.1", urlsplit(url).port, timeout=20)
            conn.putrequest("POST", "/predictions/encode")
            for k, v in {**auth, "Content-Type": "application/octet-stream", "Content-Length": str(18 << 20)}.items():
                conn.putheader(k, v)
            conn.endheaders()  # nginx refuses on the declared length, before any body is sent
            resp = conn.getresponse()
            assert resp.status == 413 and resp.getheader("Content-Type") == "application/json"
            assert json.loads(resp.read())["error"]["type"] == "PayloadTooLarge"
            conn.close()
    finally:
        echo.shutdown()
        echo.server_close()

    with auth_proxy(free_ports(1)[0], tmp_path / "nginx-no-upstream") as url:  # TorchServe down or restarting
        status, headers, doc = _call(f"{url}/predictions/embed", b'{"text": "x"}', {**auth, **OCTET_JSON})
        assert status == 503 and headers["retry-after"] == "5" and doc["error"]["type"] == "ServiceUnavailable"


def _readiness_probe(command: list[str]) -> str:
    """The management address a readiness command asks; checks that the command runs and fails without a server."""
    assert command[:3] == ["python3", "-m", "licsearch.serving.readiness"], command
    management = command[command.index("--management") + 1]
    closed = f"http://127.0.0.1:{free_ports(1)[0]}"
    args = [sys.executable, *command[1:]]
    args[args.index(management)] = closed
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1 and json.loads(proc.stdout)["ready"] is False, proc.stderr
    return management


def test_compose_healthcheck_asks_for_live_workers() -> None:
    ts = load(DEPLOY / "compose.yaml")["services"]["torchserve"]
    props = ts_server.read_properties(DEPLOY / "compose" / "torchserve.properties")
    test = ts["healthcheck"]["test"]
    assert test[0] == "CMD" and _readiness_probe(test[1:]) == props["management_address"]
