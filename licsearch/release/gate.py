"""The parity gate: may a candidate model plane (e.g. an int8 bundle) replace a reference one?

Both encode and decode the same images and embed the same texts. Reported: PSNR and bpp deltas, image and
text embedding cosine (mean and minimum), recall@10 overlap of image-to-image rankings over the image set,
cross-decoding (each side's bitstreams entropy-decode exactly on the other), and the latency ratio. A
candidate passes when every threshold holds; only then may it share the reference's embedding space id. Failed
checks are data (:class:`CheckFailure`: check, model, measured, threshold, message), so callers such as the
rollout decide from fields, never from message text.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .. import defaults
from ..errors import InputError, LicsearchError
from ..metrics import psnr, recall_overlap

if TYPE_CHECKING:
    import numpy as np

    from ..model.models import ModelPlane

DEFAULT_TEXTS = (
    "a red circle",
    "two small blue squares at the bottom",
    "a large yellow star in the center on a striped background",
    "a photo of a dog",
    "a city street at night",
    "mountains and a lake",
    "a bowl of fruit on a table",
    "people on a beach",
)


@dataclass(frozen=True)
class GateThresholds:
    """Pass conditions (defaults from the project's rollout policy; ``None``: measured and reported, not held)."""

    psnr_delta_min: float = defaults.PSNR_DELTA_MIN_DB  # dB, candidate minus reference
    bpp_delta_max_pct: float = defaults.BPP_DELTA_MAX_PCT  # percent, candidate over reference
    cos_mean_min: float = defaults.COS_MEAN_MIN  # mean cosine of image and of text embeddings
    recall_overlap_min: float = defaults.RECALL_OVERLAP_MIN  # recall@10 overlap of image rankings
    cos_min_min: float | None = None  # the least cosine of any one image's embeddings
    latency_ratio_max: float | None = None  # candidate time over reference time, in-process


PARITY_CHECKS = frozenset(
    {"psnr_delta", "bpp_delta", "image_cos_mean", "image_cos_min", "text_cos_mean", "bitstream_cos_mean",
     "recall_overlap", "cross_decode"}
)  # fmt: skip
"""Checks of quality (the rollout's parity-failure counter), as opposed to latency, errors and dead workers."""


@dataclass(frozen=True)
class CheckFailure:
    """One failed check of the gate or the canary, as data.

    Attributes:
        check: which check (e.g. ``psnr_delta``, ``cross_decode``, ``latency_ratio``; see :data:`PARITY_CHECKS`).
        model: the served model the check concerns (``encode``, ``decode`` or ``embed``).
        measured: the measured figure (NaN when it could not be measured; ``None`` for checks without one).
        threshold: the bound it was held to (``None`` for checks without one).
        message: the same in words.
    """

    check: str
    model: str
    measured: float | None
    threshold: float | None
    message: str

    @property
    def parity(self) -> bool:
        """Whether this is a failure of quality (not of latency, requests or workers)."""
        return self.check in PARITY_CHECKS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckFailure:
        return cls(str(d["check"]), str(d["model"]), d.get("measured"), d.get("threshold"), str(d["message"]))


class CheckedReport:
    """What the gate's and the canary's reports share: the checks that failed, as data, and what follows from them."""

    failed_checks: list[CheckFailure]

    @property
    def failures(self) -> list[str]:
        """The failed checks' messages."""
        return [f.message for f in self.failed_checks]

    @property
    def passed(self) -> bool:
        return not self.failed_checks


@dataclass
class GateReport(CheckedReport):
    """Measured figures, the thresholds they were held to, and the verdict.

    ``to_dict`` gives every field, ``failures`` as messages (as always) and ``failed_checks`` as
    :class:`CheckFailure` objects.
    """

    images: int
    texts: int
    psnr_reference: float
    psnr_candidate: float
    psnr_delta: float
    bpp_reference: float
    bpp_candidate: float
    bpp_delta_pct: float
    image_cos_mean: float
    image_cos_min: float
    text_cos_mean: float
    text_cos_min: float
    recall_at_10_overlap: float
    cross_decode_failures: int
    latency_ratio: float
    thresholds: GateThresholds
    failed_checks: list[CheckFailure] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = self.failures
        d["passed"] = self.passed
        return d


def run_gate(
    reference: ModelPlane,
    candidate: ModelPlane,
    images: list[np.ndarray],
    texts: list[str] | tuple[str, ...] = DEFAULT_TEXTS,
    thresholds: GateThresholds | None = None,
) -> GateReport:
    """Compares ``candidate`` with ``reference`` on ``images`` and ``texts``; see the module docstring."""
    import numpy as np

    th = thresholds or GateThresholds()
    if not images:
        raise InputError("the parity gate needs at least one image")
    if reference.codec.profile_id != candidate.codec.profile_id:
        raise InputError(
            f"reference codec {reference.codec.profile_id} and candidate {candidate.codec.profile_id} differ",
            hint="a gate compares two runtimes of the same models; a different codec is a new store",
        )
    ps_r, ps_c, bpp_r, bpp_c, cos, emb_r, emb_c = [], [], [], [], [], [], []
    t_ref = t_cand = 0.0
    cross_failures = 0
    for img in images:
        t0 = time.perf_counter()
        er = reference.encode(img)
        dr = reference.decode(er.data)
        t1 = time.perf_counter()
        ec = candidate.encode(img)
        dc = candidate.decode(ec.data)
        t2 = time.perf_counter()
        t_ref += t1 - t0
        t_cand += t2 - t1
        ps_r.append(psnr(img, dr))
        ps_c.append(psnr(img, dc))
        bpp_r.append(er.bpp)
        bpp_c.append(ec.bpp)
        vr, vc = np.asarray(er.embedding), np.asarray(ec.embedding)
        emb_r.append(vr)
        emb_c.append(vc)
        cos.append(float(vr @ vc))
        cross_failures += _cross_decode_failures(reference, candidate, er.data, ec.data)
    tr = reference.embed_texts(list(texts)).vectors.numpy() if texts else np.zeros((0, 1))
    tc = candidate.embed_texts(list(texts)).vectors.numpy() if texts else np.zeros((0, 1))
    tcos = (tr * tc).sum(axis=1) if texts else np.ones(1)
    rep = GateReport(
        images=len(images),
        texts=len(texts),
        psnr_reference=float(np.mean(ps_r)),
        psnr_candidate=float(np.mean(ps_c)),
        psnr_delta=float(np.mean(ps_c) - np.mean(ps_r)),
        bpp_reference=float(np.mean(bpp_r)),
        bpp_candidate=float(np.mean(bpp_c)),
        bpp_delta_pct=float(100.0 * (np.mean(bpp_c) - np.mean(bpp_r)) / np.mean(bpp_r)),
        image_cos_mean=float(np.mean(cos)),
        image_cos_min=float(np.min(cos)),
        text_cos_mean=float(np.mean(tcos)),
        text_cos_min=float(np.min(tcos)),
        recall_at_10_overlap=recall_overlap(np.stack(emb_r), np.stack(emb_c)),
        cross_decode_failures=cross_failures,
        latency_ratio=t_cand / t_ref if t_ref > 0 else float("nan"),
        thresholds=th,
    )
    rep.failed_checks = _failures(rep, th)
    return rep


def _cross_decode_failures(reference: ModelPlane, candidate: ModelPlane, data_r: bytes, data_c: bytes) -> int:
    """Each side's bitstream must entropy-decode on the other side to exactly the same latent."""
    import torch

    failures = 0
    for enc, dec, data in ((reference, candidate, data_r), (candidate, reference, data_c)):
        try:
            if not torch.equal(enc.entropy_decode(data)[1], dec.entropy_decode(data)[1]):
                failures += 1
        except LicsearchError:
            failures += 1
    return failures


def _failures(r: GateReport, th: GateThresholds) -> list[CheckFailure]:
    """Every check that does not hold; a NaN figure compares false, so what could not be measured fails."""
    checks: list[tuple[str, str, float, float | None, bool, str]] = [
        ("psnr_delta", "decode", r.psnr_delta, th.psnr_delta_min, r.psnr_delta >= th.psnr_delta_min,
         f"PSNR delta {r.psnr_delta:+.3f} dB < {th.psnr_delta_min} dB"),
        ("bpp_delta", "encode", r.bpp_delta_pct, th.bpp_delta_max_pct, r.bpp_delta_pct <= th.bpp_delta_max_pct,
         f"bpp delta {r.bpp_delta_pct:+.2f} % > {th.bpp_delta_max_pct} %"),
        ("image_cos_mean", "encode", r.image_cos_mean, th.cos_mean_min, r.image_cos_mean >= th.cos_mean_min,
         f"image cosine mean {r.image_cos_mean:.4f} < {th.cos_mean_min}"),
        ("text_cos_mean", "embed", r.text_cos_mean, th.cos_mean_min, r.text_cos_mean >= th.cos_mean_min,
         f"text cosine mean {r.text_cos_mean:.4f} < {th.cos_mean_min}"),
        ("recall_overlap", "embed", r.recall_at_10_overlap, th.recall_overlap_min,
         r.recall_at_10_overlap >= th.recall_overlap_min,
         f"recall@10 overlap {r.recall_at_10_overlap:.3f} < {th.recall_overlap_min}"),
        ("cross_decode", "decode", float(r.cross_decode_failures), 0.0, r.cross_decode_failures == 0,
         f"{r.cross_decode_failures} bitstreams did not cross-decode exactly"),
    ]  # fmt: skip
    if th.cos_min_min is not None:
        checks.append(("image_cos_min", "encode", r.image_cos_min, th.cos_min_min, r.image_cos_min >= th.cos_min_min,
                       f"image cosine min {r.image_cos_min:.4f} < {th.cos_min_min}"))  # fmt: skip
    if th.latency_ratio_max is not None:
        checks.append(("latency_ratio", "encode", r.latency_ratio, th.latency_ratio_max,
                       r.latency_ratio <= th.latency_ratio_max,
                       f"latency ratio {r.latency_ratio:.2f} > {th.latency_ratio_max}"))  # fmt: skip
    return [CheckFailure(check, model, measured, bound, msg) for check, model, measured, bound, ok, msg in checks
            if not ok]  # fmt: skip
