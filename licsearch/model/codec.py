"""The learned image codec: CompressAI hyperprior models behind named streams and a canonical entropy path.

The heavy transforms (``g_a``, ``h_a``, ``g_s``) come from CompressAI and may later run on other backends;
entropy coding is :mod:`licsearch.model.rans`, byte-identical with CompressAI's rANS coder (one compiled call per
stream). We go around ``model.compress()`` / ``model.decompress()`` because they compute the
entropy parameters in backend-dependent floating point and address streams by list position; here the parameters
come from :mod:`licsearch.model.entropy` and streams are named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..bitstream import VERSION, make_profile_id
from ..errors import InputError, ModelError
from ..registry import Registry
from .compressai_import import load as load_compressai
from .entropy import CanonicalEntropyPath, Clock
from .latent import LATENT_HASH_BYTES, STREAM_Y, STREAM_Z, STREAMS, LatentCodec, latent_hash, to_pixels
from .rans import RansTables
from .weights import PRETRAINED, RANDOM, load_state_dict_file, seeded, state_dict_sha256

if TYPE_CHECKING:
    import numpy as np
    import torch

load_compressai()  # before this module's first CompressAI import (cheap: see compressai_import)

__all__ = ["LATENT_HASH_BYTES", "STREAMS", "STREAM_Y", "STREAM_Z", "Codec", "latent_hash"]  # re-exported from .latent
RANDOM_LATENT_GAIN = 64.0


@dataclass(frozen=True)
class CodecArch:
    """A CompressAI architecture this project can drive.

    Attributes:
        name: CompressAI zoo name.
        has_means: the Gaussian conditional has means (mean-scale models).
        abs_before_h_a: ``h_a`` reads ``|y|`` (Ballé's scale hyperprior) rather than ``y``.
        downsampling: spatial factor from image to hyper-latent.
    """

    name: str
    has_means: bool
    abs_before_h_a: bool
    downsampling: int = 64

    @property
    def qualities(self) -> tuple[int, ...]:
        from compressai.zoo.image import cfgs

        return tuple(sorted(cfgs[self.name]))

    def build_random(self, quality: int, seed: int) -> Any:
        """A model of the zoo's shape for ``quality`` with seeded random weights.

        Freshly initialised, ``g_a`` emits latents of standard deviation ~0.04, which all quantize to zero, so
        every image would get the same bitstream and embedding. The last analysis layer is scaled up by
        :data:`RANDOM_LATENT_GAIN` (and the first synthesis layer down by as much) so that untrained codecs
        still tell images apart; they remain untrained and are always labelled as random.
        """
        import torch
        from compressai.zoo.image import cfgs, model_architectures

        self.check_quality(quality)
        with seeded(seed):
            model = model_architectures[self.name](*cfgs[self.name][quality])
        with torch.no_grad():
            model.g_a[-1].weight.mul_(RANDOM_LATENT_GAIN)
            model.g_a[-1].bias.mul_(RANDOM_LATENT_GAIN)
            model.g_s[0].weight.div_(RANDOM_LATENT_GAIN)
        return model

    def from_state_dict(self, state: dict[str, Any]) -> Any:
        """A model whose shape is read off ``state`` (CompressAI's own convention)."""
        from compressai.zoo.image import model_architectures
        from compressai.zoo.pretrained import load_pretrained

        try:
            return model_architectures[self.name].from_state_dict(load_pretrained(state))
        except (KeyError, RuntimeError) as e:
            raise ModelError(f"weights do not fit {self.name}: {str(e).splitlines()[0]}") from e

    def check_quality(self, quality: int) -> None:
        if quality not in self.qualities:
            raise InputError(f"{self.name} has no quality {quality}", hint=f"choose one of {list(self.qualities)}")


CODEC_ARCHS: Registry[CodecArch] = Registry("codec architecture")
CODEC_ARCHS.register("bmshj2018-hyperprior", CodecArch("bmshj2018-hyperprior", has_means=False, abs_before_h_a=True))
CODEC_ARCHS.register("mbt2018-mean", CodecArch("mbt2018-mean", has_means=True, abs_before_h_a=False))


def parse_codec(text: str) -> tuple[str, int]:
    """Parses ``ARCH:QUALITY`` (quality defaults to 3) and validates both."""
    arch, _, q = text.partition(":")
    try:
        quality = int(q) if q else 3
    except ValueError:
        raise InputError(f"bad codec {text!r}", hint="write ARCH:QUALITY, e.g. bmshj2018-hyperprior:3") from None
    CODEC_ARCHS.get(arch).check_quality(quality)
    return arch, quality


def load_codec_model(arch_name: str, quality: int, weights: str, *, seed: int = 0) -> Any:
    """Builds the CompressAI model with entropy tables ready, from ``pretrained``, ``random`` or a path."""
    arch = CODEC_ARCHS.get(arch_name)
    arch.check_quality(quality)
    if weights == RANDOM:
        model = arch.build_random(quality, seed)
    elif weights == PRETRAINED:
        model = arch.from_state_dict(_download_pretrained(arch_name, quality))
    else:
        model = arch.from_state_dict(load_state_dict_file(weights, what="codec"))
    model.eval()
    model.update(force=weights == RANDOM)  # fills CDF tables that a checkpoint lacks; keeps shipped ones
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _download_pretrained(arch: str, quality: int) -> dict[str, Any]:
    import torch.hub
    from compressai.zoo.image import model_urls

    url = model_urls[arch]["mse"][quality]
    cache = f"{torch.hub.get_dir()}/checkpoints/{url.rsplit('/', 1)[-1]}"
    try:
        return dict(torch.hub.load_state_dict_from_url(url, progress=False, map_location="cpu", weights_only=True))
    except Exception as e:
        raise ModelError(
            f"cannot get pretrained {arch} quality {quality} weights ({type(e).__name__}: {e})",
            hint=f"without network, put the file {url.rsplit('/', 1)[-1]} at {cache}, or use "
            "--codec-weights PATH (a checkpoint, e.g. from `licsearch train codec`) or --codec-weights random",
        ) from e


class Transforms(Protocol):
    """The heavy transforms, which may run on any backend (eager torch now; ONNX Runtime in bundles)."""

    def g_a(self, x: torch.Tensor) -> torch.Tensor: ...
    def h_a(self, y: torch.Tensor) -> torch.Tensor: ...
    def g_s(self, y_hat: torch.Tensor) -> torch.Tensor: ...


class TorchTransforms:
    """Eager PyTorch transforms of a CompressAI model."""

    def __init__(self, model: Any, arch: CodecArch) -> None:
        self.model = model
        self.arch = arch

    def g_a(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.g_a(x)

    def h_a(self, y: torch.Tensor) -> torch.Tensor:
        return self.model.h_a(y.abs() if self.arch.abs_before_h_a else y)

    def g_s(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.model.g_s(y_hat)


@dataclass(frozen=True)
class Compressed:
    """One image's codec output.

    Attributes:
        streams: the entropy-coded streams by name (``z`` then ``y``).
        latent_hash: fingerprint of the container's header and the integer symbols of z and y, checked by the
            decoder.
        y_hat: the dequantized latent (1, M, h, w), which the adapter reads.
        width, height: the original image size.
    """

    streams: dict[str, bytes]
    latent_hash: bytes
    y_hat: torch.Tensor = field(repr=False)
    width: int
    height: int


class Codec:
    """Compresses images to named streams and back, and exposes y_hat for the adapter.

    Args:
        model: an updated CompressAI hyperprior model.
        arch: its architecture entry.
        quality: the zoo quality level it was built for.
        weights_sha256: fingerprint of its weights (part of the profile id).
        random_weights: True when the weights are random (results must be labelled).
        transforms: backend of the heavy transforms; eager torch when omitted.
    """

    def __init__(
        self,
        model: Any,
        arch: CodecArch,
        quality: int,
        weights_sha256: str,
        *,
        random_weights: bool = False,
        transforms: Transforms | None = None,
    ) -> None:
        self.model = model
        self.arch = arch
        self.quality = quality
        self.weights_sha256 = weights_sha256
        self.random_weights = random_weights
        self.transforms: Transforms = transforms or TorchTransforms(model, arch)
        eb = model.entropy_bottleneck
        self._eb = eb
        self._gc = model.gaussian_conditional
        self._z_medians = eb._get_medians().detach().reshape(-1)
        self.entropy_path = CanonicalEntropyPath(
            model.h_s, self._z_medians, self._gc.scale_table, has_means=arch.has_means
        )
        self.latent_channels = int(model.M)
        try:
            self._z_tables = RansTables.from_entropy_model(eb)
            self._y_tables = RansTables.from_entropy_model(self._gc)
        except ValueError as e:
            raise ModelError(f"{arch.name} entropy tables are unusable: {e}") from e
        self.latent = LatentCodec(
            self.profile_id,
            arch.downsampling,
            self.latent_channels,
            self._z_medians.numpy(),
            self._z_tables,
            self._y_tables,
            self.entropy_path,
        )

    @classmethod
    def load(cls, arch: str, quality: int, weights: str, *, seed: int = 0) -> Codec:
        """Builds a codec from ``pretrained``, ``random`` (seeded) or a checkpoint path."""
        model = load_codec_model(arch, quality, weights, seed=seed)
        return cls(
            model,
            CODEC_ARCHS.get(arch),
            quality,
            state_dict_sha256(model.state_dict()),
            random_weights=weights == RANDOM,
        )

    @property
    def z_medians(self) -> torch.Tensor:
        """The entropy bottleneck's per-channel medians, shape (C,): z symbols are ``round(z - medians)``."""
        return self._z_medians

    @property
    def profile_id(self) -> str:
        """Architecture, quality and weights fingerprint: what a bitstream must match to be decoded."""
        return make_profile_id(self.arch.name, self.quality, self.weights_sha256)

    def latent_size(self, width: int, height: int) -> tuple[int, int]:
        """(h, w) of y for an image of this size (after padding to the downsampling factor)."""
        return self.latent.latent_size(width, height)

    # -- encoding -----------------------------------------------------------------------------------------

    def compress(self, pixels: np.ndarray) -> Compressed:
        """Compresses one (H, W, 3) uint8 RGB image."""
        return self.compress_batch([pixels])[0]

    def compress_batch(self, images: list[np.ndarray]) -> list[Compressed]:
        """Compresses images of the same size in one pass of the transforms."""
        import torch

        if not images:
            return []
        h, w = images[0].shape[:2]
        if any(im.shape[:2] != (h, w) for im in images):
            raise InputError("compress_batch needs images of one size", hint="group images by size first")
        x = self._pad(torch.stack([_to_tensor(im) for im in images]))
        with torch.inference_mode():
            y = self.transforms.g_a(x).float()
            z = self.transforms.h_a(y).float()
        out = []
        for i in range(len(images)):
            out.append(self._code_one(y[i : i + 1], z[i : i + 1], w, h))
        return out

    def _code_one(
        self, y: torch.Tensor, z: torch.Tensor, width: int, height: int, clock: Clock | None = None
    ) -> Compressed:
        """Entropy-codes one image's latents; ``clock`` is called as each stage ends (``bench --profile``)."""
        import torch

        streams, digest, y_hat = self.latent.code(y.numpy(), z.numpy(), width, height, clock)
        return Compressed(
            streams=streams, latent_hash=digest, y_hat=torch.from_numpy(y_hat), width=width, height=height
        )

    # -- decoding -----------------------------------------------------------------------------------------

    def entropy_decode(
        self,
        streams: dict[str, bytes],
        width: int,
        height: int,
        expected_hash: bytes,
        *,
        version: int = VERSION,
        clock: Clock | None = None,
    ) -> torch.Tensor:
        """Entropy-decodes the streams to y_hat (1, M, h, w), refusing if the latent hash differs
        (:meth:`LatentCodec.entropy_decode`).

        Raises:
            BitstreamError: for any defect of the streams; a file is never blamed on the model.
        """
        import torch

        y_hat = self.latent.entropy_decode(streams, width, height, expected_hash, version=version, clock=clock)
        return torch.from_numpy(y_hat)

    def synthesize(self, y_hat: torch.Tensor, width: int, height: int) -> np.ndarray:
        """Synthesis transform to an (H, W, 3) uint8 image cropped to the original size."""
        import torch

        with torch.inference_mode():
            x_hat = self.transforms.g_s(y_hat).float()
        return to_pixels(x_hat.cpu().numpy(), width, height)

    # -- helpers ------------------------------------------------------------------------------------------

    def _z_indexes(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.latent.z_indexes(tuple(shape)))

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        f = self.arch.downsampling
        h, w = x.shape[-2:]
        ph, pw = (-h) % f, (-w) % f
        if ph == 0 and pw == 0:
            return x
        # Replicate the edges: cheaper to code than a zero border, and cropped away after decoding.
        return F.pad(x, (0, pw, 0, ph), mode="replicate")


def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    import torch

    if pixels.ndim != 3 or pixels.shape[2] != 3 or str(pixels.dtype) != "uint8":
        raise InputError(f"expected an (H, W, 3) uint8 image, got {pixels.shape} {pixels.dtype}")
    return torch.from_numpy(pixels).permute(2, 0, 1).float().div(255.0)
