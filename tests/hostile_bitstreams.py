"""Crafted ``.lics`` files that every decoder of this project must refuse cleanly (a plain module, not a test file).

The CRC guards against accidents, not against a sender who recomputes it, so almost every case here carries a valid
CRC and only the fields behind it are wrong. Imported by the library/CLI tests and the serving tests alike.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from licsearch.bitstream import MAGIC, MAX_SIDE, READABLE_VERSIONS, VERSION, Bitstream
from licsearch.model.codec import CODEC_ARCHS

LONG_STREAM = 64  # streams longer than this are cut at every length up to it, then at a stride
STRIDE_CUTS = 24  # cuts past LONG_STREAM, evenly spread up to the full length


@dataclass(frozen=True)
class Raw:
    """A container's fields as bytes on the wire, any of which may be inconsistent with the others.

    Attributes:
        profile_len, count, lengths: the declared lengths and counts, when they differ from the actual ones.
    """

    profile: bytes
    width: int
    height: int
    latent_hash: bytes
    streams: tuple[tuple[bytes, bytes], ...]
    version: int = VERSION
    flags: int = 0
    profile_len: int | None = None
    count: int | None = None
    lengths: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, data: bytes) -> Raw:
        bs = Bitstream.from_bytes(data)
        streams = tuple((n.encode("ascii"), v) for n, v in bs.streams.items())
        return cls(bs.profile_id.encode("ascii"), bs.width, bs.height, bs.latent_hash, streams)

    def stream(self, name: bytes) -> bytes:
        return dict(self.streams)[name]

    def with_stream(self, name: bytes, data: bytes) -> Raw:
        return replace(self, streams=tuple((n, data if n == name else v) for n, v in self.streams))

    def pack(self) -> bytes:
        """Serialises with the CRC recomputed."""
        out = bytearray(MAGIC)
        plen = len(self.profile) if self.profile_len is None else self.profile_len
        out += bytes([self.version, self.flags, plen]) + self.profile
        out += struct.pack("<II", self.width, self.height) + self.latent_hash
        out += bytes([len(self.streams) if self.count is None else self.count])
        lengths = self.lengths or tuple(len(v) for _, v in self.streams)
        for (name, _), n in zip(self.streams, lengths, strict=True):
            out += bytes([len(name)]) + name + struct.pack("<I", n)
        for _, data in self.streams:
            out += data
        return bytes(out + struct.pack("<I", zlib.crc32(out)))


_Add = Callable[[str, Raw | bytes], None]


def hostile_cases(valid: bytes, other: bytes) -> list[tuple[str, bytes]]:
    """Crafted files, each of which must be refused.

    Args:
        valid: a valid ``.lics`` file.
        other: a valid ``.lics`` file of another image, made by the same codec.

    Returns:
        (case name, file bytes) pairs with unique names.
    """
    v, o = Raw.parse(valid), Raw.parse(other)
    cases: dict[str, bytes] = {}

    def add(name: str, raw: Raw | bytes) -> None:
        data = raw.pack() if isinstance(raw, Raw) else raw
        if data not in (valid, other) and name not in cases:
            cases[name] = data

    _header_cases(v, o, add)
    _size_cases(v, add)
    _stream_cases(v, o, add)
    _container_cases(valid, add)
    return list(cases.items())


def _header_cases(v: Raw, o: Raw, add: _Add) -> None:
    for version in (0, *(v for v in READABLE_VERSIONS if v != VERSION), VERSION + 1, 255):
        add(f"version={version}", replace(v, version=version))
    for flags in (1, 0x80, 255):
        add(f"flags={flags:#x}", replace(v, flags=flags))
    pid = v.profile
    arch, quality, digest = pid.split(b":")
    profiles = {
        "empty": b"",
        "255-chars": b"a" * 255,
        "one-char-short": pid[:-1],
        "one-char-long": pid + b"0",
        "other-weights": pid[:-1] + (b"0" if pid[-1:] != b"0" else b"1"),
        "other-quality": b":".join((arch, b"q" + str(int(quality[1:]) % 8 + 1).encode(), digest)),
        "other-arch": b":".join(
            (b"mbt2018-mean" if arch != b"mbt2018-mean" else b"bmshj2018-hyperprior", quality, digest)
        ),
        "uppercase": pid.upper(),
        "not-ascii": pid[:-1] + b"\xff",
        "nul": pid[:-1] + b"\0",
        "no-colons": pid.replace(b":", b"-"),
    }
    for name, p in profiles.items():
        add(f"profile={name}", replace(v, profile=p))
    for delta in (-len(pid), -1, 1, 255 - len(pid)):
        add(f"profile-length{delta:+d}", replace(v, profile_len=len(pid) + delta))
    for name, h in (("zeros", bytes(16)), ("ones", b"\xff" * 16), ("other", o.latent_hash)):
        add(f"hash={name}", replace(v, latent_hash=h))
    flipped = bytearray(v.latent_hash)
    flipped[0] ^= 1
    add("hash=one-bit", replace(v, latent_hash=bytes(flipped)))
    z, y = v.streams
    extra = (b"x", b"\0" * 8)
    for name, streams in {
        "0": (),
        "1:z": (z,),
        "1:y": (y,),
        "3:extra": (z, y, extra),
        "3:duplicate-y": (z, y, (b"y", y[1])),
        "17": (z, y, *((f"s{i}".encode(), b"\0" * 8) for i in range(15))),
    }.items():
        add(f"streams={name}", replace(v, streams=streams))
    for count in (0, 1, 3, 255):
        add(f"stream-count-field={count}", replace(v, count=count))
    names = {
        "swapped": (y[0], z[0]),
        "upper": (b"Z", b"Y"),
        "empty": (b"", y[0]),
        "long": (b"z" * 255, y[0]),
        "not-ascii": (b"\xff", y[0]),
        "space": (b"z ", y[0]),
        "both-z": (z[0], z[0]),
        "other": (b"a", b"b"),
    }
    for name, (nz, ny) in names.items():
        add(f"stream-names={name}", replace(v, streams=((nz, z[1]), (ny, y[1]))))
    lz, ly = len(z[1]), len(y[1])
    for dz in (-lz, -4, -1, 1, 4, ly):
        # Moves the boundary between the payloads: the container's total length still adds up.
        add(f"stream-boundary{dz:+d}", replace(v, lengths=(lz + dz, ly - dz)))
    for dy in (-1, 1, 1 << 31):
        add(f"y-length-field{dy:+d}", replace(v, lengths=(lz, ly + dy)))


def _size_cases(v: Raw, add: _Add) -> None:
    f = CODEC_ARCHS.get(v.profile.split(b":")[0].decode()).downsampling

    def blocks(side: int) -> int:
        return -(-side // f)

    for field in ("width", "height"):
        side = getattr(v, field)
        values = {0, 1, 2, f, side - f, side + f, side + 1, side - 1, 2 * side, side // 2, MAX_SIDE, MAX_SIDE + 1}
        values |= {1 << 31, (1 << 32) - 1, blocks(side) * f, (blocks(side) - 1) * f + 1}  # the block's ends
        for value in sorted(values):
            # From format 2 the latent hash covers the size, so a size within the same blocks (the same latent shape,
            # which the streams cannot tell) is refused like any other; in format 1 it decoded.
            if value != side:
                add(f"{field}={value}", replace(v, **{field: value}))
    # Width and height exchanged keep every channel's symbol count, so z decodes, and so may y where the transposed
    # hyper-latent picks the same CDFs: only the hash over the header refuses it.
    if v.width != v.height:
        add("size=swapped", replace(v, width=v.height, height=v.width))
    add(f"size={MAX_SIDE}x{MAX_SIDE}", replace(v, width=MAX_SIDE, height=MAX_SIDE))
    add("size=0x0", replace(v, width=0, height=0))


def _stream_cases(v: Raw, o: Raw, add: _Add) -> None:
    rng = random.Random(16)
    for name, data in v.streams:
        n = len(data)
        s = name.decode("ascii", "replace")
        cuts = list(range(min(n, LONG_STREAM + 1)))
        if n > LONG_STREAM:
            cuts += sorted({LONG_STREAM + (n - LONG_STREAM) * k // STRIDE_CUTS for k in range(1, STRIDE_CUTS)})
        for cut in cuts:
            add(f"{s}-cut-to-{cut}", v.with_stream(name, data[:cut]))
        for cut in (1, 4, 8):
            add(f"{s}-without-first-{cut}", v.with_stream(name, data[cut:]))
        for tail in (b"\0" * 4, b"\0" * 8, b"\xff" * 4, data[-8:]):
            add(f"{s}-plus-{tail[:1].hex()}x{len(tail)}", v.with_stream(name, data + tail))
        add(f"{s}-from-other", v.with_stream(name, o.stream(name)))
        for length in sorted({8, 12, 64, n}):
            add(f"{s}-random-{length}", v.with_stream(name, rng.randbytes(length)))
            add(f"{s}-zeros-{length}", v.with_stream(name, bytes(length)))
            add(f"{s}-ones-{length}", v.with_stream(name, b"\xff" * length))
        for _ in range(8):
            flipped = bytearray(data)
            bit = rng.randrange(8 * n)
            flipped[bit // 8] ^= 1 << (bit % 8)
            add(f"{s}-bit-flip-{bit}", v.with_stream(name, bytes(flipped)))
        add(f"{s}-reversed-words", v.with_stream(name, b"".join(data[i : i + 4] for i in range(n - 4, -1, -4))))
    add("streams-from-other", replace(v, streams=o.streams))
    add(
        "streams-swapped",
        replace(v, streams=tuple((n, d) for (n, _), (_, d) in zip(v.streams, v.streams[::-1], strict=True))),
    )
    add("random-container", replace(v, streams=tuple((n, rng.randbytes(len(d))) for n, d in v.streams)))
    add("empty-streams", replace(v, streams=tuple((n, b"") for n, _ in v.streams)))


def _container_cases(valid: bytes, add: _Add) -> None:
    rng = random.Random(17)
    for cut in sorted({0, 1, 4, 5, 6, 8, 11, len(valid) // 2, len(valid) - 5, len(valid) - 4, len(valid) - 1}):
        add(f"file-cut-to-{cut}", valid[:cut])
    for _ in range(8):
        damaged = bytearray(valid)
        bit = rng.randrange(8 * len(valid))
        damaged[bit // 8] ^= 1 << (bit % 8)
        add(f"file-bit-flip-{bit}", bytes(damaged))
    add("file-plus-byte", valid + b"\0")
    add("file-magic", b"JUNK" + valid[4:])


def fuzz_cases(valid: bytes, seed: int, n: int) -> Iterator[tuple[str, bytes]]:
    """Up to ``n`` random mutations of ``valid`` with the CRC recomputed, the same for the same seed; a mutation that
    changes no byte is left out.

    In format 1 a mutated file could still be valid (a size changed within the codec's blocks decoded to the same
    latent); from format 2, whose latent hash covers the header, every one must be refused.
    """
    rng = random.Random(seed)
    body = valid[:-4]
    for i in range(n):
        data = bytearray(body)
        kind = rng.choice(("flip", "byte", "insert", "delete", "splice", "word"))
        for _ in range(rng.choice((1, 1, 2, 3, 8))):
            at = rng.randrange(len(data)) if data else 0
            if kind == "flip" and data:
                data[at] ^= 1 << rng.randrange(8)
            elif kind == "byte" and data:
                data[at] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
            elif kind == "insert":
                data[at:at] = rng.randbytes(rng.choice((1, 4, 8)))
            elif kind == "delete":
                del data[at : at + rng.choice((1, 4, 8))]
            elif kind == "splice":
                src = rng.randrange(len(body))
                data[at : at + 8] = body[src : src + 8]
            elif data:
                data[at : at + 4] = rng.choice((b"\0" * 4, b"\xff" * 4, rng.randbytes(4)))
        if data == body:
            continue  # the mutation changed nothing (a byte set to its own value, a splice onto itself)
        yield f"fuzz-{seed}-{i}-{kind}", bytes(data) + struct.pack("<I", zlib.crc32(data))
