"""Packaging: the core installs without the serving and plotting stacks, and a missing extra says which to install."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from licsearch.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _names(requirements: list[str]) -> set[str]:
    import re

    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_extras_are_declared_once_and_kept_out_of_the_core() -> None:
    project = _pyproject()["project"]
    optional = project["optional-dependencies"]
    core = _names(project["dependencies"])
    for extra, packages in EXTRAS.items():
        assert _names(optional[extra]) == set(packages), f"[{extra}] in pyproject.toml and licsearch.extras differ"
        assert not core & set(packages), f"{sorted(core & set(packages))} belong to [{extra}], not the core"


def test_tools_target_the_python_the_package_requires() -> None:
    doc = _pyproject()
    floor = doc["project"]["requires-python"].removeprefix(">=")
    assert doc["tool"]["mypy"]["python_version"] == floor
    assert doc["tool"]["ruff"]["target-version"] == "py" + floor.replace(".", "")


def test_make_setup_installs_every_extra_but_gpu() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    installs = re.findall(r"-e '\.\[([a-z,]+)\]'", makefile)
    assert installs, "make setup must install the project with its extras (-e '.[...]')"
    expected = {"dev", *EXTRAS} - {"gpu"}  # gpu needs a CUDA machine; every other extra is installed
    assert [set(i.split(",")) for i in installs] == [expected], installs


def test_eval_plots_without_matplotlib_name_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from tests.test_cli import cli_inprocess

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    res = cli_inprocess(capsys, "eval", "--store", str(tmp_path / "absent"), "--plots", str(tmp_path / "p"), "--json")
    assert res.returncode == 1
    assert "[eval] extra" in res.stderr and "pip install 'licsearch[eval]'" in res.stderr
    assert '"MissingExtraError"' in res.stdout
    assert not (tmp_path / "p").exists(), "refused before anything was evaluated or written"


def test_archive_without_the_model_archiver_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from tests.test_cli import cli_inprocess

    monkeypatch.setitem(sys.modules, "model_archiver", None)
    res = cli_inprocess(capsys, "archive", "--bundle", str(tmp_path), "--out", str(tmp_path / "ms"))
    assert res.returncode == 1
    assert "[serve] extra" in res.stderr and "pip install 'licsearch[serve]'" in res.stderr
    assert not (tmp_path / "ms").exists()
