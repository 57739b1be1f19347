"""``licsearch bench --server URL``: what serving over HTTP costs, and what dynamic batching buys.

Two measurements, added to the bench document as its ``serving`` object:

- **Overhead per endpoint**: the same request in-process and over HTTP, interleaved (in-process, HTTP, in-process,
  ...), ``repeats`` times after one warm-up each. ``encode``: one PNG image's bytes -> ``.lics`` + embedding
  (in-process this includes decoding the PNG, as the handler does); ``embed_text``: one short text query -> vector.
  The in-process side is the model plane the caller passes (the bench's fp32 bundle, the store's models, or the
  model flags'); it should run what the server runs for the difference to be the serving overhead alone.
- **Throughput with dynamic batching**: ``requests`` text-embed requests sent by ``concurrency`` client threads at
  once, against the embed archive registered twice through the management API (``POST /models?url=embed.mar
  &model_name=embed_b1&batch_size=1`` and ``embed_b8`` with ``batch_size=8``, both with ``max_batch_delay`` 20 ms
  and one worker) and unregistered afterwards. Requests/s, p50 and p99 latency per registration, and the batch size
  the server reports for it. Without ``--management`` (or when the server refuses registration, e.g.
  ``enable_model_api=false``) the served ``embed`` model is measured alone and ``batching`` says why.

``serving`` object::

    {"server": URL, "in_process": WHAT, "repeats": N,
     "overhead": {"encode" | "embed_text": {"in_process_median_s", "http_median_s", "overhead_median_s",
                                            "http_p90_s"}},
     "throughput": {"concurrency", "requests", "max_batch_delay_ms",
                    "models": {NAME: {"batch_size", "requests_per_s", "p50_s", "p99_s", "errors"}},
                    "speedup": requests/s of the batched registration over batch size 1 | null},
     "batching": "measured" | a reason it was not}
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..errors import LicsearchError
from ..model.models import ModelPlane
from ..serving.client import OCTET, ServingClient

QUERY = "a red circle next to a blue square"
BATCH_DELAY_MS = 20
REGISTRATIONS = {"embed_b1": 1, "embed_b8": 8}


@dataclass(frozen=True)
class ServingBenchOptions:
    """What to send: ``repeats`` per overhead pair; ``requests`` from ``concurrency`` threads for throughput."""

    repeats: int = 20
    requests: int = 200
    concurrency: int = 8
    archive: str = "embed.mar"


def _q(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def _overhead(local: Callable[[], object], remote: Callable[[], object], repeats: int) -> dict[str, float]:
    local(), remote()  # warm-up: lazy loads, first-batch costs, connection set-up
    ta: list[float] = []
    tb: list[float] = []
    for _ in range(repeats):
        for fn, out in ((local, ta), (remote, tb)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    a, b = statistics.median(ta), statistics.median(tb)
    return {"in_process_median_s": a, "http_median_s": b, "overhead_median_s": b - a, "http_p90_s": _q(tb, 0.9)}


def _throughput(client: ServingClient, model: str, opts: ServingBenchOptions) -> dict[str, Any]:
    body = json.dumps({"text": QUERY}).encode()

    def one(_: int) -> float | None:
        t = time.perf_counter()
        try:
            client.post(model, body, "application/json")
        except LicsearchError:
            return None
        return time.perf_counter() - t

    with ThreadPoolExecutor(opts.concurrency) as pool:
        list(pool.map(one, range(opts.concurrency)))  # warm-up
        start = time.perf_counter()
        results = list(pool.map(one, range(opts.requests)))
        elapsed = time.perf_counter() - start
    ok = [r for r in results if r is not None]
    return {
        "requests_per_s": len(ok) / elapsed,
        "p50_s": _q(ok, 0.5) if ok else None,
        "p99_s": _q(ok, 0.99) if ok else None,
        "errors": len(results) - len(ok),
    }


def _management(url: str, method: str, path: str) -> Any:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"bad management URL {url!r}")
    req = urllib.request.Request(f"{url.rstrip('/')}{path}", method=method)  # noqa: S310 (http/https checked)
    with urllib.request.urlopen(req, timeout=300) as r:  # noqa: S310
        return json.loads(r.read() or b"null")


def _register(management: str, archive: str) -> dict[str, int]:
    """Registers the embed archive once per batch size; returns the batch size the server reports for each."""
    sizes = {}
    for name, batch in REGISTRATIONS.items():
        query = (
            f"/models?url={archive}&model_name={name}&batch_size={batch}&max_batch_delay={BATCH_DELAY_MS}"
            "&initial_workers=1&synchronous=true"
        )
        _management(management, "POST", query)
        sizes[name] = int(_management(management, "GET", f"/models/{name}")[0]["batchSize"])
    return sizes


def _unregister(management: str) -> None:
    for name in REGISTRATIONS:
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
            _management(management, "DELETE", f"/models/{name}")


def run_serving_bench(
    plane: ModelPlane,
    plane_name: str,
    client: ServingClient,
    image_png: bytes,
    *,
    management: str | None = None,
    options: ServingBenchOptions | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """The ``serving`` object of the bench document (see the module docstring)."""
    from ..imageio import load_image

    opts = options or ServingBenchOptions()
    log(f"serving: overhead of {client.url} against {plane_name}, {opts.repeats} repeats")
    text_body = json.dumps({"text": QUERY}).encode()
    overhead = {
        "encode": _overhead(
            lambda: plane.encode(load_image(image_png).pixels),
            lambda: client.post("encode", image_png, OCTET),
            opts.repeats,
        ),
        "embed_text": _overhead(
            lambda: plane.embed_texts([QUERY]),
            lambda: client.post("embed", text_body, "application/json"),
            opts.repeats,
        ),
    }
    models: dict[str, Any] = {}
    batching = "measured"
    if management is None:
        batching = "not measured: give --management URL (a server with enable_model_api=true) to compare batch sizes"
    else:
        try:
            sizes = _register(management, opts.archive)
        except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
            _unregister(management)
            batching = f"not measured: the management API refused to register {opts.archive}: {e}"
        else:
            try:
                for name, size in sizes.items():
                    log(f"serving: {opts.requests} requests to {name} from {opts.concurrency} threads")
                    models[name] = {"batch_size": size, **_throughput(client, name, opts)}
            finally:
                _unregister(management)
    if not models:
        log(f"serving: {opts.requests} requests to embed from {opts.concurrency} threads")
        models["embed"] = {"batch_size": None, **_throughput(client, "embed", opts)}
    b1, b8 = models.get("embed_b1"), models.get("embed_b8")
    speedup = b8["requests_per_s"] / b1["requests_per_s"] if b1 and b8 and b1["requests_per_s"] else None
    return {
        "server": client.url,
        "in_process": plane_name,
        "repeats": opts.repeats,
        "overhead": overhead,
        "throughput": {
            "concurrency": opts.concurrency,
            "requests": opts.requests,
            "max_batch_delay_ms": BATCH_DELAY_MS if management else None,
            "models": models,
            "speedup": speedup,
        },
        "batching": batching,
    }


def format_serving(doc: dict[str, Any]) -> str:
    """The ``serving`` object as a few lines of text."""
    lines = [f"serving ({doc['server']} vs {doc['in_process']} in-process, medians):"]
    for name, o in doc["overhead"].items():
        lines.append(
            f"  {name:<11} in-process {o['in_process_median_s'] * 1e3:8.2f} ms"
            f"   HTTP {o['http_median_s'] * 1e3:8.2f} ms   overhead {o['overhead_median_s'] * 1e3:+8.2f} ms"
        )
    t = doc["throughput"]
    for name, m in t["models"].items():
        p50 = f"{m['p50_s'] * 1e3:.1f}" if m["p50_s"] is not None else "-"
        p99 = f"{m['p99_s'] * 1e3:.1f}" if m["p99_s"] is not None else "-"
        lines.append(
            f"  {name:<11} batch {m['batch_size']}: {m['requests_per_s']:8.1f} req/s, p50 {p50} ms, p99 {p99} ms "
            f"({t['concurrency']} clients, {t['requests']} requests, {m['errors']} errors)"
        )
    if t["speedup"]:
        lines.append(f"  dynamic batching: x{t['speedup']:.2f} requests/s")
    if doc["batching"] != "measured":
        lines.append(f"  batching {doc['batching']}")
    return "\n".join(lines)
