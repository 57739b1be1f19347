"""``licsearch store upgrade|optimize``: the vector index's maintenance.

::

    licsearch store upgrade [--store DIR] [--json]    # a local-mode store (made before Edge) -> Qdrant Edge
    licsearch store optimize [--store DIR] [--json]   # build the HNSW index of the unindexed tail

The library side is :mod:`licsearch.storage.upgrade` and :meth:`licsearch.storage.index.VectorIndex.optimize`.
"""

from __future__ import annotations

import argparse
from typing import Any

from .base import Command, Result, note
from .options import add_store_flags, open_store, store_dir


def configure_store(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="store_action", required=True, metavar="ACTION")
    for name, help_text in (
        ("upgrade", "move a store made before Qdrant Edge (qdrant-client local mode) to Edge, verified, resumable"),
        ("optimize", "build the HNSW index of points not yet indexed"),
    ):
        action = sub.add_parser(name, help=help_text, description=help_text)
        add_store_flags(action)
        action.add_argument("--no-progress", action="store_true", help="no progress bar")


def _bar(args: argparse.Namespace, desc: str, unit: str) -> Any:
    from ..ops.progress import progress_bar

    return progress_bar(None, False if args.no_progress or args.json else None, desc, unit=unit)


def cmd_store(args: argparse.Namespace) -> Result:
    if args.store_action == "upgrade":
        return _upgrade(args)
    return _optimize(args)


def _upgrade(args: argparse.Namespace) -> Result:
    from ..ops.maintenance import fsck
    from ..storage.store import Store
    from ..storage.upgrade import upgrade

    root = store_dir(args)
    bar = _bar(args, "upgrade", "pt")

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        report = upgrade(root, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    doc = report.to_dict()
    if report.state == "server":
        return Result(doc, f"the store at {root} keeps its index on a Qdrant server: nothing to upgrade")
    with Store.open(root) as store:
        check = fsck(store, verify=True)
    doc["fsck"] = check.to_dict()
    if report.state == "already":
        human = f"the store at {root} already uses Qdrant Edge; fsck {'clean' if check.ok else 'found problems'}"
    else:
        again = " (resumed)" if report.resumed else ""
        human = f"upgraded {report.points} points to Qdrant Edge{again} in {report.seconds:.1f} s; fsck " + (
            "clean" if check.ok else "found problems (run `licsearch fsck`)"
        )
    if not check.ok:
        note("fsck found problems after the upgrade; run `licsearch fsck` for the list")
    return Result(doc, human, 0 if check.ok else 1)


def _optimize(args: argparse.Namespace) -> Result:
    from ..ops.maintenance import index_state

    with open_store(args) as store:
        bar = _bar(args, "optimise", "vec")

        def progress(state: Any) -> None:
            if bar is not None:
                bar.total = state.points * max(len(store.index.spaces()), 1)
                bar.n = min(state.indexed_vectors, bar.total)
                bar.refresh()

        try:
            changed = store.index.optimize(progress=progress if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        doc: dict[str, Any] = {"store": str(store.root), "optimized": changed, "index": index_state(store)}
    state = doc["index"]
    human = f"{state['indexed_vectors']} vectors indexed over {state['segments']} segments ({state['points']} points)"
    return Result(doc, human)


COMMANDS = (Command("store", "upgrade or optimise the store's vector index (Qdrant Edge)", configure_store, cmd_store),)
