"""Text queries on the cached ONNX text graph: the torch-free tokenizer gives open_clip's ids, a search gives the eager
text tower's top-k, a warm CLI search imports neither torch nor open_clip, and a damaged cache is rebuilt."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from licsearch.bundle import text_cache
from licsearch.model.tokenizer import ClipTokenizer, open_clip_vocab, tokenizer_supported
from licsearch.ops.search import search
from licsearch.storage.points import Point
from licsearch.storage.store import Store
from tests.conftest import MakeDir, run_cli_watching

TINY_DIM = 64  # licsearch-tiny's embed_dim (licsearch/model_configs/licsearch-tiny.json)
QUERIES = ["a red circle", "two small blue squares", "Ünïcødé &amp; café 🙂", "word " * 120]


def varied_strings() -> list[str]:
    """A few hundred strings: words, unicode, HTML entities, contractions, whitespace, long and empty texts."""
    fixed = [
        "",
        " ",
        "a",
        "A Photo Of A Cat",
        "don't you'll we've I'm she's they'd",
        "&amp; &lt;b&gt;bold&lt;/b&gt; &#39;quoted&#39; &nbsp; &amp;amp;",
        "naïve café façade crème brûlée Ångström",
        "東京タワー 서울 Москва القاهرة",
        "emoji 🙂🐱‍👤 and flags 🇫🇷",
        "tabs\tand\nnewlines\r\n  and   runs of spaces",
        "numbers 3.14159 and 1,000,000 and 42nd",
        "<start_of_text> inside <end_of_text> text",
        "mojibake: cafÃ© â€œquotedâ€",
        "x" * 500,
        " ".join(["a very long caption that goes on and on"] * 40),
    ]
    rng = np.random.default_rng(0)
    pieces = [
        "red", "Circle", "blue", "square", "the", "OF", "a", "photo", "'s", "'ll", "-", "...", "!", "?", "42", "7",
        "é", "ß", "ñ", "東", "京", "🙂", "&amp;", "&lt;", "&#39;", "&nbsp;", "\t", "\n", "  ", "naïve", "ÀÉÎ", "ﬁ",
    ]  # fmt: skip
    made = ["".join(rng.choice(pieces, size=int(rng.integers(1, 30)))) for _ in range(150)]
    made += [" ".join(rng.choice(pieces, size=int(rng.integers(1, 60)))) for _ in range(150)]
    return fixed + made


def test_tokenizer_ids_equal_open_clips() -> None:
    from open_clip.tokenizer import SimpleTokenizer

    strings = varied_strings()
    for context in (77, 16):
        theirs = SimpleTokenizer(context_length=context)(strings).numpy()
        ours = ClipTokenizer(open_clip_vocab(), context)(strings)
        assert ours.dtype == np.int64
        differ = [s for s, a, b in zip(strings, ours, theirs, strict=True) if not np.array_equal(a, b)]
        assert not differ, f"{len(differ)} strings tokenise differently, e.g. {differ[0]!r}"


def test_a_long_text_is_cut_to_the_context_ending_with_end_of_text() -> None:
    tok = ClipTokenizer(open_clip_vocab(), 8)
    ids = tok(["word " * 50, ""])
    assert ids.shape == (2, 8)
    assert ids[0, 0] == tok.sot_token_id and ids[0, -1] == tok.eot_token_id and (ids[0] != 0).all()
    assert list(ids[1]) == [tok.sot_token_id, tok.eot_token_id, *[0] * 6]


def test_only_open_clips_default_tokenizer_is_supported() -> None:
    from open_clip.tokenizer import SimpleTokenizer

    assert tokenizer_supported(SimpleTokenizer())
    assert not tokenizer_supported(SimpleTokenizer(clean="whitespace"))
    assert not tokenizer_supported(SimpleTokenizer(additional_special_tokens=["<mask>"]))
    assert not tokenizer_supported(object())


@pytest.fixture(scope="module")
def text_store(tiny_store_template: Path, module_tmp: MakeDir) -> Iterator[Path]:
    """A tiny store of 200 points (random unit vectors: the ranking is what is compared) whose text queries run on a
    cache made for this module, built by the first query."""
    root = module_tmp("text-query")
    store = root / "store"
    shutil.copytree(tiny_store_template, store)
    rng = np.random.default_rng(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LICSEARCH_TEXT_CACHE", "on")
        mp.setenv("LICSEARCH_CACHE_DIR", str(root / "cache"))
        with Store.open(store) as s:
            vecs = rng.standard_normal((200, TINY_DIM)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            s.index.upsert([Point(str(uuid.UUID(int=i + 1)), {s.space_id: v.tolist()}, {}) for i, v in enumerate(vecs)])
        text_cache.forget_loaded()
        yield store
        text_cache.forget_loaded()


def _eager_ids(s: Store, text: str) -> tuple[list[str], np.ndarray]:
    vec = s.models.embed_texts([text]).vectors[0].numpy()
    return [h.id for h in s.index.search(s.space_id, vec.tolist(), top_k=10)], vec


def test_search_on_the_cached_graph_gives_the_eager_top_k(text_store: Path) -> None:
    with Store.open(text_store) as s:
        for q in QUERIES:
            got = search(s, text=q, top_k=10)
            want, vec = _eager_ids(s, q)
            assert [h.id for h in got.hits] == want, q
            fast = text_cache.embed_queries(s.models, [q]).vectors[0]
            assert float(fast @ vec / np.linalg.norm(fast) / np.linalg.norm(vec)) >= text_cache.COSINE_MIN
        encoder, _ = text_cache.query_encoder(s.models)
        assert encoder is not None, "the queries ran on the cached graph"
        assert search(s, text=QUERIES[-1]).notices == ["text truncated to the encoder's 77 tokens"]
        entry = text_cache.read_entry(text_cache.entry_dir(s.config.models.clip) or Path())
    assert entry is not None and entry.usable and entry.cosine_min >= text_cache.COSINE_MIN


def test_a_warm_search_imports_neither_torch_nor_open_clip(text_store: Path) -> None:
    with Store.open(text_store) as s:
        search(s, text="warm the cache")
        want = [h.id for h in search(s, text="a red circle", top_k=3).hits]
    args = ["search", "--store", str(text_store), "--text", "a red circle", "--top-k", "3"]
    doc, imported = run_cli_watching(args, ("torch", "open_clip"))
    assert [h["id"] for h in doc["hits"]] == want and imported == []


def test_a_damaged_cache_is_rebuilt_not_used(text_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rebuild is the export the first query ran (test above); here a copy of its entry stands in for it."""
    built: list[Path] = []

    def rebuild(ms: object, folder: Path) -> text_cache.TextCacheEntry | None:
        assert not folder.exists(), "the damaged entry is removed before the rebuild"
        built.append(folder)
        shutil.copytree(tmp_path / "pristine", folder)
        return text_cache.read_entry(folder)

    with Store.open(text_store) as s:
        folder = text_cache.entry_dir(s.config.models.clip)
        assert folder is not None
        search(s, text="a red circle")
        shutil.copytree(folder, tmp_path / "pristine")
        graph = folder / text_cache.GRAPH_FILE
        data = bytearray(graph.read_bytes())
        data[len(data) // 2] ^= 0xFF
        graph.write_bytes(bytes(data))
        with pytest.raises(text_cache.DamagedEntry, match=r"text\.onnx does not match its hash"):
            text_cache.read_entry(folder)
        text_cache.forget_loaded()
        monkeypatch.setattr(text_cache, "build_entry", rebuild)
        got = search(s, text="a red circle", top_k=10)
        assert built == [folder]
        assert any("was damaged (text.onnx does not match its hash): rebuilt" in n for n in got.notices)
        assert [h.id for h in got.hits] == _eager_ids(s, "a red circle")[0]
        assert search(s, text="a red circle").notices == [], "rebuilt once"


def test_a_model_the_cache_cannot_serve_and_an_unwritable_cache_keep_the_eager_path(
    text_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LICSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    text_cache.forget_loaded()
    with Store.open(text_store) as s:
        want = _eager_ids(s, "a red circle")[0]
        clip = s.config.models.clip
        folder = text_cache.entry_dir(clip)
        assert folder is not None
        folder.mkdir(parents=True)
        entry = text_cache.TextCacheEntry(clip.model, clip.sha256, usable=False, reason="tokenizer not ported")
        (folder / text_cache.ENTRY_FILE).write_text(json.dumps(entry.__dict__))
        assert text_cache.query_encoder(s.models) == (None, [])
        assert [h.id for h in search(s, text="a red circle", top_k=10).hits] == want
        assert sorted(p.name for p in folder.iterdir()) == [text_cache.ENTRY_FILE], "nothing was exported"

        (tmp_path / "a-file").write_text("")
        monkeypatch.setenv("LICSEARCH_CACHE_DIR", str(tmp_path / "a-file" / "cache"))  # no folder can be made there
        got = search(s, text="a red circle", top_k=10)
        assert [h.id for h in got.hits] == want and got.notices == []
