"""What every command is made of: a :class:`Command` (its parser and its handler) returning one :class:`Result`.

A command group is a module of this package with a ``COMMANDS`` tuple; :mod:`.main` collects them, applies
``--json`` and the exit code, and maps :class:`~licsearch.errors.LicsearchError` to its message. Handlers print
nothing on stdout themselves; progress and warnings go to stderr through :func:`note`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Result:
    """What a handler returns.

    Attributes:
        doc: the JSON document (``--json``).
        human: the text printed on stdout without ``--json`` (nothing when empty).
        code: the exit status.
        then: work that runs after the result is printed, whose return value replaces ``code`` (a server that
            stays in the foreground announces itself first).
    """

    doc: dict[str, Any]
    human: str = ""
    code: int = 0
    then: Callable[[], int] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Command:
    """One subcommand: its name and help, the flags it declares, and its handler.

    Attributes:
        name: the subcommand (``licsearch NAME``).
        help: one line for ``licsearch --help``.
        configure: declares the subcommand's flags on its parser.
        run: the handler; parsed arguments in, a :class:`Result` out.
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Result]


def note(message: str) -> None:
    """A human message on stderr (stdout is the result's)."""
    print(message, file=sys.stderr)


def add_json_flag(p: argparse.ArgumentParser) -> None:
    """``--json``: one JSON document on stdout."""
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def warn_random(names: list[str]) -> list[str]:
    """Labels random weights loudly on stderr; returns their names for the JSON document."""
    if names:
        note(
            f"WARNING: RANDOM WEIGHTS in {', '.join(names)}: compression quality and search results are NOT "
            "meaningful (use trained or pretrained weights for real use)"
        )
    return names
