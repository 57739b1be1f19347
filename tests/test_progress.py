"""The one progress bar of the store operations: on as asked, or when stderr is a terminal; never for no items."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

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


def test_fsck_counts_the_points_it_checks(monkeypatch: pytest.MonkeyPatch, tiny_store: Path) -> None:
    import uuid

    from licsearch.ops.maintenance import fsck
    from licsearch.storage.points import Point
    from licsearch.storage.store import Store

    with Store.open(tiny_store) as store:
        refs = [store.blobs.put(bytes([i]) * 50) for i in range(3)]
        vec = [1.0] + [0.0] * 63  # licsearch-tiny's embed_dim is 64
        points = [Point(str(uuid.UUID(int=i + 1)), {store.space_id: vec}, {"blob": r}) for i, r in enumerate(refs)]
        store.index.upsert(points)
        shown = _Terminal()
        monkeypatch.setattr(sys, "stderr", shown)
        assert fsck(store, progress=False).ok and shown.getvalue() == ""
        assert fsck(store).points == 3
        assert "fsck" in shown.getvalue() and "3/3" in shown.getvalue() and "pt" in shown.getvalue()


class _Steps:
    """The least trainer: one linear layer and SGD."""

    def __init__(self) -> None:
        import torch

        self.layer = torch.nn.Linear(2, 1)
        self.sgd = torch.optim.SGD(self.layer.parameters(), lr=0.1)

    @property
    def modules(self) -> dict[str, Any]:
        return {"layer": self.layer}

    @property
    def optimizers(self) -> dict[str, Any]:
        return {"sgd": self.sgd}

    def step(self, step: int) -> dict[str, float]:
        import torch

        loss = self.layer(torch.ones(1, 2)).pow(2).sum()
        self.sgd.zero_grad()
        loss.backward()
        self.sgd.step()
        return {"loss": float(loss.detach())}


def test_the_training_bar_counts_steps_from_a_resumed_checkpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from licsearch.train.loop import LoopOptions, run_loop
    from licsearch.train.run import RunDir

    run = RunDir(tmp_path / "run")
    assert run.prepare(resume=False, identity={}) is None
    shown = io.StringIO()
    monkeypatch.setattr(sys, "stderr", shown)
    run_loop(run, _Steps(), LoopOptions(steps=2, log_every=1, progress=False), resume_from=None, state={})
    assert shown.getvalue() == ""
    resume = run.prepare(resume=True, identity={})
    assert resume is not None and resume.step == 2
    run_loop(run, _Steps(), LoopOptions(steps=5, log_every=1, progress=True), resume_from=resume, state={})
    assert "train" in shown.getvalue() and "5/5" in shown.getvalue() and "step" in shown.getvalue()
