"""CLIP's byte-pair tokenizer without torch, for text queries that run on an ONNX text graph.

Why a port and not open_clip's own: ``open_clip.tokenizer`` imports torch at its top (its ``SimpleTokenizer``
returns a ``torch.LongTensor``), and importing torch and open_clip costs a CLI search ~6 s before any work. This is
open_clip 3.3's ``SimpleTokenizer`` with its default settings (``clean="lower"``, no reduction mask, no extra
special tokens), with the same vocabulary file and the same ``ftfy``/``regex`` cleaning and split, returning NumPy
ids. ``tests/test_text_query.py`` holds its ids equal to open_clip's on a few hundred varied strings; a model whose
open_clip tokenizer differs from these settings does not get an ONNX query path (:func:`tokenizer_supported`, which
:mod:`licsearch.bundle.text_cache` asks before it exports a text graph).
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import itertools
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelError

if TYPE_CHECKING:
    import numpy as np

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
"""The name of CLIP's merges file, as open_clip ships it and as bundles and text caches keep a copy."""
MERGES = 49152 - 256 - 2
"""Merges of the vocabulary file that CLIP uses (open_clip reads lines 1 to this)."""
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
VOCAB_SIZE = 2 * 256 + MERGES + len(SPECIAL_TOKENS)


def open_clip_vocab() -> Path:
    """open_clip's own copy of the merges file, found without importing open_clip (which imports torch)."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    raise ModelError(f"open_clip's {VOCAB_FILE} is not installed", hint="pip install open_clip_torch")


def tokenizer_supported(tokenizer: Any) -> bool:
    """Whether open_clip's ``tokenizer`` (of ``open_clip.get_tokenizer``) gives the ids :class:`ClipTokenizer` gives:
    a ``SimpleTokenizer`` with ``clean="lower"``, no reduction mask and no extra special tokens."""
    from open_clip import tokenizer as oc

    return (
        type(tokenizer) is oc.SimpleTokenizer
        and tokenizer.clean_fn is oc._clean_lower
        and tokenizer.reduction_fn is None
        and tokenizer.vocab_size == VOCAB_SIZE
    )


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """A printable character for each byte (open_clip's table), so the BPE works on text with no control bytes."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _clean(text: str) -> str:
    """open_clip's ``clean="lower"``: ftfy, HTML entities twice, whitespace collapsed, lower case."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


class ClipTokenizer:
    """Token ids of texts, as open_clip's ``SimpleTokenizer`` with default settings gives them.

    Args:
        bpe_path: the gzipped merges file (``bpe_simple_vocab_16e6.txt.gz``).
        context_length: the model's context; longer texts are cut to it, ending with the end-of-text token.
    """

    def __init__(self, bpe_path: Path, context_length: int) -> None:
        import regex

        with gzip.open(bpe_path) as f:
            lines = f.read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : MERGES + 1]]
        units = list(bytes_to_unicode().values())
        vocab = [*units, *(u + "</w>" for u in units), *("".join(m) for m in merges), *SPECIAL_TOKENS]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.bpe_ranks: dict[tuple[str, ...], int] = {m: i for i, m in enumerate(merges)}
        self.cache: dict[str, str] = {t: t for t in SPECIAL_TOKENS}
        self.pattern = regex.compile(
            "|".join(SPECIAL_TOKENS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self.sot_token_id, self.eot_token_id = (self.encoder[t] for t in SPECIAL_TOKENS)
        self.context_length = context_length
        self._byte_encoder = bytes_to_unicode()

    def bpe(self, token: str) -> str:
        """The space-separated BPE units of one pre-token (open_clip's ``bpe``: lowest-ranked pair first)."""
        if token in self.cache:
            return self.cache[token]
        word: tuple[str, ...] = (*token[:-1], token[-1] + "</w>")
        pairs = set(itertools.pairwise(word))
        if not pairs:
            return token + "</w>"
        while True:
            first, second = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, 1 << 30))
            if (first, second) not in self.bpe_ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    merged.extend(word[i:])
                    break
                merged.extend(word[i:j])
                i = j
                if i < len(word) - 1 and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            if len(word) == 1:
                break
            pairs = set(itertools.pairwise(word))
        joined = " ".join(word)
        self.cache[token] = joined
        return joined

    def encode(self, text: str) -> list[int]:
        """The ids of ``text`` without the start and end tokens, uncut."""
        ids: list[int] = []
        for token in self.pattern.findall(_clean(text)):
            units = "".join(self._byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[unit] for unit in self.bpe(units).split(" "))
        return ids

    def __call__(self, texts: list[str], context_length: int | None = None) -> np.ndarray:
        """Ids (int64, ``(len(texts), context)``): start, the text's, end, zeros; a long text is cut to the context
        with the end token last."""
        import numpy as np

        context = context_length or self.context_length
        out = np.zeros((len(texts), context), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > context:
                ids = ids[:context]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = ids
        return out
