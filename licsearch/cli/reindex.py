"""The ``licsearch reindex`` command: build an embedding space from stored bitstreams, show spaces, remove one.

::

    licsearch reindex --store DIR (--bundle DIR | --adapter-weights PATH | --space ID) [--space ID] [--activate]
    licsearch reindex --store DIR --status
    licsearch reindex --store DIR --remove ID

The library side is :mod:`licsearch.ops.reindex` and :mod:`licsearch.ops.spaces`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..storage.vectors import add_vectors_flag
from .base import Command, Result, note
from .options import add_store_flags, store_dir


def configure_reindex(p: argparse.ArgumentParser) -> None:
    from ..ops.reindex import DEFAULT_BATCH

    add_store_flags(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--bundle", metavar="DIR", help="a model bundle defining the space (manifest space id)")
    what.add_argument("--adapter-weights", metavar="PATH", help="new adapter weights for the store's codec and CLIP")
    what.add_argument("--status", action="store_true", help="show the spaces, their state and counts")
    what.add_argument("--remove", metavar="ID", help="delete a non-active space's vectors from every point")
    p.add_argument("--space", metavar="ID", help="the space to build or resume (default: the bundle's or weights')")
    p.add_argument("--activate", action="store_true", help="switch queries and ingest to the space once complete")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help=f"points per request ({DEFAULT_BATCH})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_vectors_flag(p, default=None)


def cmd_reindex(args: argparse.Namespace) -> Result:
    from ..ops import spaces
    from ..ops.reindex import reindex
    from ..storage.store import Store

    root = store_dir(args)
    if (args.status or args.remove) and (args.space or args.activate):
        raise InputError("--status and --remove take no --space or --activate", hint="run them on their own")
    if args.status:
        with Store.open(root) as store:
            rows = spaces.space_status(store)
        doc: dict[str, Any] = {"store": str(root), "active": rows[0].space_id, "spaces": [r.to_dict() for r in rows]}
        return Result(doc, "\n".join(_status_line(r.to_dict()) for r in rows))
    if args.remove:
        with Store.open(root) as store:
            spaces.remove_space(store, args.remove)
        return Result({"store": str(root), "removed": args.remove}, f"removed embedding space {args.remove}")
    if args.batch_size < 1:
        raise InputError("--batch-size must be positive")
    report = reindex(
        root,
        bundle=Path(args.bundle) if args.bundle else None,
        adapter_weights=args.adapter_weights,
        space_id=args.space,
        batch=args.batch_size,
        progress=False if args.no_progress else None,
        activate=args.activate,
        on_error=lambda pid, msg: note(f"failed: {pid}: {msg}"),
        vectors=args.vectors,
    )
    human = report.note or (
        f"space {report.space_id}: {report.state}; re-embedded {report.reembedded} of {report.points} points "
        f"({report.already} done before), failed {report.failed}; active space {report.active_space}"
    )
    return Result(report.to_dict(), human, 1 if report.failed else 0)


def _status_line(r: dict[str, Any]) -> str:
    return f"{r['space_id']:<40} {r['state']:<10} {r['with_vector']}/{r['points']} points  dim {r['dim']}"


COMMANDS = (
    Command(
        "reindex",
        "rebuild embeddings from stored bitstreams into a new space; show or remove",
        configure_reindex,
        cmd_reindex,
    ),
)
