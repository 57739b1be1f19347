"""The ``licsearch`` command line end to end: output conventions, search behaviour, round trips and bad input.

Every command runs as the real CLI in a subprocess at least once. Each subprocess pays ~5 s of torch and
model imports, so further variants of a family already covered that way (more output suffixes, more kinds of
damaged bitstream or image) run through the same entry point, ``licsearch.cli.main.main``, in-process.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from licsearch.bitstream import VERSION
from licsearch.model.models import ModelSet
from licsearch.storage.store import Store

from .conftest import TINY_FLAGS, MakeDir, make_image, run_cli, tiny_models, write_png

RANDOM_WARNING = "WARNING: RANDOM WEIGHTS"
MBT_FLAGS = ["--codec", "mbt2018-mean:1", *TINY_FLAGS[2:]]


# -- helpers --------------------------------------------------------------------------------------------------


def one_json(stdout: str) -> dict:
    """The single JSON document on stdout (json.loads refuses trailing data)."""
    doc = json.loads(stdout)
    assert isinstance(doc, dict)
    return doc


def error_line(stderr: str, command: str) -> str:
    """The one-line error message of a failed command; every other stderr line is a known notice."""
    assert "Traceback" not in stderr, stderr
    prefix = f"licsearch {command}: error: "
    errors = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert len(errors) == 1, stderr
    others = [line for line in stderr.splitlines() if line and not line.startswith((prefix, RANDOM_WARNING))]
    assert others == [], stderr
    return errors[0][len(prefix) :]


def json_error(stdout: str) -> dict:
    doc = one_json(stdout)
    assert set(doc) == {"error"}, doc
    assert {"type", "message"} <= set(doc["error"])
    return doc["error"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli_inprocess(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    """Runs the CLI's ``main`` in this process, restoring the logging and warning settings it changes."""
    from licsearch.cli.main import main

    capsys.readouterr()
    root = logging.getLogger()
    level = root.level
    with warnings.catch_warnings():
        try:
            rc = main(list(args))
        finally:
            root.setLevel(level)
    out = capsys.readouterr()
    return Result(rc, out.out, out.err)


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


@dataclass
class Stocked:
    """A tiny store with six ingested images, shared (read-only) by the tests of this module."""

    root: Path
    images: dict[str, Path]  # file name -> path
    ids: dict[str, str]  # file name -> point id
    ingest: Result

    def store_args(self) -> list[str]:
        return ["--store", str(self.root)]

    def blob_of(self, name: str) -> bytes:
        with Store.open(self.root) as store:
            payload = store.index.retrieve([self.ids[name]])[0][1]
            return store.blobs.get(payload["blob"])


@pytest.fixture(scope="module")
def stocked(tiny_store_template: Path, module_tmp: MakeDir) -> Stocked:
    base = module_tmp("cli")
    root = base / "store"
    shutil.copytree(tiny_store_template, root)
    images = {f"img{i}.png": write_png(base / "images" / f"img{i}.png", make_image(i)) for i in range(4)}
    for i in range(4, 6):
        images[f"img{i}.png"] = write_png(base / "images" / "sub" / f"img{i}.png", make_image(i, 64, 80))
    proc = run_cli("ingest", "--store", str(root), str(base / "images"), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    ids = {Path(item["path"]).name: item["id"] for item in doc["items"] if item.get("id")}
    return Stocked(root, images, ids, Result(proc.returncode, proc.stdout, proc.stderr))


@pytest.fixture(scope="module")
def small_store(module_tmp: MakeDir) -> tuple[Path, Result]:
    """A store made by `init --json` with a 1000-pixel limit."""
    root = module_tmp("small") / "store"
    proc = run_cli("init", "--store", str(root), *TINY_FLAGS, "--max-pixels", "1000", "--json")
    return root, Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def good_lics(tmp_path: Path) -> Path:
    """A valid .lics of the TINY_FLAGS codec."""
    path = tmp_path / "good.lics"
    path.write_bytes(ModelSet(tiny_models()).encode(make_image(11, 64, 80)).data)
    return path


IMAGE_ERRORS = {  # kind of bad image file -> words its error message must contain
    "not_an_image": "not an image",
    "truncated": "truncated",
    "empty": "not an image",
    "missing": "no such file",
    "over_pixel_limit": "too large",
}


def _damaged_images(d: Path) -> dict[str, Path]:
    """Files that are not acceptable images, by kind (the `missing` one does not exist)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "text.png").write_text("this is not an image\n")
    full = write_png(d / "full.png", make_image(21, 30, 30)).read_bytes()
    (d / "full.png").unlink()
    (d / "truncated.png").write_bytes(full[: len(full) * 2 // 3])
    (d / "empty.png").write_bytes(b"")
    return {
        "not_an_image": d / "text.png",
        "truncated": d / "truncated.png",
        "empty": d / "empty.png",
        "missing": d / "missing.png",
    }


# -- JSON output of every command -----------------------------------------------------------------------------


def test_init_prints_one_json_document_and_warns_about_random_weights(small_store: tuple[Path, Result]) -> None:
    root, proc = small_store
    assert proc.returncode == 0, proc.stderr
    doc = one_json(proc.stdout)
    assert {"store", "space_id", "models", "random_weights"} <= set(doc)
    assert doc["store"] == str(root)
    assert sorted(doc["random_weights"]) == ["adapter", "clip", "codec"]
    assert doc["models"]["codec"]["arch"] == "bmshj2018-hyperprior"
    assert doc["models"]["codec"]["quality"] == 1
    assert all(len(doc["models"][m]["sha256"]) == 64 for m in ("codec", "clip", "adapter"))
    assert RANDOM_WARNING in proc.stderr
    assert (root / "store.json").is_file()


def test_ingest_prints_one_json_document(stocked: Stocked) -> None:
    proc = stocked.ingest
    assert proc.returncode == 0, proc.stderr
    doc = one_json(proc.stdout)
    assert {"ingested", "skipped", "failed", "ids"} <= set(doc)
    assert (doc["ingested"], doc["skipped"], doc["failed"]) == (6, 0, 0)
    assert len(set(doc["ids"])) == 6
    assert set(stocked.ids) == set(stocked.images)
    assert RANDOM_WARNING in proc.stderr


def test_stats_and_fsck_print_one_json_document(stocked: Stocked) -> None:
    proc = run_cli("stats", *stocked.store_args(), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = one_json(proc.stdout)
    with Store.open(stocked.root) as store:
        payloads = [p for _, p in store.index.iter_points()]
        on_disk = store.blobs.total_bytes()
    assert doc["images"] == 6
    assert doc["bytes"] == sum(p["bytes"] for p in payloads) == on_disk
    assert doc["mean_bpp"] == pytest.approx(np.mean([p["bpp"] for p in payloads]))
    assert doc["mean_bpp"] > 0
    assert RANDOM_WARNING in proc.stderr

    proc = run_cli("fsck", *stocked.store_args(), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = one_json(proc.stdout)
    assert doc["ok"] is True
    assert (doc["points"], doc["bitstreams"]) == (6, 6)
    assert doc["missing"] == doc["corrupt"] == doc["orphans"] == []


def test_samples_prints_one_json_document(tmp_path: Path) -> None:
    out = tmp_path / "samples"
    proc = run_cli("samples", "--out", str(out), "-n", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = one_json(proc.stdout)
    assert doc["images"] == 3
    assert Path(doc["captions"]).is_file()
    assert len(Path(doc["captions"]).read_text().splitlines()) == 3
    assert len(list(out.glob("*.png"))) == 3


# -- search ---------------------------------------------------------------------------------------------------


def test_search_by_image_ranks_that_image_first(stocked: Stocked) -> None:
    proc = run_cli("search", *stocked.store_args(), "--image", str(stocked.images["img2.png"]), "--json")
    assert proc.returncode == 0, proc.stderr
    assert RANDOM_WARNING in proc.stderr
    doc = one_json(proc.stdout)
    hits = doc["hits"]
    assert len(hits) == 6
    assert all({"id", "score", "payload"} <= set(h) for h in hits)
    assert hits[0]["id"] == stocked.ids["img2.png"]
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[1]["score"] < hits[0]["score"]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert hits[0]["payload"]["source_path"] == str(stocked.images["img2.png"].resolve())


@pytest.mark.parametrize(
    ("flt", "expected"),
    [("width>=100", ["img1.png", "img2.png", "img3.png"]), ("width=80", ["img4.png", "img5.png"])],
)
def test_search_like_excludes_itself_and_filters(stocked: Stocked, flt: str, expected: list[str]) -> None:
    like = stocked.ids["img0.png"]
    proc = run_cli("search", *stocked.store_args(), "--like", like, "--filter", flt, "--json")
    assert proc.returncode == 0, proc.stderr
    hits = one_json(proc.stdout)["hits"]
    assert like not in [h["id"] for h in hits]
    assert sorted(h["id"] for h in hits) == sorted(stocked.ids[n] for n in expected)
    width = 80 if flt == "width=80" else 128
    assert all(h["payload"]["width"] == width for h in hits)


def test_search_like_accepts_the_largest_top_k(stocked: Stocked) -> None:
    like = stocked.ids["img0.png"]
    proc = run_cli("search", *stocked.store_args(), "--like", like, "--top-k", "1000", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(one_json(proc.stdout)["hits"]) == 5


def test_search_by_long_text_is_truncated_with_a_notice_and_filtered(stocked: Stocked) -> None:
    text = " ".join(f"word{i % 17}" for i in range(300))
    proc = run_cli("search", *stocked.store_args(), "--text", text, "--filter", "width=80", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert any(line.startswith("notice:") and "truncated" in line for line in proc.stderr.splitlines())
    doc = one_json(proc.stdout)
    assert any("truncated" in n for n in doc["notices"])
    assert sorted(h["id"] for h in doc["hits"]) == sorted([stocked.ids["img4.png"], stocked.ids["img5.png"]])
    assert all(h["payload"]["width"] == 80 for h in doc["hits"])


@pytest.mark.parametrize(("text", "words"), [("", "empty"), ("  \n ", "empty"), ("x" * 4097, "too long")])
def test_search_by_bad_text_is_refused(
    stocked: Stocked, capsys: pytest.CaptureFixture[str], text: str, words: str
) -> None:
    res = cli_inprocess(capsys, "search", *stocked.store_args(), "--text", text, "--json")
    assert res.returncode == 2
    assert words in error_line(res.stderr, "search")
    error = json_error(res.stdout)
    assert error["type"] == "TextError"
    assert words in error["message"]


@pytest.mark.parametrize("top_k", ["0", "5000"])
def test_search_top_k_out_of_range_is_refused(stocked: Stocked, top_k: str) -> None:
    proc = run_cli("search", *stocked.store_args(), "--like", stocked.ids["img0.png"], "--top-k", top_k, "--json")
    assert proc.returncode == 2
    assert "out of range" in error_line(proc.stderr, "search")
    assert "1..1000" in json_error(proc.stdout)["message"]


@pytest.mark.parametrize("flt", ["width", "=80", "width>=", "width>=wide", "9lives=1"])
def test_search_bad_filter_syntax_is_refused(stocked: Stocked, flt: str) -> None:
    proc = run_cli("search", *stocked.store_args(), "--text", "cat", "--filter", flt, "--json")
    assert proc.returncode == 2
    msg = error_line(proc.stderr, "search")
    assert "filter" in msg
    assert json_error(proc.stdout)["type"] == "InputError"


@pytest.mark.parametrize(
    "command",
    [["search", "--text", "cat"], ["stats"], ["fsck"], ["ingest", "x.png"], ["get", "0" * 32, "-o", "x.png"]],
    ids=lambda c: c[0],
)
def test_commands_on_a_missing_store_point_to_init(tmp_path: Path, command: list[str]) -> None:
    proc = run_cli(command[0], "--store", str(tmp_path / "nowhere"), *command[1:], "--json")
    assert proc.returncode != 0
    assert "licsearch init" in error_line(proc.stderr, command[0])
    assert "licsearch init" in json_error(proc.stdout)["message"]
    assert not (tmp_path / "nowhere").exists()


def test_a_store_held_by_another_process_is_reported(stocked: Stocked) -> None:
    with Store.open(stocked.root) as store:
        store.index.existing([stocked.ids["img0.png"]])
        proc = run_cli("stats", *stocked.store_args(), "--json")
    assert proc.returncode == 1
    assert "held by another" in error_line(proc.stderr, "stats")
    assert json_error(proc.stdout)["type"] == "StoreError"


# -- get ------------------------------------------------------------------------------------------------------


def test_get_writes_a_png_of_the_original_size(stocked: Stocked, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    proc = run_cli("get", *stocked.store_args(), stocked.ids["img4.png"], "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    assert RANDOM_WARNING in proc.stderr
    doc = one_json(proc.stdout)
    assert (doc["width"], doc["height"]) == (80, 64)
    assert doc["id"] == stocked.ids["img4.png"]
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.size == (80, 64)
        decoded = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(decoded, ModelSet(tiny_models()).decode(stocked.blob_of("img4.png")))


@pytest.mark.parametrize(("suffix", "fmt"), [(".jpg", "JPEG"), (".jpeg", "JPEG"), (".webp", "WEBP")])
def test_get_writes_jpeg_and_webp_by_suffix(
    stocked: Stocked, tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str, fmt: str
) -> None:
    out = tmp_path / f"out{suffix}"
    res = cli_inprocess(capsys, "get", *stocked.store_args(), stocked.ids["img1.png"], "-o", str(out))
    assert res.returncode == 0, res.stderr
    with Image.open(out) as im:
        assert im.format == fmt
        assert im.size == (128, 96)


def test_get_with_an_unknown_suffix_writes_nothing(
    stocked: Stocked, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = cli_inprocess(capsys, "get", *stocked.store_args(), stocked.ids["img1.png"], "-o", str(out_dir / "x.tga"))
    assert res.returncode == 2
    assert "suffix" in error_line(res.stderr, "get")
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("image_id", ["00000000-0000-0000-0000-000000000001", "not-a-uuid"])
def test_get_of_an_unknown_id_is_refused(
    stocked: Stocked, tmp_path: Path, capsys: pytest.CaptureFixture[str], image_id: str
) -> None:
    res = cli_inprocess(capsys, "get", *stocked.store_args(), image_id, "-o", str(tmp_path / "x.png"), "--json")
    assert res.returncode == 2
    error_line(res.stderr, "get")
    assert json_error(res.stdout)["type"] == "InputError"
    assert not (tmp_path / "x.png").exists()


# -- encode / decode ------------------------------------------------------------------------------------------


def test_encode_then_decode_round_trip_is_deterministic(
    stocked: Stocked, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = stocked.images["img4.png"]
    lics = tmp_path / "x.lics"
    proc = run_cli("encode", str(src), "-o", str(lics), *TINY_FLAGS, "--json")
    assert proc.returncode == 0, proc.stderr
    assert RANDOM_WARNING in proc.stderr
    doc = one_json(proc.stdout)
    assert doc["bytes"] == lics.stat().st_size
    assert (doc["width"], doc["height"]) == (80, 64)
    assert doc["bpp"] == pytest.approx(8 * doc["bytes"] / (80 * 64))
    # The same codec made the store's bitstream of this image: encoding is deterministic across processes and
    # batch sizes (the store encoded it in a batch of two).
    assert lics.read_bytes() == stocked.blob_of("img4.png")

    first, second = tmp_path / "y1.png", tmp_path / "y2.png"
    proc = run_cli("decode", str(lics), "-o", str(first), *TINY_FLAGS, "--json")
    assert proc.returncode == 0, proc.stderr
    assert RANDOM_WARNING in proc.stderr
    doc = one_json(proc.stdout)
    assert (doc["width"], doc["height"]) == (80, 64)
    assert png_size(first) == png_size(src)
    res = cli_inprocess(capsys, "decode", str(lics), "-o", str(second), *TINY_FLAGS)  # another process
    assert res.returncode == 0, res.stderr
    assert first.read_bytes() == second.read_bytes()


def test_encode_with_a_store_uses_the_stores_codec(
    stocked: Stocked, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s.lics"
    src = str(stocked.images["img0.png"])
    res = cli_inprocess(capsys, "encode", *stocked.store_args(), src, "-o", str(out), "--json")
    assert res.returncode == 0, res.stderr
    doc = one_json(res.stdout)
    with Store.open(stocked.root) as store:
        c = store.config.models.codec
        assert doc["codec_profile"] == f"{c.arch}:q{c.quality}:{c.sha256[:12]}"
    assert out.read_bytes() == stocked.blob_of("img0.png")

    decoded = tmp_path / "s.png"
    res = cli_inprocess(capsys, "decode", *stocked.store_args(), str(out), "-o", str(decoded))
    assert res.returncode == 0, res.stderr
    assert png_size(decoded) == (128, 96)


def test_encode_with_a_store_refuses_other_model_flags(
    stocked: Stocked, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.lics"
    src = str(stocked.images["img0.png"])
    res = cli_inprocess(capsys, "encode", *stocked.store_args(), src, "-o", str(out), *MBT_FLAGS)
    assert res.returncode != 0
    assert "other models" in error_line(res.stderr, "encode")
    assert not out.exists()


def test_init_on_an_existing_store_is_refused(stocked: Stocked, capsys: pytest.CaptureFixture[str]) -> None:
    before = (stocked.root / "store.json").read_bytes()
    res = cli_inprocess(capsys, "init", *stocked.store_args(), *TINY_FLAGS, "--json")
    assert res.returncode == 1
    assert "already exists" in error_line(res.stderr, "init")
    assert json_error(res.stdout)["type"] == "StoreError"
    assert (stocked.root / "store.json").read_bytes() == before


def test_decode_of_a_truncated_bitstream_writes_nothing(good_lics: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.lics"
    bad.write_bytes(good_lics.read_bytes()[:-100])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = run_cli("decode", str(bad), "-o", str(out_dir / "y.png"), *TINY_FLAGS, "--json")
    assert proc.returncode == 2
    assert "truncated" in error_line(proc.stderr, "decode")
    assert json_error(proc.stdout)["type"] == "BitstreamError"
    assert list(out_dir.iterdir()) == []


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


DAMAGE = {
    "bit_flip_in_payload": (lambda d: _flip(d, len(d) // 2), "corrupt"),
    "bit_flip_in_profile_id": (lambda d: _flip(d, 12), "corrupt"),
    "bit_flip_in_profile_length": (lambda d: _flip(d, 6), "damaged"),
    "bit_flip_in_checksum": (lambda d: _flip(d, len(d) - 1), "corrupt"),
    "wrong_magic": (lambda d: b"LICX" + d[4:], "magic"),
    "unknown_version": (lambda d: d[:4] + bytes([VERSION + 1]) + d[5:], "version"),
    "padded": (lambda d: d + b"\0", "padded"),
    "empty": (lambda d: b"", "magic"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_decode_of_a_damaged_bitstream_writes_nothing(
    good_lics: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    make, words = DAMAGE[damage]
    bad = tmp_path / "bad.lics"
    bad.write_bytes(make(good_lics.read_bytes()))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = cli_inprocess(capsys, "decode", str(bad), "-o", str(out_dir / "y.png"), *TINY_FLAGS, "--json")
    assert res.returncode == 2
    assert words in error_line(res.stderr, "decode")
    assert json_error(res.stdout)["type"] == "BitstreamError"
    assert list(out_dir.iterdir()) == []


def test_decode_of_another_codec_profiles_bitstream_writes_nothing(
    stocked: Stocked, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lics = tmp_path / "mbt.lics"
    res = cli_inprocess(capsys, "encode", str(stocked.images["img4.png"]), "-o", str(lics), *MBT_FLAGS, "--json")
    assert res.returncode == 0, res.stderr
    assert one_json(res.stdout)["codec_profile"].startswith("mbt2018-mean:q1:")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for store_or_flags in (TINY_FLAGS, stocked.store_args()):
        res = cli_inprocess(capsys, "decode", str(lics), "-o", str(out_dir / "y.png"), *store_or_flags, "--json")
        assert res.returncode == 2
        assert "codec profile mbt2018-mean" in error_line(res.stderr, "decode")
        assert json_error(res.stdout)["type"] == "BitstreamError"
    assert list(out_dir.iterdir()) == []


def test_decode_of_a_missing_bitstream_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = cli_inprocess(capsys, "decode", str(tmp_path / "none.lics"), "-o", str(tmp_path / "y.png"), *TINY_FLAGS)
    assert res.returncode == 2
    assert "cannot read" in error_line(res.stderr, "decode")
    assert not (tmp_path / "y.png").exists()


# -- bad images -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["not_an_image", "truncated", "empty", "missing"])
@pytest.mark.parametrize("command", ["encode", "search"])
def test_bad_images_are_refused(
    stocked: Stocked, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, kind: str
) -> None:
    bad = _damaged_images(tmp_path / "in")[kind]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    if command == "encode":
        args: Sequence[str] = ["encode", str(bad), "-o", str(out_dir / "x.lics"), *TINY_FLAGS]
    else:
        args = ["search", *stocked.store_args(), "--image", str(bad)]
    res = cli_inprocess(capsys, *args, "--json")
    assert res.returncode == 2
    msg = error_line(res.stderr, command)
    assert str(bad) in msg
    assert IMAGE_ERRORS[kind] in msg
    assert json_error(res.stdout)["type"] == "ImageError"
    assert list(out_dir.iterdir()) == []


def test_ingest_with_bad_files_among_good_ones(small_store: tuple[Path, Result], tmp_path: Path) -> None:
    root, init = small_store
    assert init.returncode == 0, init.stderr
    bad = _damaged_images(tmp_path / "bad")
    bad["over_pixel_limit"] = write_png(tmp_path / "bad" / "big.png", make_image(22, 64, 64))  # 4096 > 1000 pixels
    good = [write_png(tmp_path / "good" / f"g{i}.png", make_image(30 + i, 30, 30)) for i in range(2)]
    paths = [str(good[0]), *map(str, bad.values()), str(good[1])]
    proc = run_cli("ingest", "--store", str(root), *paths, "--json")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    doc = one_json(proc.stdout)
    assert (doc["ingested"], doc["skipped"], doc["failed"]) == (2, 0, len(bad))
    assert len(doc["ids"]) == 2
    errors = {Path(i["path"]).name: i["error"] for i in doc["items"] if i["status"] == "failed"}
    for kind, path in bad.items():
        assert IMAGE_ERRORS[kind] in errors[path.name], errors
        lines = [line for line in proc.stderr.splitlines() if line.startswith(f"failed: {path}: ")]
        assert len(lines) == 1, proc.stderr

    proc = run_cli("stats", "--store", str(root), "--json")
    assert proc.returncode == 0, proc.stderr
    assert one_json(proc.stdout)["images"] == 2


def test_search_by_an_image_over_the_stores_pixel_limit_is_refused(
    small_store: tuple[Path, Result], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = small_store
    big = write_png(tmp_path / "big.png", make_image(23, 64, 64))
    res = cli_inprocess(capsys, "search", "--store", str(root), "--image", str(big), "--json")
    assert res.returncode == 2
    assert "too large" in error_line(res.stderr, "search")
    assert json_error(res.stdout)["type"] == "ImageError"
