"""The parity gate: may a candidate model plane (e.g. an int8 bundle) replace a reference one?

Both encode and decode the same images and embed the same texts. Reported: PSNR and bpp deltas, image and
text embedding cosine (mean and minimum), recall@10 overlap of image-to-image rankings over the image set,
cross-decoding (each side's bitstreams entropy-decode exactly on the other), and the latency ratio. A
candidate passes when every threshold holds; only then may it share the reference's embedding space id.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

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
    """Pass conditions (defaults from the project's rollout policy)."""

    psnr_delta_min: float = -0.1  # dB, candidate minus reference
    bpp_delta_max_pct: float = 1.0  # percent, candidate over reference
    cos_mean_min: float = 0.99  # mean cosine of image and of text embeddings
    recall_overlap_min: float = 0.95  # recall@10 overlap of image rankings


@dataclass
class GateReport:
    """Measured figures, the thresholds they were held to, and the verdict."""

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
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
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
    rep.failures = _failures(rep, th)
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


def _failures(r: GateReport, th: GateThresholds) -> list[str]:
    checks = [
        (r.psnr_delta >= th.psnr_delta_min, f"PSNR delta {r.psnr_delta:+.3f} dB < {th.psnr_delta_min} dB"),
        (r.bpp_delta_pct <= th.bpp_delta_max_pct, f"bpp delta {r.bpp_delta_pct:+.2f} % > {th.bpp_delta_max_pct} %"),
        (r.image_cos_mean >= th.cos_mean_min, f"image cosine mean {r.image_cos_mean:.4f} < {th.cos_mean_min}"),
        (r.text_cos_mean >= th.cos_mean_min, f"text cosine mean {r.text_cos_mean:.4f} < {th.cos_mean_min}"),
        (
            r.recall_at_10_overlap >= th.recall_overlap_min,
            f"recall@10 overlap {r.recall_at_10_overlap:.3f} < {th.recall_overlap_min}",
        ),
        (r.cross_decode_failures == 0, f"{r.cross_decode_failures} bitstreams did not cross-decode exactly"),
    ]
    return [msg for ok, msg in checks if not ok]
