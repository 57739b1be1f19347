"""A store's codec and adapter exported once and cached: decoding and image queries without torch or CompressAI.

``licsearch get`` on the README's 100,000-point store spent most of its time loading: importing torch and CompressAI
and building the model, against well under a second of entropy decoding and synthesis; ``search --image`` the same
before a few hundred milliseconds of analysis. Two kinds of entry, each built by the first command that needs it:

- a **codec** entry (named by the codec's weights fingerprint): its transforms ``g_a``, ``h_a`` and ``g_s`` exported
  to ONNX (:func:`~licsearch.bundle.export.export_graph`, with its ONNX-Runtime-vs-torch check) and its entropy coding
  as arrays (:meth:`~licsearch.model.latent.LatentCodec.arrays`: the rANS tables, the medians, the scale thresholds and
  the integer ``h_s``). Probe images are decoded both ways: the latent must be identical (the canonical integer path,
  evaluated in NumPy here) and the pixels within :data:`PIXEL_DIFF_MAX`, or the codec keeps the eager path;
- an **adapter** entry (named by the adapter's and the codec's fingerprints): the adapter's graph. Probe images are
  embedded both ways (the cached analysis then the adapter graph, against the eager encoder): every cosine must reach
  :data:`IMAGE_COSINE_MIN`.

Every later decode or image query, in any process, runs on NumPy, numba's rANS kernels and ONNX Runtime. An entry is
``<cache root>/codec/<key>/`` or ``<cache root>/adapter/<key>/``: its files and ``entry.json`` (what it was made
from, each file's sha256 and the parity figures), or ``entry.json`` alone where the models keep the eager path, saying
why. Loads check the files' hashes; a damaged entry is removed and rebuilt with a notice (:mod:`.graph_cache`).

As with the text cache, a warm command reads no weights file: it runs the models whose fingerprints the store recorded.
A ``pixels`` space's image queries (CLIP's image tower) and a bundle's planes do not use this cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..bitstream import Bitstream, make_profile_id
from ..config import CodecConfig, ModelsConfig
from ..errors import InputError, ModelError
from ..model.latent import LatentCodec, to_pixels
from ..model.models import Encoded, ModelPlane, ModelSet
from ..spaces import ADAPTER_KIND
from . import graph_cache
from .graph_cache import ENTRY_FILE, DamagedEntry, cache_root, check_files, hash_files, read_entry_doc
from .runtime import CODEC_TRANSFORMS, RuntimeOptions, open_graph

if TYPE_CHECKING:
    import numpy as np

CACHE_FORMAT = 1
"""Version of an entry's layout and checks; a new one makes new keys, so older entries are never read."""
PIXEL_DIFF_MAX = 1
"""Largest difference (in 8-bit levels) allowed between the cached decoder's and the eager decoder's pixels on the
probe images: ONNX Runtime and torch sum a convolution's products in different orders, which moves a value across a
rounding boundary at a few pixels; a latent that differs at all, or a larger pixel difference, keeps the eager path."""
IMAGE_COSINE_MIN = 0.999
"""Least cosine between the cached and the eager embedding of every probe image. ``g_a`` on ONNX Runtime rounds a
few latent elements the other way, so an image query's vector is close to, not equal to, the eager one's."""
PROBE_SIZES = ((128, 192), (100, 70), (256, 384))
"""(height, width) of the probe images a new entry is checked on (odd sizes exercise padding and cropping)."""
TABLES_FILE = "latent.npz"
ADAPTER_FILE = "adapter.onnx"
ENV = "LICSEARCH_CODEC_CACHE"

_codecs: dict[Path, CachedCodec | None] = {}
_adapters: dict[Path, CachedAdapter | None] = {}
"""Entries this process has checked and opened."""


def cache_enabled() -> bool:
    """False where ``$LICSEARCH_CODEC_CACHE`` is ``off`` or ``0``: decodes and image queries then load the eager
    models."""
    return graph_cache.switched_on(ENV)


def _key(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, (CACHE_FORMAT, *parts))).encode()).hexdigest()[:32]


def codec_dir(codec: CodecConfig) -> Path | None:
    """The cache entry of a codec; None without a weights fingerprint (nothing to name it by)."""
    if not codec.sha256:
        return None
    return cache_root() / "codec" / _key(codec.arch, codec.quality, codec.sha256)


def adapter_dir(models: ModelsConfig) -> Path | None:
    """The cache entry of an adapter on its codec; None without both fingerprints."""
    if not (models.codec.sha256 and models.adapter.sha256):
        return None
    return cache_root() / "adapter" / _key(models.codec.sha256, models.adapter.sha256)


@dataclass(frozen=True)
class CodecCacheEntry:
    """A codec entry's ``entry.json``.

    Attributes:
        usable: whether decodes and image analyses may run on the entry; when False, ``reason`` says why not and there
            are no other files.
        latent: the description of ``latent.npz`` (:meth:`~licsearch.model.latent.LatentCodec.arrays`).
        files: sha256 of each file of the entry.
        parity_max_abs: each graph's largest difference from eager torch on the export's check input.
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
    parity_max_abs: dict[str, float] = field(default_factory=dict)
    pixel_max_diff: int = 0
    pixels_differing: float = 0.0
    format: int = CACHE_FORMAT


@dataclass(frozen=True)
class AdapterCacheEntry:
    """An adapter entry's ``entry.json``: ``cosine_min`` is the least cosine to the eager embedding on the probes."""

    codec_sha256: str
    adapter_sha256: str
    usable: bool
    reason: str = ""
    files: dict[str, str] = field(default_factory=dict)
    parity_max_abs: float = 0.0
    cosine_min: float = 0.0
    format: int = CACHE_FORMAT


class CachedCodec:
    """A codec from its entry: entropy coding in NumPy and numba, the transforms on ONNX Runtime (each opened on first
    use).

    Args:
        folder: the entry's folder (its files already checked).
        entry: its ``entry.json``.
        options: ONNX Runtime settings.

    Raises:
        DamagedEntry: the arrays do not make a codec of the entry's profile.
    """

    def __init__(self, folder: Path, entry: CodecCacheEntry, options: RuntimeOptions) -> None:
        import numpy as np

        try:
            with np.load(folder / TABLES_FILE, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            self.latent = LatentCodec.from_arrays(entry.latent, arrays, torch_free=True)
        except (ModelError, OSError, ValueError) as e:
            raise DamagedEntry(f"{TABLES_FILE}: {e}") from e
        if self.latent.profile_id != entry.profile_id:
            raise DamagedEntry(f"{TABLES_FILE} describes profile {self.latent.profile_id}, not {entry.profile_id}")
        self._folder, self._options = folder, options
        self._graphs: dict[str, Callable[[np.ndarray], np.ndarray]] = {}

    @property
    def profile_id(self) -> str:
        return self.latent.profile_id

    def _graph(self, name: str) -> Callable[[np.ndarray], np.ndarray]:
        """A transform's graph, opened on first use: on OpenVINO where ``LICSEARCH_OPENVINO`` names it."""
        if name not in self._graphs:
            self._graphs[name] = open_graph(name, self._folder / f"{name}.onnx", self._options)
        return self._graphs[name]

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
        """``g_s``, then the eager decoder's rounding (:func:`~licsearch.model.latent.to_pixels`)."""
        return to_pixels(self._graph("g_s")(y_hat), width, height)

    def analyse(self, pixels: np.ndarray) -> np.ndarray:
        """An (H, W, 3) uint8 image -> its y_hat (1, M, h, w): what the encoder would store, without entropy coding."""
        y, z = self.transforms([pixels])
        return self.latent.quantize(y, z)

    def transforms(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``g_a`` and ``h_a`` of images of one size: (y, z), float32, a batch each.

        The images are prepared as :meth:`~licsearch.model.codec.Codec.compress_batch` prepares them: values divided
        by 255 in float32, edges replicated up to the downsampling factor.

        Raises:
            InputError: an image is not (H, W, 3) uint8, or the images differ in size.
        """
        import numpy as np

        h, w = images[0].shape[:2]
        for im in images:
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise InputError(f"expected an (H, W, 3) uint8 image, got {im.shape} {im.dtype}")
            if im.shape[:2] != (h, w):
                raise InputError("compress_batch needs images of one size", hint="group images by size first")
        f = self.latent.downsampling
        x = np.stack(images).astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)
        x = np.pad(x, ((0, 0), (0, 0), (0, (-h) % f), (0, (-w) % f)), mode="edge")
        y = self._graph("g_a")(np.ascontiguousarray(x))
        return y, self._graph("h_a")(y)

    def compress(self, y: np.ndarray, z: np.ndarray, width: int, height: int) -> tuple[bytes, np.ndarray]:
        """One image's latents (batches of one) -> its ``.lics`` container and y_hat."""
        streams, digest, y_hat = self.latent.code(y, z, width, height)
        return Bitstream(self.latent.profile_id, width, height, digest, streams).to_bytes(), y_hat


class CachedEncoder:
    """An ``adapter`` plane's encoder on the cache: images -> bitstreams (cached codec) and embeddings (cached adapter),
    the operation of :meth:`~licsearch.model.models.ModelPlane.encode_batch`.

    Its bitstreams are any encoder's: the entropy parameters come from the canonical path, so every decoder decodes
    them exactly; ``g_a`` on ONNX Runtime rounds a few latent elements differently from eager torch, so the bytes of
    one image may differ from the eager encoder's.
    """

    def __init__(self, codec: CachedCodec, adapter: CachedAdapter) -> None:
        self.codec, self.adapter = codec, adapter

    @property
    def profile_id(self) -> str:
        return self.codec.profile_id

    def encode_batch(self, images: list[np.ndarray]) -> list[Encoded]:
        import numpy as np

        if not images:
            return []
        h, w = images[0].shape[:2]
        y, z = self.codec.transforms(images)
        coded = [self.codec.compress(y[i : i + 1], z[i : i + 1], w, h) for i in range(len(images))]
        vectors = self.adapter.embed(np.concatenate([y_hat for _, y_hat in coded]))
        return [Encoded(data, [float(v) for v in vec], w, h) for (data, _), vec in zip(coded, vectors, strict=True)]


class CachedAdapter:
    """The adapter's graph from its entry: y_hat -> a unit vector."""

    def __init__(self, folder: Path, entry: AdapterCacheEntry, options: RuntimeOptions) -> None:
        self._graph = open_graph("adapter", folder / ADAPTER_FILE, options)

    def embed(self, y_hat: np.ndarray) -> np.ndarray:
        import numpy as np

        return self._graph(np.ascontiguousarray(y_hat, dtype=np.float32))


# -- what commands call -------------------------------------------------------------------------------------


def decode(plane: ModelPlane, data: bytes) -> np.ndarray:
    """``.lics`` bytes -> pixels on the plane's cached codec where it may use one, else ``plane.decode``."""
    codec, _ = cached_codec(plane)
    return codec.decode(data) if codec is not None else plane.decode(data)


def embed_image(plane: ModelPlane, pixels: np.ndarray) -> list[float]:
    """An image query's vector: the cached codec's analysis and the cached adapter for an ``adapter`` space, where the
    plane may use them; else the plane's own encoder (a ``pixels`` space runs CLIP's image tower)."""
    encoder = cached_encoder(plane)
    if encoder is None:
        return plane.encode(pixels).embedding
    return [float(v) for v in encoder.adapter.embed(encoder.codec.analyse(pixels))[0]]


def cached_encoder(plane: ModelPlane) -> CachedEncoder | None:
    """The cached encoder of a store's eager models in an ``adapter`` space (ingest's and image queries'), or None
    where the plane must encode itself (see :func:`cached_codec` and :func:`cached_adapter`)."""
    adapter, _ = cached_adapter(plane)
    codec, _ = cached_codec(plane) if adapter is not None else (None, [])
    return CachedEncoder(codec, adapter) if adapter is not None and codec is not None else None


def cached_codec(plane: ModelPlane) -> tuple[CachedCodec | None, list[str]]:
    """The cached codec of a store's eager models (None: use the plane itself), and notices.

    A bundle's plane and a codec without a recorded fingerprint run on the plane; so does every plane while the cache
    is turned off (:func:`cache_enabled`) or where the entry says the codec keeps the eager path.
    """
    folder = codec_dir(plane.cfg.codec) if isinstance(plane, ModelSet) and cache_enabled() else None
    if folder is None:
        return None, []
    assert isinstance(plane, ModelSet)
    codec_cfg = plane.cfg.codec
    return graph_cache.open_entry(
        folder,
        _codecs,
        read=lambda f: read_codec_entry(f, codec_cfg),
        build=lambda f: build_codec_entry(plane, f),
        open_=lambda f, e: CachedCodec(f, e, RuntimeOptions.from_env()),
        what="codec cache",
    )


def cached_adapter(plane: ModelPlane) -> tuple[CachedAdapter | None, list[str]]:
    """The cached adapter of a store's eager models in an ``adapter`` space (None: use the plane), and notices."""
    usable = isinstance(plane, ModelSet) and plane.kind == ADAPTER_KIND and cache_enabled()
    folder = adapter_dir(plane.cfg) if usable else None
    if folder is None:
        return None, []
    assert isinstance(plane, ModelSet)
    cfg = plane.cfg
    return graph_cache.open_entry(
        folder,
        _adapters,
        read=lambda f: read_adapter_entry(f, cfg),
        build=lambda f: build_adapter_entry(plane, f),
        open_=lambda f, e: CachedAdapter(f, e, RuntimeOptions.from_env()),
        what="adapter cache",
    )


# -- reading entries ----------------------------------------------------------------------------------------


def read_codec_entry(folder: Path, codec: CodecConfig | None = None) -> CodecCacheEntry | None:
    """The codec entry in ``folder``, its files checked against their hashes; None where there is none.

    Raises:
        DamagedEntry: ``entry.json`` is unreadable or names another codec than ``codec``, or a file is missing or does
            not match its hash.
    """
    entry = _entry(folder, CodecCacheEntry, {*(f"{g}.onnx" for g in CODEC_TRANSFORMS), TABLES_FILE})
    if entry is None:
        return None
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


def read_adapter_entry(folder: Path, models: ModelsConfig | None = None) -> AdapterCacheEntry | None:
    """The adapter entry in ``folder``, checked as :func:`read_codec_entry` checks a codec entry."""
    entry = _entry(folder, AdapterCacheEntry, {ADAPTER_FILE})
    if entry is None:
        return None
    if models is not None and (entry.codec_sha256, entry.adapter_sha256) != (
        models.codec.sha256,
        models.adapter.sha256,
    ):
        raise DamagedEntry(f"{ENTRY_FILE} names adapter {entry.adapter_sha256[:12]}, not this store's")
    check_files(folder, entry.files)
    return entry


def _entry(folder: Path, kind: Any, files: set[str]) -> Any:
    doc = read_entry_doc(folder)
    if doc is None:
        return None
    try:
        entry = kind(**doc)
    except TypeError as e:
        raise DamagedEntry(f"{ENTRY_FILE} {e}") from e
    if entry.format != CACHE_FORMAT or (entry.usable and set(entry.files) != files):
        raise DamagedEntry(f"{ENTRY_FILE} does not describe a format-{CACHE_FORMAT} entry")
    return entry


# -- building entries ---------------------------------------------------------------------------------------


def build_codec_entry(ms: ModelSet, folder: Path) -> CodecCacheEntry | None:
    """Exports ``ms``'s codec into ``folder`` and checks it; None where the cache cannot be written.

    The eager codec is loaded here (its weights checked against the store's fingerprint), so this command pays torch.
    """

    def make(tmp: Path) -> tuple[CodecCacheEntry, dict[str, object]]:
        entry = _export_codec(ms, tmp)
        return entry, asdict(entry)

    return graph_cache.build_entry(folder, make, "codec cache")


def build_adapter_entry(ms: ModelSet, folder: Path) -> AdapterCacheEntry | None:
    """Exports ``ms``'s adapter into ``folder`` and checks image queries end to end against the eager encoder (which
    needs the codec's entry: without a usable one, None)."""
    codec, _ = cached_codec(ms)
    if codec is None:
        return None

    def make(tmp: Path) -> tuple[AdapterCacheEntry, dict[str, object]]:
        assert codec is not None
        entry = _export_adapter(ms, codec, tmp)
        return entry, asdict(entry)

    return graph_cache.build_entry(folder, make, "adapter cache")


def _export_codec(ms: ModelSet, tmp: Path) -> CodecCacheEntry:
    """Exports the transforms and the latent arrays into ``tmp``; the entry says whether they decode as the eager
    codec."""
    import numpy as np

    from .export import DEFAULT_OPSET, codec_graph_specs, export_graph

    codec, cfg = ms.codec, ms.cfg.codec
    base: dict[str, Any] = {
        "arch": cfg.arch,
        "quality": cfg.quality,
        "codec_sha256": codec.weights_sha256,
        "profile_id": codec.profile_id,
    }
    parity: dict[str, float] = {}
    for spec in codec_graph_specs(codec):
        try:
            parity[spec.name] = export_graph(spec, tmp / f"{spec.name}.onnx", DEFAULT_OPSET).parity_max_abs
        except OSError:
            raise
        except Exception as e:  # the exporter's own errors are of many types; a codec it cannot export stays eager
            return CodecCacheEntry(**base, usable=False, reason=f"{spec.name} not exported ({type(e).__name__}: {e})")
    meta, arrays = codec.latent.arrays()
    np.savez(tmp / TABLES_FILE, **arrays)
    files = [*(f"{g}.onnx" for g in CODEC_TRANSFORMS), TABLES_FILE]
    cached = CachedCodec(tmp, CodecCacheEntry(**base, usable=True, latent=meta), RuntimeOptions.from_env())
    worst, differing, total, reason = 0, 0, 0, ""
    for image in _probe_images():
        h, w = image.shape[:2]
        comp = codec.compress(image)
        y_eager = codec.entropy_decode(comp.streams, w, h, comp.latent_hash)
        y_cached = cached.latent.entropy_decode(comp.streams, w, h, comp.latent_hash)
        if not np.array_equal(y_cached, y_eager.numpy()):
            reason = f"the NumPy entropy path decoded another latent than the eager codec at {w}x{h}"
            break
        diff = np.abs(cached.synthesize(y_cached, w, h).astype(np.int16) - codec.synthesize(y_eager, w, h))
        worst, differing, total = max(worst, int(diff.max())), differing + int((diff > 0).sum()), total + diff.size
    if not reason and worst > PIXEL_DIFF_MAX:
        reason = f"pixels differ from the eager decoder's by up to {worst} levels (at most {PIXEL_DIFF_MAX} allowed)"
    if reason:
        _remove(tmp, files)
        return CodecCacheEntry(**base, usable=False, reason=reason, parity_max_abs=parity)
    return CodecCacheEntry(
        **base,
        usable=True,
        latent=meta,
        files=hash_files(tmp, files),
        parity_max_abs=parity,
        pixel_max_diff=worst,
        pixels_differing=differing / max(total, 1),
    )


def _export_adapter(ms: ModelSet, codec: CachedCodec, tmp: Path) -> AdapterCacheEntry:
    """Exports the adapter's graph into ``tmp``; the entry says whether image queries on it match the eager encoder."""
    import numpy as np

    from .export import DEFAULT_OPSET, adapter_graph_spec, export_graph

    base: dict[str, Any] = {"codec_sha256": ms.codec.weights_sha256, "adapter_sha256": ms.adapter.weights_sha256}
    spec = adapter_graph_spec(ms.adapter.module, ms.codec.latent_channels, ms.embed_dim)
    try:
        info = export_graph(spec, tmp / ADAPTER_FILE, DEFAULT_OPSET)
    except OSError:
        raise
    except Exception as e:  # as for the codec: an adapter the exporter cannot take stays eager
        return AdapterCacheEntry(**base, usable=False, reason=f"adapter not exported ({type(e).__name__}: {e})")
    adapter = CachedAdapter(tmp, AdapterCacheEntry(**base, usable=True), RuntimeOptions.from_env())
    cosines = []
    for image in _probe_images():
        fast = adapter.embed(codec.analyse(image))[0]
        eager = np.asarray(ms.encode(image).embedding)
        cosines.append(float(fast @ eager / (np.linalg.norm(fast) * np.linalg.norm(eager))))
    worst = min(cosines)
    if worst < IMAGE_COSINE_MIN:
        _remove(tmp, [ADAPTER_FILE])
        reason = f"image query cosine {worst:.6f} < {IMAGE_COSINE_MIN} against the eager encoder"
        return AdapterCacheEntry(**base, usable=False, reason=reason, parity_max_abs=info.parity_max_abs)
    return AdapterCacheEntry(
        **base,
        usable=True,
        files=hash_files(tmp, [ADAPTER_FILE]),
        parity_max_abs=info.parity_max_abs,
        cosine_min=worst,
    )


def _remove(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).unlink(missing_ok=True)


def _probe_images() -> list[np.ndarray]:
    """Smooth random RGB images with a sharp bar, one per :data:`PROBE_SIZES` (the same on every build)."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for h, w in PROBE_SIZES:
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
        out.append(np.ascontiguousarray((img * 255).round().astype(np.uint8)))
    return out


def forget_loaded() -> None:
    """Drops the entries this process opened, so the next command reads (and checks) them again."""
    _codecs.clear()
    _adapters.clear()
