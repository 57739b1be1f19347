"""Errors a user can act on.

Every error raised for bad input, a bad store or a missing model carries a message that says what went
wrong and, where there is one, how to fix it. The CLI prints ``str(error)`` and exits non-zero; the
TorchServe handlers turn :class:`InputError` into a 4xx JSON body. Anything that is not a
:class:`LicsearchError` is a bug and is allowed to surface as one.
"""

from __future__ import annotations


class LicsearchError(Exception):
    """Base class of errors that are reported to the user instead of a traceback.

    Attributes:
        hint: how to fix it, appended to the message when given.
        exit_code: the CLI's exit status for this kind of error.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class InputError(LicsearchError):
    """The caller's input is unusable (a client error: HTTP 4xx)."""

    exit_code = 2


class ImageError(InputError):
    """A file or byte string is not an image this project accepts (not an image, truncated, too large)."""


class BitstreamError(InputError):
    """A ``.lics`` bitstream is malformed, corrupt, or made by another codec profile."""


class TextError(InputError):
    """A text query is empty or too long."""


class ModelError(LicsearchError):
    """A model cannot be built or loaded (missing weights, offline download, bad checkpoint)."""


class StoreError(LicsearchError):
    """The store is missing, damaged, locked, or was made with other models."""


class ConfigMismatchError(StoreError):
    """Models given on the command line, or found on disk, differ from those the store was made with."""
