"""Hostile stores and queries: malformed filters, damaged store files, read-only stores, ingest messages.

Every case ends in a clear error (exit 2 for bad input, 1 for a damaged or read-only store) that names the
expression or file, never a traceback, and leaves the store byte for byte as it was. The many variants of one
family run in-process against the function that parses or loads; a few of each go through the real CLI.

Read-only stores are tested as they occur: as an unprivileged user on a store without write permission (root
ignores permissions, and CI runs as root, so the CLI runs in a child process as ``nobody``), and as root on a
read-only bind mount in a private mount namespace (``unshare -m``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from licsearch.config import CONFIG_FILE, StoreConfig
from licsearch.errors import ImageError, InputError, StoreError
from licsearch.imageio import load_image
from licsearch.storage.index import FieldFilter, VectorIndex, parse_filter
from licsearch.storage.local import open_view

from .conftest import TINY_FLAGS, MakeDir, make_image, run_cli, write_png

NOBODY = 65534
VIEW_PREFIX = "licsearch-readonly-index-"


# -- helpers --------------------------------------------------------------------------------------------------


def tree_state(root: Path) -> dict[str, tuple[int, str]]:
    """Every file and folder under ``root`` with its mode and content hash: what "nothing changed" compares."""
    state: dict[str, tuple[int, str]] = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        state[str(path.relative_to(root))] = (mode, digest)
    return state


def clean_error(proc: subprocess.CompletedProcess[str] | dict[str, Any], code: int, *needles: str) -> str:
    """The CLI's one error line, after checking the exit code, the absence of a traceback and each needle."""
    rc, stderr = (
        (proc.returncode, proc.stderr)
        if isinstance(proc, subprocess.CompletedProcess)
        else (
            proc["rc"],
            proc["stderr"],
        )
    )
    assert "Traceback" not in stderr, stderr
    assert rc == code, stderr
    errors = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def filled_template(module_tmp: MakeDir, tiny_store_template: Path) -> Path:
    """A tiny store holding the six images of ``images_dir`` (made once, in-process; copy before changing)."""
    from licsearch.ops.ingest import ingest
    from licsearch.storage.store import Store

    base = module_tmp("filled")
    images = base / "images"
    for i in range(4):
        write_png(images / f"img{i}.png", make_image(i))
    for i in range(4, 6):
        write_png(images / "sub" / f"img{i}.png", make_image(i, 64, 80))
    root = base / "store"
    shutil.copytree(tiny_store_template, root)
    with Store.open(root) as store:
        report = ingest(store, [images], progress=False)
    assert report.ingested == 6
    return root


@pytest.fixture(scope="module")
def legacy_template(module_tmp: MakeDir, filled_template: Path) -> Path:
    """``filled_template`` as a store made before the Edge engine (qdrant-client local mode in ``qdrant/``)."""
    from tests.legacy_store import make_legacy

    return make_legacy(filled_template, module_tmp("legacy") / "store")


# -- filters --------------------------------------------------------------------------------------------------

MALFORMED_FILTERS = [
    "a..b=1",
    "meta.=1",
    ".width=1",
    "meta..album=paris",
    "=1",
    " =1",
    "width=",
    "width>=  ",
    "width",
    "",
    "width!=3",
    "width=>3",
    "width<>3",
    "width~3",
    "wi dth=3",
    "meta.my album=x",
    "a[0]=1",
    'meta."x"=1',
    "2x=1",
    "width>=abc",
    "width<true",
    "bpp>nan",
    "bpp>1e999",
    "width=" + "9" * 5000,
    "k" * 300 + "=1",
]


@pytest.mark.parametrize("expr", MALFORMED_FILTERS, ids=lambda e: repr(e)[:30])
def test_malformed_filter_is_refused_naming_the_expression(expr: str) -> None:
    with pytest.raises(InputError) as info:
        parse_filter(expr)
    message = str(info.value)
    assert f"cannot parse filter {repr(expr) if len(expr) <= 80 else repr(expr[:77] + '...')}" in message
    assert "KEY=VALUE" in message and "width>=512" in message  # the accepted forms


@pytest.mark.parametrize(
    ("expr", "key", "value"),
    [
        ("meta.album=paris", "meta.album", "paris"),
        ("meta.2024=x", "meta.2024", "x"),
        ("source-path=/a/b=c.png", "source-path", "/a/b=c.png"),
        ('meta.tag=""', "meta.tag", ""),
        ("width=12345678901234567890", "width", 1.2345678901234567e19),  # beyond int64: compared as a float
    ],
)
def test_well_formed_filters_still_parse(expr: str, key: str, value: object) -> None:
    parsed = parse_filter(expr)
    assert (parsed.key, parsed.op, parsed.value) == (key, "eq", value)


@pytest.mark.parametrize("key", ["a..b", "meta.", ".a", "a b", "a[0]"])
def test_field_filter_built_directly_checks_its_key(key: str) -> None:
    with pytest.raises(InputError, match="filter field name"):
        FieldFilter(key, "eq", 1)


def test_cli_refuses_malformed_filters(filled_template: Path) -> None:
    before = tree_state(filled_template)
    for expr in ("a..b=1", "meta.=1"):
        proc = run_cli("search", "--store", str(filled_template), "--text", "x", "--filter", expr)
        clean_error(proc, 2, f"cannot parse filter {expr!r}", "KEY=VALUE")
    assert tree_state(filled_template) == before


# -- damaged store.json ---------------------------------------------------------------------------------------


def _mutated(change: Callable[[dict[str, Any]], None]) -> Callable[[bytes], bytes]:
    def apply(good: bytes) -> bytes:
        doc = json.loads(good)
        change(doc)
        return json.dumps(doc).encode()

    return apply


STORE_JSON_DAMAGE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "not utf-8": (lambda good: b"\xff\xfe" + good, "not UTF-8"),
    "not json": (lambda good: b"{store", "not valid JSON"),
    "truncated": (lambda good: good[: len(good) // 2], "not valid JSON"),
    "nested deep": (lambda good: b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    "an array": (lambda good: b"[]", "must be a JSON object"),
    "url a number": (_mutated(lambda d: d["qdrant"].update(url=6333)), "store.qdrant.url must be a string"),
    "url not http": (_mutated(lambda d: d["qdrant"].update(url="ftp://x")), "store.qdrant.url must be an http"),
    "qdrant a string": (_mutated(lambda d: d.update(qdrant="local")), "store.qdrant must be a JSON object"),
    "models a list": (_mutated(lambda d: d.update(models=[])), "store.models must be a JSON object"),
    "codec missing": (_mutated(lambda d: d["models"].pop("codec")), "store.models.codec is missing"),
    "quality a string": (
        _mutated(lambda d: d["models"]["codec"].update(quality="3")),
        "store.models.codec.quality must be an integer",
    ),
    "space id missing": (_mutated(lambda d: d.pop("space_id")), "store.space_id is missing"),
    "max_pixels negative": (_mutated(lambda d: d.update(max_pixels=-1)), "store.max_pixels must be positive"),
    "index path escapes": (
        _mutated(lambda d: d["qdrant"].update(path="../../elsewhere")),
        "store.qdrant.path must be a folder inside the store",
    ),
    "unknown field": (_mutated(lambda d: d.update(colour="red")), "store.colour is not a known field"),
    "space of wrong type": (
        _mutated(lambda d: d.update(spaces={"s": {"models": d["models"], "dim": "64"}})),
        'store.spaces["s"].dim must be an integer',
    ),
}


@pytest.mark.parametrize("case", sorted(STORE_JSON_DAMAGE))
def test_damaged_store_json_is_refused_naming_file_and_field(tiny_store: Path, case: str) -> None:
    damage, expected = STORE_JSON_DAMAGE[case]
    path = tiny_store / CONFIG_FILE
    path.write_bytes(damage(path.read_bytes()))
    before = tree_state(tiny_store)
    with pytest.raises(StoreError) as info:
        StoreConfig.load(tiny_store)
    assert str(path) in info.value.message and expected in info.value.message
    assert "backup" in str(info.value.hint)
    assert tree_state(tiny_store) == before


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"\xff\xfe", "is damaged: it is not UTF-8 text"), (b"[1]", 'must be an object with a string "qdrant_api_key"')],
)
def test_damaged_credentials_are_refused_naming_the_file(tiny_store: Path, content: bytes, expected: str) -> None:
    from licsearch.storage.store import CREDENTIALS_FILE, Store

    (tiny_store / CREDENTIALS_FILE).write_bytes(content)
    before = tree_state(tiny_store)
    with pytest.raises(StoreError) as info:
        Store.open(tiny_store)
    assert str(tiny_store / CREDENTIALS_FILE) in info.value.message and expected in info.value.message
    assert tree_state(tiny_store) == before


def test_oversized_store_json_is_refused_before_it_is_read(tiny_store: Path) -> None:
    from licsearch.config import MAX_CONFIG_BYTES

    path = tiny_store / CONFIG_FILE
    with path.open("ab") as handle:
        handle.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(StoreError, match="far more than any store config"):
        StoreConfig.load(tiny_store)


def test_cli_refuses_damaged_store_json(tiny_store: Path) -> None:
    path = tiny_store / CONFIG_FILE
    good = path.read_bytes()
    for case in ("not utf-8", "nested deep", "url a number"):
        damage, expected = STORE_JSON_DAMAGE[case]
        path.write_bytes(damage(good))
        before = tree_state(tiny_store)
        proc = run_cli("stats", "--store", str(tiny_store))
        clean_error(proc, 1, str(path), expected, "backup")
        assert tree_state(tiny_store) == before


# -- damaged vector index -------------------------------------------------------------------------------------

POINTS = Path("qdrant/collection/licsearch/storage.sqlite")
META = Path("qdrant/meta.json")

INDEX_DAMAGE: dict[str, tuple[Path, Callable[[bytes], bytes], str]] = {
    "meta garbage": (META, lambda b: os.urandom(64), "meta.json is not"),
    "meta truncated": (META, lambda b: b[: len(b) // 2], "meta.json is not valid JSON"),
    "meta empty": (META, lambda b: b"", "meta.json is not valid JSON"),
    "meta nested deep": (META, lambda b: b"[" * 100_000 + b"]" * 100_000, "meta.json is nested too deeply"),
    "meta without collections": (META, lambda b: b'{"aliases": {}}', 'meta.json lacks its "collections"'),
    "meta bad collection config": (
        META,
        lambda b: b'{"collections": {"licsearch": {"vectors": 5}}, "aliases": {}}',
        "meta.json is damaged",
    ),
    "points garbage": (POINTS, lambda b: b"garbage" * 1000, "storage.sqlite is not an SQLite database"),
    "points empty": (POINTS, lambda b: b"", "storage.sqlite is empty"),
    "points truncated": (POINTS, lambda b: b[: len(b) // 2 + 100], "storage.sqlite is truncated"),
    "points page damaged": (
        POINTS,
        lambda b: b[:4096] + bytes(len(b) - 4096),
        "storage.sqlite cannot be read as the engine's point database",
    ),
}


@pytest.mark.parametrize("case", sorted(INDEX_DAMAGE))
def test_damaged_index_is_refused_naming_the_file(legacy_template: Path, tmp_path: Path, case: str) -> None:
    relative, damage, expected = INDEX_DAMAGE[case]
    store = tmp_path / "store"
    shutil.copytree(legacy_template, store)
    target = store / relative
    target.write_bytes(damage(target.read_bytes()))
    before = tree_state(store)
    with pytest.raises(StoreError) as info:
        VectorIndex(path=store / "qdrant")
    assert expected in info.value.message
    assert "backup" in str(info.value.hint)
    assert tree_state(store) == before


class _Planted:
    """A pickle that, when loaded, calls ``pathlib.Path.touch`` on a marker file: a stand-in for any code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("row", ["planted", "garbage"])
def test_a_point_row_that_is_not_a_point_is_refused_unloaded(legacy_template: Path, tmp_path: Path, row: str) -> None:
    import pickle
    import sqlite3

    store, marker = tmp_path / "store", tmp_path / "ran"
    shutil.copytree(legacy_template, store)
    blob = pickle.dumps(_Planted(marker)) if row == "planted" else b"\x80\x04garbage"
    with sqlite3.connect(store / POINTS) as db:
        db.execute("UPDATE points SET point = ? WHERE rowid = (SELECT MIN(rowid) FROM points)", (blob,))
    db.close()
    before = tree_state(store)
    with pytest.raises(StoreError, match=r"storage\.sqlite holds a row that is not a point"):
        VectorIndex(path=store / "qdrant")
    assert not marker.exists()  # the planted call never ran
    assert tree_state(store) == before


def test_cli_refuses_damaged_index(legacy_template: Path, tmp_path: Path) -> None:
    for case in ("meta garbage", "points garbage", "points truncated"):
        relative, damage, expected = INDEX_DAMAGE[case]
        store = tmp_path / case.replace(" ", "-")
        shutil.copytree(legacy_template, store)
        (store / relative).write_bytes(damage((store / relative).read_bytes()))
        before = tree_state(store)
        proc = run_cli("search", "--store", str(store), "--text", "x")
        clean_error(proc, 1, expected.split(" ")[0], "backup")
        assert tree_state(store) == before


def test_missing_index_folder_is_not_silently_recreated(filled_template: Path, tmp_path: Path) -> None:
    from licsearch.storage.store import Store

    store = tmp_path / "store"
    shutil.copytree(filled_template, store)
    shutil.rmtree(store / "edge")
    with pytest.raises(StoreError, match=r"vector index folder .* is missing"):
        Store.open(store)
    assert not (store / "edge").exists()


# -- read-only stores -----------------------------------------------------------------------------------------


def test_a_view_and_a_writer_exclude_each_other(legacy_template: Path, tmp_path: Path) -> None:
    """The one-writer guarantee of local mode: a reader's shared lock refuses a writer, and a writer a view."""
    store = tmp_path / "store"
    shutil.copytree(legacy_template, store)
    view = open_view(store / "qdrant")
    try:
        assert view.read_only and view.client.count("licsearch").count == 6
        with pytest.raises(StoreError, match="held by another licsearch process"):
            VectorIndex(path=store / "qdrant")
        second = open_view(store / "qdrant")  # readers share
        second.close()
    finally:
        view.close()
    with VectorIndex(path=store / "qdrant") as writer:
        assert not writer.read_only
        with pytest.raises(StoreError, match="held by another licsearch process"):
            open_view(store / "qdrant")


_DRIVER = """
import contextlib, io, json, sys
from licsearch.cli.main import main
results = []
for args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(args)
        except SystemExit as exc:
            rc = exc.code
    results.append({"args": args, "rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps(results))
"""


def _read_only_commands(store: Path, out_dir: Path, point: str) -> list[list[str]]:
    s = ["--store", str(store)]
    return [
        ["search", *s, "--text", "a photo", "--filter", "width>=100", "--json"],
        ["get", point, "-o", str(out_dir / "got.png"), *s, "--json"],
        ["stats", *s, "--json"],
        ["fsck", *s, "--json"],
        ["ingest", str(out_dir / "got.png"), *s, "--no-progress"],
        ["fsck", "--repair", *s],
        ["reindex", *s, "--adapter-weights", "random", "--space", "another-space", "--no-progress"],
        ["init", "--store", str(store / "inner"), *TINY_FLAGS],
    ]


def _check_read_only_results(results: list[dict[str, Any]], out_dir: Path) -> None:
    search, get, stats, fsck, ingest, repair, reindex, init = results
    for read in (search, get, stats, fsck):
        assert read["rc"] == 0 and "Traceback" not in read["stderr"], read
    hits = json.loads(search["stdout"])["hits"]
    assert len(hits) == 4 and all(h["payload"]["width"] >= 100 for h in hits)
    assert json.loads(stats["stdout"])["images"] == 6
    assert json.loads(fsck["stdout"])["ok"] is True
    with Image.open(out_dir / "got.png") as got:
        assert got.size == (128, 96)
    for write in (ingest, repair, reindex):
        clean_error(write, 1, "is read-only", "copy it to writable storage")
    clean_error(init, 1, "cannot create a store at", "is not writable")


@pytest.fixture
def view_dirs() -> Iterator[Callable[[], set[str]]]:
    """Read-only views left in the temp folder (each run must remove its own)."""
    tmp = Path(tempfile.gettempdir())

    def current() -> set[str]:
        return {p.name for p in tmp.glob(f"{VIEW_PREFIX}*")}

    yield current


def _point_of(store: Path) -> str:
    with VectorIndex(path=store / "edge") as index:
        return next(index.iter_points())[0]


def _as_nobody(command: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """Runs ``command`` as user and group ``nobody`` without supplementary groups (setpriv(1) where present)."""
    env = {**os.environ, "HOME": str(home)}
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        return subprocess.run([*prefix, *command], capture_output=True, text=True, env=env, cwd=home, timeout=300)
    return subprocess.run(
        command,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
        timeout=300,
    )


def test_read_only_store_as_an_unprivileged_user(filled_template: Path, view_dirs: Callable[[], set[str]]) -> None:
    if os.name != "posix" or not hasattr(os, "setuid"):
        pytest.skip("needs POSIX users and permissions")
    if os.geteuid() != 0:
        pytest.skip("needs root to run the CLI as another user (CI runs as root)")
    base = Path(tempfile.mkdtemp(prefix="licsearch-ro-test-"))
    try:
        base.chmod(0o755)  # traversable by the unprivileged user; tmp_path's parents are not
        store, out_dir = base / "store", base / "out"
        shutil.copytree(filled_template, store)
        point = _point_of(store)
        out_dir.mkdir()
        os.chown(out_dir, NOBODY, NOBODY)
        for path in [store, *store.rglob("*")]:
            os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
            path.chmod(path.stat().st_mode & ~0o222)  # chmod -R a-w
        before, views = tree_state(store), view_dirs()
        commands = json.dumps(_read_only_commands(store, out_dir, point))
        proc = _as_nobody([sys.executable, "-c", _DRIVER, commands], out_dir)
        assert proc.returncode == 0, proc.stderr
        _check_read_only_results(json.loads(proc.stdout.splitlines()[-1]), out_dir)
        assert tree_state(store) == before
        assert view_dirs() == views
        # The real entry point once, as that user.
        search = _as_nobody([sys.executable, "-m", "licsearch", "stats", "--store", str(store)], out_dir)
        assert search.returncode == 0 and "6 images" in search.stdout, search.stderr
    finally:
        for path in [base, *base.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o200)
        shutil.rmtree(base)


def test_read_only_bind_mount(filled_template: Path, tmp_path: Path, view_dirs: Callable[[], set[str]]) -> None:
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) to make a private read-only bind mount")
    probe = subprocess.run([unshare, "-m", "mount", "--bind", "-o", "ro", "/", "/mnt"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"this sandbox does not allow mount namespaces: {probe.stderr.decode().strip()}")
    store, mount, out_dir = tmp_path / "store", tmp_path / "mnt", tmp_path / "out"
    shutil.copytree(filled_template, store)
    point = _point_of(store)
    mount.mkdir()
    out_dir.mkdir()
    before, views = tree_state(store), view_dirs()
    commands = json.dumps(_read_only_commands(mount, out_dir, point))
    script = 'mount --bind -o ro "$1" "$2" && exec "$3" -c "$4" "$5"'
    proc = subprocess.run(
        [unshare, "-m", "sh", "-c", script, "sh", str(store), str(mount), sys.executable, _DRIVER, commands],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    _check_read_only_results(json.loads(proc.stdout.splitlines()[-1]), out_dir)
    assert tree_state(store) == before
    assert view_dirs() == views
    assert not any(mount.iterdir())  # the mount lived only in the child's namespace


# -- ingest messages and damaged PNGs -------------------------------------------------------------------------


def _png_with_bad_crc(chunk: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(make_image(7)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    pos = 8
    while True:
        (length,) = struct.unpack_from(">I", data, pos)
        if data[pos + 4 : pos + 8] == chunk:
            data[pos + 8 + length] ^= 0xFF  # the chunk's CRC, its data intact
            return bytes(data)
        pos += 12 + length


@pytest.mark.parametrize("chunk", [b"IHDR", b"IDAT", b"IEND"])
def test_png_with_a_bad_chunk_crc_is_refused(chunk: bytes) -> None:
    with pytest.raises(ImageError, match=f"damaged PNG: chunk {chunk.decode()} at byte \\d+ fails its CRC"):
        load_image(_png_with_bad_crc(chunk), name="photo.png")


def test_ingest_names_each_failed_path_once(tiny_store: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_png(folder / "good.png", make_image(3))
    (folder / "text.png").write_bytes(b"not an image at all")
    (folder / "crc.png").write_bytes(_png_with_bad_crc(b"IDAT"))
    proc = run_cli("ingest", str(folder), "--store", str(tiny_store), "--no-progress", "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["ingested"], doc["failed"]) == (1, 2)
    failed = {Path(item["path"]).name: item["error"] for item in doc["items"] if item["status"] == "failed"}
    assert failed["text.png"].startswith("not an image")
    assert failed["crc.png"].startswith("damaged PNG: chunk IDAT")
    for name in ("text.png", "crc.png"):
        path = str(folder / name)
        assert path not in failed[name]
        lines = [line for line in proc.stderr.splitlines() if line.startswith("failed:")]
        assert sum(line.count(path) for line in lines) == 1
        assert f"failed: {path}: {failed[name]}" in lines
