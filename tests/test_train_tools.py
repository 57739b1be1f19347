"""Small training tools: photo crops for precomputed distillation, the world benchmark's sample split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from licsearch.train.crops import main as crops_main
from licsearch.train.crops import write_crops
from licsearch.train.data import ImageFolder
from licsearch.world import is_held_out, sample_specs
from tests.conftest import make_image, run_cli, write_png


def test_crops_are_deterministic_square_and_varied(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(2):
        write_png(src / f"{i}.png", make_image(i, 160, 200))
    a = write_crops(src, tmp_path / "a", per_image=3, size=64, seed=1)
    b = write_crops(src, tmp_path / "b", per_image=3, size=64, seed=1)
    assert len(a) == 6
    pa = [np.asarray(Image.open(p)) for p in a]
    assert all(p.shape == (64, 64, 3) for p in pa)
    assert all(np.array_equal(x, np.asarray(Image.open(y))) for x, y in zip(pa, b, strict=True))
    assert not np.array_equal(pa[0], pa[1])


def test_crops_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    assert crops_main(["--images", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    write_png(tmp_path / "src" / "x.png", make_image(0))
    assert crops_main(["--images", str(tmp_path / "src"), "--out", str(tmp_path / "o"), "--per-image", "0"]) == 2


def test_image_folder_cache_returns_the_same_pixels(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", make_image(3))
    cached, uncached = ImageFolder(tmp_path), ImageFolder(tmp_path, cache_bytes=0)
    first = cached.load(0)
    assert cached.load(0).equal(first) and uncached.load(0).equal(first)
    assert len(cached._cache) == 1 and not uncached._cache


def test_samples_test_split_are_the_benchmark_scenes(tmp_path: Path) -> None:
    proc = run_cli("samples", "--out", str(tmp_path), "-n", "5", "--split", "test", "--size", "96x64", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    specs = sample_specs(5, seed=0, split="test")
    assert [ln["caption"] for ln in lines] == [s.caption() for s in specs]
    assert all(is_held_out(s) for s in specs)
    assert Image.open(tmp_path / "00000.png").size == (96, 64)


def test_samples_bad_size_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli("samples", "--out", str(tmp_path), "--size", "big")
    assert proc.returncode == 2 and "--size" in proc.stderr and "Traceback" not in proc.stderr
