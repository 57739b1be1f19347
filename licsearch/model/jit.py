"""numba kernels compiled on first use: the rANS coder, the int8 ``h_s`` epilogue and the CDF index lookup.

``cache=True`` writes the compiled code beside the module, or under ``NUMBA_CACHE_DIR`` or the user's cache
directory; where none is writable numba refuses to cache at all, and the kernel is compiled for this process only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def compile_kernel(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` compiled by numba (``nogil``), from numba's on-disk cache where it can keep one."""
    from numba import njit

    try:
        return njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return njit(cache=False, nogil=True)(fn)
