"""``licsearch export``, ``gate`` and ``bench``: make a model bundle, check it against another, time them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .base import Command, Result, add_json_flag, note, warn_random
from .model_flags import add_model_flags, models_from_flags
from .options import add_server_flags, add_store_flags, add_threshold_flags, load_images, store_dir

if TYPE_CHECKING:
    from ..config import ModelsConfig
    from ..release.bench import BenchOptions


def configure_export(p: argparse.ArgumentParser) -> None:
    add_store_flags(p)
    add_model_flags(p)
    p.add_argument("--out", required=True, metavar="BUNDLE_DIR")
    p.add_argument("--int8", choices=["none", "dynamic", "static"], default="none")
    p.add_argument("--calibration", metavar="DIR", help="calibration images for --int8 static")
    p.add_argument("--opset", type=int, default=17)


def cmd_export(args: argparse.Namespace) -> Result:
    from ..bundle.export import export_bundle
    from ..config import StoreConfig
    from ..model.models import ModelSet
    from ..spaces import PIXELS_KIND, space_id_for

    flags = models_from_flags(args)
    if flags is not None:
        models, space = flags, None
    else:
        cfg = StoreConfig.load(store_dir(args))
        if cfg.bundle:
            raise InputError("this store runs from a bundle already", hint="export from the source models' flags")
        if cfg.kind == PIXELS_KIND:
            raise InputError(
                f"the store's active space {cfg.space_id!r} is a pixels space: it has no adapter graph to export "
                "(a bundle embeds images and bitstreams through the adapter)",
                hint="distil an adapter space first (`licsearch distill --activate`), then export",
            )
        models, space = cfg.models, cfg.space_id
    calibration = load_images(args.calibration) if args.calibration else None
    if space is None:
        space = space_id_for(ModelSet(models).fingerprinted())
    manifest = export_bundle(
        models, Path(args.out), space_id=space, opset=args.opset, int8=args.int8, calibration=calibration
    )
    rnd = warn_random(manifest.extra.get("random_weights", []))
    for name, g in manifest.graphs.items():
        note(f"{name}: {g.file} {g.precision}" + (f" ({g.int8_note})" if g.int8_note else ""))
    doc = {"out": args.out, "manifest": manifest.to_dict(), "random_weights": rnd}
    return Result(doc, f"wrote bundle {args.out} ({manifest.precision}, space {manifest.space_id})")


def configure_gate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", required=True, metavar="BUNDLE")
    p.add_argument("--candidate", required=True, metavar="BUNDLE")
    p.add_argument("--images", required=True, metavar="DIR")
    p.add_argument("--texts", metavar="FILE", help="one query per line (default: a built-in set)")
    add_threshold_flags(p)
    p.add_argument("--cos-min-min", type=float, help="least cosine of any one image's embeddings (default: not held)")
    p.add_argument(
        "--latency-ratio-max", type=float, help="candidate over reference time, in-process (default: not held)"
    )
    p.add_argument(
        "--assign-space",
        action="store_true",
        help="on pass give the candidate the reference's space id; on failure make sure it has its own",
    )
    p.add_argument("--max-images", type=int, default=64)
    add_json_flag(p)


def cmd_gate(args: argparse.Namespace) -> Result:
    from ..bundle.runtime import BundleModelSet
    from ..release.gate import DEFAULT_TEXTS, GateThresholds, run_gate

    ref, cand = BundleModelSet(Path(args.reference)), BundleModelSet(Path(args.candidate))
    images = load_images(args.images, limit=args.max_images)
    texts: list[str] = list(DEFAULT_TEXTS)
    if args.texts:
        try:
            texts = [t.strip() for t in Path(args.texts).read_text(encoding="utf-8").splitlines() if t.strip()]
        except OSError as e:
            raise InputError(f"cannot read {args.texts}: {e.strerror or e}") from e
    th = GateThresholds(
        args.psnr_delta_min,
        args.bpp_delta_max,
        args.cos_mean_min,
        args.recall_overlap_min,
        cos_min_min=args.cos_min_min,
        latency_ratio_max=args.latency_ratio_max,
    )
    rep = run_gate(ref, cand, images, texts, th)
    doc = rep.to_dict()
    doc.update(reference=args.reference, candidate=args.candidate, candidate_space_id=cand.space_id)
    if args.assign_space:
        doc["candidate_space_id"] = assign_space(cand, ref.space_id, passed=rep.passed)
    verdict = "PASSED" if rep.passed else "FAILED: " + "; ".join(rep.failures)
    human = (
        f"PSNR {rep.psnr_reference:.2f} -> {rep.psnr_candidate:.2f} dB ({rep.psnr_delta:+.3f}), "
        f"bpp {rep.bpp_reference:.4f} -> {rep.bpp_candidate:.4f} ({rep.bpp_delta_pct:+.2f} %), "
        f"image cos {rep.image_cos_mean:.4f} (min {rep.image_cos_min:.4f}), "
        f"text cos {rep.text_cos_mean:.4f} (min {rep.text_cos_min:.4f}), "
        f"recall@10 overlap {rep.recall_at_10_overlap:.3f}, latency x{rep.latency_ratio:.2f}\n{verdict}"
    )
    return Result(doc, human, 0 if rep.passed else 1)


def assign_space(cand: Any, reference_space: str, *, passed: bool) -> str:
    """Rewrites the candidate manifest's space id after the gate (:func:`licsearch.spaces.gated_space_id`)."""
    import dataclasses

    from ..spaces import gated_space_id

    m = cand.manifest
    space = gated_space_id(reference_space, m.space_id, m.files, passed=passed)
    if space != m.space_id:
        dataclasses.replace(m, space_id=space).save(cand.root)
    return space


def configure_bench(p: argparse.ArgumentParser) -> None:
    add_store_flags(p)
    add_model_flags(p)
    p.add_argument("--bundle", action="append", default=[], metavar="DIR", help="bundle to time (repeatable)")
    p.add_argument("--images", metavar="DIR", help="images to time (default: Kodak if present, else generated)")
    p.add_argument("--quick", action="store_true", help="two small images, one repeat, a small search index")
    p.add_argument("--threads", type=int, metavar="N", help="threads for PyTorch and ONNX Runtime (default: CPUs)")
    p.add_argument("--profile", action="store_true", help="also time entropy coding by stage and the graphs by op")
    add_server_flags(p)
    p.add_argument("--management", metavar="URL", help="with --server: its management API, for the batching test")
    g = p.add_argument_group("vector index (--index)")
    g.add_argument("--index", action="store_true", help="time the vector settings on Qdrant Edge beside local mode")
    g.add_argument("--points", type=int, default=100_000, metavar="N", help="synthetic points (default 100,000)")
    g.add_argument("--dim", type=int, default=512, metavar="D", help="their dimension (default 512)")
    g.add_argument("--data", metavar="LIST", help="synthetic data sets: clustered (default), uniform, or both")
    g.add_argument("--vectors", metavar="LIST", help="vector settings to measure (default: every one)")
    g.add_argument("--ef", metavar="LIST", help="HNSW candidate lists to search with, e.g. 64,128,256 (default: ours)")
    g.add_argument("--oversampling", metavar="LIST", help="oversamplings of the quantized settings, e.g. 2,4,8,16")


def cmd_bench(args: argparse.Namespace) -> Result:
    from ..config import CONFIG_FILE, StoreConfig
    from ..release.bench import BenchOptions, default_bench_models, format_report, run_bench

    if args.index:
        return _bench_index(args)
    models, space, cache = models_from_flags(args), None, None
    if models is None and not args.store and not args.bundle and not (store_dir(args) / CONFIG_FILE).exists():
        models = default_bench_models()  # no store here: the shipped trained codec, ViT-B-32-size CLIP compute
    if models is None and (args.store or not args.bundle):
        root = store_dir(args)
        cfg = StoreConfig.load(root)
        models, space, cache = cfg.models, cfg.space_id, root / "cache" / "bench"
    options = BenchOptions(
        images=Path(args.images) if args.images else None,
        bundles=tuple(Path(b) for b in args.bundle),
        quick=args.quick,
        threads=args.threads,
        cache_dir=cache,
        profile=args.profile,
    )
    if args.management and not args.server:
        raise InputError("--management needs --server", hint="give the inference URL with --server")
    doc = run_bench(models, options, space_id=space, log=note)
    warn_random(doc["random_weights"])
    human = format_report(doc)
    if args.server:
        from ..release.serving_bench import format_serving

        doc["serving"] = _bench_serving(args, models, options)
        human += "\n" + format_serving(doc["serving"])
    return Result(doc, human)


def _bench_index(args: argparse.Namespace) -> Result:
    from ..release.index_bench import bench_options, format_index_report, run_index_bench

    options = bench_options(
        args.points, args.dim, data=args.data, vectors=args.vectors, hnsw_ef=args.ef, oversampling=args.oversampling
    )
    doc = run_index_bench(options, store=store_dir(args) if args.store else None, log=note)
    return Result(doc, format_index_report(doc))


def _bench_serving(args: argparse.Namespace, models: ModelsConfig | None, options: BenchOptions) -> dict[str, Any]:
    """The ``serving`` object: in-process on the first ``--bundle`` (else the store's or the flags' models)."""
    import io

    from PIL import Image

    from ..config import StoreConfig
    from ..model.models import ModelPlane, ModelSet
    from ..release.bench import load_bench_images
    from ..release.serving_bench import ServingBenchOptions, run_serving_bench
    from ..serving.client import ServingClient
    from ..storage.store import model_plane_for

    plane: ModelPlane
    if args.bundle:
        from ..bundle.runtime import BundleModelSet, RuntimeOptions

        plane, name = BundleModelSet(Path(args.bundle[0]), RuntimeOptions(threads=args.threads or 0)), args.bundle[0]
    elif args.store or models is None:
        plane, name = model_plane_for(StoreConfig.load(store_dir(args))), "the store's models"
    else:
        plane, name = ModelSet(models), "eager models from flags"
    images, _ = load_bench_images(options.images, quick=options.quick)
    buf = io.BytesIO()
    Image.fromarray(images[0]).save(buf, format="PNG")
    settings = ServingBenchOptions(repeats=5, requests=48) if options.quick else ServingBenchOptions()
    client = ServingClient(args.server, token=args.token)
    return run_serving_bench(
        plane, name, client, buf.getvalue(), management=args.management, options=settings, log=note
    )


COMMANDS = (
    Command("export", "export the models to a bundle of ONNX graphs (optionally int8)", configure_export, cmd_export),
    Command("gate", "parity gate: may a candidate bundle replace a reference bundle?", configure_gate, cmd_gate),
    Command("bench", "time the eager baseline against fp32 and int8 bundles, side by side", configure_bench, cmd_bench),
)
