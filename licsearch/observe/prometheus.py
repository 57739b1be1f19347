"""A local Prometheus scraping a running TorchServe, and the PromQL of ``deploy/`` evaluated against it.

``tests/test_prometheus.py`` and ``make demo-observe`` (``python -m licsearch.observe.prometheus``) use it to show
that the dashboard and the rules that ``deploy/`` ships work on the metrics the handlers really export: Prometheus
(Debian's ``prometheus`` package, or any on PATH) is started on a free 127.0.0.1 port with a temporary configuration
that scrapes TorchServe's metrics port every second and loads ``deploy/prometheus``'s rule files (copied with a
one-second evaluation interval); real encode, decode and embed requests are sent; then every expression is
evaluated through ``/api/v1/query``. Every wait is bounded.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import InputError, LicsearchError
from .promql import Query

PROMETHEUS_HINT = "install it with `apt-get install prometheus` (Debian/Ubuntu; the service need not run)"
RULE_FILES = ("recording.yml", "alerts.yml")


class ObserveError(LicsearchError):
    """Prometheus cannot be started or queried, or a wait ran out."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_prometheus() -> str:
    found = shutil.which("prometheus")
    if not found:
        raise ObserveError("the prometheus server was not found on PATH", hint=PROMETHEUS_HINT)
    return found


def write_rules(rule_files: Iterable[Path], out_dir: Path, *, interval: str = "1s") -> list[Path]:
    """Copies of the rule files with every group evaluated each ``interval`` (the rules themselves unchanged)."""
    import yaml  # type: ignore[import-untyped]

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in rule_files:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in doc.get("groups", []):
            group["interval"] = interval
        dst = out_dir / path.name
        dst.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        written.append(dst)
    return written


def scrape_config(targets: Mapping[str, Sequence[str]], rule_files: Sequence[Path], interval: str = "1s") -> dict:
    """A Prometheus configuration scraping ``{job: [host:port, ...]}`` every ``interval`` and loading the rules."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": list(hosts)}]}
            for job, hosts in targets.items()
        ],
    }


class Prometheus:
    """A Prometheus server started by :meth:`start`, stopped by :meth:`stop` (or leaving a ``with`` block)."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes], workdir: Path) -> None:
        self.url = url
        self.proc = proc
        self.workdir = workdir

    @classmethod
    def start(cls, config: Mapping[str, Any], workdir: Path, *, timeout_s: float = 60.0) -> Prometheus:
        """Writes ``config`` into ``workdir``, starts Prometheus on a free port and waits until it is ready."""
        import yaml

        binary = find_prometheus()
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
        port = free_port()
        cmd = [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        log = (workdir / "prometheus.log").open("ab")
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        prom = cls(f"http://127.0.0.1:{port}", proc, workdir)
        try:
            prom.wait(prom._ready, "Prometheus to be ready", timeout_s)
        except BaseException:
            prom.stop()
            raise
        return prom

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise ObserveError(f"Prometheus exited ({self.proc.returncode}) while starting:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:  # noqa: S310 (our own http URL)
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def log_tail(self, lines: int = 20) -> str:
        path = self.workdir / "prometheus.log"
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a success, else :class:`ObserveError` with Prometheus' error."""
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 (our own http URL)
                doc = json.loads(r.read())
        except urllib.error.HTTPError as e:
            doc = json.loads(e.read() or b"{}")
        except (OSError, urllib.error.URLError) as e:
            raise ObserveError(f"cannot reach Prometheus at {self.url}: {e}") from None
        if doc.get("status") != "success":
            raise ObserveError(f"{doc.get('errorType', 'error')}: {doc.get('error', doc)}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector (a scalar result becomes one sample without labels)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def wait(self, ready: Callable[[], bool], what: str, timeout_s: float, poll_s: float = 0.5) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > deadline:
                raise ObserveError(f"gave up waiting {timeout_s:.0f} s for {what}\n{self.log_tail()}")
            time.sleep(poll_s)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class Result:
    """What one query returned: how many series, how many of them with a finite value, or the error."""

    query: Query
    series: int
    finite: int
    error: str | None

    @property
    def needs_data(self) -> bool:
        """Alert expressions are empty while nothing fires; every other query must return series."""
        return self.query.kind != "alert"

    @property
    def ok(self) -> bool:
        return self.error is None and (self.series > 0 or not self.needs_data)

    def to_dict(self) -> dict[str, Any]:
        q = self.query
        return {"kind": q.kind, "name": q.name, "expr": q.expr, "series": self.series, "finite": self.finite,
                "error": self.error, "ok": self.ok}  # fmt: skip


def evaluate(prom: Prometheus, queries: Iterable[Query]) -> list[Result]:
    out = []
    for q in queries:
        try:
            vector = prom.query(q.expr)
        except ObserveError as e:
            out.append(Result(q, 0, 0, str(e)))
            continue
        finite = sum(1 for s in vector if math.isfinite(float(s["value"][1])))
        out.append(Result(q, len(vector), finite, None))
    return out


def _pattern_png(seed: int, h: int = 64, w: int = 96) -> bytes:
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = [0.5 + 0.4 * np.sin((c + 1) * xx / (7 + seed) + yy / (5 + c + seed)) for c in range(3)]
    buf = io.BytesIO()
    Image.fromarray((np.stack(rgb, -1).clip(0, 1) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def send_traffic(url: str, *, rounds: int = 4, token: str | None = None) -> Counter[str]:
    """Real requests: per round an encode, a decode of its bitstream and a text and a bitstream embed; then one
    refused decode (so the error series exist). Returns the requests per model (the refused one as ``decode_4xx``).
    """
    from ..serving.client import OCTET, ServingClient

    client = ServingClient(url, token=token, timeout_s=60)
    sent: Counter[str] = Counter()
    for i in range(rounds):
        data = base64.b64decode(client.post("encode", _pattern_png(i), "image/png").json()["bitstream"])
        client.post("decode", data, OCTET, accept="image/png")
        client.post_json("embed", {"text": f"{i + 1} small red circles on the left"})
        client.post("embed", data, OCTET)
        sent.update(encode=1, decode=1, embed=2)
    try:
        client.post("decode", b"this is not a bitstream", OCTET, accept="image/png")
    except InputError:
        sent["decode_4xx"] += 1
    return sent


def exercise(prom: Prometheus, url: str, *, rounds: int = 4, token: str | None = None) -> Counter[str]:
    """Traffic in two phases, each waited for until scraped: one round creates the series (TorchServe exports a
    handler metric only after its first update), then ``rounds`` more make them increase, so rates have data.
    """
    sent = send_traffic(url, rounds=1, token=token)
    wait_for_traffic(prom, sent)
    sent += send_traffic(url, rounds=rounds, token=token)
    wait_for_traffic(prom, sent)
    return sent


def serve(
    model_store: Path, run_dir: Path, *, timeout_s: float = 300.0, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``licsearch serve`` on free 127.0.0.1 ports (``env`` added to its environment); its ``--json`` document.

    Stop it with :func:`unserve`.
    """
    flags = [
        arg
        for name in ("inference", "management", "metrics", "grpc-inference", "grpc-management")
        for arg in (f"--{name}-port", str(free_port()))
    ]
    cmd = [sys.executable, "-m", "licsearch", "serve", "--model-store", str(model_store), "--run-dir", str(run_dir)]
    proc = subprocess.run(
        [*cmd, *flags, "--timeout", str(int(timeout_s)), "--json"],
        capture_output=True,
        text=True,
        timeout=timeout_s + 60,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise ObserveError(f"`licsearch serve` failed ({proc.returncode}): {proc.stderr.strip()}")
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def unserve(run_dir: Path) -> None:
    cmd = [sys.executable, "-m", "licsearch", "serve", "--stop", "--run-dir", str(run_dir), "--json"]
    subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def wait_for_traffic(prom: Prometheus, sent: Mapping[str, int], timeout_s: float = 60.0) -> None:
    """Until Prometheus has scraped every answered request, every rule was evaluated and recorded series exist."""

    want: Counter[str] = Counter()
    for key, n in sent.items():  # licsearch_requests_total counts refused requests too
        want[key.removesuffix("_4xx")] += n

    def scraped() -> bool:
        vector = prom.query("sum by (model_name) (licsearch_requests_total)")
        got = {s["metric"].get("model_name"): float(s["value"][1]) for s in vector}
        return all(got.get(m, 0.0) >= n for m, n in want.items())

    def evaluated() -> bool:
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        return bool(rules) and all(r.get("health") == "ok" for r in rules)

    prom.wait(scraped, "the requests to show in licsearch_requests_total", timeout_s)
    prom.wait(evaluated, "every rule to be evaluated", timeout_s)
    prom.wait(lambda: bool(prom.query("endpoint:licsearch_requests:rate5m")), "recorded series", timeout_s)


def observe(model_store: Path, work: Path, deploy: Path, *, rounds: int = 4, hold_s: float = 0.0) -> list[Result]:
    """``make demo-observe``: TorchServe (``licsearch serve``), Prometheus, traffic, every query; then stops both."""
    from .promql import dashboard_queries, rule_queries

    rule_files = [deploy / "prometheus" / name for name in RULE_FILES]
    queries = dashboard_queries(deploy / "grafana" / "licsearch-serving.json") + rule_queries(rule_files)
    doc = serve(model_store, work / "torchserve")
    try:
        metrics = urllib.parse.urlsplit(doc["metrics"]).netloc
        config = scrape_config({"torchserve": [metrics]}, write_rules(rule_files, work / "rules"))
        with Prometheus.start(config, work / "prometheus") as prom:
            print(f"Prometheus {prom.url} scraping TorchServe {doc['metrics']} every second", file=sys.stderr)
            sent = exercise(prom, doc["inference"], rounds=rounds)
            print(f"sent {dict(sent)}, scraped and evaluated by the rules", file=sys.stderr)
            results = evaluate(prom, queries)
            if hold_s > 0:
                print(f"Prometheus stays up {hold_s:.0f} s: {prom.url}/graph", file=sys.stderr)
                time.sleep(hold_s)
    finally:
        unserve(work / "torchserve")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m licsearch.observe.prometheus", description=observe.__doc__)
    p.add_argument("--model-store", required=True, type=Path, help="folder of the .mar files (licsearch archive)")
    p.add_argument("--work", type=Path, default=Path(".demo-observe"), help="run directories and logs")
    p.add_argument("--deploy", type=Path, default=Path("deploy"), help="the deploy/ folder whose PromQL to check")
    p.add_argument("--rounds", type=int, default=4, help="rounds of encode/decode/embed requests")
    p.add_argument("--hold", type=float, default=0.0, help="seconds to keep Prometheus up afterwards")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args(argv)
    try:
        results = observe(args.model_store, args.work, args.deploy, rounds=args.rounds, hold_s=args.hold)
    except LicsearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    bad = [r for r in results if not r.ok]
    if args.json:
        print(json.dumps({"queries": [r.to_dict() for r in results], "failed": len(bad)}))
    else:
        for r in results:
            state = f"error: {r.error}" if r.error else f"{r.series} series ({r.finite} finite)"
            print(f"{'ok ' if r.ok else 'BAD'} {r.query.kind:9} {r.query.name[:60]:60} {state}")
        print(f"{len(results) - len(bad)} of {len(results)} queries ok")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
