"""Run a bundle on ONNX Runtime: the same model-plane operations as eager PyTorch, from exported graphs.

Only the heavy transforms, the adapter and the text tower run in ONNX Runtime. The canonical entropy path
and the CDF tables are rebuilt from the bundle's codec checkpoint, so a bitstream encoded by any backend
decodes to exactly the same latent on any other.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ModelsConfig
from ..errors import StoreError
from ..model.codec import CODEC_ARCHS, Codec, load_codec_model
from ..model.models import ModelPlane
from ..model.text import QueryEmbedding, TextEmbedding, check_query
from ..model.tokenizer import ClipTokenizer
from ..model.weights import state_dict_sha256
from .manifest import TOKENIZER_FILE, Manifest

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime as ort
    import torch

CODEC_TRANSFORMS = ("g_a", "h_a", "g_s")
"""The codec's heavy transforms, each one graph (a bundle's or the codec cache's)."""
OPENVINO_GRAPHS = CODEC_TRANSFORMS
"""The graphs that may run on OpenVINO: the convolutional codec transforms (see ``RuntimeOptions.openvino``)."""
OPENVINO_SHAPES = 8
"""Input shapes an OpenVINO graph keeps compiled (static shapes run faster than one dynamic compilation)."""


@dataclass(frozen=True)
class RuntimeOptions:
    """ONNX Runtime settings.

    Attributes:
        providers: execution providers in order of preference; ``auto`` is CUDA when onnxruntime-gpu sees a GPU,
            then CPU.
        threads: intra-op threads (0: ONNX Runtime's default, one per core).
        profile_dir: when set, every session records ONNX Runtime's profile (a JSON trace per graph) there, read by
            :meth:`BundleModelSet.op_profiles`.
        openvino: codec transforms (of ``OPENVINO_GRAPHS``) run on OpenVINO's CPU plugin instead of ONNX Runtime,
            at fp32 inference precision (the optional ``openvino`` package; never the default).
    """

    providers: tuple[str, ...] = ("auto",)
    threads: int = 0
    profile_dir: str | None = None
    openvino: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.openvino) - set(OPENVINO_GRAPHS))
        if unknown:
            raise StoreError(
                f"OpenVINO cannot run the graph(s) {', '.join(unknown)}",
                hint=f"name codec transforms only: {', '.join(OPENVINO_GRAPHS)} (LICSEARCH_OPENVINO=g_s)",
            )

    @classmethod
    def from_env(cls) -> RuntimeOptions:
        """``LICSEARCH_ORT_PROVIDERS`` and ``LICSEARCH_OPENVINO`` (comma-separated), ``LICSEARCH_ORT_THREADS``."""
        prov = os.environ.get("LICSEARCH_ORT_PROVIDERS")
        threads = os.environ.get("LICSEARCH_ORT_THREADS")
        openvino = os.environ.get("LICSEARCH_OPENVINO")
        return cls(
            providers=tuple(p.strip() for p in prov.split(",")) if prov else ("auto",),
            threads=int(threads) if threads else 0,
            openvino=tuple(g.strip() for g in openvino.split(",") if g.strip()) if openvino else (),
        )


def resolve_providers(requested: tuple[str, ...], available: list[str] | None = None) -> list[str]:
    """The execution providers to open sessions with: ``auto`` is CUDA when ``available`` has it, then CPU.

    Args:
        requested: provider names in order of preference, or ``auto``.
        available: the providers this ONNX Runtime offers (default: ``onnxruntime.get_available_providers()``).
    """
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    out: list[str] = []
    for p in requested:
        if p == "auto":
            out += [x for x in ("CUDAExecutionProvider", "CPUExecutionProvider") if x in available and x not in out]
        elif p in available:
            out.append(p)
        else:
            raise StoreError(f"ONNX Runtime provider {p} is not available", hint=f"available: {', '.join(available)}")
    return out or ["CPUExecutionProvider"]


def make_session(path: Path, options: RuntimeOptions | None = None) -> ort.InferenceSession:
    import onnxruntime as ort

    opts = options or RuntimeOptions()
    so = ort.SessionOptions()
    so.intra_op_num_threads = opts.threads
    so.inter_op_num_threads = 1
    # Idle intra-op threads sleep instead of spinning: g_s of 4 Kodak images, 2 threads, a loaded 2-core machine,
    # 1.08x faster (median of 3 interleaved runs, identical output); spinning only burns the cores others wait for.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if opts.profile_dir is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(opts.profile_dir) / path.stem)
    return ort.InferenceSession(str(path), sess_options=so, providers=resolve_providers(opts.providers))


class _Graph:
    """A session with named input and output."""

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        self.session = make_session(path, options)
        self.input = self.session.get_inputs()[0].name
        self.profiling = options.profile_dir is not None

    def __call__(self, x: Any) -> Any:
        return self.session.run(None, {self.input: x})[0]

    def op_profile(self, top: int) -> list[dict[str, Any]]:
        """Ends profiling; the ``top`` operator types by total kernel time: op, seconds, share of the graph's."""
        import json

        events = json.loads(Path(self.session.end_profiling()).read_text())
        by_op: dict[str, float] = {}
        for e in events:
            if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
                op = str(e.get("args", {}).get("op_name", "?"))
                by_op[op] = by_op.get(op, 0.0) + float(e.get("dur", 0)) * 1e-6
        total = sum(by_op.values()) or 1.0
        ranked = sorted(by_op.items(), key=lambda kv: -kv[1])[:top]
        return [{"op": op, "seconds": sec, "share": sec / total} for op, sec in ranked]


class _OpenVinoGraph:
    """A graph on OpenVINO's CPU plugin at fp32 inference precision, compiled for each input shape it meets.

    A static shape runs faster than one dynamic compilation (g_s of a 768x512 Kodak image, 2 threads: see the
    README's benchmark); the last ``OPENVINO_SHAPES`` shapes stay compiled. A compiled model's request is not
    thread-safe (an ONNX Runtime session is), so calls take a lock.
    """

    profiling = False

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        try:
            import openvino as ov
        except ImportError as e:
            raise StoreError(
                f"OpenVINO was asked to run {path.name} but is not installed",
                hint="pip install openvino, or leave LICSEARCH_OPENVINO unset to run every graph on ONNX Runtime",
            ) from e
        self._core = ov.Core()
        self._path = path
        self._config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if options.threads:
            self._config["INFERENCE_NUM_THREADS"] = options.threads
        self._compiled: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._model: Any = None  # the graph as read, reshaped per shape on a clone
        self._lock = threading.Lock()

    def __call__(self, x: Any) -> Any:
        with self._lock:
            return self._run(x)

    def _run(self, x: Any) -> Any:
        key = tuple(x.shape)
        compiled = self._compiled.pop(key, None)
        if compiled is None:
            if self._model is None:
                self._model = self._core.read_model(str(self._path))
            # A clone per shape: the file is parsed once (43 ms for the offline g_s, against 1 ms for a clone).
            model = self._model.clone()
            model.reshape({0: list(key)})
            compiled = self._core.compile_model(model, "CPU", self._config)
        self._compiled[key] = compiled
        while len(self._compiled) > OPENVINO_SHAPES:
            self._compiled.popitem(last=False)
        return compiled(x)[0]

    def op_profile(self, top: int) -> list[dict[str, Any]]:
        return []


def open_graph(name: str, path: Path, options: RuntimeOptions) -> _Graph | _OpenVinoGraph:
    """The graph ``name`` (a bundle's or a cache's) on ONNX Runtime, or on OpenVINO where ``options.openvino`` names
    it; called with one array, it returns the graph's first output."""
    return (_OpenVinoGraph if name in options.openvino else _Graph)(path, options)


class OnnxTransforms:
    """``g_a``, ``h_a`` and ``g_s`` on ONNX Runtime, or those named in ``options.openvino`` on OpenVINO (torch in and
    out), from ONNX files by graph name (a bundle's: :meth:`from_bundle`; int8 candidates': :mod:`.accuracy`)."""

    def __init__(self, files: Mapping[str, Path], options: RuntimeOptions) -> None:
        self._g: dict[str, _Graph | _OpenVinoGraph] = {k: open_graph(k, files[k], options) for k in CODEC_TRANSFORMS}

    @classmethod
    def from_bundle(cls, root: Path, manifest: Manifest, options: RuntimeOptions) -> OnnxTransforms:
        return cls({k: root / manifest.graphs[k].file for k in CODEC_TRANSFORMS}, options)

    def _run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.from_numpy(self._g[name](x.detach().float().contiguous().numpy()))

    def g_a(self, x: torch.Tensor) -> torch.Tensor:
        return self._run("g_a", x)

    def h_a(self, y: torch.Tensor) -> torch.Tensor:
        return self._run("h_a", y)

    def g_s(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self._run("g_s", y_hat)


class OnnxAdapter:
    """The adapter graph."""

    def __init__(self, root: Path, manifest: Manifest, options: RuntimeOptions) -> None:
        self._graph = _Graph(root / manifest.graphs["adapter"].file, options)
        self.weights_sha256 = manifest.models.adapter.sha256

    def embed(self, y_hat: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.from_numpy(self._graph(y_hat.detach().float().contiguous().numpy()))


class OnnxTextEncoder:
    """A text graph with the torch-free CLIP tokenizer; queries run only up to their longest end-of-text token.

    Args:
        graph: the text graph (``tokens`` in, ``text_embedding`` out).
        vocab: the tokenizer's merges file.
        context_length: the model's context; longer queries are cut to it.
        weights_sha256: the fingerprint of the CLIP weights the graph was exported from.
        options: ONNX Runtime settings.
    """

    def __init__(
        self, graph: Path, vocab: Path, context_length: int, weights_sha256: str, options: RuntimeOptions
    ) -> None:
        self._graph = _Graph(graph, options)
        self.context_length = context_length
        self.tokenizer = ClipTokenizer(vocab, context_length)
        self.weights_sha256 = weights_sha256

    @classmethod
    def from_bundle(cls, root: Path, manifest: Manifest, options: RuntimeOptions) -> OnnxTextEncoder:
        return cls(
            root / manifest.graphs["text"].file,
            root / TOKENIZER_FILE,
            manifest.context_length,
            manifest.models.clip.sha256,
            options,
        )

    def check(self, text: str) -> bool:
        """Validates a query; returns True when it will be truncated to the context length."""
        return check_query(text, self.tokenizer, self.context_length)

    def tokens(self, texts: list[str], *, trim: bool = True) -> np.ndarray:
        """Token ids (int64); with ``trim``, cut after the longest end-of-text position (same embedding)."""
        tok = self.tokenizer(texts)
        if trim:
            tok = tok[:, : int(tok.argmax(axis=1).max()) + 1]
        return tok

    def queries(self, texts: list[str], *, trim: bool = True) -> QueryEmbedding:
        """Unit vectors of ``texts`` as NumPy rows, without torch."""
        truncated = tuple(self.check(t) for t in texts)
        return QueryEmbedding(self._graph(self.tokens(texts, trim=trim)), truncated, self.context_length)

    def embed(self, texts: list[str], *, trim: bool = True) -> TextEmbedding:
        import torch

        q = self.queries(texts, trim=trim)
        return TextEmbedding(vectors=torch.from_numpy(q.vectors), truncated=q.truncated)


class BundleModelSet(ModelPlane):
    """The model plane of a bundle, components loaded lazily.

    Args:
        root: the bundle directory.
        options: ONNX Runtime settings (default: from the environment).
        verify: check every file's hash against the manifest first.
    """

    def __init__(self, root: Path, options: RuntimeOptions | None = None, *, verify: bool = True) -> None:
        self.root = root
        self.manifest = Manifest.load(root)
        if verify:
            self.manifest.verify_files(root)
        self.options = options or RuntimeOptions.from_env()
        self.cfg: ModelsConfig = self.manifest.models

    @property
    def space_id(self) -> str:
        return self.manifest.space_id

    @cached_property
    def codec(self) -> Codec:
        c = self.cfg.codec
        model = load_codec_model(c.arch, c.quality, str(self.root / "codec/codec.safetensors"))
        sha = state_dict_sha256(model.state_dict())
        if sha != c.sha256:
            raise StoreError(f"bundle {self.root}: codec checkpoint does not match the manifest fingerprint")
        transforms = OnnxTransforms.from_bundle(self.root, self.manifest, self.options)
        return Codec(
            model, CODEC_ARCHS.get(c.arch), c.quality, sha, random_weights=c.weights == "random", transforms=transforms
        )

    @cached_property
    def adapter(self) -> OnnxAdapter:
        return OnnxAdapter(self.root, self.manifest, self.options)

    @cached_property
    def text(self) -> OnnxTextEncoder:
        return OnnxTextEncoder.from_bundle(self.root, self.manifest, self.options)

    @property
    def embed_dim(self) -> int:
        return self.manifest.embed_dim

    def op_profiles(self, top: int) -> dict[str, list[dict[str, Any]]]:
        """With ``options.profile_dir``: each loaded graph's top operators by time (ends the profiling)."""
        graphs: dict[str, _Graph | _OpenVinoGraph] = {}
        if "codec" in self.__dict__ and isinstance(self.codec.transforms, OnnxTransforms):
            graphs.update(self.codec.transforms._g)
        for name in ("adapter", "text"):
            if name in self.__dict__:
                graphs[name] = self.__dict__[name]._graph
        return {name: g.op_profile(top) for name, g in graphs.items() if g.profiling}
