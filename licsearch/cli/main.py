"""The ``licsearch`` command line: argument parsing, output conventions and error reporting.

Conventions: with ``--json`` stdout carries exactly one JSON document (also on error: ``{"error": ...}``)
and human messages go to stderr. A :class:`~licsearch.errors.LicsearchError` becomes a one-line message
and its exit code (2 for bad input, 1 otherwise); a traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from ..errors import InputError, LicsearchError

MODEL_FLAGS = ("codec", "codec_weights", "clip", "clip_weights", "adapter_weights", "seed")


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="DIR", help="store directory (default: $LICSEARCH_STORE or ./licsearch-data)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def _add_models(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--codec", metavar="ARCH:QUALITY", help="CompressAI codec (default bmshj2018-hyperprior:3)")
    g.add_argument("--codec-weights", metavar="pretrained|random|PATH", help="codec weights (default pretrained)")
    g.add_argument("--clip", metavar="MODEL[:TAG]", help="open_clip model (default ViT-B-32:laion2b_s34b_b79k)")
    g.add_argument("--clip-weights", metavar="pretrained|random|PATH", help="CLIP weights (default pretrained)")
    g.add_argument("--adapter-weights", metavar="random|PATH", help="adapter weights (default random)")
    g.add_argument("--seed", type=int, help="seed of random weights (default 0)")


def _add_server(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model server")
    g.add_argument("--server", metavar="URL", help="run the models on this TorchServe (`licsearch serve`)")
    g.add_argument("--token", metavar="KEY", help="the server's inference key (default $LICSEARCH_SERVER_TOKEN)")


class _Parser(argparse.ArgumentParser):
    """Usage errors honour ``--json``: one JSON document on stdout, a one-line message on stderr, exit 2."""

    def error(self, message: str) -> NoReturn:
        if "--json" in sys.argv[1:] or "--json" in _ARGV:
            json.dump({"error": {"type": "UsageError", "message": message}}, sys.stdout)
            sys.stdout.write("\n")
            self.exit(2, f"{self.prog}: error: {message}\n")
        super().error(message)


_ARGV: list[str] = []


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="licsearch", description="Images kept as learned-compression bitstreams, searchable by text and image."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub: Any = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create a store for a codec, CLIP model and adapter")
    _add_store(p)
    _add_models(p)
    p.add_argument("--qdrant", metavar="URL", help="Qdrant server URL (default: embedded local mode in the store)")
    p.add_argument("--api-key", metavar="KEY", help="Qdrant API key (kept in the store's credentials.json, 0600)")
    p.add_argument("--collection", default="licsearch", help="Qdrant collection name")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image accepted, in pixels")
    p.add_argument("--bundle", metavar="DIR", help="run the models from this exported bundle (ONNX Runtime)")
    p.add_argument(
        "--preset", metavar="NAME", help="a shipped model set: 'offline' (trained by this project, no network needed)"
    )

    p = sub.add_parser("export", help="export the models to a bundle of ONNX graphs (optionally int8)")
    _add_store(p)
    _add_models(p)
    p.add_argument("--out", required=True, metavar="BUNDLE_DIR")
    p.add_argument("--int8", choices=["none", "dynamic", "static"], default="none")
    p.add_argument("--calibration", metavar="DIR", help="calibration images for --int8 static")
    p.add_argument("--opset", type=int, default=17)

    p = sub.add_parser("ingest", help="compress, embed and store images (files and folders)")
    _add_store(p)
    _add_server(p)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="user metadata (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("search", help="find stored images by text, image or a stored id")
    _add_store(p)
    _add_server(p)
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text")
    q.add_argument("--image", metavar="FILE")
    q.add_argument("--like", metavar="ID")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="payload filter (repeatable)")
    p.add_argument("--space", metavar="ID", help="embedding space to search (default: the active one; see reindex)")

    p = sub.add_parser("get", help="decode a stored image to a file (PNG/JPEG/WebP by suffix)")
    _add_store(p)
    _add_server(p)
    p.add_argument("id")
    p.add_argument("-o", "--output", required=True, metavar="FILE")

    p = sub.add_parser("encode", help="compress an image file to a .lics bitstream")
    _add_store(p)
    _add_server(p)
    _add_models(p)
    p.add_argument("image")
    p.add_argument("-o", "--output", required=True, metavar="FILE.lics")

    p = sub.add_parser("decode", help="decode a .lics bitstream to an image file")
    _add_store(p)
    _add_server(p)
    _add_models(p)
    p.add_argument("bitstream")
    p.add_argument("-o", "--output", required=True, metavar="IMAGE")

    p = sub.add_parser("gate", help="parity gate: may a candidate bundle replace a reference bundle?")
    p.add_argument("--reference", required=True, metavar="BUNDLE")
    p.add_argument("--candidate", required=True, metavar="BUNDLE")
    p.add_argument("--images", required=True, metavar="DIR")
    p.add_argument("--texts", metavar="FILE", help="one query per line (default: a built-in set)")
    p.add_argument("--psnr-delta-min", type=float, default=-0.1, help="dB (default -0.1)")
    p.add_argument("--bpp-delta-max", type=float, default=1.0, help="percent (default 1.0)")
    p.add_argument("--cos-mean-min", type=float, default=0.99)
    p.add_argument("--recall-overlap-min", type=float, default=0.95)
    p.add_argument(
        "--assign-space",
        action="store_true",
        help="on pass give the candidate the reference's space id; on failure make sure it has its own",
    )
    p.add_argument("--max-images", type=int, default=64)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("bench", help="time the eager baseline against fp32 and int8 bundles, side by side")
    _add_store(p)
    _add_models(p)
    p.add_argument("--bundle", action="append", default=[], metavar="DIR", help="bundle to time (repeatable)")
    p.add_argument("--images", metavar="DIR", help="images to time (default: Kodak if present, else generated)")
    p.add_argument("--quick", action="store_true", help="two small images, one repeat, a small search index")
    p.add_argument("--threads", type=int, metavar="N", help="threads for PyTorch and ONNX Runtime (default: CPUs)")
    _add_server(p)
    p.add_argument("--management", metavar="URL", help="with --server: its management API, for the batching test")

    p = sub.add_parser("archive", help="pack a bundle into TorchServe model archives (encode, decode, embed .mar)")
    p.add_argument("--bundle", required=True, metavar="DIR", help="an exported bundle (`licsearch export`)")
    p.add_argument("--out", default="model_store", metavar="DIR", help="model store to write to (default model_store)")
    p.add_argument("--batch-size", type=int, default=4, help="requests per batch (default 4)")
    p.add_argument("--max-batch-delay", type=int, default=50, metavar="MS", help="batch fill wait (default 50 ms)")
    p.add_argument("--min-workers", type=int, default=1)
    p.add_argument("--max-workers", type=int, default=1)
    p.add_argument("--response-timeout", type=int, default=120, metavar="S", help="per batch (default 120 s)")
    p.add_argument("--version", help="archive version (default: precision and hash of the bundle, e.g. fp32-1a2b3c4d)")
    p.add_argument("--max-bytes", type=int, help="largest request payload (default 16 MiB)")
    p.add_argument("--max-pixels", type=int, help="largest image to encode or decode (default 40 MP)")
    p.add_argument("--max-texts", type=int, help="most texts per embed request (default 256)")
    p.add_argument("--handlers", metavar="DIR", help="handler modules (default: the checkout's handlers/)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("serve", help="start TorchServe with the encode, decode and embed models (--stop stops it)")
    p.add_argument("--model-store", default="model_store", metavar="DIR", help="folder of the .mar files")
    p.add_argument("--config", metavar="FILE", help="base config.properties (default: local, 127.0.0.1, no tokens)")
    p.add_argument("--run-dir", metavar="DIR", help="config, logs and temp files (default $LICSEARCH_SERVE_DIR)")
    p.add_argument("--foreground", action="store_true", help="stay attached until interrupted")
    p.add_argument("--inference-port", type=int, metavar="PORT", help="default: the config's (8080)")
    p.add_argument("--management-port", type=int, metavar="PORT", help="default: the config's (8081)")
    p.add_argument("--metrics-port", type=int, metavar="PORT", help="default: the config's (8082)")
    p.add_argument("--grpc-inference-port", type=int, metavar="PORT", help="default: the config's (7070)")
    p.add_argument("--grpc-management-port", type=int, metavar="PORT", help="default: the config's (7071)")
    p.add_argument("--models", metavar="NAME[,NAME]", help="models to serve (default: encode,decode,embed)")
    p.add_argument("--timeout", type=float, default=180, metavar="S", help="wait for the models (default 180 s)")
    p.add_argument("--stop", action="store_true", help="stop the server started from --run-dir")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("stats", help="images, bytes, mean bpp and spaces of a store")
    _add_store(p)

    p = sub.add_parser("fsck", help="check that points and bitstreams agree; --repair fixes them")
    _add_store(p)
    p.add_argument("--repair", action="store_true")
    p.add_argument("--no-verify", action="store_true", help="skip re-hashing every bitstream")

    p = sub.add_parser("samples", help="write procedurally generated captioned sample images (offline demo data)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("-n", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--split",
        choices=["all", "train", "test"],
        default="all",
        help="scenes of every combination, or only the train or held-out test combinations (the benchmark's split)",
    )
    p.add_argument("--size", default="320x240", metavar="WxH", help="image size in pixels (default 320x240)")
    p.add_argument("--json", action="store_true")

    from .evaluate import add_parser as add_eval_parser

    add_eval_parser(sub)

    from .reindex import add_parser as add_reindex_parser

    add_reindex_parser(sub)

    from .rollout import add_parser as add_rollout_parser

    add_rollout_parser(sub)

    from ..train.cli import add_train_parser

    add_train_parser(sub)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


def emit(args: argparse.Namespace, doc: dict[str, Any], human: str) -> None:
    """Prints the result: JSON on stdout with ``--json``, else the human text on stdout."""
    if args.json:
        json.dump(doc, sys.stdout, indent=None if len(json.dumps(doc)) < 200 else 2, default=str)
        sys.stdout.write("\n")
    elif human:
        print(human)


def note(message: str) -> None:
    """A human message on stderr."""
    print(message, file=sys.stderr)


def _quiet_libraries() -> None:
    # open_clip logs a warning for every randomly initialised model and torch warns about jit deprecation
    # inside CompressAI; neither is actionable for a user, and we label random weights ourselves.
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``licsearch`` console script; returns the exit status."""
    parser = build_parser()
    _ARGV[:] = list(argv) if argv is not None else []
    args = parser.parse_args(argv)
    _quiet_libraries()
    from . import commands

    try:
        return commands.run(args)
    except LicsearchError as e:
        if getattr(args, "json", False):
            json.dump({"error": {"type": type(e).__name__, "message": str(e)}}, sys.stdout)
            sys.stdout.write("\n")
        note(f"licsearch {args.command}: error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        note("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); nothing more can be written, and that is not an error of ours.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def entry() -> None:
    sys.exit(main())


def parse_kv(items: Sequence[str], what: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs to a dict (values kept as strings unless they parse as int/float)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"bad {what} {item!r}", hint="write KEY=VALUE")
        out[key] = _scalar(value)
    return out


def _scalar(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v
