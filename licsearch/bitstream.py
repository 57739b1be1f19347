"""The ``.lics`` container: a self-describing, checksummed wrapper around a codec's named streams.

Layout, version 2 (integers little-endian)::

    offset  size  field
    0       4     magic b"LICS"
    4       1     format version (2)
    5       1     flags (0; reserved)
    6       1     P: length of the codec profile id
    7       P     codec profile id, ASCII ("bmshj2018-hyperprior:q3:<12 hex of the weights sha256>")
    .       4     original image width
    .       4     original image height
    .       16    latent hash: blake2b-128 of the header (every byte above and below but these 16, up to the first
                  payload) then of the int32 symbols of z then y
    .       1     S: number of streams
    .       S x   per stream: 1-byte name length, ASCII name, 4-byte payload length
    .       ...   the stream payloads, in header order
    end-4   4     CRC-32 of every preceding byte

Version 1 has the same layout; its latent hash covers only the symbols, so a declared size changed within the
codec's 64-pixel blocks decoded (to a crop or an extension of the image). Version 1 files are still read; new files
are version 2, whose hash covers everything a decoder trusts: version, flags, profile id, size, stream names and
lengths (:meth:`Bitstream.hash_context`).

A reader checks, in order: magic, version, exact total length, CRC, then every header field (flags, the form of
the profile id, image size, stream count and names). The CRC guards against accidents only: a sender can recompute
it, so nothing after it is trusted either. Before any entropy decoding the codec checks the profile id against its
own, the stream names against those it writes and each stream's length against what the declared image size can
produce; after decoding, the latent hash. Every failure raises :class:`BitstreamError`; nothing is ever decoded
from a container that fails a check.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass, field

from .errors import BitstreamError

MAGIC = b"LICS"
VERSION = 2  # what new files are written as
READABLE_VERSIONS = (1, 2)
HEADER_HASHED_FROM = 2  # the first version whose latent hash covers the header
SUFFIX = ".lics"
HASH_BYTES = 16
MAX_SIDE = 1 << 16
MAX_STREAMS = 16
_CRC = struct.Struct("<I")
PROFILE_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}:q[0-9]{1,3}:[0-9a-f]{12}")
STREAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")


def make_profile_id(arch: str, quality: int, weights_sha256: str) -> str:
    """A codec profile id: architecture, quality and the first 12 hex digits of the weights' sha256."""
    return f"{arch}:q{quality}:{weights_sha256[:12]}"


def hash_context(
    profile_id: str, width: int, height: int, stream_lengths: dict[str, int], *, version: int = VERSION
) -> bytes:
    """The header bytes a container's latent hash covers before the symbols: empty for version 1.

    Args:
        profile_id, width, height: the header fields.
        stream_lengths: each stream's payload length, by name, in the order they are stored.
        version: the container's format version.
    """
    if version < HEADER_HASHED_FROM:
        return b""
    head, tail = _header(version, 0, profile_id, width, height, stream_lengths)
    return head + tail


def _header(
    version: int, flags: int, profile_id: str, width: int, height: int, stream_lengths: dict[str, int]
) -> tuple[bytes, bytes]:
    """The header before the latent hash and after it (up to the first payload)."""
    pid = profile_id.encode("ascii")
    head = MAGIC + struct.pack("<BBB", version, flags, len(pid)) + pid + struct.pack("<II", width, height)
    tail = bytearray(struct.pack("<B", len(stream_lengths)))
    for name, length in stream_lengths.items():
        n = name.encode("ascii")
        tail += struct.pack("<B", len(n)) + n + struct.pack("<I", length)
    return head, bytes(tail)


@dataclass(frozen=True)
class Bitstream:
    """A parsed ``.lics`` container.

    Attributes:
        profile_id: the codec profile that made it.
        width, height: the original image size.
        latent_hash: fingerprint of the header (from version 2) and the decoded symbols.
        streams: payloads by name, in the order they are stored.
        version: the format version; new containers are :data:`VERSION`, a parsed one keeps its own.
    """

    profile_id: str
    width: int
    height: int
    latent_hash: bytes
    streams: dict[str, bytes] = field(repr=False)
    version: int = VERSION

    def __post_init__(self) -> None:
        _check(
            PROFILE_ID.fullmatch(self.profile_id) is not None,
            f"bad codec profile id {self.profile_id[:80]!r} (expected ARCH:qQUALITY:12 hex digits)",
        )
        _check(0 < self.width <= MAX_SIDE and 0 < self.height <= MAX_SIDE, f"bad image size {self.width}x{self.height}")
        _check(len(self.latent_hash) == HASH_BYTES, "latent hash must be 16 bytes")
        _check(0 < len(self.streams) <= MAX_STREAMS, f"1-{MAX_STREAMS} streams expected, not {len(self.streams)}")
        for name in self.streams:
            _check(STREAM_NAME.fullmatch(name) is not None, f"bad stream name {name[:40]!r}")
        _check(self.version in READABLE_VERSIONS, f"unknown format version {self.version}")

    @property
    def hash_context(self) -> bytes:
        """What the latent hash covers before the symbols (see :func:`hash_context`)."""
        lengths = {name: len(data) for name, data in self.streams.items()}
        return hash_context(self.profile_id, self.width, self.height, lengths, version=self.version)

    @property
    def payload_bytes(self) -> int:
        """Bytes of coded data, without the container's header and checksum."""
        return sum(len(v) for v in self.streams.values())

    def check_profile(self, profile_id: str) -> None:
        """Refuses a container that the codec of ``profile_id`` did not make.

        Raises:
            BitstreamError: the container names another codec profile.
        """
        if self.profile_id != profile_id:
            raise BitstreamError(
                f"bitstream was made by codec profile {self.profile_id}, this codec is {profile_id}",
                hint="decode it with the store or model flags that encoded it",
            )

    def to_bytes(self) -> bytes:
        """Serialises the container."""
        lengths = {name: len(data) for name, data in self.streams.items()}
        head, tail = _header(self.version, 0, self.profile_id, self.width, self.height, lengths)
        out = bytearray(head + self.latent_hash + tail)
        for data in self.streams.values():
            out += data
        out += _CRC.pack(zlib.crc32(out))
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> Bitstream:
        """Parses and verifies a container; raises :class:`BitstreamError` on any defect."""
        if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
            raise BitstreamError("not a .lics bitstream (bad magic)", hint="the file is not made by licsearch encode")
        if len(data) < 5:
            raise BitstreamError("truncated .lics bitstream (no version byte)")
        if data[4] not in READABLE_VERSIONS:
            raise BitstreamError(
                f"unsupported .lics format version {data[4]}",
                hint=f"this licsearch reads versions {', '.join(map(str, READABLE_VERSIONS))}",
            )
        if len(data) < 7 + _CRC.size:
            raise BitstreamError("truncated .lics bitstream")
        body, crc = data[: -_CRC.size], _CRC.unpack(data[-_CRC.size :])[0]
        r = _Reader(body)
        flags, plen = r.unpack("<BB", at=5)
        pid = r.take(plen)
        width, height = r.unpack("<II")
        lhash = r.take(HASH_BYTES)
        (count,) = r.unpack("<B")
        names_lengths = []
        for _ in range(count):
            (nlen,) = r.unpack("<B")
            raw = r.take(nlen)
            (length,) = r.unpack("<I")
            names_lengths.append((raw, length))
        payload_total = sum(n for _, n in names_lengths)
        if r.pos + payload_total != len(body) or zlib.crc32(body) != crc:
            # Length is compared first so that truncation is named as such; either way nothing is trusted.
            what = "truncated or padded" if r.pos + payload_total != len(body) else "corrupt (checksum mismatch)"
            raise BitstreamError(f".lics bitstream is {what}", hint="the bytes were damaged after encoding")
        if flags != 0:
            raise BitstreamError(f"unknown .lics flags {flags:#x}")
        streams: dict[str, bytes] = {}
        for raw_name, length in names_lengths:
            name = _ascii(raw_name, "stream name")
            if name in streams:
                raise BitstreamError(f"duplicate stream {name!r} in .lics bitstream")
            streams[name] = r.take(length)
        try:
            return cls(_ascii(pid, "profile id"), width, height, lhash, streams, data[4])
        except ValueError as e:
            raise BitstreamError(
                f"invalid .lics header: {e}", hint="the file is damaged or was not written by licsearch"
            ) from e


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise BitstreamError("truncated .lics bitstream (header cut short)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, *, at: int | None = None) -> tuple[int, ...]:
        if at is not None:
            self.pos = at
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))


def _ascii(raw: bytes, what: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise BitstreamError(f"invalid .lics {what} (not ASCII)") from None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
