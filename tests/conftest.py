"""Shared fixtures: small random-weight models (labelled as such by the product) and generated images.

No network and no downloads: the codec is CompressAI's bmshj2018-hyperprior at quality 1 with seeded random
weights, the CLIP model is the tiny open_clip config shipped in licsearch/model_configs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from licsearch.config import AdapterConfig, ClipConfig, CodecConfig, ModelsConfig

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

pytest_plugins = ["tests.serving_fixtures"]  # the one TorchServe of a test session, shared by the serving tests

TINY_FLAGS = [
    "--codec", "bmshj2018-hyperprior:1",
    "--codec-weights", "random",
    "--clip", "licsearch-tiny",
    "--clip-weights", "random",
    "--adapter-weights", "random",
]  # fmt: skip


def tiny_models(arch: str = "bmshj2018-hyperprior", quality: int = 1) -> ModelsConfig:
    """The models the CLI builds from TINY_FLAGS."""
    return ModelsConfig(
        codec=CodecConfig(arch=arch, quality=quality, weights="random"),
        clip=ClipConfig(model="licsearch-tiny", tag=None, weights="random"),
        adapter=AdapterConfig(weights="random"),
    )


def make_image(seed: int, h: int = 96, w: int = 128) -> np.ndarray:
    """A smooth, structured RGB test image (gradients plus blobs), different for every seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(-1, 1, 3)
        img[..., c] = 0.5 + 0.25 * np.sin(a * xx / 9 + b * yy / 7 + p * 6)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(6, 24)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[mask] = rng.uniform(0, 1, 3)
    return (img.clip(0, 1) * 255).astype(np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def eager_text_queries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Text queries run the eager text tower, the reference (exporting a cached text graph costs each CLIP ~6 s once
    per cache); tests/test_text_query.py turns the cache on and holds it to that reference. A cache a test turns on
    lives in the session's temporary folder, never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LICSEARCH_TEXT_CACHE", "off")
        mp.setenv("LICSEARCH_CODEC_CACHE", "off")
        mp.setenv("LICSEARCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    """Six distinct PNGs (two sizes) in a folder with a subfolder."""
    d = tmp_path / "images"
    for i in range(4):
        write_png(d / f"img{i}.png", make_image(i))
    for i in range(4, 6):
        write_png(d / "sub" / f"img{i}.png", make_image(i, 64, 80))
    return d


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Runs the real `licsearch` CLI in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "licsearch", *args], capture_output=True, text=True, env=full_env, timeout=300
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"licsearch {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def run_cli_watching(args: list[str], packages: tuple[str, ...]) -> tuple[dict[str, Any], list[str]]:
    """Runs the real CLI's ``main(args + ['--json'])`` in a fresh interpreter; its JSON document and which of the
    top-level ``packages`` it imported (a command meant to run without torch is checked this way)."""
    code = (
        "import sys, json; from licsearch.cli.main import main; "
        f"code = main({[*args, '--json']!r}); "
        f"print(json.dumps([m for m in {packages!r} if m in sys.modules]), file=sys.stderr); sys.exit(code)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), json.loads(proc.stderr.strip().splitlines()[-1])


MakeDir = Callable[[str], Path]


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeDir]:
    """``tmp_path_factory.mktemp`` for one module's fixtures: the folders go when the module ends.

    A copied Edge store takes ~240 MB of disk however few points it holds (its WAL, vector chunk, payload pages and
    indexes are preallocated sparse files, and ``shutil.copytree`` writes them whole); kept for the whole session,
    the modules' stores would fill a small CI disk.
    """
    made: list[Path] = []

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised, empty store with tiny models (made once; copy it with `tiny_store`)."""
    root = tmp_path_factory.mktemp("template") / "store"
    run_cli("init", "--store", str(root), *TINY_FLAGS, check=True)
    return root


@pytest.fixture
def tiny_store(tiny_store_template: Path, tmp_path: Path) -> Iterator[Path]:
    """A fresh copy of the empty tiny store."""
    import shutil

    dst = tmp_path / "store"
    shutil.copytree(tiny_store_template, dst)
    yield dst
