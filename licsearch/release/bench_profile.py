"""``licsearch bench --profile``: where the time goes inside entropy coding and inside the graphs.

Entropy coding is timed stage by stage with :class:`~licsearch.model.entropy.StageClock` on the fp32 reference
bundle's codec (the same canonical path every backend runs): the z symbols and their rANS coding, every layer of the
integer ``h_s``, the scale -> CDF index lookup, the y symbols, the y rANS call, the container hash; on decoding also
the container checks. ``unaccounted`` is the call's wall time minus its stages (call overhead outside any stage).
The graphs are timed by ONNX Runtime's own profiler (kernel time per operator type, summed over every run of the
bench images), on a second opening of the same bundle so that profiling never slows the timed runs.

JSON, under the bench document's ``profile`` key::

    {"backend": NAME, "images": N,
     "entropy": {"encode" | "decode": {"total_s": median, "stages": {STAGE: median_s}}},
     "graphs": {GRAPH: [{"op", "seconds", "share"}, ...]}}   (the TOP_OPS operators of each graph by time)
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from ..model.codec import Codec

TOP_OPS = 6
PHASES = ("encode", "decode")


def profile_entropy(codec: Codec, images: list[np.ndarray]) -> dict[str, Any]:
    """Median seconds per stage of entropy encoding and decoding over ``images`` (after one warm-up run each)."""
    import torch

    from ..bitstream import Bitstream
    from ..model.entropy import StageClock

    runs: dict[str, list[tuple[float, dict[str, float]]]] = {p: [] for p in PHASES}
    for im in images:
        h, w = im.shape[:2]
        x = codec._pad(torch.from_numpy(im).permute(2, 0, 1).float().div(255.0).unsqueeze(0))
        with torch.inference_mode():
            y = codec.transforms.g_a(x).float()
            z = codec.transforms.h_a(y).float()
            for warm in (True, False):
                clock = StageClock()
                t0 = time.perf_counter()
                comp = codec._code_one(y, z, w, h, clock)
                enc = time.perf_counter() - t0
                bs = Bitstream(codec.profile_id, w, h, comp.latent_hash, comp.streams)
                clock_d = StageClock()
                t0 = time.perf_counter()
                codec.entropy_decode(bs.streams, w, h, bs.latent_hash, version=bs.version, clock=clock_d)
                dec = time.perf_counter() - t0
                if not warm:
                    runs["encode"].append((enc, clock.seconds))
                    runs["decode"].append((dec, clock_d.seconds))
    out: dict[str, Any] = {}
    for phase, items in runs.items():
        stages = list(dict.fromkeys(s for _, st in items for s in st))
        med = {s: statistics.median(st.get(s, 0.0) for _, st in items) for s in stages}
        total = statistics.median(t for t, _ in items)
        med["unaccounted"] = statistics.median(t - sum(st.values()) for t, st in items)
        out[phase] = {"total_s": total, "stages": med}
    return out


def profile_graphs(bundle: Path, images: list[np.ndarray], threads: int, providers: tuple[str, ...]) -> dict[str, Any]:
    """ONNX Runtime's profile of every graph of ``bundle`` over an ingest, a decode and a text query per image."""
    from ..bundle.runtime import BundleModelSet, RuntimeOptions
    from .bench_runners import SHORT_QUERY

    with tempfile.TemporaryDirectory(prefix="licsearch-profile-") as tmp:
        plane = BundleModelSet(bundle, RuntimeOptions(providers=providers, threads=threads, profile_dir=tmp))
        for im in images:
            plane.decode(plane.encode(im).data)
            plane.embed_texts([SHORT_QUERY])
        return plane.op_profiles(TOP_OPS)


def format_profile(prof: dict[str, Any]) -> str:
    """The profile as text: stage milliseconds and shares, then each graph's top operators."""
    lines = [f"profile ({prof['backend']}, median of {prof['images']} images)"]
    for phase in PHASES:
        p = prof["entropy"][phase]
        total = p["total_s"] or 1.0
        cells = ", ".join(f"{s} {v * 1e3:.1f} ({100 * v / total:.0f}%)" for s, v in p["stages"].items())
        lines.append(f"  entropy {phase} {p['total_s'] * 1e3:.1f} ms: {cells}")
    for graph, ops in prof["graphs"].items():
        cells = ", ".join(f"{o['op']} {o['seconds'] * 1e3:.0f} ms ({100 * o['share']:.0f}%)" for o in ops)
        lines.append(f"  graph {graph}: {cells}")
    return "\n".join(lines)
