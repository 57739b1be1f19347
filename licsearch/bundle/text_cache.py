"""A CLIP's text tower as an ONNX graph, exported once and cached, so a text query needs neither torch nor open_clip.

Loading the eager tower is most of a CLI text search: importing torch and open_clip and building the model (~10 s on
the README's 100,000-point store, against a 13 ms query). The first text query of a CLIP (named by its weights'
fingerprint) exports its text tower once (:func:`~licsearch.bundle.export.export_graph`, with its
ONNX-Runtime-vs-torch check), checks the torch-free tokenizer's ids and the graph's embeddings end to end against
the eager tower, and keeps the graph and the tokenizer's merges file in the user's cache; every later query, in any
process, runs that graph on ONNX Runtime.

An entry is ``<cache root>/text/<key>/``: ``text.onnx``, the merges file and ``entry.json`` (the model, its
fingerprint, the context length, each file's sha256 and the parity figures), or ``entry.json`` alone where the model
keeps the eager path, saying why. The key hashes :data:`CACHE_FORMAT`, the model name and the fingerprint. Each load
checks the files' hashes; a damaged entry is removed and rebuilt (with a notice), never used (the rules of
:mod:`.graph_cache`, which the decoder's cache shares).

An entry is found by the fingerprint the store recorded, so a warm query reads no weights file: a store whose CLIP
weights file was replaced keeps answering with the tower its vectors were made with, while every command that loads
the weights (ingest, reindex, a cold query) still refuses the replaced file.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import ClipConfig
from ..model.models import ModelPlane, ModelSet
from ..model.text import QueryEmbedding
from ..model.tokenizer import VOCAB_FILE, open_clip_vocab, tokenizer_supported
from . import graph_cache
from .graph_cache import ENTRY_FILE, DamagedEntry, cache_root, check_files, hash_files, read_entry_doc
from .runtime import BundleModelSet, OnnxTextEncoder, RuntimeOptions

if TYPE_CHECKING:
    import numpy as np

CACHE_FORMAT = 1
"""Version of an entry's layout and checks; a new one makes new keys, so older entries are never read."""
COSINE_MIN = 0.9999
"""Least cosine between the cached graph's and the eager tower's embedding of every probe text."""
PROBE_TEXTS = (
    "a red circle",
    "two small blue squares at the bottom on a striped background",
    "Café &amp; crème brûlée, naïve façade — 東京 🙂",
    "A PHOTO OF   a dog's toy,\tdon't you think?",
    "the number 42 and 3.14 in 1999",
    " ".join(["a very long caption that goes on"] * 12),
)
"""Texts on which a new entry's tokenizer ids and embeddings are checked against the eager tower."""
GRAPH_FILE = "text.onnx"
__all__ = ["ENTRY_FILE", "DamagedEntry", "cache_root"]  # with this module's own names

_loaded: dict[Path, OnnxTextEncoder | None] = {}
"""Entries this process has checked and opened (a server or the web UI hashes and opens each once)."""


def cache_enabled() -> bool:
    """False where ``$LICSEARCH_TEXT_CACHE`` is ``off`` or ``0``: text queries then load the eager text tower."""
    return graph_cache.switched_on("LICSEARCH_TEXT_CACHE")


def entry_dir(clip: ClipConfig) -> Path | None:
    """The cache entry of a CLIP's text tower; None without a weights fingerprint (nothing to name it by)."""
    if not clip.sha256:
        return None
    key = hashlib.sha256(f"{CACHE_FORMAT}|{clip.model}|{clip.sha256}".encode()).hexdigest()[:32]
    return cache_root() / "text" / key


@dataclass(frozen=True)
class TextCacheEntry:
    """What ``entry.json`` records.

    Attributes:
        usable: whether queries may run on the cached graph; when False, ``reason`` says why not and there is no graph.
        files: sha256 of each file of the entry.
        parity_max_abs: the graph's largest difference from eager torch on the export's check tokens.
        cosine_min: the least cosine between the graph's and the eager tower's embeddings of :data:`PROBE_TEXTS`.
    """

    model: str
    clip_sha256: str
    usable: bool
    reason: str = ""
    context_length: int = 0
    files: dict[str, str] = field(default_factory=dict)
    parity_max_abs: float = 0.0
    cosine_min: float = 0.0
    format: int = CACHE_FORMAT


def embed_queries(plane: ModelPlane, texts: list[str]) -> QueryEmbedding:
    """Query vectors of ``texts`` by the plane's fastest path that holds parity with its text tower.

    A bundle's plane runs its own text graph; a store's eager models run their cached text graph (built on the
    first query) unless the cache is turned off (:func:`cache_enabled`) or the model may not use it
    (:attr:`TextCacheEntry.usable`); any other plane runs ``plane.embed_texts``.
    """
    encoder, notices = query_encoder(plane)
    if encoder is not None:
        q = encoder.queries(texts)
    else:
        emb = plane.embed_texts(texts)
        q = QueryEmbedding(emb.vectors.float().numpy(), emb.truncated, plane.text.context_length)
    return QueryEmbedding(q.vectors, q.truncated, q.context_length, (*q.notices, *notices))


def query_encoder(plane: ModelPlane) -> tuple[OnnxTextEncoder | None, list[str]]:
    """The ONNX text encoder queries of ``plane`` run on (None: the plane's own ``embed_texts``), and notices."""
    if isinstance(plane, BundleModelSet):
        return plane.text, []
    if not isinstance(plane, ModelSet):
        return None, []
    folder = entry_dir(plane.cfg.clip)
    if folder is None or not cache_enabled():
        return None, []
    clip = plane.cfg.clip

    def open_(folder: Path, entry: TextCacheEntry) -> OnnxTextEncoder:
        graph, vocab = folder / GRAPH_FILE, folder / VOCAB_FILE
        return OnnxTextEncoder(graph, vocab, entry.context_length, entry.clip_sha256, RuntimeOptions.from_env())

    return graph_cache.open_entry(
        folder,
        _loaded,
        read=lambda f: read_entry(f, clip),
        build=lambda f: build_entry(plane, f),
        open_=open_,
        what="text query cache",
    )


def read_entry(folder: Path, clip: ClipConfig | None = None) -> TextCacheEntry | None:
    """The entry in ``folder``, its files checked against their hashes; None where there is none.

    Raises:
        DamagedEntry: ``entry.json`` is unreadable or names another model than ``clip``, or a file is missing or does
            not match its hash.
    """
    doc = read_entry_doc(folder)
    if doc is None:
        return None
    try:
        entry = TextCacheEntry(**doc)  # type: ignore[arg-type]
    except TypeError as e:
        raise DamagedEntry(f"{ENTRY_FILE} {e}") from e
    if entry.format != CACHE_FORMAT or (entry.usable and set(entry.files) != {GRAPH_FILE, VOCAB_FILE}):
        raise DamagedEntry(f"{ENTRY_FILE} does not describe a format-{CACHE_FORMAT} entry")
    if clip is not None and (entry.model, entry.clip_sha256) != (clip.model, clip.sha256):
        raise DamagedEntry(f"{ENTRY_FILE} names {entry.model} {entry.clip_sha256[:12]}, not this model")
    check_files(folder, entry.files)
    return entry


def build_entry(ms: ModelSet, folder: Path) -> TextCacheEntry | None:
    """Exports ``ms``'s text tower into ``folder`` and checks it; None where the cache cannot be written.

    The eager tower is loaded here (its weights checked against the store's fingerprint), so this query pays torch.
    A model whose tokenizer or text tower the cache does not support gets an entry that says so, and the eager path.
    """

    def make(tmp: Path) -> tuple[TextCacheEntry, dict[str, object]]:
        entry = _export_checked(ms, tmp)
        return entry, asdict(entry)

    return graph_cache.build_entry(folder, make, "text query cache")


def _export_checked(ms: ModelSet, tmp: Path) -> TextCacheEntry:
    """Exports the text graph and the merges file into ``tmp``; the entry says whether they hold parity."""
    from .export import DEFAULT_OPSET, export_graph, text_graph_spec

    text, clip = ms.text, ms.cfg.clip
    if not tokenizer_supported(text.tokenizer):
        reason = f"tokenizer {type(text.tokenizer).__name__} is not ported"
        return TextCacheEntry(clip.model, clip.sha256, usable=False, reason=reason)
    try:
        info = export_graph(text_graph_spec(text, ms.embed_dim), tmp / GRAPH_FILE, DEFAULT_OPSET)
    except OSError:
        raise
    except Exception as e:  # the exporter's own errors are of many types; a tower it cannot export stays eager
        reason = f"text tower not exported ({type(e).__name__}: {e})"
        return TextCacheEntry(clip.model, clip.sha256, usable=False, reason=reason)
    shutil.copyfile(open_clip_vocab(), tmp / VOCAB_FILE)
    encoder = OnnxTextEncoder(tmp / GRAPH_FILE, tmp / VOCAB_FILE, text.context_length, clip.sha256, RuntimeOptions())
    probes = list(PROBE_TEXTS)
    same_ids = bool((encoder.tokenizer(probes) == text.tokenizer(probes).numpy()).all())
    cosine = _cosine_min(encoder.queries(probes).vectors, text.embed(probes).vectors.numpy())
    usable = same_ids and cosine >= COSINE_MIN
    reason = "" if usable else ("tokenizer ids differ" if not same_ids else f"cosine {cosine:.6f} < {COSINE_MIN}")
    files = hash_files(tmp, [GRAPH_FILE, VOCAB_FILE]) if usable else {}
    if not usable:
        for name in (GRAPH_FILE, VOCAB_FILE):
            (tmp / name).unlink()
    return TextCacheEntry(
        clip.model,
        clip.sha256,
        usable=usable,
        reason=reason,
        context_length=text.context_length,
        files=files,
        parity_max_abs=info.parity_max_abs,
        cosine_min=cosine,
    )


def _cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    import numpy as np

    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


def forget_loaded() -> None:
    """Drops the entries this process opened, so the next query reads (and checks) them again."""
    _loaded.clear()
