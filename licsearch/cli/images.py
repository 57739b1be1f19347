"""``licsearch ingest``, ``search`` and ``get``: put images into a store, find them, decode them back."""

from __future__ import annotations

import argparse

from ..errors import InputError
from .base import Command, Result, note, warn_random
from .options import add_server_flags, add_store_flags, open_store, parse_kv


def configure_ingest(p: argparse.ArgumentParser) -> None:
    add_store_flags(p)
    add_server_flags(p)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="user metadata (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_ingest(args: argparse.Namespace) -> Result:
    from ..ops.ingest import ingest

    meta = parse_kv(args.meta, "--meta")
    if args.batch_size < 1:
        raise InputError("--batch-size must be positive")
    with open_store(args) as store:
        rnd = warn_random(store.models.random_components())
        report = ingest(
            store,
            args.paths,
            batch_size=args.batch_size,
            metadata=meta,
            progress=False if args.no_progress else None,
            on_error=lambda p, m: note(f"failed: {p}: {m}"),
        )
    human = f"ingested {report.ingested}, skipped {report.skipped} (already stored), failed {report.failed}"
    return Result({**report.to_dict(), "random_weights": rnd}, human, 1 if report.failed else 0)


def configure_search(p: argparse.ArgumentParser) -> None:
    add_store_flags(p)
    add_server_flags(p)
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text")
    q.add_argument("--image", metavar="FILE")
    q.add_argument("--like", metavar="ID")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="payload filter (repeatable)")
    p.add_argument("--space", metavar="ID", help="embedding space to search (default: the active one; see reindex)")


def cmd_search(args: argparse.Namespace) -> Result:
    from ..ops.search import search
    from ..storage.index import parse_filter

    filters = [parse_filter(f) for f in args.filter]
    with open_store(args) as store:
        rnd = warn_random(store.models.random_components())
        result = search(
            store, text=args.text, image=args.image, like=args.like, top_k=args.top_k, filters=filters, space=args.space
        )
    for n in result.notices:
        note(f"notice: {n}")
    lines = [
        f"{i + 1:>3}. {h.score:.4f}  {h.id}  {h.payload.get('width')}x{h.payload.get('height')}  "
        f"{h.payload.get('bpp', 0):.3f} bpp  {h.payload.get('source_path', '')}"
        for i, h in enumerate(result.hits)
    ]
    return Result({**result.to_dict(), "random_weights": rnd}, "\n".join(lines) or "no hits")


def configure_get(p: argparse.ArgumentParser) -> None:
    add_store_flags(p)
    add_server_flags(p)
    p.add_argument("id")
    p.add_argument("-o", "--output", required=True, metavar="FILE")


def cmd_get(args: argparse.Namespace) -> Result:
    from ..imageio import save_image
    from ..ops.search import decode_stored

    with open_store(args) as store:
        rnd = warn_random(store.models.random_components())
        pixels = decode_stored(store, args.id)
    save_image(pixels, args.output)
    h, w = pixels.shape[:2]
    doc = {"id": args.id, "output": args.output, "width": w, "height": h, "random_weights": rnd}
    return Result(doc, f"wrote {args.output} ({w}x{h})")


COMMANDS = (
    Command("ingest", "compress, embed and store images (files and folders)", configure_ingest, cmd_ingest),
    Command("search", "find stored images by text, image or a stored id", configure_search, cmd_search),
    Command("get", "decode a stored image to a file (PNG/JPEG/WebP by suffix)", configure_get, cmd_get),
)
