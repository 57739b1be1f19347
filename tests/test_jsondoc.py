"""Untrusted JSON bytes: a document, or one reason per way they fail, worded to follow the file's name."""

from __future__ import annotations

import pytest

from licsearch.jsondoc import JsonDocError, decode_json


def test_a_document_comes_back_as_parsed() -> None:
    assert decode_json('{"a": [1, 2.5, "é"]}'.encode(), "x") == {"a": [1, 2.5, "é"]}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"a": "\xff"}', "is not UTF-8 text"),
        (b'{"a": 1,}', "is not valid JSON (Expecting property name enclosed in double quotes at line 1 column 9)"),
        (b"", "is not valid JSON (Expecting value at line 1 column 1)"),
        (b"[" * 200_000 + b"]" * 200_000, "is nested too deeply to be a store config"),
    ],
)
def test_each_failure_has_its_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(JsonDocError) as caught:
        decode_json(raw, "a store config")
    assert str(caught.value) == reason
