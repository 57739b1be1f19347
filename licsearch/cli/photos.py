"""``licsearch dupes`` and ``watch``: the photo-collection commands (near-duplicates, folders kept in step)."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType

from ..defaults import DUPES_THRESHOLD, WATCH_INTERVAL_S
from .base import Command, Result, note, warn_random
from .options import add_store_flags, open_store


def configure_dupes(p: argparse.ArgumentParser) -> None:
    add_store_flags(p)
    p.add_argument(
        "--threshold",
        type=float,
        default=DUPES_THRESHOLD,
        metavar="T",
        help=f"least cosine similarity of near-duplicates (default {DUPES_THRESHOLD})",
    )


def cmd_dupes(args: argparse.Namespace) -> Result:
    from ..ops.dupes import find_duplicates

    with open_store(args) as store:
        groups = find_duplicates(store, args.threshold)
    lines: list[str] = []
    for n, group in enumerate(groups, 1):
        lines.append(f"group {n} ({len(group.ids)} images)")
        for pid, score, exact, path in zip(group.ids, group.scores, group.exact, group.paths, strict=True):
            lines.append(f"  {score:.4f}{' exact' if exact else ''}  {pid}  {path}")
    doc = {"threshold": args.threshold, "groups": [g.to_dict() for g in groups]}
    return Result(doc, "\n".join(lines) or f"no near-duplicates at threshold {args.threshold}")


def configure_watch(p: argparse.ArgumentParser) -> None:
    add_store_flags(p)
    p.add_argument("folders", nargs="+", metavar="DIR")
    p.add_argument(
        "--interval",
        type=float,
        default=WATCH_INTERVAL_S,
        metavar="S",
        help=f"seconds between rescans (default {WATCH_INTERVAL_S:g})",
    )
    p.add_argument("--once", action="store_true", help="scan once, ingest what is new, and exit")
    p.add_argument("--batch-size", type=int, default=8)


def cmd_watch(args: argparse.Namespace) -> Result:
    from ..errors import InputError
    from ..ops.watch import WatchReport, watch

    if args.batch_size < 1:
        raise InputError("--batch-size must be positive")
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        note(f"watch: {signal.Signals(signum).name} received, stopping after the current batch")
        stop.set()

    def progress(scan: int, new: int, total: WatchReport) -> None:
        note(
            f"watch: scan {scan}: {new} new files; ingested {total.ingested}, skipped {total.skipped}, "
            f"failed {total.failed} so far"
        )

    def failed(path: Path, message: str) -> None:
        note(f"failed: {path}: {message}")

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with open_store(args) as store:
            rnd = warn_random(store.models.random_components())
            report = watch(
                store,
                args.folders,
                interval=args.interval,
                once=args.once,
                stop=stop,
                batch_size=args.batch_size,
                on_scan=progress,
                on_error=failed,
            )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    human = (
        f"watch {'stopped' if report.stopped else 'done'} after {report.scans} scans: ingested {report.ingested}, "
        f"skipped {report.skipped}, failed {report.failed}"
    )
    return Result({**report.to_dict(), "random_weights": rnd}, human)


COMMANDS = (
    Command("dupes", "list groups of near-duplicate images", configure_dupes, cmd_dupes),
    Command("watch", "keep a store in step with folders by periodic rescans", configure_watch, cmd_watch),
)
