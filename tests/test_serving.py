"""The model plane over HTTP: handlers in a test context and in a real TorchServe.

The server is the session's (``tests/serving_fixtures.py``: a tiny bundle exported once, archived with
``licsearch archive`` and served with ``licsearch serve`` on free 127.0.0.1 ports). HTTP answers are compared
with the same bundle run in-process; bad input must give a 4xx JSON body and leave the workers as they were; the
handlers' metrics are scraped from the metrics port.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import logging
import re
import shutil
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from licsearch.bitstream import Bitstream
from licsearch.bundle.runtime import BundleModelSet
from licsearch.serving import server as ts_server
from licsearch.serving.metrics import METRICS, TORCHSERVE_METRICS, render_yaml

from .conftest import make_image, run_cli, write_png
from .serving_fixtures import (
    FRONTEND_LIMIT,
    HANDLER_LIMIT,
    OCTET,
    OCTET_JSON,
    ROOT,
    Response,
    Served,
    bomb_png,
    cosine,
    free_ports,
    multipart,
    needs_java,
    png,
    port_flags,
    sample_total,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pids(served: Served) -> dict[str, int]:
    """Worker pids right after start: bad input must not restart a worker."""
    return served.worker_pids()


# -- handlers in a test context ---------------------------------------------------------------------------------


def load_handler(name: str) -> type:
    from ts.utils.util import list_classes_from_module

    spec = importlib.util.spec_from_file_location(f"{name}_handler", ROOT / "handlers" / f"{name}_handler.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    classes = list_classes_from_module(module)
    assert len(classes) == 1, "TorchServe needs exactly one class defined in a handler module"
    return classes[0]


def test_handler_in_test_context_one_reply_per_request(
    bundle: Path, ref: BundleModelSet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from ts.context import Context, RequestProcessor
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "bundle").symlink_to(bundle)
    (tmp_path / "metrics.yaml").write_text(render_yaml())
    metrics = MetricsCacheYamlImpl(config_file_path=str(tmp_path / "metrics.yaml"))
    metrics.initialize_cache()
    manifest = {"model": {"modelName": "encode", "modelVersion": "fp32-test"}}
    ctx = Context("encode", str(tmp_path / "model"), manifest, 4, None, "0.12.0", metrics=metrics)
    ctx.model_yaml_config = {"handler": {"max_bytes": HANDLER_LIMIT}}
    handler = load_handler("encode")()
    handler.initialize(ctx)

    a, b = make_image(1, 64, 96), make_image(2, 96, 128)
    batch = [{"body": png(a)}, {"body": b"junk"}, {"data": bytearray(png(b))}, {"body": bytearray()}]
    accept = [{}, {}, {"accept": "application/octet-stream"}, {}]
    ctx.request_processor = [RequestProcessor({"body": {"content-type": ""}, **h}) for h in accept]
    ctx.request_ids = {i: f"req-{i}" for i in range(len(batch))}
    with caplog.at_level(logging.INFO):
        out = handler.handle(batch, ctx)

    assert len(out) == 4
    assert [ctx.get_response_status(i)[0] for i in range(4)] == [200, 400, 200, 400]
    assert json.loads(out[0])["bitstream"] == base64.b64encode(ref.encode(a).data).decode()
    assert json.loads(out[1])["error"]["type"] == "ImageError"
    assert out[2] == ref.encode(b).data and ctx.get_response_content_type(2) == "application/octet-stream"
    assert json.loads(out[3])["error"]["message"].startswith("empty request body")
    logged = caplog.text
    assert "Failed to update metric" not in logged
    assert "[METRICS]licsearch_requests_total.Count:1|#model_name:encode,model_version:fp32-test,status:400" in logged
    assert "licsearch_stage_latency_seconds" in logged and "stage:entropy_coding" in logged


# -- a real TorchServe ------------------------------------------------------------------------------------------


@needs_java
def test_encode_round_trip_equals_in_process(served: Served, ref: BundleModelSet, pids: dict[str, int]) -> None:
    pixels = make_image(3)
    want = ref.encode(pixels)
    doc = served.expect(served.post("encode", png(pixels), {"Content-Type": "image/png"}), 200).json()
    assert base64.b64decode(doc["bitstream"]) == want.data
    assert cosine(doc["embedding"], want.embedding) >= 0.9999
    assert (doc["width"], doc["height"], doc["bytes"]) == (128, 96, len(want.data))
    assert doc["bpp"] == pytest.approx(want.bpp)
    assert doc["codec_profile"] == ref.codec.profile_id and doc["space_id"] == ref.space_id == "test"

    raw = served.expect(served.post("encode", png(pixels), {**OCTET, "Accept": "application/octet-stream"}), 200)
    assert raw.content_type == "application/octet-stream" and raw.body == want.data
    body, headers = multipart({"data": ("x.png", png(pixels))})
    assert base64.b64decode(served.expect(served.post("encode", body, headers), 200).json()["bitstream"]) == want.data


@needs_java
def test_decode_formats(served: Served, ref: BundleModelSet) -> None:
    data = ref.encode(make_image(4)).data
    want = ref.decode(data)
    resp = served.expect(served.post("decode", data, OCTET), 200)
    assert resp.content_type == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(resp.body)).convert("RGB")), want)
    jpeg = served.expect(served.post("decode", data, {**OCTET, "Accept": "image/jpeg"}), 200)
    assert jpeg.content_type == "image/jpeg" and jpeg.body[:2] == b"\xff\xd8"
    body, headers = multipart({"data": ("x.lics", data), "format": (None, b"webp")})
    webp = served.expect(served.post("decode", body, headers), 200)
    assert webp.content_type == "image/webp" and webp.body[8:12] == b"WEBP"
    doc = json.dumps({"bitstream": base64.b64encode(data).decode(), "format": "jpeg"}).encode()
    assert served.expect(served.post("decode", doc, {"Content-Type": "application/json"}), 200).body[:2] == b"\xff\xd8"
    served.expect(served.post("decode", data, {**OCTET, "Accept": "application/json"}), 406)


@needs_java
def test_embed_text_image_and_bitstream(served: Served, ref: BundleModelSet) -> None:
    texts = ["a red circle on the left", "two small blue squares"]
    want = ref.embed_texts(texts).vectors.tolist()
    doc = served.expect(served.post("embed", json.dumps({"texts": texts}).encode(), OCTET_JSON), 200).json()
    assert doc["source"] == "text" and doc["space_id"] == "test" and doc["truncated"] == [False, False]
    assert all(cosine(g, w) >= 0.9999 for g, w in zip(doc["vectors"], want, strict=True))
    one = served.expect(served.post("embed", json.dumps({"text": texts[0]}).encode(), OCTET_JSON), 200).json()
    assert cosine(one["vectors"][0], want[0]) >= 0.9999
    plain = served.expect(served.post("embed", texts[1].encode(), {"Content-Type": "text/plain"}), 200).json()
    assert cosine(plain["vectors"][0], want[1]) >= 0.9999
    long = " ".join(["word"] * 200)
    assert served.expect(served.post("embed", json.dumps({"text": long}).encode(), OCTET_JSON), 200).json()[
        "truncated"
    ] == [True]

    pixels = make_image(5)
    enc = ref.encode(pixels)
    img = served.expect(served.post("embed", png(pixels), OCTET), 200).json()
    assert img["source"] == "image" and cosine(img["vectors"][0], enc.embedding) >= 0.9999
    lics = served.expect(served.post("embed", enc.data, OCTET), 200).json()
    assert lics["source"] == "bitstream" and cosine(lics["vectors"][0], ref.embed_bitstream(enc.data)) >= 0.9999


@needs_java
def test_concurrent_mixed_batch_each_gets_its_own_answer(served: Served, ref: BundleModelSet) -> None:
    good = {i: make_image(10 + i, *((64, 96) if i % 2 else (96, 128))) for i in range(5)}
    bad = {5: b"not an image", 6: b"", 7: bomb_png()}
    jobs = [(i, png(p), i % 2 == 0) for i, p in good.items()] + [(i, b, False) for i, b in bad.items()]
    jobs.sort(key=lambda j: (j[0] * 5) % 8)  # interleave good and bad

    def send(job: tuple[int, bytes, bool]) -> tuple[int, Response]:
        i, body, raw = job
        return i, served.post("encode", body, {**OCTET, **({"Accept": "application/octet-stream"} if raw else {})})

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = dict(pool.map(send, jobs))
    for i, pixels in good.items():
        resp = served.expect(results[i], 200)
        got = resp.body if i % 2 == 0 else base64.b64decode(resp.json()["bitstream"])
        assert got == ref.encode(pixels).data, f"request {i} got another request's answer"
    for i in bad:
        assert served.expect(results[i], 400).json()["error"]["type"] in ("ImageError", "InputError")

    texts = [["a red car"], ["a blue boat", "green grass"], [""], ["sky"]]
    with ThreadPoolExecutor(len(texts)) as pool:
        answers = list(pool.map(lambda t: served.post("embed", json.dumps({"texts": t}).encode(), OCTET_JSON), texts))
    for t, resp in zip(texts, answers, strict=True):
        if t == [""]:
            assert served.expect(resp, 400).json()["error"]["type"] == "TextError"
        else:
            got = served.expect(resp, 200).json()["vectors"]
            assert all(cosine(g, w) >= 0.9999 for g, w in zip(got, ref.embed_texts(t).vectors.tolist(), strict=True))


def _lics(ref: BundleModelSet) -> bytes:
    return ref.encode(make_image(20, 64, 64)).data


def _bad_cases(ref: BundleModelSet) -> list[tuple[str, str, bytes, dict[str, str], int, str]]:
    data = _lics(ref)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    bs = Bitstream.from_bytes(data)
    huge = Bitstream(bs.profile_id, 60000, 60000, bs.latent_hash, bs.streams).to_bytes()
    return [
        ("empty body", "encode", b"", OCTET, 400, "InputError"),
        ("empty body", "decode", b"", OCTET, 400, "InputError"),
        ("empty body", "embed", b"", OCTET, 400, "InputError"),
        ("not an image", "encode", b"GIF89a but not really", OCTET, 400, "ImageError"),
        ("decompression bomb", "encode", bomb_png(), {"Content-Type": "image/png"}, 400, "ImageError"),
        ("decompression bomb", "embed", bomb_png(), OCTET, 400, "ImageError"),
        ("over the handler's size limit", "encode", b"\0" * (HANDLER_LIMIT + 1), OCTET, 413, "PayloadTooLarge"),
        ("corrupt .lics", "decode", bytes(flipped), OCTET, 400, "BitstreamError"),
        ("truncated .lics", "decode", data[:-7], OCTET, 400, "BitstreamError"),
        ("truncated .lics", "embed", data[: len(data) // 2], OCTET, 400, "BitstreamError"),
        (".lics claiming 60000x60000", "decode", huge, OCTET, 400, "BitstreamError"),
        ("image as JSON", "encode", b'{"image": 1}', OCTET_JSON, 415, "UnsupportedMediaType"),
        ("bitstream as text", "decode", b"LICS...", {"Content-Type": "text/plain"}, 415, "UnsupportedMediaType"),
        ("form-urlencoded", "encode", b"a=1", {"Content-Type": "application/x-www-form-urlencoded"}, 415, ""),
        ("invalid JSON", "embed", b'{"text": "unterminated', OCTET_JSON, 400, "InputError"),
        ("JSON without text", "embed", b'{"query": "x"}', OCTET_JSON, 400, "InputError"),
        ("empty text", "embed", b'{"text": "   "}', OCTET_JSON, 400, "TextError"),
        ("very long text", "embed", json.dumps({"text": "x" * 5000}).encode(), OCTET_JSON, 400, "TextError"),
        ("unknown format", "decode", data, {**OCTET, "Accept": "image/gif"}, 406, "NotAcceptable"),
    ]


@needs_java
def test_bad_input_gets_4xx_json_and_the_worker_stays_up(
    served: Served, ref: BundleModelSet, pids: dict[str, int]
) -> None:
    good = {"encode": png(make_image(21, 64, 64)), "decode": _lics(ref), "embed": b'{"text": "ok"}'}
    for what, model, body, headers, status, kind in _bad_cases(ref):
        resp = served.post(model, body, headers)
        assert resp.status == status, f"{what} -> {model}: {resp.status} {resp.body[:200]!r}"
        assert resp.content_type.startswith("application/json"), what
        err = resp.json()["error"]
        assert err["message"] and (not kind or err["type"] == kind), f"{what}: {err}"
        ok = served.post(model, good[model], OCTET_JSON if model == "embed" else OCTET)
        served.expect(ok, 200)
    assert served.worker_pids() == pids, "a worker was restarted"


@needs_java
def test_body_over_the_frontend_limit_is_refused(served: Served) -> None:
    try:
        status = served.post("encode", b"\0" * (FRONTEND_LIMIT + 1000), OCTET, count=False).status
    except (ConnectionError, urllib.error.URLError):
        status = 413  # the frontend may close the connection while the body is still being sent
    assert status == 413
    served.expect(served.post("encode", png(make_image(22, 64, 64)), OCTET), 200)


@needs_java
def test_metrics_on_the_prometheus_endpoint(served: Served, pids: dict[str, int]) -> None:
    expected = {m.name.removesuffix("_total") for m in METRICS} | {"ts_inference_requests"}
    deadline = time.monotonic() + 20
    while True:
        fams = served.scrape()
        requests = fams.get("licsearch_requests")
        counted = {m: sample_total(requests, "_total", model_name=m) if requests else 0 for m in served.sent}
        if (expected <= set(fams) and counted == dict(served.sent)) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert expected <= set(fams), sorted(expected - set(fams))
    assert counted == dict(served.sent), "licsearch_requests_total differs from the requests sent"

    for sample in fams["licsearch_requests"].samples:
        assert sample.labels["model_version"] == served.version
    errors = fams["licsearch_errors"]
    assert sample_total(errors, "_total", model_name="encode", status="413", error_type="PayloadTooLarge") >= 1
    stages = {s.labels["stage"] for s in fams["licsearch_stage_latency_seconds"].samples}
    assert stages == {"preprocess", "network", "entropy_coding", "postprocess"}
    batches = fams["licsearch_batch_size_requests"]
    total = sample_total(batches, "_count", model_name="encode")
    single = sample_total(batches, "_bucket", model_name="encode", le="1.0")
    assert single < total, "the concurrent requests were never batched"
    assert sample_total(fams["licsearch_encoded_bits_per_pixel"], "_count", model_name="encode") >= 1
    assert sample_total(fams["licsearch_received_bytes"], "_total", model_name="decode") > 0
    assert sample_total(fams["licsearch_sent_bytes"], "_total", model_name="decode") > 0
    assert served.worker_pids() == pids


# -- the CLI around the server ----------------------------------------------------------------------------------


@needs_java
def test_production_config_with_tokens_serve_and_stop(model_store: tuple[Path, str], tmp_path: Path) -> None:
    store, _ = model_store
    prod = (ROOT / "deploy" / "config.production.properties").read_text()
    config = tmp_path / "production.properties"
    config.write_text(prod.replace("http://0.0.0.0:", "http://127.0.0.1:"))  # tests use 127.0.0.1 only
    run = tmp_path / "run"
    ports = port_flags()
    args = ["--model-store", str(store), "--run-dir", str(run), "--config", str(config), "--models", "embed", *ports]
    try:
        proc = run_cli("serve", *args, "--timeout", "200", env={"LICSEARCH_ORT_THREADS": "1"})
        assert proc.returncode == 0, f"{proc.stderr}\n{ts_server.log_tail(run)}"
        assert "tokens" in proc.stdout and f"http://127.0.0.1:{ports[1]}/predictions/embed" in proc.stdout
        keys = ts_server.read_keys(run)
        url = f"http://127.0.0.1:{ports[1]}/predictions/embed"
        body = json.dumps({"text": "a red car"}).encode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, data=body, headers=OCTET_JSON), timeout=30)
        assert refused.value.code in (400, 401, 403)
        auth = {**OCTET_JSON, "Authorization": f"Bearer {keys['inference']}"}
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=auth), timeout=30) as r:
            assert r.status == 200 and json.loads(r.read())["source"] == "text"
        again = run_cli("serve", *args)
        assert again.returncode == 1 and "already running" in again.stderr
        status = run_cli("serve", "--status", "--run-dir", str(run), "--json")  # management token from key_file
        doc = json.loads(status.stdout)
        assert status.returncode == 0 and doc["running"] is True and doc["ready"] is True, status.stdout
        assert doc["workers"] == {"embed": 1}
    finally:
        stop = run_cli("serve", "--stop", "--run-dir", str(run), "--json")
    assert stop.returncode == 0 and json.loads(stop.stdout)["stopped"] is True
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{ports[1]}/ping", timeout=5)
    assert json.loads(run_cli("serve", "--stop", "--run-dir", str(run), "--json").stdout)["stopped"] is False
    gone = run_cli("serve", "--status", "--run-dir", str(run), "--json")
    assert gone.returncode == 1 and json.loads(gone.stdout)["running"] is False


def test_serve_without_java_says_how_to_install_it(model_store: tuple[Path, str], tmp_path: Path) -> None:
    proc = run_cli(
        "serve", "--model-store", str(model_store[0]), "--run-dir", str(tmp_path / "run"),
        env={"PATH": str(tmp_path), "JAVA_HOME": ""},
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Java was not found" in proc.stderr and "apt-get install openjdk-17-jre-headless" in proc.stderr
    assert not (tmp_path / "run").exists()


# -- deployment files -------------------------------------------------------------------------------------------


def test_deploy_files_match_the_code() -> None:
    import yaml

    deploy = ROOT / "deploy"
    assert (deploy / "metrics.yaml").read_text() == render_yaml(), "regenerate: python -m licsearch.serving.metrics"
    spec = yaml.safe_load(render_yaml())
    declared = {m["name"] for section in spec.values() for kind in section.values() for m in kind}
    assert {m.name for m in METRICS} <= declared
    for m in METRICS:
        assert m.name.endswith(("_seconds", "_bytes_total", "_total", "_requests", "_bits_per_pixel")), m.name

    assert ts_server.read_properties(deploy / "config.properties") == ts_server.LOCAL_CONFIG
    prod = ts_server.read_properties(deploy / "config.production.properties")
    assert prod["disable_token_authorization"] == "false" and prod["enable_model_api"] == "false"
    assert prod["management_address"].startswith("http://127.0.0.1:")
    assert prod["metrics_address"].startswith("http://127.0.0.1:")
    assert prod["allowed_urls"].startswith("file:///") and int(prod["max_request_size"]) > 0

    dashboard = json.loads((deploy / "grafana" / "licsearch-serving.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    known = {m.name for m in METRICS} | {name for _, _, name, _, _ in TORCHSERVE_METRICS}
    used = {re.sub(r"_(bucket|sum|count)$", "", n) for e in exprs for n in re.findall(r"\b(?:licsearch|ts)_\w+", e)}
    assert used and used <= known, sorted(used - known)
    assert {m.name for m in METRICS} <= used, "every metric is on the dashboard"
    assert not (ROOT / "model_store").exists() or {p.name for p in (ROOT / "model_store").iterdir()} <= {
        ".keep",
        "encode.mar",
        "decode.mar",
        "embed.mar",
        "search.mar",
    }


def test_archive_refuses_bad_settings(bundle: Path, tmp_path: Path) -> None:
    from licsearch.errors import InputError
    from licsearch.serving.archive import ArchiveSettings, archive_bundle

    for bad in (
        ArchiveSettings(batch_size=0),
        ArchiveSettings(min_workers=2, max_workers=1),
        ArchiveSettings(version="a b"),
    ):
        with pytest.raises(InputError):
            archive_bundle(bundle, tmp_path / "store", bad)
    with pytest.raises(InputError, match="handler module"):
        archive_bundle(bundle, tmp_path / "store", handlers=tmp_path)
    shutil.rmtree(tmp_path / "store", ignore_errors=True)


# -- the CLI's --server: the same results as in-process --------------------------------------------------------


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    """The CLI in this process (the imports and model loads of a subprocess per call would cost minutes)."""
    from licsearch.cli.main import main

    def call(*args: str, status: int = 0) -> tuple[Any, str]:
        code = main([*args, "--json"])
        out, err = capsys.readouterr()
        assert code == status, f"licsearch {' '.join(args)} exited {code}:\n{err}"
        return json.loads(out), err

    return call


def _hits(doc: dict[str, Any]) -> list[tuple[str, float]]:
    return [(h["id"], h["score"]) for h in doc["hits"]]


@needs_java
def test_cli_with_server_equals_in_process(served: Served, bundle: Path, tmp_path: Path, cli: Any) -> None:
    def _cli_json(*args: str) -> Any:
        return cli(*args)[0]

    local, remote = tmp_path / "local", tmp_path / "remote"
    _cli_json("init", "--store", str(local), "--bundle", str(bundle))
    shutil.copytree(local, remote)
    images = tmp_path / "images"
    for i in range(4):
        write_png(images / f"img{i}.png", make_image(30 + i, *((64, 96) if i % 2 else (96, 128))))
    server = ("--server", served.inference)

    a = _cli_json("ingest", "--store", str(local), str(images), "--no-progress")
    b = _cli_json("ingest", "--store", str(remote), str(images), "--no-progress", *server)
    assert a["ingested"] == b["ingested"] == 4 and sorted(a["ids"]) == sorted(b["ids"])
    for query in (("--text", "a red circle"), ("--image", str(images / "img1.png"))):
        want = _hits(_cli_json("search", "--store", str(local), *query))
        got = _hits(_cli_json("search", "--store", str(remote), *query, *server))
        assert [i for i, _ in got] == [i for i, _ in want], query
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-4), query

    _cli_json("get", "--store", str(remote), a["ids"][0], "-o", str(tmp_path / "got.png"), *server)
    _cli_json("get", "--store", str(local), a["ids"][0], "-o", str(tmp_path / "want.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "got.png")), np.asarray(Image.open(tmp_path / "want.png")))

    src = str(images / "img0.png")
    _cli_json("encode", "--store", str(local), src, "-o", str(tmp_path / "want.lics"))
    doc = _cli_json("encode", "--store", str(remote), src, "-o", str(tmp_path / "got.lics"), *server)
    assert (tmp_path / "got.lics").read_bytes() == (tmp_path / "want.lics").read_bytes()
    assert doc["codec_profile"] == BundleModelSet(bundle).codec.profile_id
    _cli_json("decode", "--store", str(remote), str(tmp_path / "got.lics"), "-o", str(tmp_path / "d1.png"), *server)
    _cli_json("decode", "--store", str(local), str(tmp_path / "want.lics"), "-o", str(tmp_path / "d2.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "d1.png")), np.asarray(Image.open(tmp_path / "d2.png")))

    bs = Bitstream.from_bytes((tmp_path / "want.lics").read_bytes())
    huge = tmp_path / "huge.lics"
    huge.write_bytes(Bitstream(bs.profile_id, 60000, 60000, bs.latent_hash, bs.streams).to_bytes())
    err = cli("decode", "--store", str(local), str(huge), "-o", str(tmp_path / "huge.png"), status=2)[1]
    assert "over the limit" in err and not (tmp_path / "huge.png").exists()


@needs_java
def test_cli_with_unreachable_server_fails_clearly(bundle: Path, tmp_path: Path, cli: Any) -> None:
    store, images = tmp_path / "store", tmp_path / "images"
    cli("init", "--store", str(store), "--bundle", str(bundle))
    write_png(images / "a.png", make_image(40))
    url = f"http://127.0.0.1:{free_ports(1)[0]}"
    message = cli("ingest", "--store", str(store), str(images), "--server", url, status=1)[0]["error"]["message"]
    assert url in message and "licsearch serve" in message
    assert not [p for p in (store / "blobs").rglob("*") if p.is_file()]


@needs_java
def test_bench_with_server_reports_overhead_and_batching(served: Served, bundle: Path, cli: Any) -> None:
    doc, _ = cli(
        "bench", "--quick", "--threads", "2", "--bundle", str(bundle),
        "--server", served.inference, "--management", served.management,
    )  # fmt: skip
    assert {"backends", "ratios", "gate"} <= set(doc)  # the bench's own schema is untouched
    s = doc["serving"]
    for name in ("encode", "embed_text"):
        o = s["overhead"][name]
        assert o["http_median_s"] > 0 and o["in_process_median_s"] > 0 and "overhead_median_s" in o
    assert s["batching"] == "measured", s["batching"]
    models = s["throughput"]["models"]
    assert {m: models[m]["batch_size"] for m in models} == {"embed_b1": 1, "embed_b8": 8}
    for m in models.values():
        assert m["requests_per_s"] > 0 and m["errors"] == 0 and m["p50_s"] <= m["p99_s"]
    assert s["throughput"]["speedup"] > 0
    with urllib.request.urlopen(f"{served.management}/models", timeout=10) as r:
        assert {m["modelName"] for m in json.loads(r.read())["models"]} == {"encode", "decode", "embed", "search"}


# -- search over HTTP -------------------------------------------------------------------------------------------


def _search_context(bundle: Path, tmp_path: Path, n: int) -> tuple[Any, Any]:
    from ts.context import Context, RequestProcessor
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "bundle").symlink_to(bundle)
    (tmp_path / "metrics.yaml").write_text(render_yaml())
    metrics = MetricsCacheYamlImpl(config_file_path=str(tmp_path / "metrics.yaml"))
    metrics.initialize_cache()
    manifest = {"model": {"modelName": "search", "modelVersion": "fp32-test"}}
    ctx = Context("search", str(tmp_path / "model"), manifest, n, None, "0.12.0", metrics=metrics)
    ctx.request_processor = [RequestProcessor({"body": {"content-type": "application/json"}}) for _ in range(n)]
    ctx.request_ids = {i: f"req-{i}" for i in range(n)}
    handler = load_handler("search")()
    handler.initialize(ctx)
    return handler, ctx


def test_search_handler_finds_stored_points_and_checks_its_input(
    bundle: Path, ref: BundleModelSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from licsearch.storage.index import Point, VectorIndex

    monkeypatch.delenv("LICSEARCH_QDRANT_URL", raising=False)
    handler, ctx = _search_context(bundle, tmp_path, 5)
    # The code path of a Qdrant server, on a local-mode index (no server can run here): same client API.
    index = VectorIndex(path=tmp_path / "qdrant")
    index.ensure_collection({ref.space_id: ref.embed_dim})
    texts = ["a red circle", "a blue square", "a green star"]
    vectors = ref.embed_texts(texts).vectors.tolist()
    ids = [f"00000000-0000-0000-0000-00000000000{i}" for i in range(3)]
    index.upsert(
        [
            Point(i, {ref.space_id: v}, {"width": 10 * (k + 1)})
            for k, (i, v) in enumerate(zip(ids, vectors, strict=True))
        ]
    )
    handler.index = index
    batch = [
        {"body": json.dumps({"text": "a blue square", "top_k": 2}).encode()},
        {"body": json.dumps({"vector": vectors[2], "top_k": 1, "filters": ["width>=20"]}).encode()},
        {"body": json.dumps({"text": "x", "top_k": 0}).encode()},
        {"body": b"{not json"},
        {"body": json.dumps({"text": ""}).encode()},
    ]
    out = handler.handle(batch, ctx)
    assert [ctx.get_response_status(i)[0] for i in range(5)] == [200, 200, 400, 400, 400]
    first = json.loads(out[0])
    assert first["hits"][0]["id"] == ids[1] and first["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert len(first["hits"]) == 2 and first["space_id"] == ref.space_id
    assert [h["id"] for h in json.loads(out[1])["hits"]] == [ids[2]]
    assert "top_k" in json.loads(out[2])["error"]["message"]
    index.close()


def test_search_handler_without_a_qdrant_server_refuses_clearly(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LICSEARCH_QDRANT_URL", raising=False)
    handler, ctx = _search_context(bundle, tmp_path, 1)
    out = handler.handle([{"body": json.dumps({"text": "a red circle"}).encode()}], ctx)
    assert ctx.get_response_status(0)[0] == 501
    message = json.loads(out[0])["error"]["message"]
    assert "Qdrant server" in message and "LICSEARCH_QDRANT_URL" in message


@needs_java
def test_search_over_http_with_the_local_store_is_refused_and_the_worker_stays_up(served: Served) -> None:
    resp = served.expect(served.post("search", json.dumps({"text": "a red circle"}).encode(), OCTET_JSON), 501)
    assert "Qdrant server" in resp.json()["error"]["message"]
    served.expect(served.post("embed", json.dumps({"text": "still up"}).encode(), OCTET_JSON), 200)
