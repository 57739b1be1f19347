"""JSON documents on disk (a store's config and credentials, the index engine's metadata and version marker): untrusted
bytes decoded with one reason per way they fail, and documents written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import StoreError
from .fsutil import atomic_write


class JsonDocError(ValueError):
    """Why some bytes are not a JSON document, worded to follow the file's name: ``"is not UTF-8 text"``."""


def decode_json(raw: bytes, what: str) -> Any:
    """The JSON document in ``raw``, a file's bytes.

    Args:
        raw: the file's bytes.
        what: what the file should hold, for the depth message (``"a store config"``).

    Raises:
        JsonDocError: ``is not UTF-8 text``, ``is not valid JSON (MESSAGE at line L column C)`` or ``is nested too
            deeply to be WHAT`` (the parser's recursion limit, e.g. 100,000 opening brackets).
    """
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise JsonDocError("is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise JsonDocError(f"is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise JsonDocError(f"is nested too deeply to be {what}") from None


def write_json(path: Path, doc: Any, *, indent: int | None = None) -> None:
    """Writes ``doc`` to ``path`` with sorted keys and a final newline, atomically: a reader sees the old file or
    the whole new one, never part of it (:func:`~licsearch.fsutil.atomic_write`, whose temp file, and so the
    result, has mode 0600).

    Raises:
        TypeError: ``doc`` holds something JSON cannot express (before anything is written).
        InputError: the folder cannot be written.
    """
    atomic_write(path, (json.dumps(doc, indent=indent, sort_keys=True) + "\n").encode())


def read_json_file(path: Path, what: str, *, hint: str) -> Any:
    """The JSON document in the file ``path`` (``what``: as for :func:`decode_json`).

    Raises:
        StoreError: ``cannot read PATH: REASON`` (hint: the permissions), or ``PATH is damaged: it REASON`` with
            ``hint``.
    """
    try:
        return decode_json(path.read_bytes(), what)
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror or e}", hint="check the store's permissions") from e
    except JsonDocError as e:
        raise StoreError(f"{path} is damaged: it {e}", hint=hint) from None
