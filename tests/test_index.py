"""Contract of the vector index, run against qdrant-client's embedded local mode (no server, no network)."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from licsearch.errors import ConfigMismatchError, InputError, StoreError
from licsearch.storage.index import ENGINE_LABELS, INDEXED_FIELDS, FieldFilter, Point, VectorIndex, parse_filter

SPACES = {"clip-a": 4, "clip-b": 4}


def pid(n: int) -> str:
    return str(uuid.UUID(int=n + 1))


def unit(i: int, dim: int = 4) -> list[float]:
    return [1.0 if j == i else 0.0 for j in range(dim)]


@pytest.fixture
def index(tmp_path: Path) -> Iterator[VectorIndex]:
    with VectorIndex(path=tmp_path / "qdrant") as idx:
        idx.ensure_collection(SPACES)
        yield idx


@pytest.fixture
def filled(index: VectorIndex) -> VectorIndex:
    profiles = ["q1", "q3", "q3", "q6"]
    index.upsert(
        [
            Point(
                id=pid(i),
                vectors={"clip-a": unit(i), "clip-b": unit(3 - i)},
                payload={
                    "width": 100 * (i + 1),
                    "bpp": 0.25 * (i + 1),
                    "codec_profile": profiles[i],
                    "flagged": i % 2 == 0,
                },
            )
            for i in range(4)
        ]
    )
    return index


def test_ensure_collection_is_idempotent(tmp_path: Path) -> None:
    with VectorIndex(path=tmp_path / "q") as idx:
        idx.ensure_collection(SPACES)
        idx.ensure_collection(SPACES)
        idx.ensure_collection({"clip-a": 4})  # a subset of the spaces is fine
        assert idx.spaces() == SPACES
        assert idx.count() == 0


def test_ensure_collection_dim_mismatch(index: VectorIndex) -> None:
    with pytest.raises(ConfigMismatchError, match="dimension 4") as info:
        index.ensure_collection({"clip-a": 8})
    assert isinstance(info.value, StoreError)


def test_ensure_collection_missing_space(index: VectorIndex) -> None:
    with pytest.raises(StoreError, match="'clip-c' is missing"):
        index.ensure_collection({"clip-c": 4})


@pytest.mark.parametrize("spaces", [{}, {"a": 0}, {"a": -3}, {"a": 2.5}, {"": 4}, {"a": True}])
def test_ensure_collection_bad_spaces(tmp_path: Path, spaces: dict[str, int]) -> None:
    with VectorIndex(path=tmp_path / "q") as idx, pytest.raises(InputError):
        idx.ensure_collection(spaces)


def test_missing_collection_says_init(tmp_path: Path) -> None:
    with VectorIndex(path=tmp_path / "q") as idx:
        with pytest.raises(StoreError, match="licsearch init"):
            idx.count()
        with pytest.raises(StoreError, match="does not exist"):
            idx.spaces()


def test_payload_index_fields_are_valid_schema_types() -> None:
    from qdrant_client import models as qm

    for kind in INDEXED_FIELDS.values():
        qm.PayloadSchemaType(kind)


def test_upsert_existing_retrieve(filled: VectorIndex) -> None:
    assert filled.count() == 4
    assert filled.existing([pid(0), pid(2), pid(99)]) == {pid(0), pid(2)}
    # ids come back normalised, whatever form they were given in
    assert filled.existing([uuid.UUID(pid(1)).hex.upper()]) == {pid(1)}
    rows = filled.retrieve([pid(2), pid(99), pid(0)])
    assert [row[0] for row in rows] == [pid(2), pid(0)]
    assert rows[0][1]["codec_profile"] == "q3"
    assert rows[0][2] == {}
    (_, _, vectors), *_ = filled.retrieve([pid(1)], with_vectors=True)
    assert vectors["clip-a"] == pytest.approx(unit(1))
    assert vectors["clip-b"] == pytest.approx(unit(2))
    (_, _, only_b), *_ = filled.retrieve([pid(1)], with_vectors=["clip-b"])
    assert set(only_b) == {"clip-b"}


def test_upsert_replaces(filled: VectorIndex) -> None:
    filled.upsert([Point(id=pid(0), vectors={"clip-a": unit(0)}, payload={"width": 1})])
    assert filled.count() == 4
    assert filled.retrieve([pid(0)])[0][1] == {"width": 1}


def test_upsert_rejects_bad_input(index: VectorIndex) -> None:
    with pytest.raises(InputError, match="invalid point id"):
        index.upsert([Point(id="not-a-uuid", vectors={"clip-a": unit(0)}, payload={})])
    with pytest.raises(InputError, match="needs 4 values"):
        index.upsert([Point(id=pid(0), vectors={"clip-a": [1.0, 0.0]}, payload={})])
    with pytest.raises(StoreError, match="not in collection"):
        index.upsert([Point(id=pid(0), vectors={"nope": unit(0)}, payload={})])
    assert index.count() == 0


def test_search_ranks_own_point_first(filled: VectorIndex) -> None:
    for i in range(4):
        hits = filled.search("clip-a", unit(i), top_k=4)
        assert hits[0].id == pid(i)
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert all(hit.score < 0.5 for hit in hits[1:])
    # cosine: scale does not matter
    hit = filled.search("clip-a", [0.0, 0.0, 7.0, 0.0], top_k=1)[0]
    assert (hit.id, hit.payload["width"]) == (pid(2), 300)
    assert hit.score == pytest.approx(1.0, abs=1e-5)


def test_named_vectors_of_spaces_stay_apart(filled: VectorIndex) -> None:
    # point i has unit(i) in clip-a but unit(3 - i) in clip-b: the same query finds different points
    for i in range(4):
        assert filled.search("clip-a", unit(i), top_k=1)[0].id == pid(i)
        hit_b = filled.search("clip-b", unit(i), top_k=1)[0]
        assert hit_b.id == pid(3 - i)
        assert hit_b.score == pytest.approx(1.0, abs=1e-5)
    # in clip-a, point 3's score for unit(0) is from its clip-a vector (orthogonal), not its clip-b one (equal)
    scores = {hit.id: hit.score for hit in filled.search("clip-a", unit(0), top_k=4)}
    assert scores[pid(3)] == pytest.approx(0.0, abs=1e-5)


def test_point_without_a_space_vector_is_not_found_there(filled: VectorIndex) -> None:
    filled.upsert([Point(id=pid(10), vectors={"clip-a": [1.0, 1.0, 1.0, 1.0]}, payload={})])
    assert pid(10) in {hit.id for hit in filled.search("clip-a", [1.0, 1.0, 1.0, 1.0], top_k=10)}
    assert pid(10) not in {hit.id for hit in filled.search("clip-b", [1.0, 1.0, 1.0, 1.0], top_k=10)}


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (FieldFilter("codec_profile", "eq", "q3"), {1, 2}),
        (FieldFilter("width", "eq", 200), {1}),
        (FieldFilter("flagged", "eq", True), {0, 2}),
        (FieldFilter("bpp", "eq", 0.75), {2}),
        (FieldFilter("width", "gte", 300), {2, 3}),
        (FieldFilter("width", "gt", 300), {3}),
        (FieldFilter("bpp", "lte", 0.5), {0, 1}),
        (FieldFilter("bpp", "lt", 0.5), {0}),
        (FieldFilter("missing_field", "eq", "x"), set()),
    ],
)
def test_each_filter_op(filled: VectorIndex, flt: FieldFilter, expected: set[int]) -> None:
    hits = filled.search("clip-a", [1.0, 1.0, 1.0, 1.0], top_k=10, filters=[flt])
    assert {hit.id for hit in hits} == {pid(i) for i in expected}
    assert filled.count([flt]) == len(expected)


def test_filters_combine_with_and(filled: VectorIndex) -> None:
    filters = [parse_filter("codec_profile=q3"), parse_filter("width>200")]
    assert [hit.id for hit in filled.search("clip-a", unit(0), filters=filters)] == [pid(2)]
    assert filled.count(filters) == 1


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("codec_profile=mbt2018-q3", FieldFilter("codec_profile", "eq", "mbt2018-q3")),
        ("width>=512", FieldFilter("width", "gte", 512)),
        ("bpp<=0.5", FieldFilter("bpp", "lte", 0.5)),
        ("height>1", FieldFilter("height", "gt", 1)),
        ("bytes<2", FieldFilter("bytes", "lt", 2)),
        (" width = -3 ", FieldFilter("width", "eq", -3)),
        ("bpp>1e-2", FieldFilter("bpp", "gt", 0.01)),
        ("flagged=true", FieldFilter("flagged", "eq", True)),
        ("flagged=False", FieldFilter("flagged", "eq", False)),
        ('codec_profile="3"', FieldFilter("codec_profile", "eq", "3")),
        ("source_path=/a/b=c.png", FieldFilter("source_path", "eq", "/a/b=c.png")),
        ("meta.camera==x100", FieldFilter("meta.camera", "eq", "x100")),
    ],
)
def test_parse_filter(expr: str, expected: FieldFilter) -> None:
    parsed = parse_filter(expr)
    assert parsed == expected
    assert type(parsed.value) is type(expected.value)


@pytest.mark.parametrize("expr", ["", "width", "width>=", "=3", ">=3", "width!=3", "wi dth=3", "width>abc", "x<true"])
def test_parse_filter_errors(expr: str) -> None:
    with pytest.raises(InputError, match=r"cannot parse filter|needs a number") as info:
        parse_filter(expr)
    assert "width>=512" in str(info.value)


def test_field_filter_validates() -> None:
    with pytest.raises(InputError):
        FieldFilter("width", "ne", 3)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        FieldFilter("", "eq", 3)
    with pytest.raises(InputError):
        FieldFilter("bpp", "gt", float("nan"))


@pytest.mark.parametrize("top_k", [0, -1, 1001, True, 2.0])
def test_top_k_bounds(filled: VectorIndex, top_k: int) -> None:
    with pytest.raises(InputError, match="top_k"):
        filled.search("clip-a", unit(0), top_k=top_k)


def test_top_k_limits(filled: VectorIndex) -> None:
    assert len(filled.search("clip-a", unit(0), top_k=1)) == 1
    assert len(filled.search("clip-a", unit(0), top_k=1000)) == 4


def test_search_errors(filled: VectorIndex) -> None:
    with pytest.raises(StoreError, match="'clip-z' is not in collection"):
        filled.search("clip-z", unit(0))
    with pytest.raises(InputError, match="needs 4 values"):
        filled.search("clip-a", [1.0, 0.0])
    with pytest.raises(InputError, match="non-zero"):
        filled.search("clip-a", [0.0] * 4)


def test_iter_points_over_many_batches(index: VectorIndex) -> None:
    n = 300
    index.upsert([Point(id=pid(i), vectors={"clip-a": [1.0, float(i), 0.0, 0.0]}, payload={"n": i}) for i in range(n)])
    seen = dict(index.iter_points(batch=64))
    assert len(seen) == n
    assert seen == {pid(i): {"n": i} for i in range(n)}
    assert len(dict(index.iter_points())) == n
    assert index.count() == n
    assert index.count([FieldFilter("n", "lt", 100)]) == 100
    with pytest.raises(InputError):
        next(index.iter_points(batch=0))


def test_delete(filled: VectorIndex) -> None:
    filled.delete([pid(1), pid(99)])
    assert filled.count() == 3
    assert filled.existing([pid(1)]) == set()
    assert pid(1) not in {hit.id for hit in filled.search("clip-a", unit(1), top_k=10)}
    filled.delete([])
    assert filled.count() == 3


def test_second_open_on_same_path_is_refused(tmp_path: Path) -> None:
    with VectorIndex(path=tmp_path / "q") as first:
        first.ensure_collection(SPACES)
        with pytest.raises(StoreError, match=rf"held by another process \(pid {os.getpid()}\)") as info:
            VectorIndex(path=tmp_path / "q")
        assert "--qdrant" in str(info.value)
    with VectorIndex(path=tmp_path / "q") as again:  # released on close
        assert again.spaces() == SPACES


def test_reopen_after_close_sees_data(tmp_path: Path) -> None:
    idx = VectorIndex(path=tmp_path / "q")
    idx.ensure_collection(SPACES)
    idx.upsert([Point(id=pid(5), vectors={"clip-a": unit(1), "clip-b": unit(2)}, payload={"width": 5})])
    idx.close()
    idx.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        idx.count()
    with VectorIndex(path=tmp_path / "q") as reopened:
        reopened.ensure_collection(SPACES)
        assert reopened.count() == 1
        assert reopened.search("clip-b", unit(2), top_k=1)[0].id == pid(5)
        assert reopened.retrieve([pid(5)])[0][1] == {"width": 5}


def test_add_space(tmp_path: Path) -> None:
    with VectorIndex(path=tmp_path / "q") as idx:
        idx.ensure_collection({"clip-a": 4})
        idx.upsert([Point(id=pid(0), vectors={"clip-a": unit(0)}, payload={})])
        idx.add_space("clip-v2", 3)
        idx.add_space("clip-v2", 3)  # no-op when it already matches
        with pytest.raises(ConfigMismatchError, match="dimension 3"):
            idx.add_space("clip-v2", 5)
        assert idx.spaces() == {"clip-a": 4, "clip-v2": 3}
        idx.upsert([Point(id=pid(0), vectors={"clip-a": unit(0), "clip-v2": unit(2, 3)}, payload={})])
        assert idx.search("clip-v2", unit(2, 3), top_k=1)[0].id == pid(0)
    with VectorIndex(path=tmp_path / "q") as reopened:
        reopened.ensure_collection({"clip-a": 4, "clip-v2": 3})


def test_exactly_one_of_path_and_url(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="exactly one"):
        VectorIndex()
    with pytest.raises(InputError, match="exactly one"):
        VectorIndex(path=tmp_path / "q", url="http://localhost:6333")


def test_unreachable_server_names_url(monkeypatch: pytest.MonkeyPatch) -> None:
    # skip qdrant-client's background version probe, which would warn after the test has ended
    monkeypatch.setattr(
        "qdrant_client.qdrant_remote.QdrantRemote._check_compatibility", staticmethod(lambda *args: None)
    )
    # a closed port on the loopback interface: refused at once, nothing leaves the machine
    with VectorIndex(url="http://127.0.0.1:1") as idx, pytest.raises(StoreError, match=re.escape("http://127.0.0.1:1")):
        idx.count()


def test_each_engine_describes_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from licsearch.storage.edge import edge_version

    monkeypatch.setattr(
        "qdrant_client.qdrant_remote.QdrantRemote._check_compatibility", staticmethod(lambda *args: None)
    )
    with VectorIndex(path=tmp_path / "edge") as edge, VectorIndex(path=tmp_path / "local", engine="client") as local:
        assert (edge.engine_kind, local.engine_kind) == ("edge", "client")
        assert edge.describe() == f"{ENGINE_LABELS['edge']} {edge_version()} (embedded)"
        assert local.describe() == f"{ENGINE_LABELS['client']} (embedded)"
    with VectorIndex(url="http://127.0.0.1:1") as server:  # described without a request
        assert server.engine_kind == "server" and server.describe() == "Qdrant server at http://127.0.0.1:1"


def test_init_names_the_engine_the_store_uses(tmp_path: Path) -> None:
    from licsearch.storage.edge import edge_version
    from tests.conftest import TINY_FLAGS, run_cli

    root = tmp_path / "store"
    proc = run_cli("init", "--store", str(root), *TINY_FLAGS, check=True)
    assert f"Qdrant Edge {edge_version()} (embedded)" in proc.stdout and "local" not in proc.stdout
    stats = json.loads(run_cli("stats", "--store", str(root), "--json", check=True).stdout)
    assert stats["index"]["engine"] == "edge"
    assert json.loads((root / "store.json").read_text())["qdrant"]["engine"] == "edge"


@pytest.mark.parametrize("engine", ["edge", "client"])
def test_scroll_reads_only_the_fields_asked_for(tmp_path: Path, engine: str) -> None:
    with VectorIndex(path=tmp_path / "q", engine=engine) as idx:  # type: ignore[arg-type]
        idx.ensure_collection(SPACES)
        payloads = [{"bytes": 10 * i, "bpp": 0.5, "source_path": f"/p/{i}", "meta": {"album": "a"}} for i in range(5)]
        idx.upsert([Point(pid(i), {"clip-a": unit(i % 4)}, payloads[i]) for i in range(5)])
        some = dict(idx.iter_points(batch=2, fields=["bytes", "meta"]))
        assert some == {pid(i): {"bytes": 10 * i, "meta": {"album": "a"}} for i in range(5)}
        assert dict(idx.iter_points()) == {pid(i): payloads[i] for i in range(5)}


def test_search_tuning_is_checked(filled: VectorIndex) -> None:
    assert filled.search("clip-a", unit(1), top_k=1, hnsw_ef=4, oversampling=2)[0].id == pid(1)
    for bad in (0, -1, True, 2.5):
        with pytest.raises(InputError, match="hnsw_ef"):
            filled.search("clip-a", unit(1), hnsw_ef=bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="oversampling"):
        filled.search("clip-a", unit(1), oversampling=0.5)


def test_edge_payload_indexes_are_kept_on_disk(tmp_path: Path) -> None:
    import qdrant_edge as qe

    with VectorIndex(path=tmp_path / "e") as idx:
        idx.ensure_collection(SPACES)
        shard = idx.engine.shard  # type: ignore[union-attr]
        schema = shard.info().payload_schema
        assert set(schema) == set(INDEXED_FIELDS) and all(info.params.on_disk for info in schema.values())
        # an index an older store keeps in RAM is moved to disk by the next optimise
        shard.update(qe.UpdateOperation.delete_field_index("width"))
        shard.update(qe.UpdateOperation.create_field_index("width", qe.PayloadSchemaType.Integer))
        assert shard.info().payload_schema["width"].params is None
        idx.upsert([Point(pid(0), {"clip-a": unit(0)}, {"width": 7}), Point(pid(1), {"clip-a": unit(1)}, {"width": 8})])
        idx.optimize()
        assert idx.engine.shard.info().payload_schema["width"].params.on_disk  # type: ignore[union-attr]
        assert idx.count([FieldFilter("width", "eq", 7)]) == 1


def test_ids_come_back_canonical() -> None:
    from licsearch.storage.points import normalise_id

    raw = uuid.UUID(int=12345)
    assert normalise_id(raw) == normalise_id(str(raw).upper()) == normalise_id(str(raw)) == str(raw)
    assert normalise_id(raw.hex) == str(raw)
    with pytest.raises(InputError, match="invalid point id"):
        normalise_id("not-a-uuid")
