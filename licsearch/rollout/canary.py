"""The canary: the same replay set sent to the live and the candidate version on the server, compared.

For every replay image, both versions encode it (``/predictions/encode/VERSION``, requests interleaved so neither
side is always first), each bitstream is decoded by both decode versions (it must decode exactly, i.e. pass the
decoder's latent-hash check, under each: *cross-decode*) and embedded by both embed versions; the text queries
are embedded by both. Compared: PSNR of each version's own round trip (candidate minus live), bpp (candidate over
live, percent), cosine of image embeddings (encode answers), of bitstream embeddings and of text embeddings, the
latency ratio (candidate over live, summed over every request), request errors, and the candidate's worker pids
before and after (a worker that died and was restarted during the canary fails it).
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .. import defaults
from ..errors import LicsearchError
from ..metrics import psnr
from ..release.gate import DEFAULT_TEXTS, CheckedReport, CheckFailure
from ..serving.client import JSON, OCTET, ServerUnavailable, ServingClient

if TYPE_CHECKING:
    import numpy as np

MODELS = ("encode", "decode", "embed")


@dataclass(frozen=True)
class CanaryThresholds:
    """Pass conditions of the canary (``licsearch rollout`` flags)."""

    psnr_delta_min: float = defaults.PSNR_DELTA_MIN_DB  # dB, candidate minus live
    bpp_delta_max_pct: float = defaults.BPP_DELTA_MAX_PCT  # percent, candidate over live
    cos_mean_min: float = defaults.COS_MEAN_MIN  # image, bitstream and text embeddings (skipped across spaces)
    latency_ratio_max: float = defaults.LATENCY_RATIO_MAX  # candidate time over live time


@dataclass
class CanaryReport(CheckedReport):
    """Measured figures, per-check failures (with the model each concerns) and the verdict."""

    images: int
    texts: int
    requests: int
    errors: list[str]
    cross_decode_failures: int
    cross_decode_pixels_equal: int
    psnr_live: float
    psnr_candidate: float
    psnr_delta: float
    bpp_live: float
    bpp_candidate: float
    bpp_delta_pct: float
    image_cos_mean: float | None
    image_cos_min: float | None
    bitstream_cos_mean: float | None
    text_cos_mean: float | None
    text_cos_min: float | None
    latency_live_s: dict[str, float]
    latency_candidate_s: dict[str, float]
    latency_ratio: float
    worker_restarts: list[str]
    thresholds: CanaryThresholds
    failed_checks: list[CheckFailure] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = self.failures
        d["failed_models"] = sorted({f.model for f in self.failed_checks})
        d["passed"] = self.passed
        return d


class _Timed:
    """Requests to one server, timed per (version, model)."""

    def __init__(self, client: ServingClient) -> None:
        self.client = client
        self.seconds: dict[tuple[str, str], float] = {}
        self.errors: list[str] = []
        self.requests = 0

    def post(self, model: str, version: str, body: bytes, ctype: str, accept: str = JSON) -> bytes | None:
        self.requests += 1
        t = time.perf_counter()
        try:
            answer = self.client.post(f"{model}/{version}", body, ctype, accept=accept)
        except ServerUnavailable as e:
            if "cannot reach" in str(e):
                raise  # the server is gone: the rollout stops and resumes later, the candidate is not judged
            self.errors.append(f"{model}/{version}: {e}")
            return None
        except LicsearchError as e:
            self.errors.append(f"{model}/{version}: {e}")
            return None
        finally:
            key = (version, model)
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t
        return answer.body


def run_canary(
    client: ServingClient,
    live: str,
    candidate: str,
    images: list[np.ndarray],
    *,
    same_space: bool,
    thresholds: CanaryThresholds | None = None,
    worker_pids: Callable[[], dict[str, list[int]]],
    texts: tuple[str, ...] = DEFAULT_TEXTS,
    on_round: Callable[[int], None] = lambda _: None,
) -> CanaryReport:
    """Sends the replay set to both versions and compares them (see the module docstring).

    Args:
        client: the inference API.
        live, candidate: the two versions (of each of encode, decode and embed).
        images: the replay images.
        same_space: whether the candidate embeds into the live space (else cosines are not compared).
        thresholds: pass conditions.
        worker_pids: the candidate's worker pids per model, read before and after.
        texts: text queries for the embed comparison.
        on_round: called after each replay image (progress; tests interrupt the canary there).
    """
    import numpy as np

    th = thresholds or CanaryThresholds()
    before = worker_pids()
    http = _Timed(client)
    tally = _Tally(live, candidate)
    for i, img in enumerate(images):
        _replay(http, tally, img, reverse=i % 2 == 1)
        on_round(i)
    tcos = _text_cosines(http, live, candidate, texts)
    after = worker_pids()
    restarts = [f"{m}: worker pids {before.get(m)} -> {after.get(m)}" for m in MODELS if before.get(m) != after.get(m)]

    def mean(xs: list[float]) -> float:
        return float(np.mean(xs)) if xs else float("nan")

    lat = {
        side: {m: http.seconds.get((v, m), 0.0) for m in MODELS} for side, v in (("live", live), ("cand", candidate))
    }
    total_live, total_cand = sum(lat["live"].values()), sum(lat["cand"].values())
    ps, bpp = tally.psnr, tally.bpp
    rep = CanaryReport(
        images=len(images),
        texts=len(texts),
        requests=http.requests,
        errors=http.errors,
        cross_decode_failures=tally.cross_decode_failures,
        cross_decode_pixels_equal=tally.pixels_equal,
        psnr_live=mean(ps[live]),
        psnr_candidate=mean(ps[candidate]),
        psnr_delta=mean(ps[candidate]) - mean(ps[live]),
        bpp_live=mean(bpp[live]),
        bpp_candidate=mean(bpp[candidate]),
        bpp_delta_pct=100.0 * (mean(bpp[candidate]) - mean(bpp[live])) / mean(bpp[live]) if bpp[live] else float("nan"),
        image_cos_mean=mean(tally.image_cos) if same_space else None,
        image_cos_min=min(tally.image_cos) if same_space and tally.image_cos else None,
        bitstream_cos_mean=mean(tally.bitstream_cos) if same_space else None,
        text_cos_mean=mean(tcos) if same_space else None,
        text_cos_min=min(tcos) if same_space and tcos else None,
        latency_live_s=lat["live"],
        latency_candidate_s=lat["cand"],
        latency_ratio=total_cand / total_live if total_live > 0 else float("nan"),
        worker_restarts=restarts,
        thresholds=th,
    )
    rep.failed_checks = _failures(rep, th)
    return rep


@dataclass
class _Tally:
    """What the replay collects, per version where it has one."""

    live: str
    candidate: str
    psnr: dict[str, list[float]] = field(default_factory=dict)
    bpp: dict[str, list[float]] = field(default_factory=dict)
    image_cos: list[float] = field(default_factory=list)
    bitstream_cos: list[float] = field(default_factory=list)
    cross_decode_failures: int = 0
    pixels_equal: int = 0

    def __post_init__(self) -> None:
        self.psnr = {self.live: [], self.candidate: []}
        self.bpp = {self.live: [], self.candidate: []}

    @property
    def versions(self) -> tuple[str, str]:
        return self.live, self.candidate


def _replay(http: _Timed, tally: _Tally, img: np.ndarray, *, reverse: bool) -> None:
    """One replay image: encoded by both versions (in the given order), each bitstream decoded and embedded by both."""
    import numpy as np

    live, candidate = tally.versions
    body = _png(img)
    enc: dict[str, dict[str, Any]] = {}
    for v in tally.versions[::-1] if reverse else tally.versions:
        raw = http.post("encode", v, body, OCTET)
        if raw is not None:
            enc[v] = json.loads(raw)
    if len(enc) < 2:
        return
    emb = {v: np.asarray(enc[v]["embedding"], np.float64) for v in tally.versions}
    tally.image_cos.append(_cos(emb[live], emb[candidate]))
    for v in tally.versions:
        tally.bpp[v].append(float(enc[v]["bpp"]))
    for src in tally.versions:
        data = base64.b64decode(enc[src]["bitstream"])
        decoded = _decode_by_both(http, tally, data)
        if src in decoded:
            tally.psnr[src].append(psnr(img, decoded[src]))
        if len(decoded) == 2:
            tally.pixels_equal += int(np.array_equal(decoded[live], decoded[candidate]))
        vec = {}
        for ev in tally.versions:
            raw = http.post("embed", ev, data, OCTET)
            if raw is not None:
                vec[ev] = np.asarray(json.loads(raw)["vectors"][0], np.float64)
        if len(vec) == 2:
            tally.bitstream_cos.append(_cos(vec[live], vec[candidate]))


def _decode_by_both(http: _Timed, tally: _Tally, data: bytes) -> dict[str, np.ndarray]:
    """The pixels each decode version makes of ``data``; one that refuses it is a cross-decode failure."""
    import numpy as np
    from PIL import Image

    decoded: dict[str, np.ndarray] = {}
    for dec in tally.versions:
        raw = http.post("decode", dec, data, OCTET, accept="image/png")
        if raw is None:
            tally.cross_decode_failures += 1
            continue
        with Image.open(io.BytesIO(raw)) as im:
            decoded[dec] = np.asarray(im.convert("RGB"))
    return decoded


def _text_cosines(http: _Timed, live: str, candidate: str, texts: tuple[str, ...]) -> list[float]:
    import numpy as np

    tvec = {}
    for v in (live, candidate):
        raw = http.post("embed", v, json.dumps({"texts": list(texts)}).encode(), JSON)
        if raw is not None:
            tvec[v] = np.asarray(json.loads(raw)["vectors"], np.float64)
    return [_cos(a, b) for a, b in zip(tvec[live], tvec[candidate], strict=True)] if len(tvec) == 2 else []


def _failures(r: CanaryReport, th: CanaryThresholds) -> list[CheckFailure]:
    out: list[CheckFailure] = []
    for m in sorted({e.split("/", 1)[0] for e in r.errors}):
        first = next(e for e in r.errors if e.startswith(m))
        out.append(CheckFailure("request_errors", m, None, None, f"{m}: requests failed during the canary: {first}"))
    out += [worker_died(m.split(":")[0], f"candidate worker died during the canary ({m})") for m in r.worker_restarts]
    if r.cross_decode_failures:
        msg = f"{r.cross_decode_failures} bitstreams did not decode exactly under both versions"
        out.append(CheckFailure("cross_decode", "decode", float(r.cross_decode_failures), 0.0, msg))
    checks: list[tuple[str, str, float, float, bool, str]] = [
        ("psnr_delta", "decode", r.psnr_delta, th.psnr_delta_min, r.psnr_delta >= th.psnr_delta_min,
         f"PSNR delta {r.psnr_delta:+.3f} dB < {th.psnr_delta_min} dB"),
        ("bpp_delta", "encode", r.bpp_delta_pct, th.bpp_delta_max_pct, r.bpp_delta_pct <= th.bpp_delta_max_pct,
         f"bpp delta {r.bpp_delta_pct:+.2f} % > {th.bpp_delta_max_pct} %"),
        ("latency_ratio", "encode", r.latency_ratio, th.latency_ratio_max, r.latency_ratio <= th.latency_ratio_max,
         f"latency ratio {r.latency_ratio:.2f} > {th.latency_ratio_max}"),
    ]  # fmt: skip
    cosines = (("image_cos_mean", "encode", "image", r.image_cos_mean),
               ("bitstream_cos_mean", "embed", "embedding", r.bitstream_cos_mean),
               ("text_cos_mean", "embed", "embedding", r.text_cos_mean))  # fmt: skip
    for check, model, what, value in cosines:
        if value is not None:
            checks.append((check, model, value, th.cos_mean_min, value >= th.cos_mean_min,
                           f"{what} cosine mean {value:.4f} < {th.cos_mean_min}"))  # fmt: skip
    # NaN compares false: a figure that could not be measured fails its check.
    out += [CheckFailure(check, m, measured, bound, msg) for check, m, measured, bound, ok, msg in checks if not ok]
    return out


def worker_died(model: str, message: str) -> CheckFailure:
    """The failure of a candidate worker that was restarted while it was being judged."""
    return CheckFailure("worker_restart", model, None, None, message)


def _cos(a: Any, b: Any) -> float:
    import numpy as np

    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
