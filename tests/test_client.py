"""The HTTP client of the model plane against a stub server: how each kind of answer becomes an error.

The client against a real TorchServe (identical results to in-process) is tested in ``test_serving.py``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from licsearch.errors import ConfigMismatchError, InputError, LicsearchError
from licsearch.serving.client import RemoteModelPlane, ServerUnavailable, ServingClient

from .test_serving import free_ports

ANSWERS = {
    "/predictions/bad": (400, {"error": {"type": "TextError", "message": "empty text"}}),
    "/predictions/broken": (500, {"error": {"type": "InternalError", "message": "see its log"}}),
    "/predictions/locked": (401, {"code": 401, "message": "Token Authorization failed"}),
    "/predictions/embed": (200, {"vectors": [[1.0, 0.0]], "space_id": "other", "truncated": [False]}),
}


class _Stub(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
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
