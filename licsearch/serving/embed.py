"""The ``embed`` endpoint: text, an image or a bitstream in; vectors in the bundle's embedding space out.

* JSON ``{"text": "..."}`` or ``{"texts": [...]}`` (or a ``text/plain`` body): the CLIP text tower. Texts over the
  encoder's context are truncated and flagged in ``truncated``; empty texts and texts over 4096 characters are
  refused.
* Image bytes: the codec's analysis transform and the adapter, exactly as ``encode`` computes the embedding.
* ``.lics`` bytes (told by the ``LICS`` magic): entropy decoding and the adapter, without synthesis.

Answer: ``{"vectors": [[...], ...], "space_id", "truncated": [...], "source": "text" | "image" | "bitstream"}``.
The texts of all requests in a batch run through the text graph together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..bitstream import MAGIC
from ..errors import InputError
from .endpoint import Endpoint
from .request import Request, negotiate
from .responses import JSON, Reply, json_reply

if TYPE_CHECKING:
    import numpy as np

Vectors = tuple[list[list[float]], list[bool]]


@dataclass(frozen=True)
class EmbedInput:
    """What to embed: ``texts``, ``pixels`` or a bitstream's ``data``, by ``source``."""

    source: str
    texts: tuple[str, ...] = ()
    pixels: np.ndarray | None = None
    data: bytes = b""


class EmbedEndpoint(Endpoint[EmbedInput, Vectors]):
    """Embeds texts, images and bitstreams."""

    name = "embed"
    components = ("codec", "adapter", "text")

    def parse(self, request: Request) -> EmbedInput:
        negotiate(request.header("accept"), (JSON,))
        if set(request.fields) == {"text"}:  # a multipart form field: -F text="a red car"
            return self._texts((request.option("text") or "",))
        part = request.payload()
        if part.is_json:
            return self._texts(_texts_of(part.json()))
        if part.is_text:
            value = part.value
            if not isinstance(value, str):
                try:
                    value = bytes(value).decode("utf-8")
                except UnicodeDecodeError:
                    raise InputError("text body is not UTF-8") from None
            return self._texts((value,))
        data = self.binary(part, "an image, a .lics bitstream or JSON text")
        if data.startswith(MAGIC):
            self.bitstream(data)
            return EmbedInput("bitstream", data=data)
        from ..imageio import load_image

        image = load_image(data, max_pixels=self.limits.max_pixels, max_bytes=self.limits.max_bytes, name="image")
        return EmbedInput("image", pixels=image.pixels)

    def _texts(self, texts: tuple[str, ...]) -> EmbedInput:
        if len(texts) > self.limits.max_texts:
            raise InputError(f"{len(texts)} texts in one request", hint=f"send at most {self.limits.max_texts}")
        for text in texts:
            self.bundle.text.check(text)
        return EmbedInput("text", texts=texts)

    def compute(self, inputs: dict[int, EmbedInput]) -> dict[int, Vectors | Exception]:
        texts = {i: x for i, x in inputs.items() if x.source == "text"}
        bitstreams = {i: x for i, x in inputs.items() if x.source == "bitstream"}
        by_size: dict[tuple[int, ...], dict[int, EmbedInput]] = {}
        for i, x in inputs.items():
            if x.pixels is not None:
                by_size.setdefault(x.pixels.shape, {})[i] = x
        out: dict[int, Vectors | Exception] = self.batched(texts, self._embed_texts) if texts else {}
        with self.clock.stage("entropy_coding"):
            for group in by_size.values():
                out.update(self.batched(group, self._embed_images))
            out.update(self.each(bitstreams, lambda x: ([self.plane.embed_bitstream(x.data)], [False])))
        return out

    def _embed_texts(self, items: list[EmbedInput]) -> list[Vectors]:
        flat = [t for x in items for t in x.texts]
        emb = self.plane.embed_texts(flat)
        vectors, truncated = emb.vectors.tolist(), list(emb.truncated)
        out: list[Vectors] = []
        start = 0
        for x in items:
            end = start + len(x.texts)
            out.append((vectors[start:end], truncated[start:end]))
            start = end
        return out

    def _embed_images(self, items: list[EmbedInput]) -> list[Vectors]:
        encoded = self.plane.encode_batch([x.pixels for x in items if x.pixels is not None])
        return [([e.embedding], [False]) for e in encoded]

    def reply(self, item: EmbedInput, result: Vectors) -> Reply:
        vectors, truncated = result
        return json_reply(
            {"vectors": vectors, "space_id": self.bundle.space_id, "truncated": truncated, "source": item.source}
        )


def _texts_of(doc: Any) -> tuple[str, ...]:
    usage = 'send {"text": "a red car"} or {"texts": ["a red car", "a blue boat"]}'
    if not isinstance(doc, dict) or ("text" in doc) == ("texts" in doc):
        raise InputError('a JSON body must be an object with "text" or "texts"', hint=usage)
    texts = [doc["text"]] if "text" in doc else doc["texts"]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InputError('"texts" must be a non-empty list of strings and "text" a string', hint=usage)
    return tuple(texts)
