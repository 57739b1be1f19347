"""The ``client`` engine: a Qdrant collection through qdrant-client, on a server (``url``) or in local mode (``path``).

A server or cluster is how licsearch scales out (``--qdrant URL``). Local mode (qdrant-client's exhaustive NumPy
scan that unpickles the whole collection on opening, see :mod:`licsearch.storage.local`) is kept only to read and
upgrade stores made before the Edge engine, and as the reference the congruence tests compare Edge with.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, StoreError
from .local import LocalIndex, open_local
from .points import INDEXED_FIELDS, FieldFilter, Hit, IndexState, Point, Selection, datetime_bounds, normalise_id
from .points import dense as dense_vector
from .vectors import VectorSetting, client_quantization, client_search_params, client_vector_params

if TYPE_CHECKING:
    from qdrant_client import QdrantClient
    from qdrant_client import models as qm


def to_filter(selection: Selection) -> qm.Filter | None:
    """qdrant-client's filter for a selection (None for every point)."""
    from qdrant_client import models as qm

    if selection.everything:
        return None
    must: list[qm.Condition] = [_condition(flt) for flt in selection.filters]
    must_not: list[qm.Condition] = []
    if selection.with_vector:
        must.append(qm.HasVectorCondition(has_vector=selection.with_vector))
    if selection.without_vector:
        must_not.append(qm.HasVectorCondition(has_vector=selection.without_vector))
    if selection.exclude:
        must_not.append(qm.HasIdCondition(has_id=[normalise_id(i) for i in selection.exclude]))
    return qm.Filter(must=must or None, must_not=must_not or None)


def _condition(flt: FieldFilter) -> qm.Condition:
    from datetime import date

    from qdrant_client import models as qm

    value = flt.value
    if isinstance(value, date):
        return qm.FieldCondition(key=flt.key, range=qm.DatetimeRange(**datetime_bounds(flt.op, value)))
    if flt.op == "eq" and not isinstance(value, float):
        return qm.FieldCondition(key=flt.key, match=qm.MatchValue(value=value))
    number = float(value)  # FieldFilter admits only numbers for ranges
    bounds: dict[str, float] = {"gte": number, "lte": number} if flt.op == "eq" else {flt.op: number}
    return qm.FieldCondition(key=flt.key, range=qm.Range(**bounds))


class ClientEngine:
    """One collection through qdrant-client.

    Args:
        path: local-mode folder (one process at a time), or None.
        url: server URL, or None (exactly one of the two).
        api_key: the server's API key.
        collection: the collection's name.
    """

    name = "client"

    def __init__(self, *, path: Path | None, url: str | None, api_key: str | None, collection: str) -> None:
        from qdrant_client import QdrantClient

        self.collection = collection
        self.local = path is not None
        self.where = f"the vector index at {path}" if path is not None else f"the Qdrant server at {url}"
        self._local_index: LocalIndex | None = None
        self._client: QdrantClient | None
        if path is not None:
            self._local_index = open_local(path)
            self._client = self._local_index.client
        else:
            try:
                self._client = QdrantClient(url=url, api_key=api_key)
            except ValueError as exc:
                raise InputError(f"invalid Qdrant URL {url!r}: {exc}", hint="use e.g. http://localhost:6333") from exc

    @property
    def read_only(self) -> bool:
        return self._local_index is not None and self._local_index.read_only

    @property
    def client(self) -> QdrantClient:
        if self._client is None:
            raise StoreError(f"{self.where} is closed", hint="open a new VectorIndex")
        return self._client

    def close(self) -> None:
        if self._local_index is not None:
            self._local_index.close()
            self._local_index = None
        elif self._client is not None:
            self._client.close()
        self._client = None

    @contextmanager
    def calling(self, action: str) -> Iterator[None]:
        """Turns qdrant-client failures into StoreErrors that name the index and the failed action."""
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        try:
            yield
        except ResponseHandlingException as exc:  # transport failure: refused, DNS, TLS, timeout
            raise StoreError(
                f"cannot reach {self.where} while {action}: {exc.source}",
                hint="check the URL, the API key and that the server is running",
            ) from exc
        except UnexpectedResponse as exc:
            if exc.status_code == 404:
                raise self.missing() from exc
            body = exc.content.decode("utf-8", "replace")[:300]
            hint = "check the API key" if exc.status_code in (401, 403) else None
            raise StoreError(f"{self.where} refused {action}: HTTP {exc.status_code} {body}", hint=hint) from exc
        except ValueError as exc:  # local mode reports a missing collection as ValueError
            if self.local and f"Collection {self.collection} not found" in str(exc):
                raise self.missing() from exc
            raise

    def missing(self) -> StoreError:
        return StoreError(
            f"collection {self.collection!r} does not exist in {self.where}",
            hint="initialise the store with `licsearch init`",
        )

    def exists(self) -> bool:
        with self.calling("checking the collection"):
            return bool(self.client.collection_exists(self.collection))

    def vector_params(self) -> dict[str, qm.VectorParams]:
        from qdrant_client import models as qm

        with self.calling("reading the collection"):
            info = self.client.get_collection(self.collection)
        vectors = info.config.params.vectors
        if isinstance(vectors, qm.VectorParams):
            raise StoreError(
                f"collection {self.collection!r} in {self.where} has an unnamed vector; licsearch needs one named "
                "vector per embedding space",
                hint="use another collection name, or delete this collection if it is not needed",
            )
        return dict(vectors or {})

    def spaces(self) -> dict[str, tuple[int, str]]:
        return {name: (p.size, p.distance.value) for name, p in self.vector_params().items()}

    def create(self, spaces: Mapping[str, tuple[int, VectorSetting]]) -> None:
        config = {sid: client_vector_params(setting, dim) for sid, (dim, setting) in spaces.items()}
        try:
            with self.calling("creating the collection"):
                self.client.create_collection(self.collection, vectors_config=config)
        except StoreError:  # another process may have created it meanwhile: the caller's checks decide
            if not self.exists():
                raise
        if not self.local:
            self.ensure_payload_indexes()

    def ensure_payload_indexes(self) -> None:
        """Creates the payload indexes a server's collection lacks; local mode scans, so it has no use for them."""
        from qdrant_client import models as qm

        if self.local or self.read_only:
            return
        with self.calling("reading the payload indexes"):
            present = self.client.get_collection(self.collection).payload_schema
        for field, kind in INDEXED_FIELDS.items():
            if field not in present:
                with self.calling(f"creating the payload index of {field!r}"):
                    self.client.create_payload_index(
                        self.collection, field, field_schema=qm.PayloadSchemaType(kind), wait=True
                    )

    def payload_indexes(self) -> dict[str, str]:
        with self.calling("reading the payload indexes"):
            schema = self.client.get_collection(self.collection).payload_schema
        return {field: str(info.data_type.value) for field, info in schema.items()}

    def add_space(self, space_id: str, dim: int, setting: VectorSetting) -> None:
        """Qdrant's create-vector-name (local mode and servers >= 1.18), then the space's quantization if any."""
        from qdrant_client import models as qm
        from qdrant_client.http.exceptions import UnexpectedResponse

        if not hasattr(self.client, "create_vector_name"):
            raise StoreError(
                "the installed qdrant-client cannot add an embedding space to an existing collection",
                hint="upgrade qdrant-client to >= 1.18, or export and re-ingest into a new collection",
            )
        datatype = qm.VectorStorageDatatype.FLOAT16 if setting.datatype == "float16" else None
        config = qm.DenseVectorNameConfig(
            dense=qm.DenseVectorConfig(size=dim, distance=qm.Distance.COSINE, datatype=datatype)
        )
        try:
            with self.calling(f"adding embedding space {space_id!r}"):
                self.client.create_vector_name(self.collection, space_id, config, wait=True)
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, UnexpectedResponse) and cause.status_code in (404, 405):
                raise StoreError(
                    f"{self.where} cannot add a named vector to an existing collection",
                    hint="upgrade the server to Qdrant >= 1.18, or re-ingest into a new collection",
                ) from exc
            raise
        quantization = client_quantization(setting)
        if quantization is not None and not self.local:  # local mode has no quantization (it scans)
            diff = {space_id: qm.VectorParamsDiff(quantization_config=quantization)}
            with self.calling(f"setting the quantization of space {space_id!r}"):
                self.client.update_collection(self.collection, vectors_config=diff)

    def drop_space(self, space_id: str) -> None:
        with self.calling(f"removing embedding space {space_id!r}"):
            self.client.delete_vector_name(self.collection, space_id, wait=True)

    def upsert(self, points: Sequence[Point]) -> None:
        from qdrant_client import models as qm

        structs = [qm.PointStruct(id=p.id, vector=dict(p.vectors), payload=p.payload) for p in points]
        with self.calling(f"writing {len(structs)} points"):
            self.client.upsert(self.collection, points=structs, wait=True)

    def update_vectors(self, space_id: str, vectors: Mapping[str, list[float]]) -> None:
        from qdrant_client import models as qm

        points = [qm.PointVectors(id=pid, vector={space_id: vec}) for pid, vec in vectors.items()]
        try:
            with self.calling(f"writing {len(points)} vectors of space {space_id!r}"):
                self.client.update_vectors(self.collection, points=points, wait=True)
        except KeyError as exc:  # local mode: a point id the collection does not hold
            raise _vanished(exc.args[0], space_id) from exc
        except StoreError as exc:  # a server: 404 on a point id it does not hold
            if "does not exist in" in exc.message:
                raise _vanished("of the batch", space_id) from exc
            raise

    def set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None:
        with self.calling(f"setting the payload of {len(ids)} points"):
            self.client.set_payload(self.collection, payload=payload, points=list(ids), wait=True)

    def retrieve(
        self, ids: Sequence[str], *, with_payload: bool, with_vectors: bool | list[str]
    ) -> list[tuple[str, dict[str, Any], dict[str, list[float]]]]:
        with self.calling("reading points"):
            records = self.client.retrieve(
                self.collection, ids=list(ids), with_payload=with_payload, with_vectors=with_vectors
            )
        return [_row(r.id, r.payload, r.vector) for r in records]

    def query(
        self, space_id: str, vector: list[float], *, limit: int, selection: Selection, setting: VectorSetting,
        exact: bool = False, hnsw_ef: int | None = None,
    ) -> list[Hit]:  # fmt: skip
        # local mode is always an exact scan, and warns about any search params
        params = None if self.local else client_search_params(setting, limit, hnsw_ef=hnsw_ef, exact=exact)
        with self.calling(f"searching space {space_id!r}"):
            response = self.client.query_points(
                self.collection,
                query=vector,
                using=space_id,
                limit=limit,
                query_filter=to_filter(selection),
                search_params=params,
                with_payload=True,
                with_vectors=False,
            )
        return [Hit(normalise_id(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def scroll(
        self, selection: Selection, *, limit: int, offset: str | None, fields: Sequence[str] | None = None
    ) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
        with self.calling("scrolling points"):
            records, after = self.client.scroll(
                self.collection,
                scroll_filter=to_filter(selection),
                limit=limit,
                offset=offset,
                with_payload=True if fields is None else list(fields),
                with_vectors=False,
            )
        page = [(normalise_id(r.id), dict(r.payload or {})) for r in records]
        return page, None if after is None else normalise_id(after)

    def count(self, selection: Selection) -> int:
        with self.calling("counting points"):
            return int(self.client.count(self.collection, count_filter=to_filter(selection), exact=True).count)

    def delete(self, ids: Sequence[str]) -> None:
        from qdrant_client import models as qm

        with self.calling("deleting points"):
            self.client.delete(self.collection, points_selector=qm.PointIdsList(points=list(ids)), wait=True)

    def state(self) -> IndexState:
        with self.calling("reading the collection"):
            info = self.client.get_collection(self.collection)
        points = int(info.points_count or 0)
        indexed = int(info.indexed_vectors_count or 0)
        return IndexState(points=points, indexed_vectors=indexed, segments=int(info.segments_count or 0))

    def optimize(self) -> bool:
        """A server optimises in the background and local mode has no index: nothing to do here."""
        return False


def _vanished(which: object, space_id: str) -> StoreError:
    return StoreError(
        f"point {which} disappeared while its vector of space {space_id!r} was written",
        hint="run the re-index again; it continues with the points that remain",
    )


def _row(point_id: object, payload: object, vector: object) -> tuple[str, dict[str, Any], dict[str, list[float]]]:
    vectors = vector if isinstance(vector, dict) else {}
    named = {name: dense for name, vec in vectors.items() if (dense := dense_vector(vec)) is not None}
    return normalise_id(point_id), dict(payload or {}) if isinstance(payload, dict) else {}, named
