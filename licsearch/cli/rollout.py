"""The ``licsearch rollout`` command: arguments, replay images, and the report (see :mod:`licsearch.rollout`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .. import defaults
from ..errors import InputError
from .base import Command, Result, add_json_flag, note
from .options import add_threshold_flags

DEFAULT_SERVER = "http://127.0.0.1:8080"
REPLAY_DEFAULT = 6
REPLAY_SIZE = (192, 128)


def configure_rollout(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--candidate", metavar="BUNDLE", help="the bundle to roll out (rerun to resume)")
    what.add_argument("--rollback", action="store_true", help="undo an unfinished rollout, else the previous default")
    what.add_argument(
        "--status", action="store_true", help="the journal and the server's versions, and whether they agree"
    )
    g = p.add_argument_group("server")
    g.add_argument("--server", default=DEFAULT_SERVER, metavar="URL", help=f"inference API (default {DEFAULT_SERVER})")
    g.add_argument("--management", metavar="URL", help="management API (default: the --server host, port 8081)")
    g.add_argument("--token", metavar="KEY", help="inference key (default $LICSEARCH_SERVER_TOKEN)")
    g.add_argument("--management-token", metavar="KEY", help="management key (default $LICSEARCH_MANAGEMENT_TOKEN)")
    g.add_argument("--model-store", default="model_store", metavar="DIR", help="the server's model store")
    g.add_argument("--state-dir", metavar="DIR", help="journal, staged bundles, metrics (default MODEL_STORE/.rollout)")
    c = p.add_argument_group("candidate")
    c.add_argument("--version", help="candidate version (default: precision and bundle hash, e.g. int8-1a2b3c4d)")
    c.add_argument(
        "--live-bundle", metavar="DIR", help="the live version's bundle (default: from the journal or archive)"
    )
    c.add_argument("--replay", metavar="DIR", help=f"replay images (default: {REPLAY_DEFAULT} generated scenes)")
    c.add_argument("--max-images", type=int, default=16, metavar="N", help="replay at most N images (default 16)")
    c.add_argument("--canary", type=float, default=0.0, metavar="PERCENT", help="share of client traffic to route")
    c.add_argument("--canary-window", type=float, metavar="S", help="keep routing S seconds (default 60 with --canary)")
    c.add_argument(
        "--store", metavar="DIR", help="build the candidate's embedding space in this store if the gate fails"
    )
    c.add_argument("--handlers", metavar="DIR", help="handler modules to archive (default: the checkout's handlers/)")
    c.add_argument("--workers", type=int, default=1, help="workers per model for the candidate (default 1)")
    c.add_argument(
        "--startup-timeout", type=int, default=300, metavar="S", help="wait for a candidate worker to load (300 s)"
    )
    c.add_argument("--pushgateway", metavar="URL", help="also push the rollout metrics to this Pushgateway")
    t = p.add_argument_group("thresholds (gate and canary)")
    add_threshold_flags(
        t,
        cos_help=f"embedding cosine (default {defaults.COS_MEAN_MIN})",
        recall_help=f"gate recall@10 overlap (default {defaults.RECALL_OVERLAP_MIN})",
    )
    t.add_argument(
        "--latency-ratio-max",
        type=float,
        default=defaults.LATENCY_RATIO_MAX,
        help=f"canary candidate/live time (default {defaults.LATENCY_RATIO_MAX})",
    )
    add_json_flag(p)


def management_url(args: argparse.Namespace) -> str:
    if args.management:
        return str(args.management)
    url = urlsplit(args.server)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise InputError(f"bad --server URL {args.server!r}", hint="give e.g. --server http://127.0.0.1:8080")
    return urlunsplit((url.scheme, f"{url.hostname}:8081", "", "", ""))


def replay_images(args: argparse.Namespace) -> list[Any]:
    if args.max_images < 1:
        raise InputError("--max-images must be at least 1")
    if args.replay:
        from ..imageio import iter_image_files, load_image

        out = [load_image(p).pixels for p, err in iter_image_files([args.replay]) if err is None][: args.max_images]
        if not out:
            raise InputError(f"no images found in {args.replay}", hint="give --replay a folder of images")
        return out
    from ..world import sample_images

    return [px for _, px in sample_images(min(REPLAY_DEFAULT, args.max_images), seed=7, size=REPLAY_SIZE)]


def cmd_rollout(args: argparse.Namespace) -> Result:
    """Rolls the candidate out, rolls back, or reports the status."""
    from ..release.gate import GateThresholds
    from ..rollout.canary import CanaryThresholds
    from ..rollout.operation import Hooks
    from ..rollout.orchestrator import RolloutOptions, run_rollout
    from ..rollout.rollback import rollout_status, run_rollback

    model_store = Path(args.model_store)
    state_dir = Path(args.state_dir) if args.state_dir else model_store / ".rollout"
    management = management_url(args)
    hooks = Hooks(log=note)
    if args.status:
        doc = rollout_status(state_dir, management, token=args.management_token)
        return Result(doc, format_status(doc))
    if args.rollback:
        doc = run_rollback(state_dir, model_store, management, token=args.management_token,
                           pushgateway=args.pushgateway, hooks=hooks)  # fmt: skip
        return Result(doc, format_report(doc), 0 if doc["outcome"] in ("rolled back", "aborted") else 1)
    if not 0 <= args.canary <= 100:
        raise InputError(f"--canary must be a percentage from 0 to 100, got {args.canary}")
    if args.workers < 1 or args.startup_timeout < 1:
        raise InputError("--workers and --startup-timeout must be at least 1")
    candidate = Path(args.candidate)
    if not candidate.is_dir():
        raise InputError(f"candidate bundle {candidate} is not a directory", hint="give an exported bundle")
    window = args.canary_window if args.canary_window is not None else (60.0 if args.canary > 0 else 0.0)
    opts = RolloutOptions(
        candidate=candidate,
        model_store=model_store,
        state_dir=state_dir,
        server=args.server,
        management=management,
        replay=replay_images(args),
        token=args.token,
        management_token=args.management_token,
        version=args.version,
        live_bundle=Path(args.live_bundle) if args.live_bundle else None,
        canary_percent=args.canary,
        canary_window_s=max(0.0, window),
        gate=GateThresholds(args.psnr_delta_min, args.bpp_delta_max, args.cos_mean_min, args.recall_overlap_min),
        canary=CanaryThresholds(args.psnr_delta_min, args.bpp_delta_max, args.cos_mean_min, args.latency_ratio_max),
        store=Path(args.store) if args.store else None,
        handlers=Path(args.handlers) if args.handlers else None,
        workers=args.workers,
        startup_timeout_s=args.startup_timeout,
        pushgateway=args.pushgateway,
    )
    doc = run_rollout(opts, hooks)
    return Result(doc, format_report(doc), 0 if doc["outcome"] == "promoted" else 1)


def format_report(doc: dict[str, Any]) -> str:
    lines = [f"{doc['kind']} {doc['rollout']}: {doc['outcome']}"]
    for s in doc["timeline"]["steps"]:
        dur = f"{s['duration_s']:8.2f} s" if s["duration_s"] is not None else "       - "
        lines.append(f"  {s['name']:<9} {s['status']:<11} {dur}")
    lines.append(f"  total     {doc['timeline']['total_s']:.2f} s")
    c = doc.get("canary")
    if c:
        cos = ", ".join(
            f"{k} {c[k]:.4f}" for k in ("image_cos_mean", "bitstream_cos_mean", "text_cos_mean") if c[k] is not None
        )
        lines.append(
            f"  canary: PSNR {c['psnr_delta']:+.3f} dB, bpp {c['bpp_delta_pct']:+.2f} %, {cos or 'cosines skipped'}, "
            f"latency x{c['latency_ratio']:.2f}, cross-decode failures {c['cross_decode_failures']}, "
            f"{c['requests']} requests"
        )
    lines += [f"  reason: {r}" for r in doc.get("reasons", [])]
    if doc.get("error"):
        lines.append(f"  stopped: {doc['error']['message']}")
    return "\n".join(lines)


def format_status(doc: dict[str, Any]) -> str:
    lines = [f"rollout state: {doc['state']} ({doc['state_dir']})"]
    if doc["current"]:
        lines.append(format_report(doc["current"]))
    lines.append(f"defaults (oldest first): {' -> '.join(doc['stack']) or '-'}")
    server = doc["server"]
    if isinstance(server, dict) and "error" in server:
        lines.append(f"server: unreachable: {server['error']}")
    elif server:
        for m, s in server.items():
            lines.append(f"  {m:<7} default {s['default']}, versions {', '.join(s['versions'])}")
    if doc["consistent"] is not None:
        lines.append("journal and server agree" if doc["consistent"] else "journal and server DISAGREE:")
    lines += [f"  problem: {p}" for p in doc["problems"]]
    lines.append(f"next: {doc['next']}")
    return "\n".join(lines)


COMMANDS = (
    Command(
        "rollout",
        "roll a bundle out on a running TorchServe: gate, canary, promote / rollback",
        configure_rollout,
        cmd_rollout,
    ),
)
