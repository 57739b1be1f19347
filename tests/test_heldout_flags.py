"""The held-out activation flags shared by ``distill`` and ``migrate`` (``cli/options.add_heldout_flags``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from licsearch import defaults
from licsearch.cli.distill import cmd_distill, configure_distill
from licsearch.cli.migrate import cmd_migrate, configure_migrate
from licsearch.cli.options import heldout_thresholds, read_texts
from licsearch.errors import InputError
from licsearch.ops.distill import Thresholds

COMMANDS = {
    "distill": (configure_distill, cmd_distill, []),
    "migrate": (configure_migrate, cmd_migrate, ["--clip", "licsearch-tiny", "--sample", "4"]),
}


def _parse(name: str, *args: str) -> argparse.Namespace:
    configure, _, required = COMMANDS[name]
    p = argparse.ArgumentParser()
    configure(p)
    return p.parse_args([*required, *args])


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_both_commands_read_the_same_thresholds(name: str) -> None:
    assert heldout_thresholds(_parse(name)) == Thresholds(recall_min=defaults.ADAPTER_RECALL_OVERLAP_MIN)
    args = _parse(name, "--recall-min", "0.5", "--cos-min", "0.7", "--text-min", "0.2", "--activate", "--force")
    assert heldout_thresholds(args) == Thresholds(recall_min=0.5, cos_min=0.7, text_min=0.2)
    assert args.threads is None and not args.no_progress and args.texts is None


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_force_without_activate_is_refused_before_any_work(name: str, tmp_path: Path) -> None:
    _, command, _ = COMMANDS[name]
    args = _parse(name, "--force", "--store", str(tmp_path / "absent"))
    with pytest.raises(InputError, match="--force only overrides"):
        command(args)
    assert not (tmp_path / "absent").exists()


def test_texts_file_one_query_a_line(tmp_path: Path) -> None:
    path = tmp_path / "q.txt"
    path.write_text("a red square\n\n  two blue circles  \n", encoding="utf-8")
    assert read_texts(path) == ("a red square", "two blue circles")
    assert read_texts(str(path)) == read_texts(path)


@pytest.mark.parametrize("content", [b"\n \n", b"\xff\xfe not utf-8 \xff"])
def test_empty_or_undecodable_texts_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "q.txt"
    path.write_bytes(content)
    with pytest.raises(InputError, match="--texts"):
        read_texts(path)
    with pytest.raises(InputError, match="cannot read --texts"):
        read_texts(tmp_path / "missing.txt")
