"""The model set: codec, adapter and text encoder loaded lazily from a :class:`ModelsConfig`.

This is the in-process model plane. It turns images into ``.lics`` bytes plus an embedding, bitstreams
back into pixels or embeddings (the latter by entropy decoding alone), and texts into query vectors.
Components load on first use, so ingest never pays for the text tower and text search never pays for
the codec's synthesis. A plane embeds images into a space of one kind (:data:`~licsearch.spaces.SPACE_KINDS`): by
the adapter from y_hat (``adapter``), or by CLIP's image tower on the pixels (``pixels``); only the former can
rebuild an embedding from a bitstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from ..bitstream import Bitstream
from ..config import ModelsConfig
from ..errors import ConfigMismatchError, ModelError
from ..spaces import ADAPTER_KIND, PIXELS_KIND
from ..spaces import space_id_for as space_id_for  # re-exported: callers that fingerprint models name the space
from .adapter import Adapter, AdapterShape
from .codec import Codec
from .image_tower import ImageTower
from .text import TextEmbedding, TextEncoder

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass(frozen=True)
class Encoded:
    """An image's bitstream and embedding.

    Attributes:
        data: the ``.lics`` container bytes.
        embedding: unit vector in the store's space.
        width, height: original size.
    """

    data: bytes = field(repr=False)
    embedding: list[float] = field(repr=False)
    width: int
    height: int

    @property
    def bpp(self) -> float:
        """Bits per pixel of the whole container."""
        return 8.0 * len(self.data) / (self.width * self.height)


class AdapterLike(Protocol):
    """What the model plane needs of an adapter, whatever runs it."""

    weights_sha256: str

    def embed(self, y_hat: torch.Tensor) -> torch.Tensor: ...


class TextLike(Protocol):
    """What the model plane needs of a text encoder, whatever runs it."""

    weights_sha256: str
    context_length: int

    def embed(self, texts: list[str]) -> TextEmbedding: ...


class ModelPlane:
    """The operations of the model plane over a codec, an adapter and a text encoder of any backend.

    Subclasses provide ``cfg`` and the attributes ``codec``, ``adapter`` and ``text`` (loaded lazily), and
    ``image_tower`` when they can embed into a ``pixels`` space; ``kind`` is the kind of space images go into.
    """

    cfg: ModelsConfig
    kind: str = ADAPTER_KIND

    @property
    def codec(self) -> Codec:
        raise NotImplementedError

    @property
    def adapter(self) -> AdapterLike:
        raise NotImplementedError

    @property
    def text(self) -> TextLike:
        raise NotImplementedError

    @property
    def image_tower(self) -> ImageTower:
        raise ModelError(
            "these models have no CLIP image tower, which a pixels space needs",
            hint="run the store's own models (not a bundle), or distil an adapter: `licsearch distill --activate`",
        )

    def random_components(self) -> list[str]:
        """Names of the components configured with random weights (their results mean nothing).

        A pixels plane never runs its adapter, so the adapter's weights do not count.
        """
        c = self.cfg
        pairs = [("codec", c.codec.weights), ("clip", c.clip.weights)]
        if self.kind != PIXELS_KIND:
            pairs.append(("adapter", c.adapter.weights))
        return [name for name, w in pairs if w == "random"]

    def embed_pixels(self, images: list[np.ndarray]) -> torch.Tensor:
        """CLIP's image tower on the images as given: (B, D) unit vectors of a ``pixels`` space."""
        return self.image_tower.embed(images)

    def encode_batch(self, images: list[np.ndarray]) -> list[Encoded]:
        """Compresses and embeds images of one size: the transforms once, then the adapter on their y_hat (an
        ``adapter`` plane) or CLIP's image tower on the pixels (a ``pixels`` plane)."""
        import torch

        comp = self.codec.compress_batch(images)
        if self.kind == PIXELS_KIND:
            emb = self.embed_pixels(images).tolist()
        else:
            emb = self.adapter.embed(torch.cat([c.y_hat for c in comp])).tolist()
        out = []
        for c, e in zip(comp, emb, strict=True):
            bs = Bitstream(self.codec.profile_id, c.width, c.height, c.latent_hash, c.streams)
            out.append(Encoded(bs.to_bytes(), e, c.width, c.height))
        return out

    def encode(self, pixels: np.ndarray) -> Encoded:
        return self.encode_batch([pixels])[0]

    def encode_bitstream(self, pixels: np.ndarray) -> bytes:
        """Compresses one image to ``.lics`` bytes (no embedding)."""
        c = self.codec.compress(pixels)
        return Bitstream(self.codec.profile_id, c.width, c.height, c.latent_hash, c.streams).to_bytes()

    def parse(self, data: bytes) -> Bitstream:
        """Parses a container and checks that this codec made it."""
        bs = Bitstream.from_bytes(data)
        bs.check_profile(self.codec.profile_id)
        return bs

    def entropy_decode(self, data: bytes) -> tuple[Bitstream, torch.Tensor]:
        """``.lics`` bytes -> (container, y_hat), exactly as the encoder had it."""
        bs = self.parse(data)
        return bs, self.codec.entropy_decode(bs.streams, bs.width, bs.height, bs.latent_hash, version=bs.version)

    def decode(self, data: bytes) -> np.ndarray:
        """``.lics`` bytes -> (H, W, 3) uint8 pixels."""
        bs, y_hat = self.entropy_decode(data)
        return self.codec.synthesize(y_hat, bs.width, bs.height)

    def embed_bitstream(self, data: bytes) -> list[float]:
        """Embedding rebuilt from ``.lics`` bytes by entropy decoding and the adapter (no synthesis).

        Raises:
            ModelError: the plane embeds into a ``pixels`` space, which a bitstream alone cannot reach.
        """
        if self.kind == PIXELS_KIND:
            raise ModelError(
                "a pixels space cannot embed a bitstream without decoding it (its vectors are CLIP's image tower on "
                "pixels)",
                hint="decode the image and embed the pixels, or distil an adapter: `licsearch distill --activate`",
            )
        _, y_hat = self.entropy_decode(data)
        return list(self.adapter.embed(y_hat)[0].tolist())

    def embed_texts(self, texts: list[str]) -> TextEmbedding:
        return self.text.embed(texts)


class ModelSet(ModelPlane):
    """Lazily loaded eager-PyTorch models.

    Args:
        cfg: the models to load; when its ``sha256`` fields are set, loaded weights must match them.
        kind: the kind of space images are embedded into (``adapter`` or ``pixels``).
    """

    def __init__(self, cfg: ModelsConfig, *, kind: str = ADAPTER_KIND) -> None:
        self.cfg = cfg
        self.kind = kind

    @cached_property
    def codec(self) -> Codec:
        c = self.cfg.codec
        codec = Codec.load(c.arch, c.quality, c.weights, seed=c.seed)
        _check_hash("codec", c.weights, c.sha256, codec.weights_sha256)
        return codec

    @cached_property
    def embed_dim(self) -> int:
        from .text import _register_configs, clip_embed_dim

        dim = clip_embed_dim(self.cfg.clip.model)  # from the config file: no open_clip import
        if dim is not None:
            return dim
        import open_clip

        _register_configs()
        cfg = open_clip.get_model_config(self.cfg.clip.model)
        if cfg is None:
            return self.text.embed_dim
        return int(cfg["embed_dim"])

    @cached_property
    def adapter(self) -> Adapter:
        a = self.cfg.adapter
        shape = AdapterShape(self.codec.latent_channels, self.embed_dim, width=a.width, hidden=a.hidden)
        adapter = Adapter.load(shape, a.weights, seed=a.seed)
        _check_hash("adapter", a.weights, a.sha256, adapter.weights_sha256)
        return adapter

    @cached_property
    def text(self) -> TextEncoder:
        c = self.cfg.clip
        enc = TextEncoder.load(c.model, c.tag, c.weights, seed=c.seed)
        _check_hash("CLIP", c.weights, c.sha256, enc.weights_sha256)
        return enc

    @cached_property
    def image_tower(self) -> ImageTower:
        """CLIP's image tower, sharing the text encoder's model (one load, one fingerprint check)."""
        return ImageTower(self.text.model)

    def fingerprinted(self) -> ModelsConfig:
        """The config with every weight fingerprint filled in (loads all three components)."""
        return self.cfg.with_hashes(self.codec.weights_sha256, self.text.weights_sha256, self.adapter.weights_sha256)


def _check_hash(what: str, source: str, expected: str, actual: str) -> None:
    if expected and expected != actual:
        raise ConfigMismatchError(
            f"{what} weights ({source}) are not the ones this store was made with "
            f"(fingerprint {actual[:12]}, store expects {expected[:12]})",
            hint="restore the original weights file, or create a new store for these models",
        )
