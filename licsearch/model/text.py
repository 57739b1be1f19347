"""The CLIP text encoder (open_clip) that puts queries into the adapter's embedding space.

Model names resolve through open_clip, plus the configs shipped in ``licsearch/model_configs`` (a tiny
model for tests and the synthetic-world CLIP). Weights are ``pretrained`` with an open_clip tag (downloaded
from the model hub; a clear error offline), ``random`` (seeded; labelled) or a checkpoint path.

Long text policy: a query over :data:`MAX_TEXT_CHARS` characters is refused; a query whose tokens exceed
the model's context length is truncated to it and reported as truncated.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import defaults
from ..errors import InputError, ModelError, TextError
from .weights import PRETRAINED, RANDOM, load_state_dict_file, seeded, state_dict_sha256

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

MAX_TEXT_CHARS = 4096
DEFAULT_CLIP = defaults.CLIP_MODEL
DEFAULT_TAG = defaults.CLIP_TAG
_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"


def parse_clip(text: str) -> tuple[str, str | None]:
    """Parses ``MODEL[:TAG]``."""
    name, _, tag = text.partition(":")
    if not name:
        raise InputError(f"bad CLIP model {text!r}", hint="write MODEL[:TAG], e.g. ViT-B-32:laion2b_s34b_b79k")
    return name, tag or None


_registered: list[bool] = []


def _register_configs() -> None:
    """Makes open_clip see the configs shipped with licsearch (once per process)."""
    import open_clip

    if not _registered:
        open_clip.add_model_config(_CONFIG_DIR)
        _registered.append(True)


def clip_embed_dim(name: str) -> int | None:
    """A CLIP model's embedding width read from its config file, without importing open_clip; None where no config
    file of that name is found (a hub or local-folder model: ask open_clip).

    Importing open_clip imports torchvision (2-3 s on this project's 2-core machine), which an ingest into an
    ``adapter`` space would pay only to learn this number. The files are those open_clip reads: licsearch's own
    configs, which it registers over open_clip's shipped ones (so they are looked at first), then open_clip's.
    """
    import importlib.util
    import json

    spec = importlib.util.find_spec("open_clip")  # finds the package without running it
    shipped = [Path(p) / "model_configs" for p in (spec.submodule_search_locations or [])] if spec else []
    for folder in (_CONFIG_DIR, *shipped):
        path = folder / f"{name}.json"
        if path.is_file():
            try:
                cfg = json.loads(path.read_text(encoding="utf-8"))
                return int(cfg.get("model_cfg", cfg)["embed_dim"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
    return None


def load_clip_model(name: str, tag: str | None, weights: str, *, seed: int = 0) -> Any:
    """Builds an open_clip CLIP model from ``pretrained`` (with ``tag``), ``random`` or a checkpoint path."""
    import open_clip

    _register_configs()
    if name not in open_clip.list_models():
        raise InputError(f"unknown CLIP model {name!r}", hint="see open_clip.list_models() or licsearch/model_configs")
    if weights == PRETRAINED:
        tag = tag or (DEFAULT_TAG if name == DEFAULT_CLIP else None)
        if not tag:
            raise InputError(f"pretrained {name} needs a tag", hint=f"write --clip {name}:TAG")
        try:
            model = open_clip.create_model(name, pretrained=tag)
        except Exception as e:
            raise ModelError(
                f"cannot get pretrained CLIP {name}:{tag} ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                hint="without network, pre-populate the Hugging Face cache (HF_HOME, default ~/.cache/huggingface) "
                "or pass --clip-weights PATH (a checkpoint) or --clip-weights random",
            ) from e
    else:
        # open_clip logs "No pretrained weights loaded ... initialized randomly" here, which is untrue when a
        # weights file is loaded next (and random weights are labelled by licsearch itself): silence that one line.
        with seeded(seed), _quiet_root_warnings():
            model = open_clip.create_model(name, pretrained=None)
        if weights != RANDOM:
            state = load_state_dict_file(weights, what="CLIP")
            try:
                model.load_state_dict(state)
            except RuntimeError as e:
                raise ModelError(f"CLIP weights in {weights} do not fit {name}: {str(e).splitlines()[0]}") from e
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@contextlib.contextmanager
def _quiet_root_warnings() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def check_query(text: str, tokenizer: Any, context_length: int) -> bool:
    """Refuses empty and oversize queries; returns True when the query will be truncated to the context."""
    if not text or not text.strip():
        raise TextError("empty text query", hint="give some words to search for")
    if len(text) > MAX_TEXT_CHARS:
        raise TextError(f"text query of {len(text)} characters is too long", hint=f"limit is {MAX_TEXT_CHARS}")
    encode = getattr(tokenizer, "encode", None)
    return bool(encode is not None and len(encode(text)) + 2 > context_length)  # + start and end tokens


@dataclass(frozen=True)
class TextEmbedding:
    """Unit vectors for a batch of texts, and which texts were truncated to the context length."""

    vectors: torch.Tensor
    truncated: tuple[bool, ...]


@dataclass(frozen=True)
class QueryEmbedding:
    """Unit vectors of text queries as NumPy rows (float32, ``(B, D)``: no torch needed to read them), which texts
    were truncated, the context length they were truncated to (0 where the encoder does not say), and what a caller
    should be told about how they were embedded (e.g. a damaged cache rebuilt)."""

    vectors: np.ndarray
    truncated: tuple[bool, ...]
    context_length: int
    notices: tuple[str, ...] = ()


class TextEncoder:
    """open_clip text tower plus its tokenizer.

    Args:
        model: the CLIP model (its image tower serves as the adapter's training teacher).
        name, tag: the open_clip model name and pretrained tag.
        weights_sha256: fingerprint of the weights.
        random_weights: True when untrained (results must be labelled).
    """

    def __init__(
        self, model: nn.Module, name: str, tag: str | None, weights_sha256: str, *, random_weights: bool
    ) -> None:
        import open_clip

        self.model: Any = model
        self.name = name
        self.tag = tag
        self.weights_sha256 = weights_sha256
        self.random_weights = random_weights
        self.tokenizer: Any = open_clip.get_tokenizer(name)
        self.context_length = int(getattr(self.tokenizer, "context_length", 77))

    @classmethod
    def load(cls, name: str, tag: str | None, weights: str, *, seed: int = 0) -> TextEncoder:
        model = load_clip_model(name, tag, weights, seed=seed)
        return cls(model, name, tag, state_dict_sha256(model.state_dict()), random_weights=weights == RANDOM)

    @property
    def embed_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if proj is not None and hasattr(proj, "shape"):
            return int(proj.shape[1])
        import open_clip

        _register_configs()
        return int(open_clip.get_model_config(self.name)["embed_dim"])

    def check(self, text: str) -> bool:
        """Validates a query; returns True when it will be truncated to the context length."""
        return check_query(text, self.tokenizer, self.context_length)

    def embed(self, texts: list[str]) -> TextEmbedding:
        """Tokenises (truncating to the context length) and encodes; unit vectors (B, D)."""
        import torch

        truncated = tuple(self.check(t) for t in texts)
        tokens = self.tokenizer(texts)
        with torch.inference_mode():
            vec = self.model.encode_text(tokens, normalize=True)
        return TextEmbedding(vectors=vec.float(), truncated=truncated)
