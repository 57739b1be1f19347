"""The ``licsearch`` entry point: collects the command groups, parses, runs one handler and reports its result.

Conventions: with ``--json`` stdout carries exactly one JSON document (also on error: ``{"error": ...}``)
and human messages go to stderr. A :class:`~licsearch.errors.LicsearchError` becomes a one-line message
and its exit code (2 for bad input, 1 otherwise); a traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from ..errors import LicsearchError
from ..registry import Registry
from . import (
    backup,
    bundle,
    codec,
    distill,
    evaluate,
    images,
    maintenance,
    migrate,
    photos,
    reindex,
    rollout,
    samples,
    serve,
    store,
    train,
    ui,
)
from .base import Command, Result, note

GROUPS = (
    store,
    maintenance,
    backup,
    images,
    photos,
    codec,
    bundle,
    serve,
    samples,
    evaluate,
    reindex,
    distill,
    migrate,
    rollout,
    train,
    ui,
)
"""The command groups, in the order ``licsearch --help`` lists their commands."""


def command_registry() -> Registry[Command]:
    """Every command by name (a name declared twice is an error)."""
    registry: Registry[Command] = Registry("command")
    for group in GROUPS:
        for command in group.COMMANDS:
            registry.register(command.name, command)
    return registry


class _Parser(argparse.ArgumentParser):
    """Usage errors honour ``--json``: one JSON document on stdout, a one-line message on stderr, exit 2."""

    def error(self, message: str) -> NoReturn:
        if "--json" in sys.argv[1:] or "--json" in _ARGV:
            json.dump({"error": {"type": "UsageError", "message": message}}, sys.stdout)
            sys.stdout.write("\n")
            self.exit(2, f"{self.prog}: error: {message}\n")
        super().error(message)


_ARGV: list[str] = []


def build_parser(registry: Registry[Command], argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser with one subparser per registered command.

    Only the command ``argv`` names gets its options (every configure imports what its defaults and choices come
    from, ~1 s for all of them); the others keep their name and help, all that ``licsearch --help`` shows. Without
    a known command in ``argv`` every command is configured.
    """
    from .. import __version__

    parser = _Parser(
        prog="licsearch", description="Images kept as learned-compression bitstreams, searchable by text and image."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub: Any = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    named = next((word for word in (sys.argv[1:] if argv is None else argv) if not word.startswith("-")), None)
    only = named if named is not None and named in registry else None
    for group in GROUPS:
        for command in group.COMMANDS:
            subparser = sub.add_parser(command.name, help=command.help)
            if only is None or command.name == only:
                command.configure(subparser)
    return parser


def emit(args: argparse.Namespace, result: Result) -> None:
    """Prints the result: JSON on stdout with ``--json``, else the human text on stdout."""
    if args.json:
        doc = result.doc
        json.dump(doc, sys.stdout, indent=None if len(json.dumps(doc, default=str)) < 200 else 2, default=str)
        sys.stdout.write("\n")
    elif result.human:
        print(result.human)


def _quiet_libraries() -> None:
    # open_clip logs a warning for every randomly initialised model and torch warns about jit deprecation
    # inside CompressAI; neither is actionable for a user, and we label random weights ourselves.
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``licsearch`` console script; returns the exit status."""
    registry = command_registry()
    _ARGV[:] = list(argv) if argv is not None else []
    args = build_parser(registry, argv).parse_args(argv)
    _quiet_libraries()
    try:
        result = registry.get(args.command).run(args)
        emit(args, result)
        return result.then() if result.then is not None else result.code
    except LicsearchError as e:
        if getattr(args, "json", False):
            json.dump({"error": {"type": type(e).__name__, "message": str(e)}}, sys.stdout)
            sys.stdout.write("\n")
        note(f"licsearch {args.command}: error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        note("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); nothing more can be written, and that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def entry() -> None:
    sys.exit(main())
