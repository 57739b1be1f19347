"""``licsearch ui``: serve the store to a browser (FastAPI + uvicorn) until interrupted."""

from __future__ import annotations

import argparse
import ipaddress

from ..errors import InputError
from ..extras import need
from .base import Command, Result, note
from .options import add_store_flags, open_store


def configure_ui(p: argparse.ArgumentParser) -> None:
    add_store_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.add_argument("--token", metavar="T", help="bearer token every API call must send (required off loopback)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_ui(args: argparse.Namespace) -> Result:
    need("fastapi", "ui", "licsearch ui")
    need("uvicorn", "ui", "licsearch ui")
    need("python_multipart", "ui", "licsearch ui")
    if not _loopback(args.host) and not args.token:
        raise InputError(
            f"--host {args.host} serves the store beyond this machine without a token",
            hint="add --token SECRET (the page takes it as #token=SECRET), or keep --host 127.0.0.1",
        )
    if not 0 < args.port < 65536:
        raise InputError(f"--port {args.port} is out of range", hint="use 1..65535")
    import uvicorn

    from ..ui.app import create_app

    with open_store(args) as store:
        url = f"http://{args.host}:{args.port}/" + (f"#token={args.token}" if args.token else "")
        note(f"serving {store.root} at {url} (Ctrl-C stops)")
        if args.open:
            import webbrowser

            webbrowser.open(url)
        uvicorn.run(create_app(store, token=args.token), host=args.host, port=args.port, log_level="warning")
    return Result({"stopped": True, "url": url}, "stopped")


COMMANDS = (Command("ui", "browse and search the store in a web browser", configure_ui, cmd_ui),)
