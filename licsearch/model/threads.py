"""PyTorch's intra-op thread count for the length of one operation, put back afterwards.

``torch.set_num_threads`` is process-wide: an operation that sets it and returns leaves every later computation of
the process on that count, and results of float reductions depend on it in their last bits (a migration fitted on
one thread and again on two gives two different adapters, so two space ids). Operations that take ``--threads``
(distill, migrate, train, bench) set it through :func:`torch_threads`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Runs the block on ``n`` intra-op threads (``None``: as it is) and restores the count the process had."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
