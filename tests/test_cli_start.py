"""CLI start-up: a command configures only its own parser, so ``stats`` and ``search`` pay for no other command's
imports (training code, torch), while every command's ``--help`` still works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from licsearch.cli.main import command_registry, main

HEAVY = ("torch", "open_clip", "licsearch.train", "licsearch.eval", "licsearch.ops.reindex")


def test_stats_imports_no_other_commands_modules(tiny_store_template: Path) -> None:
    code = (
        "import sys, json; from licsearch.cli.main import main; "
        f"code = main(['stats', '--store', {str(tiny_store_template)!r}, '--json']); "
        f"print(json.dumps([m for m in sys.modules if m.startswith({HEAVY!r})]), file=sys.stderr); sys.exit(code)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["images"] == 0
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("name", sorted(command_registry()))
def test_every_command_still_has_its_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    assert f"usage: licsearch {name}" in capsys.readouterr().out


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in command_registry())


def test_a_codec_loads_without_compressais_point_cloud_modules() -> None:
    code = (
        "import sys, json, compressai.zoo; from licsearch.model.codec import load_codec_model; "
        "load_codec_model('bmshj2018-hyperprior', 1, 'random'); import compressai; "
        "print(json.dumps([compressai.get_entropy_coder(), compressai.__version__, "
        "[m for m in ('torch_geometric', 'torchvision') if m in sys.modules]]))"
    )
    # licsearch imported first, as every licsearch process does
    code = "import licsearch.model.codec; " + code
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    coder, version, heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    assert coder == "ans" and version.startswith("1.2") and heavy == []


def test_a_clips_embedding_width_is_read_from_its_config_without_open_clip() -> None:
    import open_clip

    from licsearch.model.text import _register_configs, clip_embed_dim

    _register_configs()
    names = open_clip.list_models()
    assert "licsearch-world" in names and "ViT-B-32" in names
    for name in names:
        assert clip_embed_dim(name) == open_clip.get_model_config(name)["embed_dim"], name
    assert clip_embed_dim("no-such-model") is None


def test_ingest_into_an_adapter_space_imports_no_open_clip(tiny_store: Path, tmp_path: Path) -> None:
    from PIL import Image

    from tests.conftest import make_image, run_cli_watching

    Image.fromarray(make_image(3)).save(tmp_path / "a.png")
    doc, imported = run_cli_watching(
        ["ingest", "--store", str(tiny_store), str(tmp_path / "a.png")], ("open_clip", "torchvision")
    )
    assert doc["ingested"] == 1 and imported == []
