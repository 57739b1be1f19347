"""The one progress bar of the long operations (ingest, re-index, distill, migrate, upgrade, optimise, training): tqdm
on stderr."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm


def progress_bar(
    total: int | None, enabled: bool | None, desc: str, *, unit: str = "img", leave: bool = True, initial: int = 0
) -> tqdm | None:
    """A tqdm bar over ``total`` items on stderr, or None when there is nothing to show.

    Args:
        total: how many items the operation will go through; none gives no bar; None: not known yet (the caller
            sets ``bar.total`` once the operation reports it, as the index upgrade and the HNSW build do).
        enabled: on or off as asked; None: on when stderr is a terminal (never in logs or pipes).
        desc: the bar's label.
        unit: what one item is.
        leave: keep the finished bar on the terminal.
        initial: items already done (a resumed training run).
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, desc=desc, leave=leave, initial=initial)
