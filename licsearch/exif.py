"""The EXIF fields licsearch keeps in a point's payload: when, with what, and where a photo was taken.

:func:`read_exif` reads them from an opened Pillow image (JPEG, TIFF, WebP, PNG ``eXIf``, HEIC and AVIF all expose
EXIF through ``Image.getexif``) and checks each one: EXIF is written by cameras, phones and editors of every
quality, so a garbage date, an absurd coordinate, a huge string or a value of the wrong type skips that field with
a notice, and never fails the image.

Fields (absent ones are omitted):

* ``taken``: local date-time ``"YYYY-MM-DDTHH:MM:SS"`` from ``DateTimeOriginal``, else ``DateTime``.
* ``camera``: ``"Make Model"`` with whitespace collapsed; the make is not repeated when the model starts with it.
* ``lens``: ``LensModel``.
* ``gps_lat``, ``gps_lon``: signed decimal degrees (south and west negative).
* ``orientation``: the EXIF orientation, 1 to 8.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from PIL import Image

__all__ = ["EXIF_FIELDS", "MAX_TEXT", "read_exif"]

EXIF_FIELDS: tuple[str, ...] = ("taken", "camera", "lens", "gps_lat", "gps_lon", "orientation")
"""Payload fields written from EXIF at ingest."""

MAX_TEXT = 128
"""Longest camera or lens name kept; longer strings are taken to be garbage."""

_IFD_EXIF = 0x8769
_IFD_GPS = 0x8825
_MAKE, _MODEL, _DATETIME, _ORIENTATION = 0x010F, 0x0110, 0x0132, 0x0112
_DATETIME_ORIGINAL, _LENS_MODEL = 0x9003, 0xA434
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4
_EXIF_DATE_RE = re.compile(r"(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_YEARS = range(1826, 2201)  # from the oldest surviving photograph (Niépce, 1826/27)


def read_exif(image: Image.Image) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The EXIF fields of ``image`` and one notice per field that was present but unusable.

    Never raises on the image's content: an EXIF block that cannot be parsed at all is one notice.
    """
    notices: list[str] = []
    try:
        exif = image.getexif()
        sub = dict(exif.get_ifd(_IFD_EXIF))
        gps = dict(exif.get_ifd(_IFD_GPS))
    except Exception as exc:  # Pillow's EXIF parser raises many types on garbage
        return {}, (f"EXIF block skipped: it cannot be parsed ({type(exc).__name__})",)
    fields: dict[str, Any] = {}

    def keep(name: str, raw: object, convert: Any) -> None:
        if raw is None:
            return
        try:
            value = convert(raw)
        except (ValueError, TypeError, ZeroDivisionError, OverflowError, IndexError) as exc:
            notices.append(f"EXIF {name} skipped: {exc}")
            return
        if value is not None:
            fields[name] = value

    keep("taken", sub.get(_DATETIME_ORIGINAL) or exif.get(_DATETIME), _date)
    keep("camera", (exif.get(_MAKE), exif.get(_MODEL)), _camera)
    keep("lens", sub.get(_LENS_MODEL), _text)
    if gps.get(_GPS_LAT) is not None:
        keep("gps_lat", (gps[_GPS_LAT], gps.get(_GPS_LAT_REF), 90), _degrees)
    if gps.get(_GPS_LON) is not None:
        keep("gps_lon", (gps[_GPS_LON], gps.get(_GPS_LON_REF), 180), _degrees)
    keep("orientation", exif.get(_ORIENTATION), _orientation)
    return fields, tuple(notices)


def _text(raw: object) -> str | None:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not isinstance(raw, str):
        raise TypeError(f"not text ({type(raw).__name__})")
    text = " ".join(raw.replace("\x00", " ").split())
    if len(text) > MAX_TEXT:
        raise ValueError(f"longer than {MAX_TEXT} characters")
    if not text.isprintable():
        raise ValueError("holds control characters")
    return text or None


def _camera(raw: tuple[object, object]) -> str | None:
    make = _text(raw[0]) if raw[0] is not None else None
    model = _text(raw[1]) if raw[1] is not None else None
    if make and model and model.lower().startswith(make.lower()):
        return model
    return " ".join(part for part in (make, model) if part) or None


def _date(raw: object) -> str:
    text = _text(raw)
    match = _EXIF_DATE_RE.match(text or "")
    if match is None:
        raise ValueError(f"not an EXIF date-time {_clip(text)}")
    year, month, day, hour, minute, second = map(int, match.groups())
    if year not in _YEARS:
        raise ValueError(f"year {year} is outside {_YEARS.start}..{_YEARS.stop - 1}")
    return datetime(year, month, day, hour, minute, second).strftime("%Y-%m-%dT%H:%M:%S")


def _degrees(raw: tuple[object, object, int]) -> float:
    value, ref, bound = raw
    if not isinstance(value, tuple | list) or len(value) != 3:
        raise TypeError("not three rationals (degrees, minutes, seconds)")
    d, m, s = (float(part) for part in value)
    degrees = d + m / 60 + s / 3600
    if not math.isfinite(degrees) or min(d, m, s) < 0 or degrees > bound:
        raise ValueError(f"{degrees!r} is not within 0..{bound} degrees")
    reference = _text(ref) if ref is not None else None
    if reference not in (None, "N", "S", "E", "W"):
        raise ValueError(f"unknown hemisphere {_clip(reference)}")
    return -degrees if reference in ("S", "W") else degrees


def _orientation(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 8:
        raise ValueError(f"{_clip(str(raw))} is not an orientation 1..8")
    return raw


def _clip(text: str | None) -> str:
    return repr(text) if text is None or len(text) <= 40 else repr(text[:37] + "...")
