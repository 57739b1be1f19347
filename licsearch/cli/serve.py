"""``licsearch archive`` and ``serve``: pack a bundle into TorchServe model archives, run TorchServe on them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .. import defaults
from ..errors import InputError
from .base import Command, Result, add_json_flag, note

if TYPE_CHECKING:
    import subprocess


def configure_archive(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, metavar="DIR", help="an exported bundle (`licsearch export`)")
    p.add_argument("--out", default="model_store", metavar="DIR", help="model store to write to (default model_store)")
    p.add_argument("--batch-size", type=int, default=4, help="requests per batch (default 4)")
    p.add_argument("--max-batch-delay", type=int, default=50, metavar="MS", help="batch fill wait (default 50 ms)")
    p.add_argument("--min-workers", type=int, default=1)
    p.add_argument("--max-workers", type=int, default=1)
    p.add_argument("--response-timeout", type=int, default=120, metavar="S", help="per batch (default 120 s)")
    p.add_argument("--version", help="archive version (default: precision and hash of the bundle, e.g. fp32-1a2b3c4d)")
    mib, mp, texts = defaults.MAX_REQUEST_BYTES / 2**20, defaults.MAX_PIXELS / 1e6, defaults.MAX_TEXTS_PER_REQUEST
    p.add_argument("--max-bytes", type=int, help=f"largest request payload (default {mib:g} MiB)")
    p.add_argument("--max-pixels", type=int, help=f"largest image to encode or decode (default {mp:g} MP)")
    p.add_argument("--max-texts", type=int, help=f"most texts per embed request (default {texts})")
    p.add_argument("--handlers", metavar="DIR", help="handler modules (default: the checkout's handlers/)")
    add_json_flag(p)


def cmd_archive(args: argparse.Namespace) -> Result:
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
    return Result(doc, "\n".join(f"wrote {a.path} ({a.bytes} bytes, version {a.version})" for a in written))


def configure_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-store", default="model_store", metavar="DIR", help="folder of the .mar files")
    p.add_argument("--config", metavar="FILE", help="base config.properties (default: local, 127.0.0.1, no tokens)")
    p.add_argument("--run-dir", metavar="DIR", help="config, logs and temp files (default $LICSEARCH_SERVE_DIR)")
    p.add_argument("--foreground", action="store_true", help="stay attached until interrupted")
    p.add_argument("--inference-port", type=int, metavar="PORT", help="default: the config's (8080)")
    p.add_argument("--management-port", type=int, metavar="PORT", help="default: the config's (8081)")
    p.add_argument("--metrics-port", type=int, metavar="PORT", help="default: the config's (8082)")
    p.add_argument("--grpc-inference-port", type=int, metavar="PORT", help="default: the config's (7070)")
    p.add_argument("--grpc-management-port", type=int, metavar="PORT", help="default: the config's (7071)")
    p.add_argument("--models", metavar="NAME[,NAME]", help="models to serve (default: encode,decode,embed)")
    p.add_argument("--timeout", type=float, default=180, metavar="S", help="wait for the models (default 180 s)")
    p.add_argument("--stop", action="store_true", help="stop the server started from --run-dir")
    p.add_argument(
        "--status", action="store_true", help="is the server from --run-dir running and ready (exit 1 when not)"
    )
    add_json_flag(p)


def cmd_serve(args: argparse.Namespace) -> Result:
    from ..serving import server

    run_dir = Path(args.run_dir) if args.run_dir else server.default_run_dir()
    if args.stop:
        stopped = server.stop(run_dir)
        human = "TorchServe stopped" if stopped else f"no server was running from {run_dir}"
        return Result({"stopped": stopped, "run_dir": str(run_dir)}, human)
    if args.status:
        doc = server.status(run_dir)
        workers = doc["workers"] if isinstance(doc["workers"], dict) else {}
        if doc["ready"]:
            human = "ready: " + ", ".join(f"{m} {n} live worker(s)" for m, n in workers.items())
        else:
            human = f"not ready: {doc['problem']}"
        return Result(doc, human, 0 if doc["ready"] else 1)
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
    if not args.foreground:
        return Result(doc, "\n".join(lines))
    return Result(doc, "\n".join(lines), then=lambda: _stay_attached(proc, run_dir, str(doc["logs"])))


def _stay_attached(proc: subprocess.Popen[bytes], run_dir: Path, logs: str) -> int:
    """Waits for the foreground server; Ctrl-C stops it (exit 0), an exit of its own is a failure (exit 1)."""
    from ..serving import server

    sys.stdout.flush()
    try:
        proc.wait()
    except KeyboardInterrupt:
        note("stopping TorchServe")
        server.stop(run_dir)
        return 0
    note(f"TorchServe exited on its own (status {proc.returncode}); see {logs}")
    return 1


COMMANDS = (
    Command(
        "archive",
        "pack a bundle into TorchServe model archives (encode, decode, embed .mar)",
        configure_archive,
        cmd_archive,
    ),
    Command(
        "serve",
        "start TorchServe with the encode, decode and embed models (--stop stops it)",
        configure_serve,
        cmd_serve,
    ),
)
