"""The HTTP client of the model plane against a stub server: how each kind of answer becomes an error or a retry.

The client against a real TorchServe (identical results to in-process) is tested in ``test_serving.py``.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from licsearch.errors import ConfigMismatchError, InputError, LicsearchError
from licsearch.serving.client import NO_RETRY, RemoteModelPlane, RetryPolicy, Routing, ServerUnavailable, ServingClient
from licsearch.serving.routing import ROUTING_ENV, write_routing

from .serving_fixtures import free_ports

WORKER_DIED = (500, {"code": 500, "type": "InternalServerException", "message": "Worker died."})
BUSY = (503, {"code": 503, "type": "ServiceUnavailableException", "message": "Model has no worker"})
KILLED = (507, WORKER_DIED[1])  # TorchServe's answer once it has seen the worker exit with 137 (SIGKILL)
FLAKY = {"/predictions/dying": [WORKER_DIED, KILLED], "/predictions/busy": [BUSY] * 5}
"""Paths that fail the first times they are asked (the list's answers, in order), then answer 200."""

ANSWERS = {
    "/predictions/bad": (400, {"error": {"type": "TextError", "message": "empty text"}}),
    "/predictions/broken": (500, {"error": {"type": "InternalError", "message": "see its log"}}),
    "/predictions/locked": (401, {"code": 401, "message": "Token Authorization failed"}),
    "/predictions/embed": (200, {"vectors": [[1.0, 0.0]], "space_id": "other", "truncated": [False]}),
}


SEEN: Counter[str] = Counter()


class _Stub(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        SEEN[self.path] += 1
        failures = FLAKY.get(self.path, [])
        if SEEN[self.path] <= len(failures):
            status, doc = failures[SEEN[self.path] - 1]
        elif self.path in FLAKY or self.path.startswith("/predictions/embed/"):
            status, doc = 200, {"ok": True, "path": self.path}
        else:
            status, doc = ANSWERS.get(self.path, (404, {"code": 404, "message": "Model not found"}))
        body = json.dumps({**doc, "auth": self.headers.get("Authorization")}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def stub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_answers_become_errors_a_user_can_act_on(stub: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = ServingClient(stub, timeout_s=5)
    with pytest.raises(InputError, match="empty text"):
        client.post_json("bad", {"text": ""})
    with pytest.raises(LicsearchError, match="failed \\(500\\)") as e:
        client.post_json("broken", {})
    assert not isinstance(e.value, InputError)
    with pytest.raises(ServerUnavailable, match="--token"):
        client.post_json("locked", {})
    with pytest.raises(ServerUnavailable, match="licsearch serve"):
        client.post_json("nope", {})

    monkeypatch.setenv("LICSEARCH_SERVER_TOKEN", "s3cret")
    assert ServingClient(stub).post_json("embed", {"text": "x"})["auth"] == "Bearer s3cret"


def test_unreachable_server_and_bad_url() -> None:
    url = f"http://127.0.0.1:{free_ports(1)[0]}"
    with pytest.raises(ServerUnavailable, match=f"{url}/predictions/embed.*licsearch serve"):
        ServingClient(url, timeout_s=5).post_json("embed", {"text": "x"})
    with pytest.raises(InputError, match="bad server URL"):
        ServingClient("127.0.0.1:8080")


def test_another_space_is_refused(stub: str) -> None:
    plane = RemoteModelPlane(ServingClient(stub, timeout_s=5), space_id="mine")
    with pytest.raises(ConfigMismatchError, match=r"space 'other'.*'mine'"):
        plane.embed_texts(["a red car"])
    assert RemoteModelPlane(ServingClient(stub)).embed_texts(["a red car"]).vectors.tolist() == [[1.0, 0.0]]


FAST = RetryPolicy(backoff_s=0.01)


def test_a_dead_worker_or_a_busy_server_is_retried_a_bounded_number_of_times(stub: str) -> None:
    SEEN.clear()
    client = ServingClient(stub, timeout_s=5, retry=FAST)
    assert client.post_json("dying", {})["ok"] is True, "'Worker died' 500 and 507, then an answer: three tries"
    assert SEEN["/predictions/dying"] == 3 and client.retried == Counter({500: 1, 507: 1})

    with pytest.raises(ServerUnavailable, match="failed \\(503\\)"):
        client.post_json("busy", {})  # five 503s outlast three tries
    assert SEEN["/predictions/busy"] == 3 and client.retried[503] == 2

    with pytest.raises(LicsearchError, match="failed \\(500\\)"):
        client.post_json("broken", {})  # a handler's own 500 is a bug, not a passing state: sent once
    assert SEEN["/predictions/broken"] == 1
    with pytest.raises(InputError):
        client.post_json("bad", {})
    assert SEEN["/predictions/bad"] == 1, "a 4xx is never retried"

    SEEN.clear()
    with pytest.raises(LicsearchError, match="Worker died"):
        ServingClient(stub, timeout_s=5, retry=NO_RETRY).post_json("dying", {})
    assert SEEN["/predictions/dying"] == 1


def test_backoff_doubles_and_is_capped() -> None:
    policy = RetryPolicy(backoff_s=0.5, max_backoff_s=4.0)
    assert [policy.delay_s(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.delay_s(1, retry_after="3") == 3.0 and policy.delay_s(1, retry_after="60") == 4.0
    assert policy.retryable(500, b'{"message": "Worker died."}') and not policy.retryable(500, b"{}")
    assert policy.retryable(507, b'{"message": "Worker died."}') and not policy.retryable(400, b"Worker died.")


def test_routing_is_read_once_when_the_client_is_made(
    stub: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "routing.json"
    write_routing(path, "test", {"embed": "v2"}, 100.0, 30.0)
    routed = ServingClient(stub, timeout_s=5, routing=Routing(path))
    assert routed.post_json("embed", {"text": "x"})["path"] == "/predictions/embed/v2"
    assert routed.post_json("embed/v1", {"text": "x"})["path"] == "/predictions/embed/v1", "an explicit version stays"

    monkeypatch.setenv(ROUTING_ENV, str(path))
    from_env = ServingClient(stub, timeout_s=5)
    assert from_env.routing == Routing(path)
    monkeypatch.delenv(ROUTING_ENV)
    assert from_env.post_json("embed", {"text": "x"})["path"] == "/predictions/embed/v2", "read at construction"
    assert ServingClient(stub, timeout_s=5).routing == Routing(None)
    assert "vectors" in ServingClient(stub, routing=Routing(None)).post_json("embed", {"text": "x"})
