"""The deploy's nginx auth proxy, run for real: Debian's nginx, unprivileged settings, on a free loopback port.

The template (``deploy/k8s/torchserve/auth-proxy.conf.template``) is rendered as the official nginx image renders
it (only ``${LICSEARCH_INFERENCE_TOKEN}`` is substituted), with the listen port and the upstream TorchServe port
replaced, and included in a minimal ``nginx.conf`` whose pid, logs and temp folders are in a test folder.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .serving_fixtures import ROOT, free_ports

TEMPLATE = ROOT / "deploy" / "k8s" / "torchserve" / "auth-proxy.conf.template"
TOKEN = "proxy-test-token"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).is_file()), None)

needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="Debian's nginx is not installed (apt-get install nginx-light; .ci/run installs it)"
)


def render(upstream_port: int, listen_port: int, token: str = TOKEN) -> str:
    """The template as the nginx image renders it, listening on 127.0.0.1:``listen_port``."""
    text = TEMPLATE.read_text(encoding="utf-8")
    for old, new in (
        ("${LICSEARCH_INFERENCE_TOKEN}", token),
        ("listen 8000;", f"listen 127.0.0.1:{listen_port};"),
        ("http://127.0.0.1:8080", f"http://127.0.0.1:{upstream_port}"),
    ):
        if old not in text:
            raise AssertionError(f"the proxy template no longer contains {old!r}; update tests/nginx_proxy.py")
        text = text.replace(old, new)
    return text


@contextmanager
def auth_proxy(upstream_port: int, folder: Path) -> Iterator[str]:
    """nginx with the rendered template in front of ``upstream_port``; yields its base URL."""
    assert NGINX is not None
    port = free_ports(1)[0]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "proxy.conf").write_text(render(upstream_port, port), encoding="utf-8")
    temps = "\n".join(f"  {k}_temp_path {folder / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (folder / "nginx.conf").write_text(
        f"daemon off;\nmaster_process off;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} warn;\n"
        f"events {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n{temps}\n"
        f"  include {folder / 'proxy.conf'};\n}}\n",
        encoding="utf-8",
    )
    log = (folder / "nginx.out").open("wb")
    proc = subprocess.Popen([NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while not _listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("nginx did not start:\n" + (folder / "nginx.out").read_text(errors="replace"))
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
