"""The web app: a JSON API over one open store, and the static page that is a thin client of it.

Imported only by ``licsearch ui`` (after the [ui] extra is checked): FastAPI resolves the annotations below.

The API is documented by FastAPI at ``/openapi.json``. Search returns the same document as ``licsearch search
--json`` because both call :func:`licsearch.ops.search.search` and :func:`search_document`. The store holds one
exclusive lock (Qdrant's local mode), so every store call runs under one :class:`threading.Lock`.
"""

from __future__ import annotations

import hmac
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from .. import defaults
from ..errors import InputError, LicsearchError

if TYPE_CHECKING:
    from ..ops.search import SearchResult
    from ..storage.store import Store

STATIC = Path(__file__).parent / "static"
FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
"""Download formats of a decoded image and their media types."""


class TextQuery(BaseModel):
    """A search by words or like a stored image."""

    text: str | None = Field(None, description="what to look for, in words")
    like: str | None = Field(None, description="id of a stored image to find neighbours of")
    top_k: int = Field(24, description="how many hits (1..1000)")
    filters: list[str] = Field(default_factory=list, description="payload filters, as the CLI's --filter")


def search_document(store: Store, result: SearchResult) -> dict[str, Any]:
    """The document of a search, as ``licsearch search --json`` prints it."""
    return {**result.to_dict(), "random_weights": store.models.random_components()}


def error_body(e: LicsearchError) -> dict[str, Any]:
    """The JSON body of an error: its type, message (with the fix) and hint."""
    return {"error": {"type": type(e).__name__, "message": str(e), "hint": e.hint}}


def create_app(
    store: Store, *, token: str | None = None, max_upload_bytes: int = defaults.MAX_REQUEST_BYTES
) -> FastAPI:
    """The app serving ``store`` (kept open by the caller).

    Args:
        store: the open store.
        token: when given, every ``/api`` request needs ``Authorization: Bearer <token>``.
        max_upload_bytes: largest request body accepted.
    """
    from ..ops.maintenance import stats
    from ..ops.search import fetch_bitstream, search
    from ..ops.spaces import space_status
    from ..storage.index import parse_filter
    from ..storage.previews import Previews

    lock = threading.Lock()
    previews = Previews(store.root)
    app = FastAPI(title="licsearch", description="Search a licsearch store by text, image or a stored image.")

    def locked(fn: Callable[[], Any]) -> Any:
        with lock:
            return fn()

    @app.exception_handler(LicsearchError)
    async def _licsearch_error(_: Request, e: LicsearchError) -> JSONResponse:
        return JSONResponse(error_body(e), status_code=400 if isinstance(e, InputError) else 500)

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Any:
        if request.url.path.startswith("/api/") and token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                e = InputError("missing or wrong bearer token", hint="send 'Authorization: Bearer <the --token value>'")
                return JSONResponse(error_body(e), status_code=401)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_upload_bytes:
            e = InputError(
                f"request of {int(length)} bytes is over the {max_upload_bytes}-byte limit",
                hint="send a smaller image (downscale or re-encode it)",
            )
            return JSONResponse(error_body(e), status_code=413)
        return await call_next(request)

    def _filters(exprs: list[str]) -> list[Any]:
        return [parse_filter(f) for f in exprs if f.strip()]

    @app.get("/api/stats", summary="`licsearch stats --json`, plus each space's state (`reindex --status`)")
    def api_stats() -> dict[str, Any]:
        def both() -> dict[str, Any]:
            return {**stats(store), "space_states": [sp.to_dict() for sp in space_status(store)]}

        return dict(locked(both))

    @app.post("/api/search", summary="search by text or like a stored image (the document of `search --json`)")
    def api_search(q: TextQuery) -> dict[str, Any]:
        filters = _filters(q.filters)
        result = locked(lambda: search(store, text=q.text, like=q.like, top_k=q.top_k, filters=filters))
        return search_document(store, result)

    @app.post("/api/search/image", summary="search by an uploaded image (the document of `search --image --json`)")
    def api_search_image(
        file: UploadFile = File(..., description="the query image"),  # noqa: B008 (FastAPI's declaration style)
        top_k: int = Form(24),
        filters: list[str] = Form(default_factory=list),  # noqa: B008
    ) -> dict[str, Any]:
        data = file.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise InputError(f"upload is over the {max_upload_bytes}-byte limit", hint="send a smaller image")
        parsed = _filters(filters)
        suffix = Path(file.filename or "").suffix[:8]
        with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
            tmp.write(data)
            tmp.flush()
            result = locked(lambda: search(store, image=tmp.name, top_k=top_k, filters=parsed))
        return search_document(store, result)

    @app.get("/api/images/{image_id}", summary="one stored image: payload, bytes, bpp, ratio to its source")
    def api_image(image_id: str) -> dict[str, Any]:
        _, payload = locked(lambda: fetch_bitstream(store, image_id))
        return image_document(image_id, payload)

    @app.get("/api/images/{image_id}/preview", summary="the image's WebP preview (made on first view)")
    def api_preview(image_id: str) -> Response:
        def make() -> bytes:
            _, payload = fetch_bitstream(store, image_id)
            return previews.get(store, str(payload["blob"]))

        data = locked(make)
        return Response(data, media_type="image/webp", headers={"Cache-Control": "max-age=86400, immutable"})

    @app.get("/api/images/{image_id}/image", summary="the full decoded image as PNG, JPEG or WebP")
    def api_full(image_id: str, format: str = "png", download: bool = False) -> Response:
        from ..imageio import encode_image
        from ..ops.search import decode_stored

        fmt = format.lower().replace("jpg", "jpeg")
        if fmt not in FORMATS:
            raise InputError(f"unknown image format {format!r}", hint=f"use one of {', '.join(FORMATS)}")
        data = encode_image(locked(lambda: decode_stored(store, image_id)), fmt)
        headers = {"Content-Disposition": f'attachment; filename="{image_id}.{fmt}"'} if download else {}
        return Response(data, media_type=FORMATS[fmt], headers=headers)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def image_document(image_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    """What the detail view shows: the payload and its compression ratio against the source file."""
    source_bytes = payload.get("source_bytes")
    if source_bytes is None:
        # Stores ingested before ``source_bytes`` was recorded: the source file, when it is still there.
        try:
            source_bytes = Path(str(payload.get("source_path", ""))).stat().st_size
        except OSError:
            source_bytes = None
    size = int(payload.get("bytes", 0))
    ratio = source_bytes / size if source_bytes and size else None
    return {
        "id": image_id,
        "bytes": size,
        "bpp": payload.get("bpp"),
        "width": payload.get("width"),
        "height": payload.get("height"),
        "space_id": payload.get("space_id"),
        "source_bytes": source_bytes,
        "compression_ratio": ratio,
        "payload": payload,
    }
