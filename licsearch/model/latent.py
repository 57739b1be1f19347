"""Entropy coding of a codec's latents, without torch or CompressAI: streams <-> integer symbols <-> y_hat.

:class:`LatentCodec` owns what an encoder and a decoder of one codec must agree on besides the heavy transforms: the
rANS tables of ``z`` and ``y`` (:mod:`.rans`), the canonical entropy-parameter path (:mod:`.entropy`), the streams'
names and length bounds, and the latent hash that makes a decoder refuse what its encoder did not write. It runs on
NumPy arrays; :class:`~licsearch.model.codec.Codec` builds one from a CompressAI model and adds the transforms.

Its arrays (:meth:`LatentCodec.arrays`) are all a decoder needs besides ``g_s``, so a process that only decodes (the
CLI's ``get``, :mod:`licsearch.bundle.codec_cache`) can rebuild it from a file and never import torch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..bitstream import VERSION, hash_context
from ..errors import BitstreamError, ModelError
from .entropy import CanonicalEntropyPath, Clock, IntegerLayer
from .rans import RansTables, decode_with_indexes, encode_with_indexes

if TYPE_CHECKING:
    import numpy as np

STREAM_Z = "z"  # hyper-latent, coded with the factorized entropy bottleneck
STREAM_Y = "y"  # latent, coded with the Gaussian conditional
STREAMS = (STREAM_Z, STREAM_Y)  # every stream a bitstream of this codec holds, in the order they are written
LATENT_HASH_BYTES = 16
_LAYER_FIELDS = ("stride", "padding", "output_padding", "leaky_num")


def latent_hash(z_symbols: Any, y_symbols: Any, context: bytes = b"") -> bytes:
    """blake2b over ``context`` (the container's header, from format 2) then the int32 little-endian symbols of z
    then y (arrays or tensors)."""
    import numpy as np

    h = hashlib.blake2b(context, digest_size=LATENT_HASH_BYTES)
    for t in (z_symbols, y_symbols):
        h.update(np.ascontiguousarray(np.asarray(t), dtype="<i4").data)  # no copy for contiguous int32 symbols
    return h.digest()


class LatentCodec:
    """One codec's entropy coding: the tables, the canonical path, the stream checks and the latent hash.

    Args:
        profile_id: the codec's profile id (architecture, quality, weights fingerprint), hashed into every bitstream.
        downsampling: spatial factor from image to hyper-latent.
        latent_channels: channels of y.
        z_medians: the entropy bottleneck's per-channel medians (C,).
        z_tables, y_tables: the rANS tables of the two streams.
        entropy_path: the canonical z -> (indexes, means) path.
    """

    def __init__(
        self,
        profile_id: str,
        downsampling: int,
        latent_channels: int,
        z_medians: np.ndarray,
        z_tables: RansTables,
        y_tables: RansTables,
        entropy_path: CanonicalEntropyPath,
    ) -> None:
        import numpy as np

        self.profile_id = profile_id
        self.downsampling = downsampling
        self.latent_channels = latent_channels
        self.z_medians = np.ascontiguousarray(z_medians, dtype=np.float32).reshape(-1)
        self.z_tables = z_tables
        self.y_tables = y_tables
        self.entropy_path = entropy_path

    # -- as arrays (a decoder's cache) ----------------------------------------------------------------------

    def arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Everything this object holds, as a JSON-able description and named arrays (:meth:`from_arrays`)."""
        import numpy as np

        path = self.entropy_path
        arrays: dict[str, np.ndarray] = {
            "z_medians": self.z_medians,
            "scale_thresholds": path.threshold_array,
            "z_medians_fixed": path.z_medians_fixed_array.reshape(-1),
        }
        for name, t in (("z", self.z_tables), ("y", self.y_tables)):
            arrays.update({f"{name}_cdfs": t.cdfs, f"{name}_sizes": t.sizes, f"{name}_offsets": t.offsets})
        layers = []
        for i, la in enumerate(path.h_s.layers):
            arrays[f"h_s.{i}.weight"], arrays[f"h_s.{i}.bias"] = la.weight, la.bias
            layers.append({"kind": la.kind, "activation": la.activation, **{k: getattr(la, k) for k in _LAYER_FIELDS}})
        meta = {
            "profile_id": self.profile_id,
            "downsampling": self.downsampling,
            "latent_channels": self.latent_channels,
            "has_means": path.has_means,
            "h_s": layers,
        }
        return meta, {k: np.ascontiguousarray(v) for k, v in arrays.items()}

    @classmethod
    def from_arrays(
        cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *, torch_free: bool = True
    ) -> LatentCodec:
        """Rebuilds the object :meth:`arrays` described; ``torch_free`` runs ``h_s`` in NumPy (no torch import).

        Raises:
            ModelError: the description or the arrays are incomplete or inconsistent.
        """
        import numpy as np

        try:
            layers = []
            for i, la in enumerate(meta["h_s"]):
                w = np.asarray(arrays[f"h_s.{i}.weight"], dtype=np.float64)
                b = np.asarray(arrays[f"h_s.{i}.bias"], dtype=np.float64)
                per_out = np.abs(w).sum(axis=(1, 2, 3) if la["kind"] == "conv" else (0, 2, 3))
                layers.append(
                    IntegerLayer(
                        kind=la["kind"],
                        weight=w,
                        bias=b,
                        activation=la["activation"],
                        l1_max=float(per_out.max()),
                        bias_max=float(np.abs(b).max()),
                        **{k: int(la[k]) for k in _LAYER_FIELDS},
                    )
                )
            # The scale table's last entry is never compared against: any value stands in for it.
            scale_table = np.append(arrays["scale_thresholds"], np.inf)
            path = CanonicalEntropyPath(
                tuple(layers),
                arrays["z_medians"],
                scale_table,
                has_means=bool(meta["has_means"]),
                torch_free=torch_free,
            )
            if not np.array_equal(path.z_medians_fixed_array.reshape(-1), arrays["z_medians_fixed"]):
                raise ModelError("the hyper-latent medians do not round to the recorded fixed-point medians")
            tables = [
                RansTables.from_arrays(arrays[f"{n}_cdfs"], arrays[f"{n}_sizes"], arrays[f"{n}_offsets"])
                for n in ("z", "y")
            ]
            return cls(
                str(meta["profile_id"]),
                int(meta["downsampling"]),
                int(meta["latent_channels"]),
                arrays["z_medians"],
                tables[0],
                tables[1],
                path,
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ModelError(
                f"the codec's entropy tables are incomplete or inconsistent ({type(e).__name__}: {e})"
            ) from e

    # -- shapes and checks ----------------------------------------------------------------------------------

    def latent_size(self, width: int, height: int) -> tuple[int, int]:
        """(h, w) of y for an image of this size (after padding to the downsampling factor)."""
        f = self.downsampling
        return (-(-height // f) * 4, -(-width // f) * 4)

    def latent_shapes(self, width: int, height: int) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
        """The shapes of z and y, (1, C, h, w) each, for an image of this size."""
        yh, yw = self.latent_size(width, height)
        return (1, self.z_medians.size, yh // 4, yw // 4), (1, self.latent_channels, yh, yw)

    def check_streams(self, streams: dict[str, bytes], width: int, height: int) -> None:
        """Refuses streams this codec cannot have written for an image of this size, before any decoding.

        The names must be exactly those :meth:`code` writes, and each length within what rANS can produce for
        the declared number of symbols (at least the 8-byte flush, at most the costliest symbols throughout).
        """
        import numpy as np

        names = tuple(streams)
        if sorted(names) != sorted(STREAMS):
            raise BitstreamError(
                f"bitstream has streams {list(names)}, this codec writes exactly {list(STREAMS)}",
                hint="the file is damaged or was not written by this codec",
            )
        z_shape, y_shape = self.latent_shapes(width, height)
        z_per_channel = np.full(z_shape[1], z_shape[2] * z_shape[3], dtype=np.float64)
        self._check_length(streams, STREAM_Z, self.z_tables, math.prod(z_shape), z_per_channel)
        self._check_length(streams, STREAM_Y, self.y_tables, math.prod(y_shape), None)

    @staticmethod
    def _check_length(
        streams: dict[str, bytes], name: str, tables: RansTables, count: int, per_cdf: np.ndarray | None
    ) -> None:
        lo, hi = tables.length_bounds(count, per_cdf)
        n = len(streams[name])
        if not lo <= n <= hi:
            raise BitstreamError(
                f"bitstream's {name!r} stream is {n} bytes; for the {count} symbols of the declared image size "
                f"this codec writes {lo} to {hi} bytes",
                hint="the file is damaged (its image size or streams were altered) or was not written by this codec",
            )

    # -- coding ---------------------------------------------------------------------------------------------

    def code(
        self, y: np.ndarray, z: np.ndarray, width: int, height: int, clock: Clock | None = None
    ) -> tuple[dict[str, bytes], bytes, np.ndarray]:
        """Entropy-codes one image's latents y (1, M, h, w) and z (1, C, h/4, w/4), float32.

        Returns:
            the streams by name, the latent hash of a container of this size, and y_hat (float32, y's shape).
        """
        import numpy as np

        z_sym = self._z_symbols(z)
        z_int = z_sym.astype(np.int32)
        z_idx = self.z_indexes(z_sym.shape)
        _mark(clock, "z.symbols")
        # The bytes of CompressAI's EntropyModel.compress on these symbols (no medians re-applied).
        z_string = encode_with_indexes(z_int, z_idx, self.z_tables)
        _mark(clock, "z.rans")
        indexes, means = self.entropy_path.params(z_sym, clock)
        y_sym = np.round(y - means)  # NumPy: the same IEEE operations as torch's (round half to even)
        y_int = y_sym.astype(np.int32)  # once, for the coder and the hash
        _mark(clock, "y.symbols")
        y_string = encode_with_indexes(y_int, indexes, self.y_tables)
        _mark(clock, "y.rans")
        streams = {STREAM_Z: z_string, STREAM_Y: y_string}
        context = hash_context(self.profile_id, width, height, {k: len(v) for k, v in streams.items()})
        digest = latent_hash(z_int, y_int, context)
        y_hat = y_sym + means
        _mark(clock, "hash")
        return streams, digest, y_hat

    def quantize(self, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """The y_hat :meth:`code` returns for these latents, without coding them (an image query's latent)."""
        import numpy as np

        _, means = self.entropy_path.params(self._z_symbols(z))
        return np.round(y - means) + means

    def _z_symbols(self, z: np.ndarray) -> np.ndarray:
        import numpy as np

        return np.round(z - self.z_medians.reshape(1, -1, 1, 1))

    def entropy_decode(
        self,
        streams: dict[str, bytes],
        width: int,
        height: int,
        expected_hash: bytes,
        *,
        version: int = VERSION,
        clock: Clock | None = None,
    ) -> np.ndarray:
        """Entropy-decodes the streams to y_hat (1, M, h, w) float32, refusing if the latent hash differs.

        The hash covers this codec's profile id, the size and the streams' names and lengths as given (for a
        container of format ``version`` 2 or later), then the decoded symbols. ``clock`` is called as each stage
        ends (``bench --profile``).

        Raises:
            BitstreamError: for any defect of the streams; a file is never blamed on the model.
        """
        import numpy as np

        self.check_streams(streams, width, height)
        z_shape, y_shape = self.latent_shapes(width, height)
        # z is coded channel by channel (NCHW order), each channel with its own CDF.
        z_channels = np.arange(z_shape[1], dtype=np.int32)
        _mark(clock, "checks")
        z_sym = self._decode(streams, STREAM_Z, self.z_tables, z_channels, z_shape, run=z_shape[2] * z_shape[3])
        _mark(clock, "z.rans")
        try:
            y_idx, means = self.entropy_path.params(z_sym, clock)
        except ModelError as e:
            # A well-formed z stream of values no image of this codec yields (the encoder refuses those images).
            raise BitstreamError(
                f"bitstream's {STREAM_Z!r} stream decodes to hyper-latent values out of this codec's range",
                hint="the file is damaged or was not written by this codec; nothing was decoded",
            ) from e
        y_idx = y_idx.reshape(-1)
        per_cdf = np.bincount(y_idx, minlength=len(self.y_tables.sizes)).astype(np.float64)
        self._check_length(streams, STREAM_Y, self.y_tables, y_idx.size, per_cdf)
        _mark(clock, "checks")
        y_sym = self._decode(streams, STREAM_Y, self.y_tables, y_idx, y_shape)
        _mark(clock, "y.rans")
        context = hash_context(self.profile_id, width, height, {k: len(v) for k, v in streams.items()}, version=version)
        if latent_hash(z_sym, y_sym, context) != expected_hash:
            raise BitstreamError(
                "decoded latent does not match the encoder's (latent hash mismatch)",
                hint="the bitstream is corrupt or was made by an encoder out of step with this decoder; "
                "nothing was decoded",
            )
        y_hat = np.add(y_sym, means, dtype=np.float32)
        _mark(clock, "hash")
        return y_hat

    def z_indexes(self, shape: tuple[int, ...]) -> np.ndarray:
        """The CDF index of every z symbol: its channel."""
        import numpy as np

        c = shape[1]
        return np.ascontiguousarray(np.broadcast_to(np.arange(c, dtype=np.int32).reshape(1, c, 1, 1), shape))

    @staticmethod
    def _decode(
        streams: dict[str, bytes],
        name: str,
        tables: RansTables,
        indexes: np.ndarray,
        shape: tuple[int, ...],
        *,
        run: int = 1,
    ) -> np.ndarray:
        """Symbols of one stream, int32 in ``shape`` (the values CompressAI's ``EntropyModel.decompress`` returns)."""
        return decode_with_indexes(streams[name], indexes, tables, stream=name, run=run).reshape(shape)


def to_pixels(x_hat: np.ndarray, width: int, height: int) -> np.ndarray:
    """The synthesis transform's output (1, 3, H', W') float32 in [0, 1] -> the (height, width, 3) uint8 image, cropped
    to the original size (every backend's ``g_s`` output goes through this one rounding)."""
    import numpy as np

    x = np.clip(x_hat[0, :, :height, :width], 0.0, 1.0) * np.float32(255)
    return np.ascontiguousarray(np.round(x).astype(np.uint8).transpose(1, 2, 0))


def _mark(clock: Clock | None, stage: str) -> None:
    if clock is not None:
        clock(stage)
