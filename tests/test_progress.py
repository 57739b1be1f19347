"""The one progress bar of the store operations: on as asked, or when stderr is a terminal; never for no items."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import pytest

from licsearch.ops.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_when_asked_or_nothing_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert progress_bar(5, False, "x") is None
    assert progress_bar(0, True, "x") is None
    assert progress_bar(0, None, "x") is None


def test_default_follows_whether_stderr_is_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress_bar(5, None, "x") is None
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress_bar(5, None, "reindex s1")
    assert bar is not None
    bar.update(2)
    bar.close()
    shown = terminal.getvalue()
    assert "reindex s1" in shown and "2/5" in shown and "img" in shown


def test_on_when_asked_even_into_a_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    bar = progress_bar(3, True, "ingest", unit="pt")
    assert bar is not None and bar.total == 3
    bar.update(3)
    bar.close()
    assert "ingest" in pipe.getvalue() and "3/3" in pipe.getvalue() and "pt" in pipe.getvalue()


def test_a_bar_whose_total_comes_later(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress_bar(None, None, "optimise", unit="vec", leave=False)
    assert bar is not None and bar.total is None
    bar.total, bar.n = 8, 6  # as the HNSW build and the index upgrade report it
    bar.refresh()
    bar.close()
    assert "optimise" in terminal.getvalue() and "6/8" in terminal.getvalue()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress_bar(None, None, "optimise") is None  # a pipe: still no bar by default


def test_store_maintenance_bars_follow_the_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from licsearch.cli.maintenance import _bar
    from licsearch.ops.maintenance import optimize_index
    from licsearch.storage.store import Store
    from tests.conftest import tiny_models

    monkeypatch.setattr(sys, "stderr", _Terminal())
    flags = {"no_progress": False, "json": False}
    assert _bar(argparse.Namespace(**flags), "upgrade", "pt") is not None
    assert _bar(argparse.Namespace(**{**flags, "json": True}), "upgrade", "pt") is None
    assert _bar(argparse.Namespace(**{**flags, "no_progress": True}), "upgrade", "pt") is None
    with Store.create(tmp_path / "store", tiny_models()) as store:
        shown = _Terminal()
        monkeypatch.setattr(sys, "stderr", shown)
        optimize_index(store, False)
        assert shown.getvalue() == ""
        optimize_index(store, True)
        assert "index" in shown.getvalue()
