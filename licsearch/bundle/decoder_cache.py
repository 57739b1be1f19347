"""A codec's decoder as files, exported once and cached, so decoding a stored image needs neither torch nor CompressAI.

``licsearch get`` on the README's 100,000-point store spent most of its time loading: importing torch and CompressAI
and building the model, against well under a second of entropy decoding and synthesis. The first decode of a codec
(named by its weights' fingerprint) exports its synthesis transform ``g_s`` to ONNX
(:func:`~licsearch.bundle.export.export_graph`, with its ONNX-Runtime-vs-torch check) and writes the codec's entropy
coding as arrays (:meth:`~licsearch.model.latent.LatentCodec.arrays`: the rANS tables, the medians, the scale
thresholds and the integer ``h_s``). It then decodes probe images both ways: the latent must be identical (it is the
canonical integer path, evaluated in NumPy here) and the pixels within :data:`PIXEL_DIFF_MAX`; only then may the
entry be used. Every later decode, in any process, runs on NumPy, numba's rANS kernels and ONNX Runtime.

An entry is ``<cache root>/decoder/<key>/``: ``g_s.onnx``, ``latent.npz`` and ``entry.json`` (the codec, its profile
id, the arrays' description, each file's sha256 and the parity figures), or ``entry.json`` alone where the codec keeps
the eager path, saying why. The key hashes :data:`CACHE_FORMAT`, the architecture, the quality and the fingerprint.
Loads check the files' hashes; a damaged entry is removed and rebuilt with a notice (:mod:`.graph_cache`).

As with the text cache, a warm decode reads no weights file: it decodes with the codec the store recorded.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..bitstream import Bitstream, make_profile_id
from ..config import CodecConfig
from ..errors import ModelError
from ..model.latent import LatentCodec, to_pixels
from ..model.models import ModelPlane, ModelSet
from . import graph_cache
from .graph_cache import ENTRY_FILE, DamagedEntry, cache_root, check_files, hash_files, read_entry_doc
from .runtime import RuntimeOptions, make_session

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Version of an entry's layout and checks; a new one makes new keys, so older entries are never read."""
PIXEL_DIFF_MAX = 1
"""Largest difference (in 8-bit levels) allowed between the cached decoder's and the eager decoder's pixels on the
probe images: ONNX Runtime and torch sum a convolution's products in different orders, which moves a value across a
rounding boundary at a few pixels; a latent that differs at all, or a larger pixel difference, keeps the eager path."""
PROBE_SIZES = ((128, 192), (100, 70), (256, 384))
"""(height, width) of the probe images a new entry is checked on (odd sizes exercise padding and cropping)."""
GRAPH_FILE = "g_s.onnx"
TABLES_FILE = "latent.npz"
ENV = "LICSEARCH_DECODE_CACHE"

_loaded: dict[Path, CachedDecoder] = {}
"""Entries this process has checked and opened."""


def cache_enabled() -> bool:
    """False where ``$LICSEARCH_DECODE_CACHE`` is ``off`` or ``0``: decoding then loads the eager codec."""
    return graph_cache.switched_on(ENV)


def entry_dir(codec: CodecConfig) -> Path | None:
    """The cache entry of a codec's decoder; None without a weights fingerprint (nothing to name it by)."""
    if not codec.sha256:
        return None
    key = hashlib.sha256(f"{CACHE_FORMAT}|{codec.arch}|{codec.quality}|{codec.sha256}".encode()).hexdigest()[:32]
    return cache_root() / "decoder" / key


@dataclass(frozen=True)
class DecoderCacheEntry:
    """What ``entry.json`` records.

    Attributes:
        usable: whether decodes may run on the cached decoder; when False, ``reason`` says why not and there are no
            other files.
        latent: the description of ``latent.npz`` (:meth:`~licsearch.model.latent.LatentCodec.arrays`).
        files: sha256 of each file of the entry.
        parity_max_abs: the ``g_s`` graph's largest difference from eager torch on the export's check latent.
        pixel_max_diff: the largest pixel difference from the eager decoder on the probe images (8-bit levels).
        pixels_differing: the share of the probe images' pixel values that differ from the eager decoder's.
    """

    arch: str
    quality: int
    codec_sha256: str
    profile_id: str
    usable: bool
    reason: str = ""
    latent: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    parity_max_abs: float = 0.0
    pixel_max_diff: int = 0
    pixels_differing: float = 0.0
    format: int = CACHE_FORMAT


class CachedDecoder:
    """``.lics`` bytes -> pixels from a cache entry: the entropy decoding in NumPy and numba, ``g_s`` on ONNX Runtime.

    Args:
        folder: the entry's folder (its files already checked).
        entry: its ``entry.json``.
        options: ONNX Runtime settings.
    """

    def __init__(self, folder: Path, entry: DecoderCacheEntry, options: RuntimeOptions) -> None:
        import numpy as np

        with np.load(folder / TABLES_FILE, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        self.latent = LatentCodec.from_arrays(entry.latent, arrays, torch_free=True)
        if self.latent.profile_id != entry.profile_id:
            raise DamagedEntry(f"{TABLES_FILE} describes profile {self.latent.profile_id}, not {entry.profile_id}")
        self._g_s = make_session(folder / GRAPH_FILE, options)
        self._input = self._g_s.get_inputs()[0].name

    @property
    def profile_id(self) -> str:
        return self.latent.profile_id

    def decode(self, data: bytes) -> np.ndarray:
        """``.lics`` bytes -> (H, W, 3) uint8 pixels.

        Raises:
            BitstreamError: the container is damaged, was made by another codec, or its streams do not decode exactly.
        """
        bs = Bitstream.from_bytes(data)
        bs.check_profile(self.latent.profile_id)
        y_hat = self.latent.entropy_decode(bs.streams, bs.width, bs.height, bs.latent_hash, version=bs.version)
        return self.synthesize(y_hat, bs.width, bs.height)

    def synthesize(self, y_hat: np.ndarray, width: int, height: int) -> np.ndarray:
        """``g_s`` on ONNX Runtime, then the eager decoder's rounding (:func:`~licsearch.model.latent.to_pixels`)."""
        return to_pixels(self._g_s.run(None, {self._input: y_hat})[0], width, height)


def decode(plane: ModelPlane, data: bytes) -> np.ndarray:
    """``.lics`` bytes -> pixels by the plane's cached decoder where it may use one, else ``plane.decode``."""
    decoder, notices = cached_decoder(plane)
    for n in notices:
        logger.warning(n)
    return decoder.decode(data) if decoder is not None else plane.decode(data)


def cached_decoder(plane: ModelPlane) -> tuple[CachedDecoder | None, list[str]]:
    """The cached decoder of a store's eager models (None: decode with the plane itself), and notices.

    A bundle's plane and a codec without a recorded fingerprint decode with the plane; so does every plane while the
    cache is turned off (:func:`cache_enabled`) or where the entry says the codec keeps the eager path.
    """
    if not isinstance(plane, ModelSet):
        return None, []
    folder = entry_dir(plane.cfg.codec)
    if folder is None or not cache_enabled():
        return None, []
    if folder in _loaded:
        return _loaded[folder], []
    damage = ""
    decoder: CachedDecoder | None = None
    try:
        entry = read_entry(folder, plane.cfg.codec)
        if entry is not None and entry.usable:
            decoder = CachedDecoder(folder, entry, RuntimeOptions.from_env())
    except (DamagedEntry, ModelError, OSError, ValueError) as e:
        damage = f"the decoder cache {folder} was damaged ({e})"
        shutil.rmtree(folder, ignore_errors=True)
        entry = None
    if entry is None:
        entry = build_entry(plane, folder)
        if entry is not None and entry.usable:
            decoder = CachedDecoder(folder, entry, RuntimeOptions.from_env())
    notices = [f"{damage}: {'rebuilt' if entry is not None else 'removed'}"] if damage else []
    if decoder is not None:
        _loaded[folder] = decoder
    return decoder, notices


def read_entry(folder: Path, codec: CodecConfig | None = None) -> DecoderCacheEntry | None:
    """The entry in ``folder``, its files checked against their hashes; None where there is none.

    Raises:
        DamagedEntry: ``entry.json`` is unreadable or names another codec than ``codec``, or a file is missing or does
            not match its hash.
    """
    doc = read_entry_doc(folder)
    if doc is None:
        return None
    try:
        entry = DecoderCacheEntry(**doc)  # type: ignore[arg-type]
    except TypeError as e:
        raise DamagedEntry(f"{ENTRY_FILE} {e}") from e
    if entry.format != CACHE_FORMAT or (entry.usable and set(entry.files) != {GRAPH_FILE, TABLES_FILE}):
        raise DamagedEntry(f"{ENTRY_FILE} does not describe a format-{CACHE_FORMAT} entry")
    if codec is not None and (entry.arch, entry.quality, entry.codec_sha256) != (
        codec.arch,
        codec.quality,
        codec.sha256,
    ):
        named = f"{entry.arch} q{entry.quality} {entry.codec_sha256[:12]}"
        raise DamagedEntry(f"{ENTRY_FILE} names {named}, not this codec")
    if entry.profile_id != make_profile_id(entry.arch, entry.quality, entry.codec_sha256):
        raise DamagedEntry(f"{ENTRY_FILE} records a profile id that does not match its codec")
    check_files(folder, entry.files)
    return entry


def build_entry(ms: ModelSet, folder: Path) -> DecoderCacheEntry | None:
    """Exports ``ms``'s decoder into ``folder`` and checks it; None where the cache cannot be written.

    The eager codec is loaded here (its weights checked against the store's fingerprint), so this decode pays torch.
    """

    def make(tmp: Path) -> tuple[DecoderCacheEntry, dict[str, object]]:
        entry = _export_checked(ms, tmp)
        return entry, asdict(entry)

    return graph_cache.build_entry(folder, make, "decoder cache")


def _export_checked(ms: ModelSet, tmp: Path) -> DecoderCacheEntry:
    """Exports ``g_s`` and the latent arrays into ``tmp``; the entry says whether they decode as the eager codec."""
    import numpy as np

    from .export import DEFAULT_OPSET, export_graph, g_s_graph_spec

    codec, cfg = ms.codec, ms.cfg.codec
    base: dict[str, Any] = {
        "arch": cfg.arch,
        "quality": cfg.quality,
        "codec_sha256": codec.weights_sha256,
        "profile_id": codec.profile_id,
    }
    try:
        info = export_graph(g_s_graph_spec(codec), tmp / GRAPH_FILE, DEFAULT_OPSET)
    except OSError:
        raise
    except Exception as e:  # the exporter's own errors are of many types; a g_s it cannot export stays eager
        return DecoderCacheEntry(**base, usable=False, reason=f"g_s not exported ({type(e).__name__}: {e})")
    meta, arrays = codec.latent.arrays()
    np.savez(tmp / TABLES_FILE, **arrays)
    entry = DecoderCacheEntry(**base, usable=True, latent=meta, parity_max_abs=info.parity_max_abs)
    decoder = CachedDecoder(tmp, entry, RuntimeOptions())
    worst, differing, total, reason = 0, 0, 0, ""
    rng = np.random.default_rng(0)
    for h, w in PROBE_SIZES:
        image = _probe_image(rng, h, w)
        comp = codec.compress(image)
        y_eager = codec.entropy_decode(comp.streams, w, h, comp.latent_hash)
        y_cached = decoder.latent.entropy_decode(comp.streams, w, h, comp.latent_hash)
        if not np.array_equal(y_cached, y_eager.numpy()):
            reason = f"the NumPy entropy path decoded another latent than the eager codec at {w}x{h}"
            break
        diff = np.abs(decoder.synthesize(y_cached, w, h).astype(np.int16) - codec.synthesize(y_eager, w, h))
        worst, differing, total = max(worst, int(diff.max())), differing + int((diff > 0).sum()), total + diff.size
    if not reason and worst > PIXEL_DIFF_MAX:
        reason = f"pixels differ from the eager decoder's by up to {worst} levels (at most {PIXEL_DIFF_MAX} allowed)"
    if reason:
        for name in (GRAPH_FILE, TABLES_FILE):
            (tmp / name).unlink()
        return DecoderCacheEntry(**base, usable=False, reason=reason, parity_max_abs=info.parity_max_abs)
    return DecoderCacheEntry(
        **base,
        usable=True,
        latent=meta,
        files=hash_files(tmp, [GRAPH_FILE, TABLES_FILE]),
        parity_max_abs=info.parity_max_abs,
        pixel_max_diff=worst,
        pixels_differing=differing / max(total, 1),
    )


def _probe_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random RGB image with edges: coarse noise, upsampled, plus a sharp bar (what photos hold)."""
    import numpy as np

    coarse = rng.random((h // 16 + 2, w // 16 + 2, 3))
    ys, xs = np.linspace(0, coarse.shape[0] - 1.001, h), np.linspace(0, coarse.shape[1] - 1.001, w)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    img = (
        coarse[y0][:, x0] * (1 - fy) * (1 - fx)
        + coarse[y0 + 1][:, x0] * fy * (1 - fx)
        + coarse[y0][:, x0 + 1] * (1 - fy) * fx
        + coarse[y0 + 1][:, x0 + 1] * fy * fx
    )
    img[h // 3 : h // 3 + max(2, h // 10), :, :] = rng.random(3)
    return np.ascontiguousarray((img * 255).round().astype(np.uint8))


def forget_loaded() -> None:
    """Drops the entries this process opened, so the next decode reads (and checks) them again."""
    _loaded.clear()
