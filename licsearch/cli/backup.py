"""``licsearch backup`` and ``restore``: one verified archive of a store, and a new store made from it.

::

    licsearch backup --out FILE [--store DIR] [--include-credentials] [--json]
    licsearch restore FILE --store DIR [--json]

The library side is :mod:`licsearch.ops.backup`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .base import Command, Result, note
from .options import add_store_flags, store_dir


def configure_backup(p: argparse.ArgumentParser) -> None:
    add_store_flags(p)
    p.add_argument("--out", metavar="FILE", required=True, help="the archive to write (uncompressed tar)")
    p.add_argument(
        "--include-credentials",
        action="store_true",
        help="also archive credentials.json (the Qdrant API key); left out by default",
    )


def cmd_backup(args: argparse.Namespace) -> Result:
    from ..ops.backup import backup

    report = backup(store_dir(args), Path(args.out), include_credentials=args.include_credentials)
    mib = report.bytes / 2**20
    human = (
        f"backed up {report.points} points and {report.files} files ({mib:.1f} MiB, {report.engine} engine) "
        f"to {report.archive} in {report.seconds:.1f} s"
    )
    return Result(report.to_dict(), human)


def configure_restore(p: argparse.ArgumentParser) -> None:
    p.add_argument("archive", metavar="FILE", help="an archive written by `licsearch backup`")
    add_store_flags(p)


def cmd_restore(args: argparse.Namespace) -> Result:
    from ..errors import InputError
    from ..ops.backup import restore

    if not args.store:
        raise InputError("restore needs --store DIR", hint="name a new or empty folder for the restored store")
    report = restore(Path(args.archive), Path(args.store))
    clean = bool(report.fsck.get("ok"))
    human = (
        f"restored {report.points} points and {report.files} files into {report.store} in {report.seconds:.1f} s; "
        f"fsck {'clean' if clean else 'found problems'}"
    )
    if not clean:
        note("fsck found problems after the restore; run `licsearch fsck` for the list")
    return Result(report.to_dict(), human, 0 if clean else 1)


COMMANDS = (
    Command(
        "backup",
        "write a verified archive of a store (config, bitstreams, previews, index)",
        configure_backup,
        cmd_backup,
    ),
    Command("restore", "make a new store from a backup archive, verified, then fsck", configure_restore, cmd_restore),
)
