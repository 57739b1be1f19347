"""The CLI's commands: each takes the parsed arguments, does its work through the library, and reports."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import AdapterConfig, ClipConfig, CodecConfig, ModelsConfig, QdrantConfig, StoreConfig
from ..errors import InputError
from ..model.models import ModelPlane, ModelSet
from ..model.weights import SHIPPED_PREFIX
from ..storage.store import Store, default_store_dir
from .main import MODEL_FLAGS, emit, note, parse_kv


def run(args: argparse.Namespace) -> int:
    """Dispatches to the command named in ``args``; returns the exit status."""
    return COMMANDS[args.command](args)


def _store_dir(args: argparse.Namespace) -> Path:
    return Path(args.store) if args.store else default_store_dir()


def _weights(value: str | None, default: str) -> str:
    if value is None:
        return default
    if value in ("pretrained", "random") or value.startswith(SHIPPED_PREFIX):
        return value
    return str(Path(value).expanduser().resolve())


def models_from_flags(args: argparse.Namespace) -> ModelsConfig | None:
    """The models named by flags, or None when no model flag was given."""
    if all(getattr(args, f, None) is None for f in MODEL_FLAGS):
        return None
    from ..model.codec import parse_codec
    from ..model.text import DEFAULT_TAG, parse_clip

    arch, quality = parse_codec(args.codec or "bmshj2018-hyperprior:3")
    clip_name, tag = parse_clip(args.clip or "ViT-B-32")
    seed = args.seed if args.seed is not None else 0
    clip_weights = _weights(args.clip_weights, "pretrained")
    if tag is None and clip_name == "ViT-B-32" and clip_weights == "pretrained":
        tag = DEFAULT_TAG
    return ModelsConfig(
        codec=CodecConfig(arch=arch, quality=quality, weights=_weights(args.codec_weights, "pretrained"), seed=seed),
        clip=ClipConfig(model=clip_name, tag=tag, weights=clip_weights, seed=seed),
        adapter=AdapterConfig(weights=_weights(args.adapter_weights, "random"), seed=seed),
    )


def warn_random(models: ModelPlane | list[str]) -> list[str]:
    """Labels random weights loudly on stderr; returns their names for JSON output."""
    names = models.random_components() if isinstance(models, ModelPlane) else models
    if names:
        note(
            f"WARNING: RANDOM WEIGHTS in {', '.join(names)}: compression quality and search results are NOT "
            "meaningful (use trained or pretrained weights for real use)"
        )
    return names


def _open(args: argparse.Namespace) -> Store:
    """Opens the store; with ``--server`` its models run on that server (blobs and Qdrant stay here)."""
    store = Store.open(_store_dir(args))
    if getattr(args, "server", None):
        from ..serving.client import RemoteModelPlane

        store.models = RemoteModelPlane.for_store(args.server, store.config, token=args.token)
    return store


# -- commands ---------------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    flags = models_from_flags(args)
    models = flags or ModelsConfig()
    if args.preset:
        from ..presets import preset_models

        if flags is not None or args.bundle:
            raise InputError(
                "--preset and model flags or --bundle exclude each other", hint="a preset names its models"
            )
        models = preset_models(args.preset)
    if args.max_pixels < 1:
        raise InputError("--max-pixels must be positive")
    qdrant = QdrantConfig(url=args.qdrant, collection=args.collection)
    root = _store_dir(args)
    if args.bundle and flags is not None:
        raise InputError("--bundle and model flags exclude each other", hint="a bundle names its own models")
    bundle = Path(args.bundle) if args.bundle else None
    with Store.create(
        root, models, qdrant=qdrant, api_key=args.api_key, max_pixels=args.max_pixels, bundle=bundle
    ) as store:
        rnd = warn_random(store.models)
        cfg = store.config
        doc = {"store": str(root), "space_id": cfg.space_id, "models": cfg.to_dict()["models"], "random_weights": rnd}
        emit(args, doc, f"initialised store {root} (space {cfg.space_id}, Qdrant {cfg.qdrant.url or 'local'})")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from ..ops.ingest import ingest

    meta = parse_kv(args.meta, "--meta")
    if args.batch_size < 1:
        raise InputError("--batch-size must be positive")
    with _open(args) as store:
        rnd = warn_random(store.models)
        report = ingest(
            store,
            args.paths,
            batch_size=args.batch_size,
            metadata=meta,
            progress=False if args.no_progress else None,
            on_error=lambda p, m: note(f"failed: {p}: {m}"),
        )
        doc = {**report.to_dict(), "random_weights": rnd}
        emit(
            args,
            doc,
            f"ingested {report.ingested}, skipped {report.skipped} (already stored), failed {report.failed}",
        )
    return 1 if report.failed else 0


def cmd_search(args: argparse.Namespace) -> int:
    from ..ops.search import search
    from ..storage.index import parse_filter

    filters = [parse_filter(f) for f in args.filter]
    with _open(args) as store:
        rnd = warn_random(store.models)
        result = search(
            store, text=args.text, image=args.image, like=args.like, top_k=args.top_k, filters=filters, space=args.space
        )
        for n in result.notices:
            note(f"notice: {n}")
        lines = [
            f"{i + 1:>3}. {h.score:.4f}  {h.id}  {h.payload.get('width')}x{h.payload.get('height')}  "
            f"{h.payload.get('bpp', 0):.3f} bpp  {h.payload.get('source_path', '')}"
            for i, h in enumerate(result.hits)
        ]
        emit(args, {**result.to_dict(), "random_weights": rnd}, "\n".join(lines) or "no hits")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from ..imageio import save_image
    from ..ops.search import decode_stored

    with _open(args) as store:
        rnd = warn_random(store.models)
        pixels = decode_stored(store, args.id)
        save_image(pixels, args.output)
        h, w = pixels.shape[:2]
        doc = {"id": args.id, "output": args.output, "width": w, "height": h, "random_weights": rnd}
        emit(args, doc, f"wrote {args.output} ({w}x{h})")
    return 0


def _codec_models(args: argparse.Namespace) -> tuple[ModelPlane, int]:
    """Models and pixel limit from flags, or from the store (its config only; Qdrant is not opened).

    With both ``--store`` and model flags, the flags must name the store's models.
    """
    from ..imageio import DEFAULT_MAX_PIXELS
    from ..storage.store import check_models, model_plane_for

    flags = models_from_flags(args)
    if args.server:
        return _server_models(args, flags)
    if flags is not None and not args.store:
        return ModelSet(flags), DEFAULT_MAX_PIXELS
    cfg = StoreConfig.load(_store_dir(args))
    check_models(cfg, flags)
    return model_plane_for(cfg), cfg.max_pixels


def _server_models(args: argparse.Namespace, flags: ModelsConfig | None) -> tuple[ModelPlane, int]:
    """The server's models, checked against the store's when there is a store (``--store`` or the default)."""
    from ..config import CONFIG_FILE
    from ..imageio import DEFAULT_MAX_PIXELS
    from ..serving.client import RemoteModelPlane, ServingClient

    if flags is not None:
        raise InputError("--server and model flags exclude each other", hint="the server names its own models")
    root = _store_dir(args)
    if args.store or (root / CONFIG_FILE).exists():
        cfg = StoreConfig.load(root)
        return RemoteModelPlane.for_store(args.server, cfg, token=args.token), cfg.max_pixels
    return RemoteModelPlane(ServingClient(args.server, token=args.token)), DEFAULT_MAX_PIXELS


def cmd_encode(args: argparse.Namespace) -> int:
    from ..bitstream import Bitstream
    from ..fsutil import atomic_write
    from ..imageio import load_image

    models, max_pixels = _codec_models(args)
    image = load_image(args.image, max_pixels=max_pixels)
    rnd = warn_random([c for c in models.random_components() if c == "codec"])
    data = models.encode_bitstream(image.pixels)
    bs = Bitstream.from_bytes(data)
    atomic_write(Path(args.output), data)
    bpp = 8.0 * len(data) / (bs.width * bs.height)
    doc = {
        "output": args.output,
        "bytes": len(data),
        "bpp": bpp,
        "width": bs.width,
        "height": bs.height,
        "codec_profile": bs.profile_id,
        "random_weights": rnd,
    }
    emit(args, doc, f"wrote {args.output}: {len(data)} bytes, {bpp:.4f} bpp")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from ..bitstream import Bitstream
    from ..errors import BitstreamError
    from ..imageio import save_image

    models, max_pixels = _codec_models(args)
    path = Path(args.bitstream)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from e
    bs = Bitstream.from_bytes(data)
    if bs.width * bs.height > max_pixels:
        raise BitstreamError(
            f"{path} claims a {bs.width}x{bs.height} image, over the limit of {max_pixels} pixels",
            hint="decode it with a store made with a larger `licsearch init --max-pixels`",
        )
    rnd = warn_random([c for c in models.random_components() if c == "codec"])
    pixels = models.decode(data)
    save_image(pixels, args.output)
    h, w = pixels.shape[:2]
    emit(
        args, {"output": args.output, "width": w, "height": h, "random_weights": rnd}, f"wrote {args.output} ({w}x{h})"
    )
    return 0


def _load_images(directory: str, limit: int = 64) -> list[Any]:
    from ..imageio import iter_image_files, load_image

    out: list[Any] = []
    for path, err in iter_image_files([directory]):
        if err is None and len(out) < limit:
            out.append(load_image(path).pixels)
    if not out:
        raise InputError(f"no images found in {directory}")
    return out


def cmd_export(args: argparse.Namespace) -> int:
    from ..bundle.export import export_bundle
    from ..model.models import space_id_for

    flags = models_from_flags(args)
    if flags is not None:
        models, space = flags, None
    else:
        cfg = StoreConfig.load(_store_dir(args))
        if cfg.bundle:
            raise InputError("this store runs from a bundle already", hint="export from the source models' flags")
        models, space = cfg.models, cfg.space_id
    calibration = _load_images(args.calibration) if args.calibration else None
    if space is None:
        space = space_id_for(ModelSet(models).fingerprinted())
    manifest = export_bundle(
        models, Path(args.out), space_id=space, opset=args.opset, int8=args.int8, calibration=calibration
    )
    rnd = warn_random(manifest.extra.get("random_weights", []))
    for name, g in manifest.graphs.items():
        note(f"{name}: {g.file} {g.precision}" + (f" ({g.int8_note})" if g.int8_note else ""))
    doc = {"out": args.out, "manifest": manifest.to_dict(), "random_weights": rnd}
    emit(args, doc, f"wrote bundle {args.out} ({manifest.precision}, space {manifest.space_id})")
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from ..bundle.runtime import BundleModelSet
    from ..ops.gate import DEFAULT_TEXTS, GateThresholds, run_gate

    ref, cand = BundleModelSet(Path(args.reference)), BundleModelSet(Path(args.candidate))
    images = _load_images(args.images, limit=args.max_images)
    texts: list[str] = list(DEFAULT_TEXTS)
    if args.texts:
        try:
            texts = [t.strip() for t in Path(args.texts).read_text(encoding="utf-8").splitlines() if t.strip()]
        except OSError as e:
            raise InputError(f"cannot read {args.texts}: {e.strerror or e}") from e
    th = GateThresholds(args.psnr_delta_min, args.bpp_delta_max, args.cos_mean_min, args.recall_overlap_min)
    rep = run_gate(ref, cand, images, texts, th)
    doc = rep.to_dict()
    doc.update(reference=args.reference, candidate=args.candidate, candidate_space_id=cand.space_id)
    if args.assign_space:
        doc["candidate_space_id"] = assign_space(cand, ref, rep.passed)
    verdict = "PASSED" if rep.passed else "FAILED: " + "; ".join(rep.failures)
    human = (
        f"PSNR {rep.psnr_reference:.2f} -> {rep.psnr_candidate:.2f} dB ({rep.psnr_delta:+.3f}), "
        f"bpp {rep.bpp_reference:.4f} -> {rep.bpp_candidate:.4f} ({rep.bpp_delta_pct:+.2f} %), "
        f"image cos {rep.image_cos_mean:.4f} (min {rep.image_cos_min:.4f}), "
        f"text cos {rep.text_cos_mean:.4f} (min {rep.text_cos_min:.4f}), "
        f"recall@10 overlap {rep.recall_at_10_overlap:.3f}, latency x{rep.latency_ratio:.2f}\n{verdict}"
    )
    emit(args, doc, human)
    return 0 if rep.passed else 1


def assign_space(cand: Any, ref: Any, passed: bool) -> str:
    """Rewrites the candidate manifest's space id: the reference's when the gate passed, else its own."""
    import dataclasses
    import hashlib

    m = cand.manifest
    if passed:
        space = ref.space_id
    elif m.space_id == ref.space_id:
        space = f"{ref.space_id}-x{hashlib.sha256(str(sorted(m.files.items())).encode()).hexdigest()[:8]}"
    else:
        space = m.space_id
    if space != m.space_id:
        dataclasses.replace(m, space_id=space).save(cand.root)
    return space


def cmd_bench(args: argparse.Namespace) -> int:
    from ..ops.bench import BenchOptions, format_report, run_bench

    models, space, cache = models_from_flags(args), None, None
    if models is None and (args.store or not args.bundle):
        root = _store_dir(args)
        cfg = StoreConfig.load(root)
        models, space, cache = cfg.models, cfg.space_id, root / "cache" / "bench"
    options = BenchOptions(
        images=Path(args.images) if args.images else None,
        bundles=tuple(Path(b) for b in args.bundle),
        quick=args.quick,
        threads=args.threads,
        cache_dir=cache,
    )
    if args.management and not args.server:
        raise InputError("--management needs --server", hint="give the inference URL with --server")
    doc = run_bench(models, options, space_id=space, log=note)
    warn_random(doc["random_weights"])
    human = format_report(doc)
    if args.server:
        from ..ops.serving_bench import format_serving

        doc["serving"] = _bench_serving(args, models, options)
        human += "\n" + format_serving(doc["serving"])
    emit(args, doc, human)
    return 0


def _bench_serving(args: argparse.Namespace, models: ModelsConfig | None, options: Any) -> dict[str, Any]:
    """The ``serving`` object: in-process on the first ``--bundle`` (else the store's or the flags' models)."""
    import io

    from PIL import Image

    from ..ops.bench import load_bench_images
    from ..ops.serving_bench import ServingBenchOptions, run_serving_bench
    from ..serving.client import ServingClient
    from ..storage.store import model_plane_for

    plane: ModelPlane
    if args.bundle:
        from ..bundle.runtime import BundleModelSet, RuntimeOptions

        plane, name = BundleModelSet(Path(args.bundle[0]), RuntimeOptions(threads=args.threads or 0)), args.bundle[0]
    elif args.store or models is None:
        plane, name = model_plane_for(StoreConfig.load(_store_dir(args))), "the store's models"
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


def cmd_stats(args: argparse.Namespace) -> int:
    from ..ops.maintenance import stats

    with _open(args) as store:
        doc = stats(store)
        warn_random(doc["random_weights"])
        emit(
            args,
            doc,
            f"{doc['images']} images, {doc['bytes']} bytes, mean {doc['mean_bpp']:.4f} bpp, space {doc['space_id']}",
        )
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    from ..ops.maintenance import fsck

    with _open(args) as store:
        rep = fsck(store, repair=args.repair, verify=not args.no_verify)
        d = rep.to_dict()
        human = (
            f"{d['points']} points, {d['bitstreams']} bitstreams: {len(rep.missing)} missing, {len(rep.corrupt)} "
            f"corrupt, {len(rep.orphans)} orphan" + (" (repaired)" if rep.repaired else "")
        )
        emit(args, d, human)
    return 0 if rep.ok else 1


def cmd_samples(args: argparse.Namespace) -> int:
    from ..world import write_dataset

    out = Path(args.out)
    w, sep, h = str(args.size).lower().partition("x")
    if not (sep and w.isdigit() and h.isdigit()):
        raise InputError(f"bad --size {args.size!r}", hint="write WIDTHxHEIGHT, e.g. 256x256")
    captions = write_dataset(out, args.n, seed=args.seed, split=args.split, size=(int(w), int(h)))
    emit(args, {"out": str(out), "images": args.n, "captions": str(captions)}, f"wrote {args.n} images to {out}")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    from ..serving.archive import ArchiveSettings, archive_bundle
    from ..serving.endpoint import Limits

    limits = {k: getattr(args, k) for k in ("max_bytes", "max_pixels", "max_texts") if getattr(args, k) is not None}
    for k, v in limits.items():
        if v < 1:
            raise InputError(f"--{k.replace('_', '-')} must be positive")
    settings = ArchiveSettings(
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay,
        min_workers=args.min_workers,
        max_workers=args.max_workers,
        response_timeout_s=args.response_timeout,
        version=args.version,
        limits=Limits(**limits),
    )
    handlers = Path(args.handlers) if args.handlers else None
    written = archive_bundle(Path(args.bundle), Path(args.out), settings, handlers=handlers)
    doc = {
        "out": args.out,
        "version": written[0].version,
        "archives": [{"name": a.name, "path": str(a.path), "bytes": a.bytes} for a in written],
        "model_config": settings.model_config(),
    }
    emit(args, doc, "\n".join(f"wrote {a.path} ({a.bytes} bytes, version {a.version})" for a in written))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serving import server

    run_dir = Path(args.run_dir) if args.run_dir else server.default_run_dir()
    if args.stop:
        stopped = server.stop(run_dir)
        human = "TorchServe stopped" if stopped else f"no server was running from {run_dir}"
        emit(args, {"stopped": stopped, "run_dir": str(run_dir)}, human)
        return 0
    apis = (*server.PORTS, *server.GRPC_PORTS)
    ports = {api: getattr(args, f"{api}_port") for api in apis if getattr(args, f"{api}_port") is not None}
    if any(not 0 < p < 65536 for p in ports.values()) or len(set(ports.values())) < len(ports):
        raise InputError(f"bad ports {ports}", hint="give different ports from 1 to 65535")
    options = server.ServeOptions(
        model_store=Path(args.model_store),
        run_dir=run_dir,
        config=Path(args.config) if args.config else None,
        ports=ports,
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else (),
        timeout_s=args.timeout,
    )
    srv, proc = server.start(options, foreground=args.foreground)
    doc = srv.to_dict()
    lines = [f"TorchServe is up (logs in {doc['logs']}; stop with `licsearch serve --stop --run-dir {run_dir}`)"]
    lines += [f"  {name:<10} POST {srv.inference_url}/predictions/{name}" for name in srv.models]
    lines += [f"  management {doc['management']}", f"  metrics    {doc['metrics']}"]
    if srv.token_auth:
        lines.append(f"  tokens     {srv.key_file} (send Authorization: Bearer <inference key>)")
    emit(args, doc, "\n".join(lines))
    if args.foreground:
        sys.stdout.flush()
        try:
            proc.wait()
        except KeyboardInterrupt:
            note("stopping TorchServe")
            server.stop(run_dir)
            return 0
        note(f"TorchServe exited on its own (status {proc.returncode}); see {doc['logs']}")
        return 1
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import cmd_eval as run_eval_command

    return run_eval_command(args)


def cmd_reindex(args: argparse.Namespace) -> int:
    from .reindex import cmd_reindex as run_reindex_command

    return run_reindex_command(args)


def cmd_rollout(args: argparse.Namespace) -> int:
    from .rollout import cmd_rollout as run_rollout_command

    doc, human, code = run_rollout_command(args)
    emit(args, doc, human)
    return code


def cmd_train(args: argparse.Namespace) -> int:
    from ..train.cli import run_train

    doc, human = run_train(args)
    emit(args, doc, human)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "init": cmd_init,
    "ingest": cmd_ingest,
    "search": cmd_search,
    "get": cmd_get,
    "encode": cmd_encode,
    "decode": cmd_decode,
    "stats": cmd_stats,
    "export": cmd_export,
    "gate": cmd_gate,
    "bench": cmd_bench,
    "fsck": cmd_fsck,
    "samples": cmd_samples,
    "archive": cmd_archive,
    "serve": cmd_serve,
    "eval": cmd_eval,
    "train": cmd_train,
    "rollout": cmd_rollout,
    "reindex": cmd_reindex,
}
