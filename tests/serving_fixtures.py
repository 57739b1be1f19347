"""The shared TorchServe of the serving tests: one bundle, archived and served once per test session.

``tests/conftest.py`` loads this module as a plugin, so its session fixtures exist once: ``tests/test_serving.py``
and ``tests/test_serving_hostile.py`` both use :func:`served`, and one TorchServe start serves both files. A tiny
bundle is exported, archived with ``licsearch archive`` and served with ``licsearch serve`` on free 127.0.0.1 ports
(stopped with ``licsearch serve --stop`` in teardown, whatever happens).
:class:`Served` counts the requests each model was sent, for reconciling with ``licsearch_requests_total``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import struct
import urllib.error
import urllib.request
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image

from licsearch.serving import server as ts_server

from .conftest import run_cli, tiny_models

if TYPE_CHECKING:
    from licsearch.bundle.runtime import BundleModelSet

needs_java = pytest.mark.skipif(
    not (shutil.which("java") or os.environ.get("JAVA_HOME")),
    reason="TorchServe needs Java 17 (apt-get install openjdk-17-jre-headless)",
)

ROOT = Path(__file__).resolve().parents[1]
OCTET = {"Content-Type": "application/octet-stream"}
OCTET_JSON = {"Content-Type": "application/json"}
HANDLER_LIMIT = 2_000_000  # archive --max-bytes
FRONTEND_LIMIT = 4_000_000  # max_request_size of the test server


# -- helpers ----------------------------------------------------------------------------------------------------


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG header claiming a huge image, with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def multipart(fields: dict[str, tuple[str | None, bytes]]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body: name -> (filename or None, bytes)."""
    boundary = "licsearch-test-boundary-7d1f"
    out = b""
    for name, (filename, data) in fields.items():
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"--{boundary}\r\nContent-Disposition: {disp}\r\n"
        head += "Content-Type: application/octet-stream\r\n" if filename else ""
        out += (head + "\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_flags() -> list[str]:
    """``licsearch serve`` flags for five free ports (TorchServe's gRPC servers need their own, too)."""
    names = ("inference", "management", "metrics", "grpc-inference", "grpc-management")
    return [arg for name, port in zip(names, free_ports(5), strict=True) for arg in (f"--{name}-port", str(port))]


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Served:
    """The module's server: URLs, run directory, and how many requests each model was sent."""

    inference: str
    management: str
    metrics: str
    run_dir: Path
    version: str
    sent: Counter[str] = field(default_factory=Counter)

    def post(self, model: str, body: bytes, headers: dict[str, str] | None = None, *, count: bool = True) -> Response:
        if count:
            self.sent[model] += 1
        req = urllib.request.Request(f"{self.inference}/predictions/{model}", data=body, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return Response(r.status, r.headers.get("Content-Type", ""), r.read())
        except urllib.error.HTTPError as e:
            return Response(e.code, e.headers.get("Content-Type", ""), e.read())

    def expect(self, resp: Response, status: int) -> Response:
        assert resp.status == status, f"{resp.status} {resp.body[:300]!r}\n{ts_server.log_tail(self.run_dir, 25)}"
        return resp

    def worker_pids(self) -> dict[str, int]:
        out = {}
        for model in ("encode", "decode", "embed"):
            with urllib.request.urlopen(f"{self.management}/models/{model}", timeout=10) as r:
                out[model] = json.loads(r.read())[0]["workers"][0]["pid"]
        return out

    def scrape(self) -> dict[str, Any]:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"{self.metrics}/metrics", timeout=10) as r:
            text = r.read().decode()
        return {f.name: f for f in text_string_to_metric_families(text)}


def sample_total(family: Any, suffix: str = "", **labels: str) -> float:
    return sum(
        s.value
        for s in family.samples
        if s.name == family.name + suffix and all(s.labels.get(k) == v for k, v in labels.items())
    )


# -- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serving") / "bundle"
    from licsearch.bundle.export import export_bundle  # torch: imported when a serving test runs, not for every one

    export_bundle(tiny_models(), out, space_id="test")
    return out


@pytest.fixture(scope="session")
def ref(bundle: Path) -> BundleModelSet:
    """The same bundle in-process: what HTTP answers must equal."""
    from licsearch.bundle.runtime import BundleModelSet

    return BundleModelSet(bundle)


@pytest.fixture(scope="session")
def model_store(bundle: Path) -> tuple[Path, str]:
    store = bundle.parent / "model_store"
    proc = run_cli(
        "archive", "--bundle", str(bundle), "--out", str(store), "--batch-size", "4", "--max-batch-delay", "150",
        "--max-bytes", str(HANDLER_LIMIT), "--json", check=True,
    )  # fmt: skip
    doc = json.loads(proc.stdout)
    assert sorted(a["name"] for a in doc["archives"]) == ["decode", "embed", "encode", "search"]
    assert doc["version"].startswith("fp32-")
    return store, doc["version"]


@pytest.fixture(scope="session")
def served(model_store: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    store, version = model_store
    run = tmp_path_factory.mktemp("run")
    config = run.parent / "test-config.properties"
    props = {**ts_server.LOCAL_CONFIG, "max_request_size": str(FRONTEND_LIMIT), "enable_model_api": "true"}
    config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    try:
        proc = run_cli(
            "serve", "--model-store", str(store), "--run-dir", str(run), "--config", str(config), *port_flags(),
            "--timeout", "200", "--json", env={"LICSEARCH_ORT_THREADS": "1"},
        )  # fmt: skip
        assert proc.returncode == 0, f"serve failed:\n{proc.stderr}\n{ts_server.log_tail(run)}"
        doc = json.loads(proc.stdout)
        assert doc["token_auth"] is False and set(doc["endpoints"]) == {"encode", "decode", "embed", "search"}
        yield Served(doc["inference"], doc["management"], doc["metrics"].removesuffix("/metrics"), run, version)
    finally:
        stop = run_cli("serve", "--stop", "--run-dir", str(run), "--json")
        assert stop.returncode == 0, stop.stderr
