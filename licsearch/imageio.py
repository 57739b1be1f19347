"""Reading and writing images, with limits, for bytes and files that nobody has vetted.

Every image that enters the project goes through :func:`load_image`, which turns it into one canonical form:
an ``(H, W, 3)`` ``uint8`` RGB array, C-contiguous. Anything that cannot be made into that form raises
:class:`~licsearch.errors.ImageError` naming the file and what is wrong, never a raw Pillow or OS traceback.

Accepted formats are JPEG (MPO files as their first, JPEG, frame, reported as ``"JPEG"``), PNG, WebP, BMP,
TIFF, GIF, HEIC/HEIF (through ``pillow-heif``, registered on first use) and AVIF (Pillow's own plugin); only the
first frame of an animated or multi-page file, or the primary image of a HEIF collection, is read. EXIF fields of
the file are read into :attr:`LoadedImage.exif` by :mod:`licsearch.exif`.

Limits, checked in this order so that nothing large is read or decoded before it is refused:

* ``max_bytes``: a file larger than this is refused from its size, before it is read.
* ``max_pixels``: ``width * height`` from the header is compared with the limit before any pixel is decoded.
  Pillow's own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``, left untouched) is also turned into an
  :class:`ImageError`, so a limit above Pillow's is capped by it.
* Truncated or corrupt pixel data is an error; truncated images are never completed with grey.

Colour policy, so that the same picture gives the same pixels whatever its container:

* EXIF orientation is applied, so ``width`` and ``height`` are those of the image as displayed.
* Transparency (RGBA, LA, PA, a palette or a single colour marked transparent) is composited over white.
* Bilevel, grayscale, palette, CMYK and YCbCr images are converted to RGB with Pillow's conversions; embedded
  ICC profiles are not applied (pixels are taken to be sRGB).
* 16-bit grayscale (``I;16*``, and ``I`` holding ``0..65535``) is scaled to 8 bits as ``round(v / 257)``, so
  65535 becomes 255 and 32896 becomes 128; ``I`` values outside that range are clipped to it first.
  Transparency in 16-bit grayscale is ignored.
* Floating-point grayscale (``F``) is rounded and clipped to ``0..255``.

Writing (:func:`save_image`, :func:`encode_image`) supports PNG, JPEG and WebP and replaces files atomically.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import stat
import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from licsearch import defaults
from licsearch.errors import ImageError, InputError
from licsearch.exif import read_exif

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "LoadedImage",
    "encode_image",
    "iter_image_files",
    "load_image",
    "save_image",
]

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif"}
)
"""Lowercase file suffixes picked up when a folder is walked."""

DEFAULT_MAX_PIXELS: int = defaults.MAX_PIXELS
DEFAULT_MAX_BYTES: int = 100 * 1024 * 1024

# Pillow plugin ids tried when opening; MPO files are opened by the JPEG plugin.
_DECODE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "HEIF", "AVIF")
_SUPPORTED_TEXT = "JPEG, PNG, WebP, BMP, TIFF, GIF, HEIC/HEIF, AVIF"

# Errors Pillow's decoders raise on malformed input.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, struct.error)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


@dataclass(frozen=True)
class LoadedImage:
    """An image decoded to canonical RGB pixels.

    Attributes:
        pixels: ``(H, W, 3)`` ``uint8`` RGB array, C-contiguous.
        source_sha256: hex SHA-256 of the input bytes exactly as read (identity of the file).
        format: Pillow's name of the format the bytes were in, e.g. ``"PNG"`` or ``"JPEG"``.
        exif: the EXIF fields of :func:`licsearch.exif.read_exif` (``taken``, ``camera``, ...); absent ones omitted.
        exif_notices: one line per EXIF field that was present but unusable and so skipped.
    """

    pixels: np.ndarray
    source_sha256: str
    format: str
    exif: dict[str, Any] = field(default_factory=dict)
    exif_notices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_pixels(self.pixels)
        if not self.pixels.flags.c_contiguous:
            raise InputError("LoadedImage.pixels must be C-contiguous", hint="pass np.ascontiguousarray(pixels)")

    @property
    def width(self) -> int:
        """Width in pixels, after EXIF orientation."""
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        """Height in pixels, after EXIF orientation."""
        return int(self.pixels.shape[0])

    def pixels_sha256(self) -> str:
        """Hex SHA-256 of the decoded content: the same pixels give the same digest whatever the file format."""
        digest = hashlib.sha256(b"%dx%d:" % (self.width, self.height))
        digest.update(self.pixels.tobytes())
        return digest.hexdigest()


def load_image(
    source: str | os.PathLike[str] | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> LoadedImage:
    """Decode an image file or byte string to RGB pixels, refusing bombs, truncation and non-images.

    Args:
        source: a path to read, or the image's bytes.
        max_pixels: largest ``width * height`` accepted, checked from the header before decoding.
        max_bytes: largest input size accepted, checked before the file is read.
        name: what to call the image in error messages; defaults to the path (``"image bytes"`` for bytes).

    Returns:
        The decoded image and the SHA-256 of its bytes.

    Raises:
        ImageError: the input cannot be read, is not a supported image, is too large, or is corrupt.
        InputError: a limit is not a positive integer.
    """
    for limit_name, limit in (("max_pixels", max_pixels), ("max_bytes", max_bytes)):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise InputError(f"{limit_name} must be a positive integer, got {limit!r}")
    if isinstance(source, bytes | bytearray | memoryview):
        label = name or "image bytes"
        data = bytes(source)
        if len(data) > max_bytes:
            raise _too_many_bytes(label, len(data), max_bytes)
    else:
        label = name or os.fspath(source)
        data = _read_file(Path(source), label, max_bytes)
    return _decode(data, label, max_pixels)


def save_image(pixels: np.ndarray, path: str | os.PathLike[str], *, quality: int = 95) -> None:
    """Write pixels to ``path`` in the format its suffix names, replacing any file there atomically.

    The image is encoded in memory first, then written to a hidden temporary file in the same folder, flushed to
    disk and renamed over ``path``, so a failure never leaves a half-written file behind.

    Args:
        pixels: ``(H, W, 3)`` ``uint8`` RGB array.
        path: destination; its suffix (``.png``, ``.jpg``, ``.jpeg``, ``.webp``) picks the format.
        quality: JPEG/WebP quality, 1 to 100; ignored by PNG.

    Raises:
        InputError: unknown suffix, bad pixels or quality, or the file cannot be written.
    """
    target = Path(path)
    encoding = _encoding_for(target.suffix, f"cannot save {target}: unknown suffix {target.suffix!r}")
    data = _encode(pixels, encoding, quality)
    _write_atomically(target, data)


def encode_image(pixels: np.ndarray, fmt: str, *, quality: int = 95) -> bytes:
    """Encode pixels to the bytes of an image file.

    Args:
        pixels: ``(H, W, 3)`` ``uint8`` RGB array.
        fmt: ``"png"``, ``"jpeg"`` (or ``"jpg"``) or ``"webp"``, in any case.
        quality: JPEG/WebP quality, 1 to 100; ignored by PNG.

    Returns:
        The encoded file's bytes.

    Raises:
        InputError: unknown format, or bad pixels or quality.
    """
    encoding = _encoding_for(f".{fmt}", f"cannot encode to unknown image format {fmt!r}")
    return _encode(pixels, encoding, quality)


def iter_image_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[tuple[Path, ImageError | None]]:
    """Expand files and folders into the image files to read, reporting paths that cannot be read.

    A file named explicitly is yielded whatever its suffix. A folder is walked recursively in sorted name order,
    yielding files whose lowercase suffix is in :data:`IMAGE_SUFFIXES`; names starting with ``"."`` are skipped
    and symbolic links to folders are not followed (they could loop). Problems are yielded, not raised, so the
    caller can report them and go on with the rest.

    Args:
        paths: files and folders, in the order to process them.

    Yields:
        ``(path, None)`` for each file to read, or ``(path, error)`` for a path that is missing or unreadable.
    """
    for raw in paths:
        path = Path(raw)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            yield path, ImageError(f"{path}: no such file or folder", hint="check the path")
            continue
        except OSError as exc:
            yield path, ImageError(f"{path}: cannot be read ({exc.strerror or exc})", hint="check its permissions")
            continue
        if stat.S_ISDIR(mode):
            yield from _walk(path)
        elif not stat.S_ISREG(mode):
            yield path, ImageError(f"{path}: not a regular file", hint="name an image file or a folder of them")
        else:
            yield path, _unreadable(path)


def _walk(folder: Path) -> Iterator[tuple[Path, ImageError | None]]:
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError as exc:
        yield (
            folder,
            ImageError(f"{folder}: folder cannot be listed ({exc.strerror or exc})", hint="check its permissions"),
        )
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
            is_file = not is_dir and entry.is_file()
        except OSError as exc:
            yield path, ImageError(f"{path}: cannot be read ({exc.strerror or exc})", hint="check its permissions")
            continue
        if is_dir:
            yield from _walk(path)
        elif is_file and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path, _unreadable(path)


def _unreadable(path: Path) -> ImageError | None:
    if os.access(path, os.R_OK):
        return None
    return ImageError(f"{path}: cannot be read (permission denied)", hint="check its permissions")


def _read_file(path: Path, label: str, max_bytes: int) -> bytes:
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise _too_many_bytes(label, size, max_bytes)
            # Read one byte past the limit: the size of a pipe or special file is not known in advance.
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file", hint="check the path") from None
    except IsADirectoryError:
        raise ImageError(f"{label}: is a folder, not an image file", hint="name a file inside it") from None
    except PermissionError:
        raise ImageError(f"{label}: cannot be read (permission denied)", hint="check its permissions") from None
    except OSError as exc:
        raise ImageError(f"{label}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise _too_many_bytes(label, len(data), max_bytes)
    return data


def _too_many_bytes(label: str, size: int, max_bytes: int) -> ImageError:
    return ImageError(
        f"{label}: too large ({size} bytes > max_bytes {max_bytes})", hint="raise max_bytes or shrink the file"
    )


def _check_png_chunks(data: bytes, label: str) -> None:
    """Refuses a PNG any of whose chunks fails its CRC-32 (PNG spec, section 5.3).

    Pillow checks the CRCs of the chunks it parses when opening (reporting a mismatch as "not an image") but not
    those of the pixel data (``IDAT``) or ``IEND``, so a damaged file could be stored silently. The store keeps
    only the compressed bitstream, never the source, so a file that fails its own integrity check is refused
    whichever chunk is hit. A file cut short is left to the decoder, which reports the truncation.
    """
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        end = pos + 8 + length
        if end + 4 > len(data):
            return
        (stored,) = struct.unpack_from(">I", data, end)
        if zlib.crc32(data[pos + 4 : end]) != stored:
            name = kind.decode("latin-1") if kind.isalpha() else repr(kind)
            raise ImageError(
                f"{label}: damaged PNG: chunk {name} at byte {pos} fails its CRC check",
                hint="the file is corrupt; restore it or export it again",
            )
        if kind == b"IEND":
            return
        pos = end + 4


@cache
def _register_heif() -> None:
    """Registers pillow-heif's HEIF opener with Pillow, once, on the first decode rather than at import time."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:  # a core dependency; without it HEIC files are refused as unsupported
        return
    register_heif_opener()


def _check_heif_extents(data: bytes, label: str, max_pixels: int) -> None:
    """Refuses a HEIF/AVIF file any of whose ``ispe`` boxes (ISO/IEC 23008-12, image spatial extents) is too large.

    Read from the container before any decoder sees the file, so the limit and its message are the same whichever
    plugin would decode it (libavif, for one, refuses such a file itself, as "not an image").
    """
    pos = data.find(b"ispe")
    while pos != -1 and pos + 16 <= len(data):
        width, height = struct.unpack_from(">II", data, pos + 8)  # after the box type: version, flags, then the size
        if width * height > max_pixels:
            raise _too_many_pixels(label, f"{width}x{height} = {width * height} pixels > max_pixels {max_pixels}")
        pos = data.find(b"ispe", pos + 4)


def _decode(data: bytes, label: str, max_pixels: int) -> LoadedImage:
    if data.startswith(_PNG_SIGNATURE):
        _check_png_chunks(data, label)
    if data[4:8] == b"ftyp":
        _check_heif_extents(data, label, max_pixels)
    _register_heif()
    with warnings.catch_warnings():
        # Local to this call: Pillow's bomb guard becomes an error; its limit itself is never changed.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=_DECODE_FORMATS)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise _too_many_pixels(label, str(exc)) from None
        except _DECODE_ERRORS:
            raise ImageError(f"{label}: not an image (supported: {_SUPPORTED_TEXT})") from None
        with image:
            file_format = "JPEG" if image.format == "MPO" else str(image.format)
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ImageError(f"{label}: image has zero size ({width}x{height})")
            if width * height > max_pixels:
                raise _too_many_pixels(label, f"{width}x{height} = {width * height} pixels > max_pixels {max_pixels}")
            try:
                image.load()
                oriented = ImageOps.exif_transpose(image)
            except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
                raise _too_many_pixels(label, str(exc)) from None
            except _DECODE_ERRORS as exc:
                raise ImageError(f"{label}: truncated or corrupt {file_format} image ({exc})") from None
            try:
                pixels = _to_rgb(oriented)
            except ValueError as exc:
                raise ImageError(f"{label}: unsupported colour mode {oriented.mode} ({exc})") from None
            exif, notices = read_exif(image)
    return LoadedImage(
        pixels=np.ascontiguousarray(pixels),
        source_sha256=hashlib.sha256(data).hexdigest(),
        format=file_format,
        exif=exif,
        exif_notices=notices,
    )


def _too_many_pixels(label: str, detail: str) -> ImageError:
    return ImageError(
        f"{label}: image too large to decode safely ({detail})", hint="raise max_pixels or downscale the image"
    )


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Apply the colour policy of the module docstring; returns a new ``(H, W, 3)`` ``uint8`` array."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        return _gray_to_rgb(((values + 128) // 257).astype(np.uint8))
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        return _gray_to_rgb(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA")).astype(np.uint32)
        alpha = rgba[:, :, 3:]
        over_white = (rgba[:, :, :3] * alpha + 255 * (255 - alpha) + 127) // 255
        return over_white.astype(np.uint8)
    return np.array(image.convert("RGB"), dtype=np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, np.newaxis], 3, axis=2)


@dataclass(frozen=True)
class _Encoding:
    """How one output format is written with Pillow."""

    pil_format: str
    suffixes: tuple[str, ...]
    uses_quality: bool


_ENCODINGS: dict[str, _Encoding] = {
    "png": _Encoding("PNG", (".png",), uses_quality=False),
    "jpeg": _Encoding("JPEG", (".jpg", ".jpeg"), uses_quality=True),
    "webp": _Encoding("WEBP", (".webp",), uses_quality=True),
}


def _encoding_for(suffix: str, problem: str) -> _Encoding:
    wanted = suffix.lower()
    for encoding in _ENCODINGS.values():
        if wanted in encoding.suffixes:
            return encoding
    known = ", ".join(s for encoding in _ENCODINGS.values() for s in encoding.suffixes)
    raise InputError(problem, hint=f"use one of {known}")


def _check_pixels(pixels: object) -> None:
    if not isinstance(pixels, np.ndarray) or pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        got = (
            f"{pixels.dtype} array of shape {pixels.shape}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
        )
        raise InputError(
            f"pixels must be an (H, W, 3) uint8 RGB array, got {got}",
            hint="convert with np.clip(pixels, 0, 255).astype(np.uint8)",
        )
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise InputError(f"pixels must not be empty, got shape {pixels.shape}")


def _encode(pixels: np.ndarray, encoding: _Encoding, quality: int) -> bytes:
    _check_pixels(pixels)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise InputError(f"quality must be an integer from 1 to 100, got {quality!r}")
    options: dict[str, int] = {"quality": quality} if encoding.uses_quality else {}
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format=encoding.pil_format, **options)
    return buffer.getvalue()


def _write_atomically(target: Path, data: bytes) -> None:
    temp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    try:
        # O_EXCL: never write through a file or link that is already there; 0o666 lets the umask decide.
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(target)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise InputError(
            f"cannot write image to {target}: {exc.strerror or exc}",
            hint="check that its folder exists and is writable",
        ) from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
