"""Export the model plane to a bundle: ONNX graphs checked by ``onnx.checker`` and against eager PyTorch.

Convolutional graphs use the TorchScript-based exporter (``dynamo=False``): it handles CompressAI's GDN with
plain ``dynamic_axes`` for batch and spatial axes and exports in under a second. The text tower uses the
dynamo exporter, because the TorchScript one freezes ``nn.MultiheadAttention``'s reshapes to the sample's
sequence length, which would defeat running a query only up to its end-of-text token.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ModelsConfig
from ..errors import InputError, ModelError
from ..model.models import ModelSet
from ..model.tokenizer import open_clip_vocab
from ..model.weights import save_state_dict
from ..spaces import unproven_space_id
from .manifest import TOKENIZER_FILE, GraphInfo, Manifest, file_sha256

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from ..model.codec import Codec

DEFAULT_OPSET = 17
CODEC_FILE = "codec/codec.safetensors"


def _text_module(clip: Any) -> nn.Module:
    """open_clip's ``encode_text`` with the positional embedding and causal mask sliced to the input length.

    With a causal mask, tokens after the end-of-text token cannot change the pooled (EOT) feature, so a query
    can be run on its tokens up to EOT instead of the full context: same embedding, a fraction of the work.
    """
    from open_clip.transformer import text_global_pool
    from torch import nn

    if not all(hasattr(clip, a) for a in ("token_embedding", "positional_embedding", "transformer", "attn_mask")):
        raise ModelError(f"CLIP model {type(clip).__name__} has no exportable built-in text tower")

    class TextTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = clip

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            c = self.clip
            n = tokens.shape[1]
            x = c.token_embedding(tokens) + c.positional_embedding[:n]
            x = c.transformer(x, attn_mask=c.attn_mask[:n, :n])
            x = c.ln_final(x)
            x = text_global_pool(x, tokens, c.text_pool_type, eos_token_id=getattr(c, "text_eos_id", None))
            x = c.text_projection(x) if isinstance(c.text_projection, nn.Linear) else x @ c.text_projection
            return nn.functional.normalize(x, dim=-1)

    return TextTower().eval()


class _Call:
    """Wraps a bound method as a module for export."""

    def __new__(cls, fn: Any) -> nn.Module:  # type: ignore[misc]
        from torch import nn

        class M(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return fn(x)

        return M().eval()


@dataclass(frozen=True)
class GraphSpec:
    """One graph to export: its module, the sample it is traced on, the differently shaped input it is checked on
    against torch, and its named inputs and outputs with their axes (str = dynamic)."""

    name: str
    module: nn.Module
    sample: torch.Tensor
    check: torch.Tensor
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]

    @property
    def file(self) -> str:
        """Path inside the bundle."""
        return f"{self.name}.onnx" if self.name in ("adapter", "text") else f"codec/{self.name}.onnx"


def graph_specs(ms: ModelSet) -> list[GraphSpec]:
    """The five graphs of ``ms``, with seeded sample and check inputs (the same on every export)."""
    return [
        *codec_graph_specs(ms.codec),
        adapter_graph_spec(ms.adapter.module, ms.codec.latent_channels, ms.embed_dim),
        text_graph_spec(ms.text, ms.embed_dim),
    ]


def codec_graph_specs(codec: Codec) -> list[GraphSpec]:
    """The codec's three transforms, ``g_a``, ``h_a`` and ``g_s``: a bundle's and the codec cache's
    (:mod:`.codec_cache`)."""
    import torch

    rng = torch.Generator().manual_seed(0)
    m, n = codec.latent_channels, int(codec.model.N)
    x_a, x_b = torch.rand(1, 3, 128, 192, generator=rng), torch.rand(2, 3, 192, 128, generator=rng)
    y_a, y_b = _latents(m)
    latent: dict[str, list[int | str]] = {"y": ["batch", m, "h16", "w16"]}
    y_hat: dict[str, list[int | str]] = {"y_hat": ["batch", m, "h16", "w16"]}
    return [
        GraphSpec("g_a", codec.model.g_a.eval(), x_a, x_b, {"x": ["batch", 3, "height", "width"]}, latent),
        GraphSpec("h_a", _Call(codec.transforms.h_a), y_a, y_b, latent, {"z": ["batch", n, "h64", "w64"]}),
        GraphSpec("g_s", codec.model.g_s.eval(), y_a, y_b, y_hat, {"x_hat": ["batch", 3, "height", "width"]}),
    ]


def adapter_graph_spec(module: nn.Module, latent_channels: int, embed_dim: int) -> GraphSpec:
    """The adapter's graph (y_hat in, unit vectors out): a bundle's and the codec cache's."""
    y_a, y_b = _latents(latent_channels)
    y_hat: dict[str, list[int | str]] = {"y_hat": ["batch", latent_channels, "h16", "w16"]}
    return GraphSpec("adapter", module.eval(), y_a, y_b, y_hat, {"image_embedding": ["batch", embed_dim]})


def _latents(m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded sample and check latents of ``m`` channels, of two shapes and batch sizes."""
    import torch

    rng = torch.Generator().manual_seed(1)
    return torch.randn(1, m, 8, 12, generator=rng) * 3, torch.randn(2, m, 12, 8, generator=rng) * 3


def text_graph_spec(text: Any, embed_dim: int) -> GraphSpec:
    """The text tower's graph (``text``: a :class:`~licsearch.model.text.TextEncoder`), on fixed sample tokens."""
    tok = text.tokenizer(["a photo of a red circle", "two small blue squares at the bottom on a striped background"])
    out: dict[str, list[int | str]] = {"text_embedding": ["batch", embed_dim]}
    # batch 2 as the sample: the dynamo exporter specialises a sample dimension of 1
    return GraphSpec("text", _text_module(text.model), tok[:, :12], tok[:1], {"tokens": ["batch", "sequence"]}, out)


def export_bundle(
    models: ModelsConfig,
    out: Path,
    *,
    space_id: str,
    opset: int = DEFAULT_OPSET,
    int8: str = "none",
    calibration: list[np.ndarray] | None = None,
) -> Manifest:
    """Writes a bundle for ``models`` into ``out`` (which must not exist or be empty).

    Args:
        models: the models (with or without fingerprints; the loaded weights are fingerprinted).
        out: bundle directory.
        space_id: the embedding space of the source store (kept by fp32 bundles, whose parity is checked here).
        opset: ONNX opset.
        int8: ``none``, ``dynamic`` (MatMul-heavy graphs) or ``static`` (dynamic plus QDQ convolutions where
            they are faster than fp32 on this CPU and within their accuracy bounds, calibrated on ``calibration``
            images).
        calibration: RGB uint8 images for static quantization.
    """
    _check_arguments(out, int8, calibration)
    ms = ModelSet(models)
    fp = ms.fingerprinted()
    codec = ms.codec
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "codec").mkdir(parents=True)
    (tmp / "tokenizer").mkdir()
    graphs = {s.name: export_graph(s, tmp / s.file, opset) for s in graph_specs(ms)}
    save_state_dict(
        codec.model.state_dict(), tmp / CODEC_FILE, {"arch": codec.arch.name, "quality": str(codec.quality)}
    )
    shutil.copyfile(open_clip_vocab(), tmp / TOKENIZER_FILE)
    space = space_id
    if int8 != "none":
        from .quantize import quantize_bundle

        graphs = quantize_bundle(tmp, graphs, int8, calibration or [], codec=codec)
        space = unproven_space_id(space_id, "int8")
    files = {rel: file_sha256(tmp / rel) for rel in sorted(_relfiles(tmp))}
    manifest = Manifest(
        models=fp,
        codec_profile=codec.profile_id,
        space_id=space,
        embed_dim=ms.embed_dim,
        latent_channels=codec.latent_channels,
        context_length=ms.text.context_length,
        opset=opset,
        graphs={k: replace(g, sha256=files[g.file]) for k, g in graphs.items()},
        files=files,
        int8=int8,
        extra={"source_space_id": space_id, "random_weights": ms.random_components()},
    )
    manifest.save(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return manifest


def _check_arguments(out: Path, int8: str, calibration: list[np.ndarray] | None) -> None:
    """Refuses bad arguments before any work."""
    if int8 not in ("none", "dynamic", "static"):
        raise InputError(f"unknown --int8 mode {int8!r}", hint="use none, dynamic or static")
    if int8 == "static" and not calibration:
        raise InputError("--int8 static needs calibration images", hint="pass --calibration DIR")
    if out.exists() and not out.is_dir():
        raise InputError(f"bundle output {out} is a file", hint="give --out a new directory")
    if out.exists() and any(out.iterdir()):
        raise InputError(f"bundle directory {out} is not empty", hint="choose a new --out directory")


def _relfiles(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]


def _pin_fixed_axes(path: Path, axes: dict[str, list[int | str]]) -> None:
    """Writes the declared fixed sizes into the graph's inputs and outputs (exporters may leave them symbolic)."""
    import onnx

    model = onnx.load(str(path))
    for value in [*model.graph.input, *model.graph.output]:
        spec = axes.get(value.name)
        if spec is None:
            continue
        for dim, ax in zip(value.type.tensor_type.shape.dim, spec, strict=False):
            if isinstance(ax, int):
                dim.dim_value = ax
            else:
                dim.dim_param = ax
    onnx.save(model, str(path))


def export_graph(spec: GraphSpec, path: Path, opset: int) -> GraphInfo:
    """Exports one graph, runs ``onnx.checker`` and compares ONNX Runtime with torch on a differently shaped input."""
    import numpy as np
    import onnx
    import torch

    module, sample, check, inputs, outputs = spec.module, spec.sample, spec.check, spec.inputs, spec.outputs
    dyn = {
        name: {i: ax for i, ax in enumerate(axes) if isinstance(ax, str)}
        for name, axes in {**inputs, **outputs}.items()
    }
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if spec.name == "text":
            dims = {
                i: torch.export.Dim(f"{ax}", min=2 if ax == "sequence" else 1, max=4096 if ax == "batch" else 77)
                for i, ax in dyn[next(iter(inputs))].items()
            }
            prog = torch.onnx.export(
                module,
                (sample,),
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_shapes=(dims,),
                opset_version=max(opset, 18),
                dynamo=True,
                verbose=False,
            )
            assert prog is not None
            prog.save(str(path))
        else:
            torch.onnx.export(
                module,
                (sample,),
                str(path),
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_axes=dyn,
                opset_version=opset,
                dynamo=False,
            )
    _pin_fixed_axes(path, {**inputs, **outputs})
    onnx.checker.check_model(str(path), full_check=True)
    from .runtime import make_session

    sess = make_session(path)
    got = sess.run(None, {next(iter(inputs)): check.numpy()})[0]
    with torch.inference_mode():
        ref = module(check).float().numpy()
    diff = float(np.abs(got - ref).max())
    tol = 1e-3 * max(1.0, float(np.abs(ref).max()))
    if not diff <= tol:
        raise ModelError(f"ONNX Runtime output of {spec.file} differs from torch by {diff:.3g} (tolerance {tol:.3g})")
    return GraphInfo(
        file=spec.file, sha256="", inputs=inputs, outputs=outputs, parity_max_abs=diff, parity_tolerance=tol
    )
