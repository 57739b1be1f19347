"""Qdrant Edge against qdrant-client's local mode: the same operations on the same data give the same answers.

In the manner of qdrant-client's ``tests/congruence_tests``: every index operation licsearch uses runs on both
engines behind :class:`VectorIndex`, and ids, order, payloads and scores (to 1e-5) are compared. Then the faults the
Edge engine must survive: damaged files, a newer Edge's store, a held store, a full disk and SIGKILL.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from licsearch.errors import StoreError
from licsearch.storage.index import INDEXED_FIELDS, Point, Selection, VectorIndex, parse_filter

from .conftest import MakeDir

SPACES = {"clip-a": 16, "clip-b": 8}
N = 240
SCORE_TOL = 1e-5


def pid(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def _points(seed: int = 0) -> list[Point]:
    rng = np.random.default_rng(seed)
    albums = ["paris", "rome", "3"]
    points = []
    for i in range(N):
        vectors = {"clip-a": rng.normal(size=16).tolist()}
        if i % 3:  # a third of the points lack clip-b, as during a re-index
            vectors["clip-b"] = rng.normal(size=8).tolist()
        payload: dict[str, Any] = {
            "width": 10 * (i % 40),
            "bpp": round(0.05 * (i % 20), 2),
            "codec_profile": f"q{i % 4}",
            "flagged": i % 5 == 0,
            "taken": f"2024-06-{1 + i % 5:02d}T{i % 24:02d}:30:00",
            "meta": {"album": albums[i % 3], "tags": ["a", "b"] if i % 2 else ["c"]},
        }
        points.append(Point(pid(i), vectors, payload))
    return points


@pytest.fixture(scope="module")
def pair(module_tmp: MakeDir) -> Iterator[tuple[VectorIndex, VectorIndex]]:
    """The same points in an Edge shard and in local mode (module-wide; tests that change them use ``fresh``)."""
    root = module_tmp("congruence")
    edge, local = _filled(root)
    yield edge, local
    edge.close()
    local.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[tuple[VectorIndex, VectorIndex]]:
    edge, local = _filled(tmp_path)
    yield edge, local
    edge.close()
    local.close()


def _filled(root: Path) -> tuple[VectorIndex, VectorIndex]:
    edge = VectorIndex(path=root / "edge", engine="edge")
    local = VectorIndex(path=root / "local", engine="client")
    for index in (edge, local):
        index.ensure_collection(SPACES)
        index.upsert(_points())
    return edge, local


def _same_hits(a: list[Any], b: list[Any]) -> None:
    assert [h.id for h in a] == [h.id for h in b]
    assert np.allclose([h.score for h in a], [h.score for h in b], atol=SCORE_TOL)
    assert [h.payload for h in a] == [h.payload for h in b]


FILTERS = [
    "codec_profile=q1",
    'codec_profile="q2"',
    "width=200",
    "width>=200",
    "width>200",
    "width<=50",
    "width<50",
    "bpp=0.5",
    "bpp>=0.3",
    "bpp<0.2",
    "flagged=true",
    "flagged=false",
    "taken=2024-06-02",
    "taken>=2024-06-03",
    "taken>2024-06-03",
    "taken<=2024-06-02",
    "taken<2024-06-02T12:00",
    "meta.album=paris",
    'meta.album="3"',
    "meta.tags=a",
    "missing_field=1",
]


@pytest.mark.parametrize("expr", FILTERS)
def test_search_with_each_filter_form(pair: tuple[VectorIndex, VectorIndex], expr: str) -> None:
    edge, local = pair
    query = np.random.default_rng(7).normal(size=16).tolist()
    flt = [parse_filter(expr)]
    _same_hits(
        edge.search("clip-a", query, top_k=25, filters=flt), local.search("clip-a", query, top_k=25, filters=flt)
    )
    assert edge.count(flt) == local.count(flt)


def test_search_combined_filters_and_other_space(pair: tuple[VectorIndex, VectorIndex]) -> None:
    edge, local = pair
    rng = np.random.default_rng(3)
    flts = [parse_filter("width>=100"), parse_filter("codec_profile=q3"), parse_filter("flagged=false")]
    qa, qb = rng.normal(size=16).tolist(), rng.normal(size=8).tolist()
    _same_hits(edge.search("clip-a", qa, top_k=50, filters=flts), local.search("clip-a", qa, top_k=50, filters=flts))
    hits = edge.search("clip-b", qb, top_k=1000)  # points without a clip-b vector are never found there
    _same_hits(hits, local.search("clip-b", qb, top_k=1000))
    assert len(hits) == sum(1 for i in range(N) if i % 3)


def test_has_vector_selections_count_and_scroll(pair: tuple[VectorIndex, VectorIndex]) -> None:
    edge, local = pair
    for selection in (
        Selection(with_vector="clip-b"),
        Selection(without_vector="clip-b"),
        Selection(without_vector="clip-b", exclude=(pid(0), pid(3), pid(1))),
        Selection(filters=(parse_filter("width>=300"),), with_vector="clip-b"),
        Selection(filters=(parse_filter("flagged=true"),), without_vector="clip-b"),
    ):
        assert edge.count(selection=selection) == local.count(selection=selection) > 0
        pages_e = [page for page in edge.scroll(selection, batch=17)]
        pages_l = [page for page in local.scroll(selection, batch=17)]
        assert pages_e == pages_l  # same ids in the same (id) order, same payloads, same page boundaries


def test_iter_points_retrieve_and_existing(pair: tuple[VectorIndex, VectorIndex]) -> None:
    edge, local = pair
    assert list(edge.iter_points(batch=50)) == list(local.iter_points(batch=50))
    ids = [pid(i) for i in (5, 1, 77, 2)] + [str(uuid.UUID(int=10_000))]
    got_e, got_l = edge.retrieve(ids, with_vectors=True), local.retrieve(ids, with_vectors=True)
    assert [r[0] for r in got_e] == [r[0] for r in got_l] == ids[:4]
    for (_, pe, ve), (_, pl, vl) in zip(got_e, got_l, strict=True):
        assert pe == pl and set(ve) == set(vl)
        for space in ve:
            assert np.allclose(ve[space], vl[space], atol=SCORE_TOL)
    only_b = edge.retrieve(ids, with_vectors=["clip-b"])
    assert all(set(v) <= {"clip-b"} for _, _, v in only_b)
    assert edge.existing(ids) == local.existing(ids) == set(ids[:4])
    assert edge.spaces() == local.spaces() == SPACES


def test_upsert_replace_set_payload_and_delete(fresh: tuple[VectorIndex, VectorIndex]) -> None:
    edge, local = fresh
    replaced = Point(pid(4), {"clip-a": [1.0] * 16}, {"width": 1, "codec_profile": "new"})
    gone = [pid(i) for i in range(0, N, 7)]
    for index in (edge, local):
        index.upsert([replaced])
        index.set_payload([pid(8), pid(9)], {"duplicate_paths": ["x.png"]})
        index.delete([*gone, str(uuid.UUID(int=99_999))])
    assert list(edge.iter_points()) == list(local.iter_points())
    assert edge.count() == local.count() == N - len(gone) + (pid(4) in gone)
    query = [1.0] * 16
    _same_hits(edge.search("clip-a", query, top_k=5), local.search("clip-a", query, top_k=5))


def test_named_vector_create_update_delete(fresh: tuple[VectorIndex, VectorIndex]) -> None:
    """The re-index path: add a space, write its vectors onto existing points, find those lacking it, drop it."""
    from licsearch.storage import space_vectors

    edge, local = fresh
    rng = np.random.default_rng(11)
    vectors = {pid(i): rng.normal(size=4).tolist() for i in range(0, N, 2)}
    for index in (edge, local):
        index.add_space("clip-c", 4)
        space_vectors.write_vectors(index, "clip-c", vectors)
    assert edge.spaces() == local.spaces() == {**SPACES, "clip-c": 4}
    assert space_vectors.count_with(edge, "clip-c") == space_vectors.count_with(local, "clip-c") == len(vectors)
    lacking_e = list(space_vectors.iter_lacking(edge, "clip-c", batch=30, exclude=[pid(1)]))
    assert lacking_e == list(space_vectors.iter_lacking(local, "clip-c", batch=30, exclude=[pid(1)]))
    query = rng.normal(size=4).tolist()
    _same_hits(edge.search("clip-c", query, top_k=40), local.search("clip-c", query, top_k=40))
    _same_hits(edge.search("clip-a", [1.0] * 16, top_k=5), local.search("clip-a", [1.0] * 16, top_k=5))
    with pytest.raises(StoreError, match="disappeared"):
        space_vectors.write_vectors(edge, "clip-c", {str(uuid.UUID(int=12_345)): [1.0, 0, 0, 0]})
    for index in (edge, local):
        space_vectors.drop_space(index, "clip-c")
    assert edge.spaces() == local.spaces() == SPACES
    assert list(edge.iter_points()) == list(local.iter_points())


def test_payload_indexes_on_edge(pair: tuple[VectorIndex, VectorIndex]) -> None:
    edge, local = pair
    assert edge.payload_indexes() == INDEXED_FIELDS  # local mode scans: it keeps none
    assert local.payload_indexes() == {}


@pytest.mark.parametrize("setting", ["float16", "int8", "binary", "pq"])
def test_compact_vectors_keep_the_exact_top_hit(tmp_path: Path, setting: str) -> None:
    """Each vector setting answers a query for a stored vector with that point first, rescored on the originals."""
    with VectorIndex(path=tmp_path / "edge", engine="edge") as edge:
        edge.ensure_collection({"clip-a": 16}, {"clip-a": setting})
        points = _points()
        edge.upsert([Point(p.id, {"clip-a": p.vectors["clip-a"]}, p.payload) for p in points])
        assert edge.setting("clip-a").name == setting
        for i in (0, 17, 101):
            hits = edge.search("clip-a", points[i].vectors["clip-a"], top_k=3)
            assert hits[0].id == pid(i) and hits[0].score == pytest.approx(1.0, abs=1e-2)
        config = json.loads((tmp_path / "edge" / "edge_config.json").read_text())
        assert ("quantization_config" in config["vectors"]["clip-a"]) == (setting != "float16")


def test_the_edge_pin_is_exact() -> None:
    """Qdrant Edge is beta: pyproject pins one version, and it is the one installed (upgrade it deliberately)."""
    import tomllib

    from licsearch.storage.edge import EDGE_PACKAGE, edge_version

    deps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if d.startswith(EDGE_PACKAGE)]
    assert pin == f"{EDGE_PACKAGE}=={edge_version()}"


# -- faults ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shard_template(module_tmp: MakeDir) -> Path:
    path = module_tmp("shard") / "edge"
    with VectorIndex(path=path, engine="edge") as edge:
        edge.ensure_collection(SPACES)
        edge.upsert(_points()[:50])
    return path


@pytest.fixture
def shard(shard_template: Path, tmp_path: Path) -> Path:
    """A closed 50-point shard of its own (cp keeps the engine's sparse files sparse)."""
    subprocess.run(["cp", "-a", "--sparse=always", str(shard_template), str(tmp_path / "edge")], check=True)
    return tmp_path / "edge"


def _segment_file(path: Path, name: str) -> Path:
    return next((path / "segments").glob(f"*/{name}"))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda p: (p / "edge_config.json").write_text('{"vectors": '), "edge_config.json is not valid JSON"),
        (lambda p: (p / "edge_config.json").write_text("[]"), 'edge_config.json lacks its "vectors"'),
        (lambda p: _segment_file(p, "segment.json").write_bytes(b'{"conf'), "segment.json is not valid JSON"),
        (lambda p: _segment_file(p, "segment.json").unlink(), "segment.json is missing"),
        (lambda p: shutil.rmtree(p / "segments"), "segments is missing"),
        (lambda p: (p / "licsearch-edge.json").write_text("{"), "licsearch-edge.json is damaged"),
        (lambda p: (p / "licsearch-edge.json").write_text("[" * 200_000), "licsearch-edge.json is damaged"),
    ],
)
def test_damaged_shard_files_are_refused_naming_the_file(shard: Path, damage: Any, expected: str) -> None:
    damage(shard)
    with pytest.raises(StoreError) as info:
        VectorIndex(path=shard, engine="edge")
    assert expected in info.value.message and "backup" in str(info.value.hint)


def test_truncated_segment_data_is_a_store_error(shard: Path) -> None:
    """Files the engine reads itself (id tracker, vectors): whatever it raises on loading becomes a StoreError."""
    tracker = _segment_file(shard, "mutable_id_tracker.mappings")
    tracker.write_bytes(tracker.read_bytes()[:7])
    try:
        index = VectorIndex(path=shard, engine="edge")
    except StoreError as exc:
        assert str(shard) in exc.message and "backup" in str(exc.hint)
    else:  # the WAL replays what the truncated file lost: every point is back
        with index:
            assert index.count() == 50 and len(index.retrieve([pid(i) for i in range(50)])) == 50


def test_a_store_written_by_a_newer_edge_is_refused(shard: Path) -> None:
    (shard / "licsearch-edge.json").write_text(json.dumps({"format": 1, "qdrant_edge": "99.0.0"}))
    with pytest.raises(StoreError, match=r"written by qdrant-edge-py 99\.0\.0") as info:
        VectorIndex(path=shard, engine="edge")
    assert "licsearch-edge.json" in info.value.message and "pins qdrant-edge-py==99.0.0" in str(info.value.hint)


_HOLDER = """
import sys, time
from pathlib import Path
from licsearch.storage.index import VectorIndex
index = VectorIndex(path=Path(sys.argv[1]), engine="edge")
print("ready", flush=True)
time.sleep(120)
"""


def test_a_second_process_is_refused_naming_the_holder(shard: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(shard)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreError, match=rf"held by another process \(pid {holder.pid}\)") as info:
            VectorIndex(path=shard, engine="edge")
        assert "--qdrant" in str(info.value.hint)
    finally:
        holder.kill()
        holder.wait()
    with VectorIndex(path=shard, engine="edge") as again:  # the lock dies with its holder
        assert again.count() == 50


_WRITER = """
import sys, uuid
import numpy as np
from pathlib import Path
from licsearch.storage.index import Point, VectorIndex
index = VectorIndex(path=Path(sys.argv[1]), engine="edge")
index.ensure_collection({"clip-a": 512})
rng = np.random.default_rng(0)
start = 0
while True:
    vectors = rng.normal(size=(500, 512))
    index.upsert([Point(str(uuid.UUID(int=start + i + 1)), {"clip-a": vectors[i].tolist()}, {"n": start + i})
                  for i in range(500)])
    start += 500
    print(start, flush=True)
    if sys.argv[2] == "optimize" and start >= 12_000:
        print("optimizing", flush=True)
        index.optimize()
        print("optimized", flush=True)
        break
"""


def _acknowledged_then_kill(path: Path, mode: str, until: str) -> int:
    """Runs the writer until it prints ``until``, SIGKILLs it, and returns the points it had acknowledged."""
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), mode], stdout=subprocess.PIPE, text=True)
    acknowledged = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip().isdigit():
            acknowledged = int(line)
        if line.strip() == until:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return acknowledged


def _no_acknowledged_point_lost(path: Path, acknowledged: int) -> None:
    with VectorIndex(path=path, engine="edge") as index:
        assert index.count() >= acknowledged
        assert len(index.existing([pid(i) for i in range(acknowledged)])) == acknowledged
        query = index.retrieve([pid(0)], with_vectors=True)[0][2]["clip-a"]
        assert index.search("clip-a", query, top_k=1)[0].id == pid(0)
        index.optimize()  # the next run completes the index
        assert index.state().indexed_vectors >= min(acknowledged, index.count()) or index.count() < 10_000


def test_sigkill_during_upsert_loses_no_acknowledged_point(tmp_path: Path) -> None:
    acknowledged = _acknowledged_then_kill(tmp_path / "edge", "upsert", "3000")
    assert acknowledged >= 3000
    _no_acknowledged_point_lost(tmp_path / "edge", acknowledged)


@pytest.mark.slow
def test_sigkill_during_optimize_then_the_next_run_completes(tmp_path: Path) -> None:
    acknowledged = _acknowledged_then_kill(tmp_path / "edge", "optimize", "optimizing")
    assert acknowledged == 12_000
    _no_acknowledged_point_lost(tmp_path / "edge", acknowledged)


def test_full_disk_during_upsert_is_a_clear_error_and_loses_nothing(tmp_path: Path) -> None:
    """Edge writes through memory maps (a full disk would kill the process with SIGBUS): writes stop at a reserve."""
    from licsearch.storage.edge import MIN_FREE_BYTES

    mount = tmp_path / "small"
    mount.mkdir()
    size_mib = MIN_FREE_BYTES // 2**20 + 40
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()}): needs root")
    try:
        path = mount / "edge"
        acknowledged = 0
        rng = np.random.default_rng(0)
        with pytest.raises(StoreError, match="nearly full") as info, VectorIndex(path=path, engine="edge") as index:
            index.ensure_collection({"clip-a": 512})
            while acknowledged < 200_000:
                vectors = rng.normal(size=(500, 512))
                index.upsert([Point(pid(acknowledged + i), {"clip-a": vectors[i].tolist()}, {}) for i in range(500)])
                acknowledged += 500
        assert "free disk space" in str(info.value.hint) and acknowledged > 0
        subprocess.run(["mount", "-o", f"remount,size={size_mib + 200}m", str(mount)], check=True)  # space freed
        _no_acknowledged_point_lost(path, acknowledged)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
