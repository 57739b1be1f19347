"""Named model presets for ``licsearch init --preset NAME``.

``offline`` is the set this project trains with its own code and ships inside the package
(``licsearch/shipped/offline``, provenance in ``PROVENANCE.md`` there): a codec trained on the photos of the
development data (never on Kodak), a small CLIP trained on the procedural captioned world (:mod:`licsearch.world`)
and the adapter distilled from that CLIP's image tower on the codec's latents. It makes a store whose compression
and text search are real with no network. Plain ``init`` keeps the pretrained upstream defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import AdapterConfig, ClipConfig, CodecConfig, ModelsConfig
from .errors import ModelError
from .model.weights import SHIPPED_PREFIX, resolve_source
from .registry import Registry


@dataclass(frozen=True)
class Preset:
    """A named set of models, and what it is for."""

    name: str
    summary: str
    models: ModelsConfig

    def sources(self) -> dict[str, str]:
        """The weights source of each model."""
        m = self.models
        return {"codec": m.codec.weights, "clip": m.clip.weights, "adapter": m.adapter.weights}

    def check_present(self) -> None:
        """Raises a :class:`ModelError` naming the missing file when a shipped weights file is absent."""
        for what, source in self.sources().items():
            if source.startswith(SHIPPED_PREFIX) and not resolve_source(source).is_file():
                raise ModelError(
                    f"preset {self.name!r}: the {what} weights {source} are not in this installation",
                    hint=f"expected {resolve_source(source)}; reinstall licsearch from a full checkout",
                )


PRESETS: Registry[Preset] = Registry("preset")

OFFLINE_QUALITY = 3
"""The codec quality of the offline preset (the other shipped qualities serve ``licsearch eval``)."""


OFFLINE_LONG_QUALITIES = (1, 2, 3)
"""Qualities whose shipped adapter is the longer fine-tune ``adapter-views-long-qN`` (``make train-adapters-world``)."""


def offline_adapter_file(quality: int) -> str:
    """The shipped adapter of codec quality ``quality`` that the offline preset and ``licsearch eval`` use.

    ``adapter-views-qN`` (trained on views as a collection holds them, ``make train-adapters-world``) replaced the
    first ``adapter-qN``; at the qualities of :data:`OFFLINE_LONG_QUALITIES` ``adapter-views-long-qN`` (1,600 more
    steps on new views) replaced it in turn. The replaced files stay in the package unchanged: a store records its
    weights' fingerprint, so a store made with an older adapter keeps opening with it (and can move to the new one
    with ``licsearch reindex``).
    """
    kind = "views-long" if quality in OFFLINE_LONG_QUALITIES else "views"
    return f"adapter-{kind}-q{quality}.safetensors"


def offline_adapter_run(quality: int) -> str:
    """The folder of ``make train-offline``'s runs that :func:`offline_adapter_file` of ``quality`` is shipped from."""
    return f"adapter-long-q{quality}" if quality in OFFLINE_LONG_QUALITIES else f"adapter-q{quality}"


PRESETS.register(
    "offline",
    Preset(
        name="offline",
        summary="codec, world CLIP and adapter trained by this project and shipped in the package (no network)",
        models=ModelsConfig(
            codec=CodecConfig(
                arch="bmshj2018-hyperprior",
                quality=OFFLINE_QUALITY,
                weights=f"{SHIPPED_PREFIX}offline/codec-q{OFFLINE_QUALITY}.safetensors",
            ),
            clip=ClipConfig(
                model="licsearch-world", tag=None, weights=f"{SHIPPED_PREFIX}offline/clip-world.safetensors"
            ),
            adapter=AdapterConfig(weights=f"{SHIPPED_PREFIX}offline/{offline_adapter_file(OFFLINE_QUALITY)}"),
        ),
    ),
)


def preset_models(name: str) -> ModelsConfig:
    """The models of preset ``name``; raises when it is unknown or its shipped files are missing."""
    preset = PRESETS.get(name)
    preset.check_present()
    return preset.models
