"""``licsearch bench``: the eager CompressAI + open_clip baseline against fp32 and int8 bundles, side by side.

Every backend runs in one process, on the same images and with the same thread count (``torch.set_num_threads``
and ONNX Runtime's intra-op threads, CPU provider), interleaved per image (A, B, C for image 1, then A, B, C for
image 2, ...) so that machine noise hits all of them alike. Each path runs once per image size before timing
starts. Times come from ``time.perf_counter``; an image's time is the median of its repeats, and a backend's
figures are the median and the 90th percentile of those over the images.

Backends:

- ``baseline``: CompressAI's own ``model.compress(x)`` / ``model.decompress(strings, shape)`` on the image padded
  to a multiple of 64, open_clip's image tower (``encode_image`` after open_clip's own eval preprocessing of a
  PIL image) and text tower (``encode_text`` over the full context); all eager PyTorch.
- bundles: the model plane (:class:`~licsearch.bundle.runtime.BundleModelSet`) on ONNX Runtime. Without
  ``--bundle``, bench exports ``fp32`` (no int8) and ``int8`` (static, calibrated on the bench images; dynamic for
  fewer than two) into ``cache/bench/`` of the store, where later runs reuse them, or into a temporary folder
  when run on model flags. Bundles given with ``--bundle`` are named by their manifest precision; one must be fp32,
  the reference of the parity gate.
- ``fp32-openvino`` (when the optional ``openvino`` package is installed, or asked for): the fp32 reference bundle
  with the codec transforms of ``OPENVINO_BENCH_GRAPHS`` on OpenVINO's CPU plugin
  (:class:`~licsearch.bundle.runtime.RuntimeOptions` ``openvino``), the rest on ONNX Runtime; a candidate gated
  against fp32 like int8.

Stages, in seconds per image (``null`` where a backend has no such separable step):

==================  ===============================================  =====================================
stage               bundles                                          baseline
==================  ===============================================  =====================================
analysis            ``g_a`` + ``h_a``                                the eager modules ``compress`` runs
entropy_encode      canonical entropy path + rANS encode             null (inside ``compress``)
adapter             adapter on y_hat                                 null (no adapter)
synthesis           ``g_s``                                          eager ``g_s``
entropy_decode      container checks + entropy decoding to y_hat     null (inside ``decompress``)
text_short          text tower on the short query, up to its EOT     ``encode_text``, full context
text_long           the same on the long query                       the same on the long query
search              ``query_points`` on a local-mode index of random unit vectors, with the backend's
                    own short-query vector (the same index for every backend)
compress            null                                             ``model.compress`` (inside ingest)
decompress          null                                             ``model.decompress`` (inside decode)
image_tower         null                                             preprocessing + ``encode_image``
==================  ===============================================  =====================================

End to end: ``ingest`` (``ModelPlane.encode`` vs compress + image tower of the same image), ``reembed``
(``embed_bitstream``, no synthesis, vs decompress + image tower of the decoded image), ``decode``
(``ModelPlane.decode`` vs decompress cropped to uint8 pixels) and ``text`` (the ``text_short`` measurement).

``ratios`` are the baseline's median time over that of the fastest bundle that passes the parity gate against
the fp32 reference bundle (which passes by definition); above 1 means the bundle is faster.

JSON document, ``schema`` 1 (keys may be added; none renamed or removed without raising ``schema``)::

    {"schema": 1,
     "machine": {"cpu_count", "threads", "platform", "python", "torch", "onnxruntime", "compressai", "open_clip",
                 "openvino" (its version, or null when not installed), "providers"},
     "settings": {"quick", "repeats", "search_points", "queries": {"short", "long"}},
     "images": {"count", "width", "height" (null when sizes differ), "sizes": [[w, h], ...], "source"},
     "backends": {NAME: {"precision": "fp32" | "int8" | "mixed", "bundle": DIR | null,
                         "openvino": [graph run on OpenVINO, ...] (empty: all on ONNX Runtime; baseline: null),
                         "bytes_per_image" (mean bitstream bytes; baseline: sum of CompressAI's string lengths),
                         "model_bytes" (bundle: its manifest's files; baseline: parameter bytes of codec + CLIP),
                         "stages": {STAGE: {"median_s", "p90_s"} | null},
                         "end_to_end": {"ingest" | "reembed" | "decode" | "text": {"median_s", "p90_s"}}}},
     "gate": {...GateReport.to_dict() of the first candidate..., "reference": NAME, "candidate": NAME | null},
     "gates": {CANDIDATE: {...GateReport.to_dict()...}},
     "ratios": {"ingest", "reembed", "decode", "text"},
     "ratio_backend": {"ingest", "reembed", "decode", "text"},
     "random_weights": [component, ...],
     "throughput": {"ingest" | "decode": {BACKEND: images per second over the whole batch, one image at a time}},
     "profile": {...} (with ``--profile``: :mod:`licsearch.release.bench_profile`)}

Without a store or model flags, bench times :func:`default_bench_models`: the shipped trained codec of the
``offline`` preset with CLIP compute of ViT-B-32's size (random weights, so labelled as such; the ratios of text
and re-embedding reflect that compute, not retrieval quality).

Non-finite numbers are written as ``null``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ModelsConfig
from ..errors import InputError, StoreError
from ..model.threads import torch_threads
from .bench_runners import LONG_QUERY, SHORT_QUERY, BaselineRunner, BundleRunner, Runner, SearchIndex

if TYPE_CHECKING:
    import numpy as np

    from ..bundle.runtime import BundleModelSet

SCHEMA = 1
MODEL_PLANE_STAGES = ("analysis", "entropy_encode", "adapter", "synthesis", "entropy_decode")
BASELINE_STAGES = ("compress", "decompress", "image_tower")
STAGES = (*MODEL_PLANE_STAGES, "text_short", "text_long", "search", *BASELINE_STAGES)
END_TO_END = ("ingest", "reembed", "decode", "text")
REPEATS = 3
SEARCH_POINTS, QUICK_SEARCH_POINTS = 2000, 200
QUICK_SIZE = (128, 96)
PROVIDERS = ("CPUExecutionProvider",)
OPENVINO_BACKEND = "fp32-openvino"
OPENVINO_BENCH_GRAPHS = ("g_a", "h_a", "g_s")
KODAK = Path(__file__).resolve().parents[3] / "shared" / "data" / "kodak"


@dataclass(frozen=True)
class BenchOptions:
    """What to measure and how.

    Attributes:
        images: a folder (or file) of images; default Kodak next to the repository, else generated scenes.
        bundles: bundles to compare; when empty, an fp32 and an int8 bundle are exported (and cached).
        quick: two small images, one repeat, a small search index.
        threads: threads for PyTorch and ONNX Runtime alike (default: one per CPU).
        cache_dir: where exported bundles are kept between runs; a temporary folder when None.
        profile: also profile entropy coding stage by stage and the graphs' operators (:mod:`.bench_profile`).
        openvino: also time the ``fp32-openvino`` backend; None: when the ``openvino`` package is installed.
    """

    images: Path | None = None
    bundles: tuple[Path, ...] = ()
    quick: bool = False
    threads: int | None = None
    cache_dir: Path | None = None
    profile: bool = False
    openvino: bool | None = None


def openvino_installed() -> bool:
    """Whether the optional ``openvino`` package can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def default_bench_models() -> ModelsConfig:
    """The shipped trained codec (``offline`` preset quality) and ViT-B-32-size CLIP compute with random weights."""
    from ..config import AdapterConfig, ClipConfig
    from ..defaults import CLIP_MODEL
    from ..presets import preset_models

    return ModelsConfig(
        codec=preset_models("offline").codec,
        clip=ClipConfig(model=CLIP_MODEL, tag=None, weights="random"),
        adapter=AdapterConfig(weights="random"),
    )


def load_bench_images(images: Path | None, *, quick: bool) -> tuple[list[np.ndarray], str]:
    """The images to time and where they came from; ``--quick`` keeps at most two."""
    from ..imageio import iter_image_files, load_image

    if images is None and (quick or not KODAK.is_dir()):
        from ..world import sample_images

        n, size = (2, QUICK_SIZE) if quick else (6, (320, 240))
        pixels = [px.copy() for _, px in sample_images(n, size=size)]  # writable, as torch wants them
        return pixels, f"generated ({n} scenes {size[0]}x{size[1]})"
    folder = images if images is not None else KODAK
    if not folder.exists():
        raise InputError(f"--images {folder}: no such file or folder", hint="give a folder of PNG or JPEG images")
    paths = []
    for path, err in iter_image_files([folder]):
        if err is not None:
            raise err
        paths.append(path)
    if quick:
        paths = paths[:2]
    if not paths:
        raise InputError(f"no images found in {folder}", hint="give a folder of .png, .jpg or .webp images")
    return [load_image(p).pixels for p in paths], str(folder)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cached(path: Path) -> bool:
    from ..bundle.manifest import Manifest

    try:
        Manifest.load(path).verify_files(path)
    except StoreError:
        return False
    return True


def export_bench_bundles(
    models: ModelsConfig, space_id: str, images: list[np.ndarray], root: Path, log: Callable[[str], None]
) -> list[tuple[str, Path]]:
    """An fp32 bundle and an int8 one (static, calibrated on ``images``; dynamic for fewer than two) in ``root``.

    Bundles are keyed by the fingerprinted models (and the calibration images), so a later run reuses them.
    """
    from ..bundle.export import export_bundle

    key = _digest(json.dumps(asdict(models), sort_keys=True))
    mode = "static" if len(images) >= 2 else "dynamic"
    calibration = hashlib.sha256(b"".join(im.tobytes() for im in images)).hexdigest() if mode == "static" else ""
    wanted = [
        ("fp32", root / f"fp32-{key}", "none"),
        ("int8", root / f"int8-{mode}-{_digest(key + calibration)}", mode),
    ]
    for name, path, int8 in wanted:
        if _cached(path):
            log(f"bench: reusing the {name} bundle in {path}")
            continue
        shutil.rmtree(path, ignore_errors=True)
        log(f"bench: exporting the {name} bundle to {path}")
        export_bundle(models, path, space_id=space_id, int8=int8, calibration=images if int8 == "static" else None)
    return [(name, path) for name, path, _ in wanted]


def _open_bundles(
    given: list[tuple[str | None, Path]], threads: int, *, openvino: bool = False
) -> tuple[dict[str, BundleModelSet], str]:
    """Bundle planes by name (a name of None: the manifest precision) and the name of the fp32 reference; with
    ``openvino``, also the reference on OpenVINO as ``fp32-openvino``."""
    from ..bundle.runtime import BundleModelSet, RuntimeOptions

    options = RuntimeOptions(providers=PROVIDERS, threads=threads)
    planes: dict[str, BundleModelSet] = {}
    reference = None
    for name, path in given:
        plane = BundleModelSet(path, options)
        label = name or plane.manifest.precision
        n = 2
        while label in planes:
            label, n = f"{name or plane.manifest.precision}-{n}", n + 1
        planes[label] = plane
        if reference is None and plane.manifest.int8 == "none":
            reference = label
    if reference is None:
        raise InputError(
            "no fp32 bundle among --bundle to gate the others against", hint="add one exported with --int8 none"
        )
    if openvino:
        ov = RuntimeOptions(providers=PROVIDERS, threads=threads, openvino=OPENVINO_BENCH_GRAPHS)
        planes[OPENVINO_BACKEND] = BundleModelSet(planes[reference].root, ov)
    return planes, reference


def _check_same_models(planes: dict[str, BundleModelSet], profile: str, clip_sha: str) -> None:
    for name, p in planes.items():
        if p.manifest.codec_profile != profile or p.cfg.clip.sha256 != clip_sha:
            raise InputError(
                f"bundle {name} ({p.root}) was exported from other models than the baseline's "
                f"(codec {p.manifest.codec_profile} vs {profile})",
                hint="give the store or model flags the bundle was exported from",
            )


# -- measuring --------------------------------------------------------------------------------------------


def _summary(values: list[float]) -> dict[str, float]:
    import numpy as np

    return {"median_s": float(statistics.median(values)), "p90_s": float(np.percentile(values, 90))}


def _measure(
    runners: list[Runner], images: list[np.ndarray], repeats: int, log: Callable[[str], None]
) -> tuple[dict[str, dict[str, list[float]]], dict[str, list[int]]]:
    """Per backend: every key's per-image times (each the median of its repeats), and bytes per image."""
    warmed: set[tuple[int, ...]] = set()
    for im in images:
        if im.shape not in warmed:  # once per image size: first runs allocate and pick kernels
            warmed.add(im.shape)
            for r in runners:
                r.run(im)
    times: dict[str, dict[str, list[float]]] = {r.name: {} for r in runners}
    sizes: dict[str, list[int]] = {r.name: [] for r in runners}
    for i, im in enumerate(images):
        log(f"bench: image {i + 1}/{len(images)} ({im.shape[1]}x{im.shape[0]})")
        reps: dict[str, dict[str, list[float]]] = {r.name: {} for r in runners}
        nbytes: dict[str, int] = {}
        for _ in range(repeats):
            for r in runners:  # interleaved: every backend once, then the next repeat, then the next image
                t, nbytes[r.name] = r.run(im)
                for key, v in t.items():
                    reps[r.name].setdefault(key, []).append(v)
        for r in runners:
            sizes[r.name].append(nbytes[r.name])
            for key, vs in reps[r.name].items():
                times[r.name].setdefault(key, []).append(statistics.median(vs))
    return times, sizes


def _param_bytes(*modules: Any) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def _finite(x: Any) -> Any:
    """The document with non-finite floats as None (JSON has no NaN)."""
    if isinstance(x, float):
        return x if x == x and abs(x) != float("inf") else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def _machine(threads: int) -> dict[str, Any]:
    import importlib.metadata
    import platform

    import compressai
    import onnxruntime
    import open_clip
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "compressai": compressai.__version__,
        "open_clip": open_clip.__version__,
        "openvino": importlib.metadata.version("openvino") if openvino_installed() else None,
        "providers": list(PROVIDERS),
    }


def run_bench(
    models: ModelsConfig | None,
    options: BenchOptions,
    *,
    space_id: str | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Runs the benchmark; returns the JSON document described in the module docstring.

    Args:
        models: the baseline's models; None to take them from the fp32 bundle among ``options.bundles``.
        options: images, bundles and settings.
        space_id: embedding space of the source store, recorded in exported fp32 bundles.
        log: progress messages.
    """
    threads = options.threads if options.threads is not None else (os.cpu_count() or 1)
    if threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    images, source = load_bench_images(options.images, quick=options.quick)

    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="licsearch-bench-") as tmp:
        return _run(models, options, space_id, images, source, threads, Path(tmp), log)


def _run(
    models: ModelsConfig | None,
    options: BenchOptions,
    space_id: str | None,
    images: list[np.ndarray],
    source: str,
    threads: int,
    tmp: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from ..model.models import ModelSet
    from ..spaces import space_id_for
    from .gate import DEFAULT_TEXTS, run_gate

    openvino = openvino_installed() if options.openvino is None else options.openvino
    if options.bundles:
        planes, ref = _open_bundles([(None, p) for p in options.bundles], threads, openvino=openvino)
        ms = ModelSet(models or planes[ref].cfg)
        fp = ms.fingerprinted()
    elif models is not None:
        ms = ModelSet(models)
        fp = ms.fingerprinted()
        root = options.cache_dir or tmp / "bundles"
        exported = export_bench_bundles(fp, space_id or space_id_for(fp), images, root, log)
        planes, ref = _open_bundles([(n, p) for n, p in exported], threads, openvino=openvino)
    else:
        raise InputError("bench needs models", hint="give --store DIR, model flags or --bundle DIR")
    _check_same_models(planes, ms.codec.profile_id, fp.clip.sha256)

    repeats = 1 if options.quick else REPEATS
    points = QUICK_SEARCH_POINTS if options.quick else SEARCH_POINTS
    search = SearchIndex(tmp / "qdrant", ms.embed_dim, points)
    try:
        runners: list[Runner] = [BaselineRunner(ms, search), *(BundleRunner(n, p, search) for n, p in planes.items())]
        log(f"bench: {len(images)} images, {repeats} repeats, {threads} threads, backends {[r.name for r in runners]}")
        times, sizes = _measure(runners, images, repeats, log)
    finally:
        search.index.close()

    texts = list(dict.fromkeys([SHORT_QUERY, LONG_QUERY, *DEFAULT_TEXTS]))
    gates: dict[str, dict[str, Any]] = {}
    for name, plane in planes.items():
        if name != ref:
            log(f"bench: parity gate {name} against {ref}")
            gates[name] = run_gate(planes[ref], plane, images, texts).to_dict()
    first = next(iter(gates), None)
    gate = {**gates[first], "reference": ref, "candidate": first} if first else {"passed": True, "reference": ref}
    gate.setdefault("candidate", None)

    base_bytes = _param_bytes(ms.codec.model, ms.text.model)
    backends = {"baseline": _backend("fp32", None, base_bytes, times["baseline"], sizes["baseline"])}
    for name, plane in planes.items():
        files = sum((plane.root / rel).stat().st_size for rel in plane.manifest.files)
        backends[name] = _backend(plane.manifest.precision, plane, files, times[name], sizes[name])
    ratios, ratio_backend = _ratios(backends, [ref, *(n for n, g in gates.items() if g["passed"])])
    shapes = sorted({(int(im.shape[1]), int(im.shape[0])) for im in images})
    one = shapes[0] if len(shapes) == 1 else (None, None)
    doc = {
        "schema": SCHEMA,
        "machine": _machine(threads),
        "settings": {
            "quick": options.quick,
            "repeats": repeats,
            "search_points": points,
            "queries": {"short": SHORT_QUERY, "long": LONG_QUERY},
        },
        "images": {"count": len(images), "width": one[0], "height": one[1], "sizes": shapes, "source": source},
        "backends": backends,
        "gate": gate,
        "gates": gates,
        "ratios": ratios,
        "ratio_backend": ratio_backend,
        "random_weights": ms.random_components(),
        "throughput": _throughput(times, len(images)),
    }
    if options.profile:
        from .bench_profile import profile_entropy, profile_graphs

        log(f"bench: profiling entropy coding and the graphs of {ref}")
        doc["profile"] = {
            "backend": ref,
            "images": len(images),
            "entropy": profile_entropy(planes[ref].codec, images),
            "graphs": profile_graphs(planes[ref].root, images, threads, PROVIDERS),
        }
    return dict(_finite(doc))


def _throughput(times: dict[str, dict[str, list[float]]], count: int) -> dict[str, dict[str, float]]:
    """Images per second of ingest and decode over the batch: the images over the sum of their times."""
    return {
        key: {name: count / sum(t[key]) for name, t in times.items() if sum(t.get(key, [])) > 0}
        for key in ("ingest", "decode")
    }


def _backend(
    precision: str, plane: BundleModelSet | None, model_bytes: int, times: dict[str, list[float]], sizes: list[int]
) -> dict[str, Any]:
    return {
        "precision": precision,
        "bundle": str(plane.root) if plane is not None else None,
        "openvino": list(plane.options.openvino) if plane is not None else None,
        "bytes_per_image": statistics.fmean(sizes),
        "model_bytes": model_bytes,
        "stages": {s: _summary(times[s]) if s in times else None for s in STAGES},
        "end_to_end": {k: _summary(times[k]) for k in END_TO_END},
    }


def _ratios(backends: dict[str, Any], passing: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    """Baseline median over the fastest passing bundle's, per end-to-end operation, and which bundle that was."""
    ratios: dict[str, float] = {}
    fastest: dict[str, str] = {}
    for key in END_TO_END:
        median = {n: float(b["end_to_end"][key]["median_s"]) for n, b in backends.items()}
        fastest[key] = min(passing, key=median.__getitem__)
        ratios[key] = median["baseline"] / median[fastest[key]]
    return ratios, fastest


# -- human output -----------------------------------------------------------------------------------------


def format_report(doc: dict[str, Any]) -> str:
    """A compact table of median milliseconds per stage and end to end, then sizes, the gate and the ratios."""
    names = list(doc["backends"])
    im = doc["images"]
    size = f"{im['width']}x{im['height']}" if im["width"] else "mixed sizes"
    m = doc["machine"]
    lines = [
        f"{im['count']} images ({size}), {doc['settings']['repeats']} repeats, {m['threads']} threads; "
        "median ms per image (p90)",
        f"{'':<16}" + "".join(f"{n:>20}" for n in names),
    ]

    def row(label: str, cells: list[dict[str, float] | None]) -> str:
        out = [f"{c['median_s'] * 1e3:.1f} ({c['p90_s'] * 1e3:.1f})" if c else "-" for c in cells]
        return f"{label:<16}" + "".join(f"{c:>20}" for c in out)

    for s in STAGES:
        lines.append(row(s, [doc["backends"][n]["stages"][s] for n in names]))
    lines.append("end to end")
    for k in END_TO_END:
        lines.append(row(f"  {k}", [doc["backends"][n]["end_to_end"][k] for n in names]))
    lines.append(f"{'bytes/image':<16}" + "".join(f"{doc['backends'][n]['bytes_per_image']:>20.0f}" for n in names))
    lines.append(f"{'model MB':<16}" + "".join(f"{doc['backends'][n]['model_bytes'] / 1e6:>20.1f}" for n in names))
    g = doc["gate"]
    if g.get("candidate"):
        verdict = "passed" if g["passed"] else "FAILED: " + "; ".join(g.get("failures", []))
        lines.append(f"gate {g['candidate']} vs {g['reference']}: {verdict}")
    ratios = ", ".join(f"{k} {v:.2f}x ({doc['ratio_backend'][k]})" for k, v in doc["ratios"].items() if v)
    lines.append(f"baseline / fastest passing bundle: {ratios}")
    for key, per in doc.get("throughput", {}).items():
        lines.append(f"{key} images/s: " + ", ".join(f"{n} {v:.2f}" for n, v in per.items()))
    if doc.get("profile"):
        from .bench_profile import format_profile

        lines.append(format_profile(doc["profile"]))
    return "\n".join(lines)
