"""Contract tests of licsearch.imageio: formats, colour policy, limits, bad files, atomic writes, folder walks.

Every image is generated here in ``tmp_path``; nothing is downloaded or read from shared data.
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
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from licsearch.errors import ImageError, InputError
from licsearch.imageio import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    LoadedImage,
    encode_image,
    iter_image_files,
    load_image,
    save_image,
)

HEIGHT, WIDTH = 48, 64  # non-square, so a swapped axis shows


def gradient(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A smooth RGB image: lossy codecs reproduce it closely."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) % 256], axis=2).astype(np.uint8)


def noise(height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> np.ndarray:
    """An incompressible RGB image: its files are large enough to cut in half."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write(path: Path, image: Image.Image, **options: Any) -> Path:
    image.save(path, **options)
    return path


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny 1-bit PNG whose IHDR (with a valid CRC) claims another size: a decompression-bomb header."""
    data = encoded(Image.new("1", (8, 8)), "PNG")
    assert data[12:16] == b"IHDR"
    chunk = data[12:16] + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


def load_error(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES) -> ImageError:
    """Load a file that must fail, and check the error names the file."""
    with pytest.raises(ImageError) as caught:
        load_image(path, max_pixels=max_pixels, max_bytes=max_bytes)
    assert path.name in str(caught.value)
    return caught.value


# --- formats -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "options", "pil_format", "max_mean_error"),
    [
        (".png", {}, "PNG", 0.0),
        (".bmp", {}, "BMP", 0.0),
        (".tif", {}, "TIFF", 0.0),
        (".webp", {"lossless": True}, "WEBP", 0.0),
        (".webp", {"quality": 90}, "WEBP", 4.0),
        (".jpg", {"quality": 90}, "JPEG", 4.0),
    ],
)
def test_formats_round_trip_to_rgb_uint8(
    tmp_path: Path, suffix: str, options: dict[str, Any], pil_format: str, max_mean_error: float
) -> None:
    pixels = gradient()
    path = write(tmp_path / f"image{suffix}", Image.fromarray(pixels), **options)

    loaded = load_image(path)

    assert loaded.format == pil_format
    assert loaded.pixels.shape == (HEIGHT, WIDTH, 3)
    assert loaded.pixels.dtype == np.uint8
    assert loaded.pixels.flags.c_contiguous
    assert (loaded.width, loaded.height) == (WIDTH, HEIGHT)
    error = np.abs(loaded.pixels.astype(np.int16) - pixels).mean()
    assert error <= max_mean_error
    assert loaded.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_gif_gives_first_frame(tmp_path: Path) -> None:
    red = Image.new("RGB", (WIDTH, HEIGHT), (255, 0, 0))
    blue = Image.new("RGB", (WIDTH, HEIGHT), (0, 0, 255))
    path = write(tmp_path / "anim.gif", red, save_all=True, append_images=[blue])

    loaded = load_image(path)

    assert loaded.format == "GIF"
    assert loaded.pixels.shape == (HEIGHT, WIDTH, 3)
    assert (loaded.pixels == (255, 0, 0)).all()


def test_mpo_is_read_as_its_first_jpeg_frame(tmp_path: Path) -> None:
    first = Image.new("RGB", (WIDTH, HEIGHT), (200, 100, 50))
    second = Image.new("RGB", (WIDTH, HEIGHT), (10, 20, 230))
    path = write(tmp_path / "stereo.mpo", first, format="MPO", save_all=True, append_images=[second])

    loaded = load_image(path)

    assert loaded.format == "JPEG"
    assert np.abs(loaded.pixels.astype(np.int16) - (200, 100, 50)).max() <= 3


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red
    pixels[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    path = write(tmp_path / "rotated.jpg", Image.fromarray(pixels), exif=exif, quality=95)

    loaded = load_image(path)

    assert loaded.pixels.shape == (40, 20, 3)
    assert (loaded.width, loaded.height) == (20, 40)
    # Rotating clockwise puts the left half on top.
    assert np.abs(loaded.pixels[:15].astype(np.int16) - (255, 0, 0)).max() <= 10
    assert np.abs(loaded.pixels[25:].astype(np.int16) - (0, 0, 255)).max() <= 10


# --- colour policy -------------------------------------------------------------------------------------------------


def _rgba() -> Image.Image:
    return Image.fromarray(
        np.array([[(255, 0, 0, 255), (0, 0, 0, 0)], [(0, 0, 0, 128), (10, 20, 30, 255)]], dtype=np.uint8)
    )


def _la() -> Image.Image:
    return Image.fromarray(np.array([[(200, 255), (0, 0)], [(0, 128), (30, 255)]], dtype=np.uint8))


def _palette_with_transparency() -> Image.Image:
    image = Image.fromarray(np.array([[1, 0], [0, 2]], dtype=np.uint8), mode="P")
    image.putpalette([0, 0, 0, 0, 255, 0, 10, 20, 30])
    image.info["transparency"] = 0
    return image


def _rgb_with_transparent_colour() -> Image.Image:
    image = Image.fromarray(np.array([[(0, 255, 0), (0, 0, 0)], [(0, 0, 0), (10, 20, 30)]], dtype=np.uint8))
    image.info["transparency"] = (0, 0, 0)
    return image


@pytest.mark.parametrize(
    ("make", "suffix", "expected"),
    [
        (_rgba, ".png", [[(255, 0, 0), (255, 255, 255)], [(127, 127, 127), (10, 20, 30)]]),
        (_rgba, ".webp", [[(255, 0, 0), (255, 255, 255)], [(127, 127, 127), (10, 20, 30)]]),
        (_la, ".png", [[(200, 200, 200), (255, 255, 255)], [(127, 127, 127), (30, 30, 30)]]),
        (_palette_with_transparency, ".png", [[(0, 255, 0), (255, 255, 255)], [(255, 255, 255), (10, 20, 30)]]),
        (_palette_with_transparency, ".gif", [[(0, 255, 0), (255, 255, 255)], [(255, 255, 255), (10, 20, 30)]]),
        (_rgb_with_transparent_colour, ".png", [[(0, 255, 0), (255, 255, 255)], [(255, 255, 255), (10, 20, 30)]]),
    ],
    ids=["rgba-png", "rgba-webp", "la-png", "palette-png", "palette-gif", "rgb-trns-png"],
)
def test_transparency_is_composited_over_white(
    tmp_path: Path, make: object, suffix: str, expected: list[list[tuple[int, int, int]]]
) -> None:
    assert callable(make)
    image = make()
    options: dict[str, Any] = {"lossless": True} if suffix == ".webp" else {}
    if "transparency" in image.info:
        options["transparency"] = image.info["transparency"]
    path = write(tmp_path / f"alpha{suffix}", image, **options)

    loaded = load_image(path)

    np.testing.assert_array_equal(loaded.pixels, np.array(expected, dtype=np.uint8))


@pytest.mark.parametrize(
    ("array", "suffix", "expected"),
    [
        (np.array([[65535, 32896, 0, 257, 128, 129]], dtype=np.uint16), ".png", [255, 128, 0, 1, 0, 1]),
        (np.array([[65535, 32896, 0, 70000, -5, 129]], dtype=np.int32), ".tif", [255, 128, 0, 255, 0, 1]),
        (np.array([[-3.0, 0.4, 127.6, 300.0, 255.0, 1.5]], dtype=np.float32), ".tif", [0, 0, 128, 255, 255, 2]),
        (np.array([[0, 1, 127, 128, 254, 255]], dtype=np.uint8), ".png", [0, 1, 127, 128, 254, 255]),
        (np.array([[False, True, True, False, True, False]]), ".png", [0, 255, 255, 0, 255, 0]),
    ],
    ids=["uint16-png", "int32-tiff", "float-tiff", "gray8-png", "bilevel-png"],
)
def test_grayscale_depths_are_scaled_to_8_bit_rgb(
    tmp_path: Path, array: np.ndarray, suffix: str, expected: list[int]
) -> None:
    path = write(tmp_path / f"gray{suffix}", Image.fromarray(array))

    loaded = load_image(path)

    assert loaded.pixels.shape == (1, 6, 3)
    np.testing.assert_array_equal(loaded.pixels, np.repeat(np.array(expected, dtype=np.uint8)[None, :, None], 3, 2))


def test_sixteen_bit_png_is_read_as_16_bit() -> None:
    # Guards the test above: the PNG really holds 16-bit samples.
    data = encoded(Image.fromarray(np.array([[65535, 32896]], dtype=np.uint16)), "PNG")
    assert data[24] == 16  # IHDR bit depth


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path: Path) -> None:
    path = write(tmp_path / "cmyk.jpg", Image.new("CMYK", (WIDTH, HEIGHT), (0, 255, 255, 0)), quality=95)

    loaded = load_image(path)

    assert loaded.pixels.shape == (HEIGHT, WIDTH, 3)
    assert np.abs(loaded.pixels.astype(np.int16) - (255, 0, 0)).max() <= 3


# --- bad files -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.png", b""),
        ("notes.jpg", b"these are words, not pixels\n"),
        ("header.png", encoded(Image.fromarray(gradient()), "PNG")[:10]),
        ("portable.ppm", encoded(Image.fromarray(gradient()), "PPM")),  # an image, but not a supported format
    ],
)
def test_non_images_are_refused(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)

    error = load_error(path)

    assert "not an image" in str(error)
    assert "PNG" in str(error)


@pytest.mark.parametrize(("suffix", "fmt"), [(".png", "PNG"), (".jpg", "JPEG")])
def test_truncated_images_are_refused(tmp_path: Path, suffix: str, fmt: str) -> None:
    data = encoded(Image.fromarray(noise()), fmt)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])

    error = load_error(path)

    assert "truncated or corrupt" in str(error)


def test_zero_size_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty-canvas.png"
    path.write_bytes(png_claiming_size(0, 8))

    load_error(path)


def test_folder_is_not_an_image_file(tmp_path: Path) -> None:
    folder = tmp_path / "looks-like.png"
    folder.mkdir()

    assert "folder" in str(load_error(folder))


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in str(load_error(tmp_path / "absent.png"))


_UNPRIVILEGED = """
import json, sys
from licsearch.errors import ImageError
from licsearch.imageio import iter_image_files, load_image
what, path = sys.argv[1:]
if what == "load":
    try:
        load_image(path)
        print(json.dumps("loaded"))
    except ImageError as e:
        print(json.dumps(str(e)))
else:
    print(json.dumps([[str(p), None if e is None else str(e)] for p, e in iter_image_files([path])]))
"""


def unprivileged(what: str, path: Path) -> Any:
    """Runs ``load_image`` or ``iter_image_files`` on ``path`` in a child process that file permissions bind.

    As root (how CI runs) the child keeps its uid but loses the capabilities that override permission bits
    (``setpriv --bounding-set -dac_override,-dac_read_search``), so a mode-0 file is unreadable to it as to anyone.
    """
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv(1) (util-linux) to drop the permission-override capabilities")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
    proc = subprocess.run([*prefix, sys.executable, "-c", _UNPRIVILEGED, what, str(path)], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX permissions")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path / "secret.png", Image.fromarray(gradient()))
    assert unprivileged("load", path) == "loaded", "the child can read the file before its mode is changed"
    path.chmod(0)

    assert "permission" in unprivileged("load", path)


def test_bytes_errors_use_the_given_name() -> None:
    with pytest.raises(ImageError, match=r"^upload\.png: not an image"):
        load_image(b"junk", name="upload.png")
    with pytest.raises(ImageError, match=r"^image bytes: not an image"):
        load_image(b"junk")


def test_image_errors_are_input_errors() -> None:
    assert issubclass(ImageError, InputError)


# --- limits --------------------------------------------------------------------------------------------------------


def test_defaults() -> None:
    assert DEFAULT_MAX_PIXELS == 40_000_000
    assert DEFAULT_MAX_BYTES == 100 * 1024 * 1024


def test_max_pixels(tmp_path: Path) -> None:
    path = write(tmp_path / "small.png", Image.fromarray(gradient()))

    assert "max_pixels" in str(load_error(path, max_pixels=WIDTH * HEIGHT - 1))
    assert load_image(path, max_pixels=WIDTH * HEIGHT).pixels.shape == (HEIGHT, WIDTH, 3)


@pytest.mark.parametrize(
    ("width", "height", "max_pixels"),
    [
        (30_000, 30_000, DEFAULT_MAX_PIXELS),  # over our limit and Pillow's hard limit
        (7_000, 7_000, DEFAULT_MAX_PIXELS),  # over our limit only
        (10_000, 10_000, 10**9),  # within ours, over Pillow's warning threshold
        (30_000, 30_000, 10**12),  # within ours, over Pillow's error threshold
    ],
)
def test_bomb_header_is_refused_before_decoding(
    tmp_path: Path, width: int, height: int, max_pixels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming_size(width, height))
    pillow_limit = Image.MAX_IMAGE_PIXELS
    filters = list(warnings.filters)
    decoders: list[str] = []
    real_getdecoder = Image._getdecoder  # what every ImageFile.load() asks for its pixel decoder

    def spy(mode: str, name: str, *args: Any, **kwargs: Any) -> Any:
        decoders.append(name)
        return real_getdecoder(mode, name, *args, **kwargs)

    monkeypatch.setattr(Image, "_getdecoder", spy)
    error = load_error(path, max_pixels=max_pixels)

    assert "too large" in str(error)
    assert decoders == [], "a pixel decoder was created for a bomb header"
    assert pillow_limit == Image.MAX_IMAGE_PIXELS
    assert warnings.filters == filters
    load_image(write(tmp_path / "ordinary.png", Image.fromarray(gradient())))
    assert "zip" in decoders, "the spy sees the decoder of an ordinary PNG"


def test_max_bytes(tmp_path: Path) -> None:
    path = write(tmp_path / "sized.png", Image.fromarray(gradient()))
    size = path.stat().st_size

    assert "max_bytes" in str(load_error(path, max_bytes=size - 1))
    assert load_image(path, max_bytes=size).width == WIDTH
    with pytest.raises(ImageError, match="max_bytes"):
        load_image(path.read_bytes(), max_bytes=size - 1)


@pytest.mark.parametrize("limits", [{"max_pixels": 0}, {"max_bytes": -1}, {"max_pixels": 1.5}])
def test_limits_must_be_positive_integers(limits: dict[str, object]) -> None:
    with pytest.raises(InputError, match="positive integer"):
        load_image(b"", **limits)  # type: ignore[arg-type]


# --- identity ------------------------------------------------------------------------------------------------------


def test_pixels_sha256_depends_on_pixels_not_format(tmp_path: Path) -> None:
    pixels = gradient()
    png = load_image(write(tmp_path / "same.png", Image.fromarray(pixels)))
    bmp = load_image(write(tmp_path / "same.bmp", Image.fromarray(pixels)))
    other = load_image(write(tmp_path / "other.png", Image.fromarray(255 - pixels)))

    assert png.pixels_sha256() == bmp.pixels_sha256()
    assert png.source_sha256 != bmp.source_sha256
    assert png.pixels_sha256() != other.pixels_sha256()


def test_pixels_sha256_includes_the_shape() -> None:
    data = np.arange(18, dtype=np.uint8)
    wide = LoadedImage(pixels=data.reshape(2, 3, 3), source_sha256="", format="PNG")
    tall = LoadedImage(pixels=data.reshape(3, 2, 3), source_sha256="", format="PNG")

    assert wide.pixels_sha256() != tall.pixels_sha256()


# --- writing -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pil_format", "max_mean_error"),
    [("out.png", "PNG", 0.0), ("out.PNG", "PNG", 0.0), ("out.jpg", "JPEG", 4.0), ("out.jpeg", "JPEG", 4.0),
     ("out.webp", "WEBP", 4.0)],
)  # fmt: skip
def test_save_image_round_trips(tmp_path: Path, name: str, pil_format: str, max_mean_error: float) -> None:
    pixels = gradient()
    path = tmp_path / name

    save_image(pixels, path)
    loaded = load_image(path)

    assert loaded.format == pil_format
    assert np.abs(loaded.pixels.astype(np.int16) - pixels).mean() <= max_mean_error
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left behind


def test_save_image_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "replace.png"
    save_image(gradient(), path)
    save_image(255 - gradient(), path)

    np.testing.assert_array_equal(load_image(path).pixels, 255 - gradient())
    assert [p.name for p in tmp_path.iterdir()] == ["replace.png"]


@pytest.mark.parametrize("name", ["out.gif", "out.txt", "out"])
def test_save_image_refuses_unknown_suffixes(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match=r"\.png") as caught:
        save_image(gradient(), tmp_path / name)

    assert name in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_save_image_failure_leaves_nothing_half_written(tmp_path: Path) -> None:
    blocker = tmp_path / "taken.png"
    blocker.mkdir()  # the final rename cannot replace a folder

    with pytest.raises(InputError, match=r"taken\.png"):
        save_image(gradient(), blocker)

    assert [p.name for p in tmp_path.iterdir()] == ["taken.png"]
    assert blocker.is_dir()
    with pytest.raises(InputError, match="missing"):
        save_image(gradient(), tmp_path / "missing" / "out.png")


@pytest.mark.parametrize(
    "pixels",
    [
        gradient().astype(np.float32),
        gradient()[:, :, 0],
        np.zeros((4, 4, 4), dtype=np.uint8),
        np.zeros((0, 4, 3), dtype=np.uint8),
        [[0, 0, 0]],
    ],
    ids=["float", "2d", "rgba", "empty", "list"],
)
def test_bad_pixels_are_refused(tmp_path: Path, pixels: object) -> None:
    with pytest.raises(InputError, match="pixels"):
        save_image(pixels, tmp_path / "bad.png")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="pixels"):
        encode_image(pixels, "png")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("quality", [0, 101, 9.5])
def test_bad_quality_is_refused(quality: object) -> None:
    with pytest.raises(InputError, match="quality"):
        encode_image(gradient(), "jpeg", quality=quality)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fmt", "pil_format"),
    [("png", "PNG"), ("PNG", "PNG"), ("jpeg", "JPEG"), ("jpg", "JPEG"), ("JPG", "JPEG"), ("webp", "WEBP"),
     ("WebP", "WEBP")],
)  # fmt: skip
def test_encode_image(fmt: str, pil_format: str) -> None:
    loaded = load_image(encode_image(gradient(), fmt))

    assert loaded.format == pil_format
    assert loaded.pixels.shape == (HEIGHT, WIDTH, 3)


def test_encode_image_quality_changes_lossy_size() -> None:
    assert len(encode_image(noise(), "jpeg", quality=30)) < len(encode_image(noise(), "jpeg", quality=95))


@pytest.mark.parametrize("fmt", ["gif", "bmp", "", ".png"])
def test_encode_image_refuses_unknown_formats(fmt: str) -> None:
    with pytest.raises(InputError, match="unknown image format"):
        encode_image(gradient(), fmt)


# --- folder walks --------------------------------------------------------------------------------------------------


def test_image_suffixes() -> None:
    wanted = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif"}
    assert wanted == IMAGE_SUFFIXES
    assert all(suffix == suffix.lower() for suffix in IMAGE_SUFFIXES)


def test_iter_image_files_walks_sorted_skips_hidden_and_reports_missing(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for relative in ["b.png", "a.jpg", "Z.TIFF", "sub/c.webp", "sub/deeper/d.gif", "sub/notes.txt", ".hidden.png",
                     ".git/e.png", "sub/.cache/f.png", "readme.md"]:  # fmt: skip
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    if hasattr(os, "symlink"):
        (root / "loop").symlink_to(root, target_is_directory=True)  # must not be followed
    explicit = root / "sub" / "notes.txt"
    missing = tmp_path / "nowhere"

    results = list(iter_image_files([root, explicit, str(missing)]))

    assert [(path.relative_to(tmp_path).as_posix(), error) for path, error in results[:-1]] == [
        ("photos/Z.TIFF", None),
        ("photos/a.jpg", None),
        ("photos/b.png", None),
        ("photos/sub/c.webp", None),
        ("photos/sub/deeper/d.gif", None),
        ("photos/sub/notes.txt", None),  # named explicitly: kept whatever its suffix
    ]
    missing_path, missing_error = results[-1]
    assert missing_path == missing
    assert isinstance(missing_error, ImageError)
    assert "nowhere" in str(missing_error)


def test_iter_image_files_keeps_going_after_a_bad_path(tmp_path: Path) -> None:
    image = tmp_path / "one.png"
    image.write_bytes(b"x")

    results = list(iter_image_files([tmp_path / "gone", image]))

    assert isinstance(results[0][1], ImageError)
    assert results[1] == (image, None)


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX permissions")
def test_iter_image_files_reports_unlistable_folder(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "a.png").write_bytes(b"x")
    assert unprivileged("walk", tmp_path) == [[str(locked / "a.png"), None]], "listable before its mode is changed"
    locked.chmod(0)
    try:
        results = unprivileged("walk", tmp_path)
    finally:
        locked.chmod(0o755)

    assert len(results) == 1
    assert results[0][0] == str(locked)
    assert results[0][1] is not None and "permission" in results[0][1].lower()
