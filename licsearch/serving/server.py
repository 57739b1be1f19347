"""Start and stop TorchServe with the licsearch models, for ``licsearch serve``.

Every server gets a *run directory* of its own: the generated ``config.properties`` (the base configuration with
the ports given on the command line and ``metrics_config`` pointing at the generated ``metrics.yaml``), the
logs, TorchServe's temp folder (its pid file, worker sockets and extracted archives all live under
``java.io.tmpdir``/``TMPDIR``, so two servers never share them) and, with token authorization on, the
``key_file.json`` TorchServe writes into its working directory. ``serve --stop`` finds the server by the same
run directory.

Without ``--config`` the built-in local configuration is used (:data:`LOCAL_CONFIG`, the same settings as
``deploy/config.properties``): everything on 127.0.0.1 and token authorization off, for a demo on one machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ..errors import InputError, LicsearchError
from ..extras import missing_extra
from .endpoints import ENDPOINTS
from .inflight import pid_alive
from .metrics import render_yaml
from .readiness import get_json, live_workers

LOCAL_CONFIG: dict[str, str] = {
    "inference_address": "http://127.0.0.1:8080",
    "management_address": "http://127.0.0.1:8081",
    "metrics_address": "http://127.0.0.1:8082",
    "metrics_mode": "prometheus",
    "disable_token_authorization": "true",
    "enable_model_api": "false",
    "max_request_size": "17825792",
    "max_response_size": "134217728",
    "default_response_timeout": "120",
    "job_queue_size": "100",
}
"""The local demo configuration (``deploy/config.properties`` holds the same settings, with comments)."""

JAVA_HINT = (
    "TorchServe's frontend is a Java program: install Java 17, e.g. `apt-get install openjdk-17-jre-headless` "
    "(Debian/Ubuntu) or `brew install openjdk@17` (macOS), or set JAVA_HOME"
)
PORTS = {"inference": 8080, "management": 8081, "metrics": 8082}
GRPC_PORTS = {"grpc_inference": 7070, "grpc_management": 7071}
"""TorchServe always starts its gRPC servers too (on 127.0.0.1); two servers on one host need other ports."""


class ServerError(LicsearchError):
    """TorchServe cannot be started, reached or stopped."""


@dataclass(frozen=True)
class ServeOptions:
    """How to run one server.

    Attributes:
        model_store: folder with ``encode.mar``, ``decode.mar`` and ``embed.mar``.
        run_dir: the server's own folder (config, logs, temp files, keys).
        config: a base ``config.properties``; None for :data:`LOCAL_CONFIG`.
        ports: ``inference``, ``management``, ``metrics``, ``grpc_inference`` and/or ``grpc_management`` ports
            replacing those of the base config.
        models: model names to register (default: every endpoint).
        timeout_s: how long to wait for every model to have a ready worker.
        env: extra environment for TorchServe and its workers (e.g. ``LICSEARCH_ORT_THREADS``).
    """

    model_store: Path
    run_dir: Path
    config: Path | None = None
    ports: Mapping[str, int] = field(default_factory=dict)
    models: tuple[str, ...] = ()
    timeout_s: float = 180.0
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Server:
    """A started server: where to reach it and where its files are."""

    run_dir: Path
    inference_url: str
    management_url: str
    metrics_url: str
    models: tuple[str, ...]
    token_auth: bool
    pid: int | None

    @property
    def key_file(self) -> Path:
        return self.run_dir / "key_file.json"

    def to_dict(self) -> dict[str, object]:
        return {
            "inference": self.inference_url,
            "management": self.management_url,
            "metrics": f"{self.metrics_url}/metrics",
            "endpoints": {m: f"{self.inference_url}/predictions/{m}" for m in self.models},
            "run_dir": str(self.run_dir),
            "logs": str(self.run_dir / "logs"),
            "token_auth": self.token_auth,
            "key_file": str(self.key_file) if self.token_auth else None,
            "pid": self.pid,
        }


def default_run_dir() -> Path:
    """``$LICSEARCH_SERVE_DIR``, else ``$XDG_STATE_HOME/licsearch/serve`` (``~/.local/state/...``)."""
    env = os.environ.get("LICSEARCH_SERVE_DIR")
    if env:
        return Path(env)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "licsearch" / "serve"


def find_java() -> str:
    """The ``java`` TorchServe will run (``$JAVA_HOME/bin/java``, else ``java`` on PATH)."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        where = f"JAVA_HOME={home}" if home else "PATH"
        raise ServerError(f"Java was not found ({where}); TorchServe needs Java 11 or newer", hint=JAVA_HINT)
    return java


def read_properties(path: Path) -> dict[str, str]:
    """``key=value`` lines of a Java properties file (comments and blank lines skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from e
    props: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


def server_config(base: Mapping[str, str], ports: Mapping[str, int], metrics_config: Path) -> dict[str, str]:
    """The base settings with the given ports and, unless the base names an existing file, our metrics.yaml."""
    props = dict(base)
    for api, default in PORTS.items():
        key = f"{api}_address"
        url = urlsplit(props.get(key) or f"http://127.0.0.1:{default}")
        if url.scheme not in ("http", "https"):
            raise InputError(f"{key} must be an http or https URL, got {props.get(key)!r}")
        port = ports.get(api, url.port or default)
        props[key] = urlunsplit((url.scheme, f"{url.hostname or '127.0.0.1'}:{port}", "", "", ""))
    for api in GRPC_PORTS:
        if api in ports:
            props[f"{api}_port"] = str(ports[api])
    props.setdefault("metrics_mode", "prometheus")
    if not Path(props.get("metrics_config", "")).is_file():
        props["metrics_config"] = str(metrics_config)
    return props


def token_auth_enabled(props: Mapping[str, str]) -> bool:
    return props.get("disable_token_authorization", "false").strip().lower() != "true"


def start(options: ServeOptions, *, foreground: bool = False) -> tuple[Server, subprocess.Popen[bytes]]:
    """Starts TorchServe and waits until every model has a ready worker.

    Returns the server and the launcher process (with ``foreground`` it lives as long as the server).
    """
    java = find_java()
    torchserve = _torchserve()
    models = options.models or tuple(ENDPOINTS.names())
    for m in models:
        ENDPOINTS.get(m)
    store = options.model_store.resolve()
    missing = [f"{m}.mar" for m in models if not (store / f"{m}.mar").is_file()]
    if missing:
        raise InputError(
            f"model store {store} lacks {', '.join(missing)}", hint="make them with `licsearch archive --bundle DIR`"
        )
    run = options.run_dir.resolve()
    if _pid(run) is not None:
        raise ServerError(f"a server is already running from {run}", hint="stop it with `licsearch serve --stop`")
    for sub in ("tmp", "logs"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    (run / "key_file.json").unlink(missing_ok=True)
    base = read_properties(options.config) if options.config else LOCAL_CONFIG
    (run / "metrics.yaml").write_text(render_yaml(), encoding="utf-8")
    props = server_config(base, options.ports, run / "metrics.yaml")
    header = f"# Generated by `licsearch serve` from {options.config or 'the built-in local configuration'}.\n"
    (run / "config.properties").write_text(header + "".join(f"{k}={v}\n" for k, v in props.items()), "utf-8")
    auth = token_auth_enabled(props)
    cmd = [torchserve, "--start", "--ncs", "--model-store", str(store), "--ts-config", str(run / "config.properties")]
    cmd += ["--models", *(f"{m}={m}.mar" for m in models)]
    if not auth:
        cmd.append("--disable-token-auth")
    if foreground:
        cmd.append("--foreground")
    env = {**os.environ, **_run_env(run), **options.env, "JAVA_HOME": str(Path(java).resolve().parents[1])}
    with (run / "logs" / "torchserve.out").open("ab") as log:
        proc = subprocess.Popen(cmd, cwd=run, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(
        run, props["inference_address"], props["management_address"], props["metrics_address"], models, auth, None
    )
    try:
        _wait_ready(server, proc, options.timeout_s)
    except BaseException:
        stop(run)
        raise
    return dataclasses.replace(server, pid=_pid(run)), proc


def stop(run_dir: Path, timeout_s: float = 60.0) -> bool:
    """Stops the server started from ``run_dir``; False when none was running."""
    run = run_dir.resolve()
    pid = _pid(run)
    if pid is None:
        return False
    subprocess.run(
        [_torchserve(), "--stop", "--foreground"],
        cwd=run,
        env={**os.environ, **_run_env(run)},
        capture_output=True,
        timeout=timeout_s + 30,
        check=False,
    )
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        raise ServerError(f"TorchServe (pid {pid}) did not stop within {timeout_s:.0f} s", hint=f"kill {pid}")
    (run / "tmp" / ".model_server.pid").unlink(missing_ok=True)
    return True


def status(run_dir: Path) -> dict[str, object]:
    """Whether the server started from ``run_dir`` runs and is ready (every model has a live worker).

    The addresses come from the ``config.properties`` that :func:`start` wrote there; readiness is
    :func:`licsearch.serving.readiness.check`, the same test as the Kubernetes readiness probe.
    """
    from .readiness import check

    run = run_dir.resolve()
    pid = _pid(run)
    config = run / "config.properties"
    if pid is None or not config.is_file():
        return {"running": False, "ready": False, "run_dir": str(run), "pid": None, "workers": {},
                "problem": f"no server is running from {run}"}  # fmt: skip
    props = read_properties(config)
    management = props.get("management_address") or f"http://127.0.0.1:{PORTS['management']}"
    answer = check(management, token=read_keys(run).get("management"))
    return {"running": True, "run_dir": str(run), "pid": pid, "management": management, **answer.to_dict()}


def log_tail(run_dir: Path, lines: int = 40) -> str:
    """The last lines of the server's logs, for error messages."""
    out = []
    for name in ("torchserve.out", "model_log.log", "ts_log.log"):
        path = run_dir / "logs" / name
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
            out.append(f"--- {path} ---\n" + "\n".join(text))
    return "\n".join(out)


def read_keys(run_dir: Path) -> dict[str, str]:
    """TorchServe's ``inference`` and ``management`` tokens (token authorization on), else an empty dict."""
    path = run_dir / "key_file.json"
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return {k: str(doc[k]["key"]) for k in ("inference", "management") if k in doc}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _wait_ready(server: Server, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Until every model has a READY worker (management API) and ``/ping`` says ``Healthy``."""
    deadline = time.monotonic() + timeout_s
    pending = [*server.models, "/ping"]
    while pending:
        if time.monotonic() > deadline:
            raise ServerError(
                f"TorchServe did not get ready in {timeout_s:.0f} s (waiting for {', '.join(pending)})\n"
                + log_tail(server.run_dir)
            )
        launcher_done = proc.poll() is not None
        if launcher_done and (proc.returncode != 0 or _pid(server.run_dir) is None):
            raise ServerError("TorchServe exited while starting\n" + log_tail(server.run_dir))
        keys = read_keys(server.run_dir)
        if server.token_auth and not keys:
            time.sleep(0.3)
            continue
        pending = [m for m in pending if not _ready(server, m, keys)]
        if pending:
            time.sleep(0.5)


def _ready(server: Server, what: str, keys: Mapping[str, str]) -> bool:
    if what == "/ping":
        doc = get_json(f"{server.inference_url}/ping", keys.get("inference"), timeout_s=5)
        return isinstance(doc, dict) and doc.get("status") == "Healthy"
    return bool(live_workers(server.management_url, what, keys.get("management")))


def _run_env(run: Path) -> dict[str, str]:
    tmp = str(run / "tmp")
    logs = str(run / "logs")
    return {"TEMP": tmp, "TMPDIR": tmp, "LOG_LOCATION": logs, "METRICS_LOCATION": logs}


def _torchserve() -> str:
    beside = Path(sys.executable).parent / "torchserve"
    found = str(beside) if beside.is_file() else shutil.which("torchserve")
    if not found:
        raise missing_extra("serve", "`licsearch serve` (the torchserve command was not found)")
    return found


def _pid(run: Path) -> int | None:
    """The pid in the run's pid file if that process is alive and is a TorchServe frontend."""
    path = run / "tmp" / ".model_server.pid"
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if not pid_alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # no /proc: trust the pid file
    return pid if b"org.pytorch.serve.ModelServer" in cmdline else None
