"""Previews: small WebP thumbnails of stored images, derived data beside the bitstreams.

A preview is named by the SHA-256 of the bitstream it was decoded from (``previews/<hex>.webp``), so it is made
once per bitstream, shared by every point that holds it, and can always be rebuilt: deleting the folder loses
nothing. Previews are made lazily (on first view) and written atomically.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .. import defaults
from ..fsutil import atomic_write
from .blobs import parse_ref

if TYPE_CHECKING:
    import numpy as np

    from .store import Store

PREVIEW_DIR = "previews"
"""The folder of previews inside a store directory."""


def preview_bytes(pixels: np.ndarray, side: int = defaults.PREVIEW_SIDE_PX) -> bytes:
    """A WebP of ``pixels`` whose longest side is at most ``side`` (never enlarged)."""
    from PIL import Image

    image = Image.fromarray(pixels)
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="WEBP", quality=defaults.PREVIEW_WEBP_QUALITY, method=4)
    return out.getvalue()


class Previews:
    """The previews of one store, keyed by blob reference (``sha256:<hex>``)."""

    def __init__(self, store_root: Path) -> None:
        self.root = store_root / PREVIEW_DIR

    def path(self, ref: str) -> Path:
        return self.root / f"{parse_ref(ref)}.webp"

    def get(self, store: Store, ref: str) -> bytes:
        """The preview of the bitstream ``ref``, decoded and written on first use."""
        path = self.path(ref)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        from ..bundle.codec_cache import decode  # the model plane: only when a preview is made

        data = preview_bytes(decode(store.models, store.blobs.get(ref)))
        if store.read_only:
            return data  # a read-only store is served, not changed
        self.root.mkdir(exist_ok=True)
        atomic_write(path, data)
        return data

    def iter_refs(self) -> Iterator[str]:
        """The blob references that have a preview."""
        if not self.root.is_dir():
            return
        for path in self.root.glob("*.webp"):
            if len(path.stem) == 64:
                yield f"sha256:{path.stem}"

    def stats(self) -> dict[str, int]:
        """How many previews there are and their total bytes."""
        files = [p for p in self.root.glob("*.webp")] if self.root.is_dir() else []
        return {"previews": len(files), "preview_bytes": sum(p.stat().st_size for p in files)}

    def orphans(self, referenced: Iterable[str]) -> list[str]:
        """Previews of bitstreams no point references any more."""
        keep = set(referenced)
        return [ref for ref in self.iter_refs() if ref not in keep]

    def damaged(self, refs: Iterable[str]) -> list[str]:
        """Previews among ``refs`` that are not a readable WebP (a torn or overwritten file)."""
        from PIL import Image, UnidentifiedImageError

        bad = []
        wanted = set(refs)
        # One listing of the previews (usually few) rather than a lookup per reference (a store holds 100,000s).
        for ref in sorted(r for r in self.iter_refs() if r in wanted):
            path = self.path(ref)
            if not path.is_file():
                continue
            try:
                with Image.open(path) as image:
                    ok = image.format == "WEBP"
                    image.load()
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
                ok = False
            if not ok:
                bad.append(ref)
        return bad

    def rebuild(self, store: Store, refs: Iterable[str]) -> int:
        """Makes the previews of ``refs`` again from their bitstreams; returns how many were written."""
        n = 0
        for ref in refs:
            self.path(ref).unlink(missing_ok=True)
            self.get(store, ref)
            n += 1
        return n

    def remove(self, refs: Iterable[str]) -> int:
        """Deletes the previews of ``refs`` (and temp files of interrupted writes); returns how many went."""
        n = 0
        for ref in refs:
            try:
                self.path(ref).unlink()
                n += 1
            except FileNotFoundError:
                pass
        if self.root.is_dir():
            for tmp in self.root.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        return n
