"""Untrusted JSON files (a store's config, the index engine's metadata) decoded with one reason per way they fail."""

from __future__ import annotations

import json
from typing import Any


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
