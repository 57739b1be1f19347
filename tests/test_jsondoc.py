"""Untrusted JSON bytes: a document, or one reason per way they fail, worded to follow the file's name; documents
written whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from licsearch.errors import StoreError
from licsearch.jsondoc import JsonDocError, decode_json, write_json


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


def test_write_json_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    write_json(path, {"b": 1, "a": [True, None]})
    assert path.read_bytes() == b'{"a": [true, null], "b": 1}\n'
    assert decode_json(path.read_bytes(), "x") == {"a": [True, None], "b": 1}
    assert path.stat().st_mode & 0o777 == 0o600  # credentials are written this way too
    with pytest.raises(TypeError):
        write_json(path, {"a": {1, 2}})  # not JSON: refused before anything is written
    write_json(path, {"c": 2}, indent=1)
    assert path.read_text() == '{\n "c": 2\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]  # no temp file left behind


def test_store_credentials_go_through_jsondoc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from licsearch.storage.store import API_KEY_ENV, CREDENTIALS_FILE, Store
    from tests.conftest import tiny_models

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    root = tmp_path / "store"
    Store.create(root, tiny_models(), api_key="s3cret").close()
    cred = root / CREDENTIALS_FILE
    assert decode_json(cred.read_bytes(), "x") == {"qdrant_api_key": "s3cret"}
    assert cred.stat().st_mode & 0o777 == 0o600
    cred.write_bytes(b'{"qdrant_api_key": ')  # truncated
    with pytest.raises(StoreError) as info:
        Store.open(root)
    assert f"{cred} is damaged: it is not valid JSON (Expecting value at line 1 column 20)" in info.value.message
