"""The ``search`` endpoint: a text (or a vector) plus ``top_k`` and filters in; hits from Qdrant out.

Request: JSON ``{"text": "a red car"}`` or ``{"vector": [...]}``, optionally ``"top_k"`` (1..1000, default 10) and
``"filters"`` (a list of expressions as on the command line: ``"width>=512"``, ``"meta.album=paris"``).
Answer: ``{"hits": [{"id", "score", "payload"}], "space_id", "truncated"}``, exactly what ``licsearch search
--json`` reports for the same query.

Where it searches: the Qdrant server named by ``LICSEARCH_QDRANT_URL`` (with ``LICSEARCH_QDRANT_COLLECTION``,
default ``licsearch``, and ``LICSEARCH_QDRANT_API_KEY``) in the TorchServe process's environment, in the
bundle's embedding space. The embedded local store is refused on purpose: Qdrant's local mode lets one
process hold a store, and that process is the ``licsearch`` CLI, not a pool of server workers; every request
then gets a 501 that says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .endpoint import Endpoint
from .request import Request, negotiate
from .responses import JSON, Reply, json_reply

if TYPE_CHECKING:
    from ..storage.index import FieldFilter, Hit, VectorIndex

URL_ENV = "LICSEARCH_QDRANT_URL"
COLLECTION_ENV = "LICSEARCH_QDRANT_COLLECTION"
API_KEY_ENV = "LICSEARCH_QDRANT_API_KEY"


class SearchUnavailable(InputError):
    """Search over HTTP needs a Qdrant server; this deployment has none configured."""

    status = HTTPStatus.NOT_IMPLEMENTED


@dataclass(frozen=True)
class SearchInput:
    text: str | None
    vector: list[float] | None
    top_k: int
    filters: tuple[FieldFilter, ...]


class SearchEndpoint(Endpoint[SearchInput, "tuple[list[Hit], bool]"]):
    """Embeds the query text and searches the configured Qdrant collection."""

    name = "search"
    components = ("text",)

    @cached_property
    def index(self) -> VectorIndex:
        from ..storage.index import VectorIndex

        url = os.environ.get(URL_ENV)
        if not url:
            raise SearchUnavailable(
                "search over HTTP needs a Qdrant server, and none is configured",
                hint=f"set {URL_ENV} for TorchServe; an embedded local store can only be searched with "
                "`licsearch search` (Qdrant local mode allows one process per store)",
            )
        collection = os.environ.get(COLLECTION_ENV, "licsearch")
        return VectorIndex(url=url, api_key=os.environ.get(API_KEY_ENV), collection=collection)

    def parse(self, request: Request) -> SearchInput:
        from ..storage.index import MAX_TOP_K, parse_filter

        negotiate(request.header("accept"), (JSON,))
        part = request.payload()
        if not part.is_json:
            raise InputError('send JSON: {"text": "...", "top_k": 10, "filters": ["width>=512"]}')
        doc = part.json()
        if not isinstance(doc, dict) or ("text" in doc) == ("vector" in doc):
            raise InputError('a search is a JSON object with either "text" or "vector"')
        top_k = doc.get("top_k", 10)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise InputError(f"top_k {top_k!r} is out of range", hint=f"use an integer from 1 to {MAX_TOP_K}")
        raw_filters = doc.get("filters", [])
        if not isinstance(raw_filters, list) or not all(isinstance(f, str) for f in raw_filters):
            raise InputError('"filters" must be a list of strings such as "width>=512"')
        filters = tuple(parse_filter(f) for f in raw_filters)
        text, vector = doc.get("text"), doc.get("vector")
        if text is not None:
            if not isinstance(text, str):
                raise InputError('"text" must be a string')
            self.bundle.text.check(text)
        elif not isinstance(vector, list) or not vector or not all(isinstance(v, (int, float)) for v in vector):
            raise InputError('"vector" must be a non-empty list of numbers')
        return SearchInput(text=text, vector=vector, top_k=top_k, filters=filters)

    def compute(self, inputs: dict[int, SearchInput]) -> dict[int, tuple[list[Hit], bool] | Exception]:
        return self.each(inputs, self._search)

    def _search(self, q: SearchInput) -> tuple[list[Hit], bool]:
        truncated = False
        vector: list[float] | Any = q.vector
        if q.text is not None:
            emb = self.plane.embed_texts([q.text])
            vector, truncated = emb.vectors[0].tolist(), emb.truncated[0]
        hits = self.index.search(self.bundle.space_id, vector, top_k=q.top_k, filters=q.filters)
        return hits, truncated

    def reply(self, item: SearchInput, result: tuple[list[Hit], bool]) -> Reply:
        hits, truncated = result
        return json_reply(
            {
                "hits": [{"id": h.id, "score": h.score, "payload": h.payload} for h in hits],
                "space_id": self.bundle.space_id,
                "truncated": truncated,
            }
        )
