"""The shipped adapter's data recipe: views as a collection holds them, world scenes made on the fly, exact resume.

Tiny settings (random quality-1 codec, the tiny random CLIP, chunks of four views): the figures of the shipped
adapter itself are in ``reference.json`` and ``eval/`` (tests/test_shipped.py, tests/test_readme_figures.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from licsearch.config import AdapterConfig, ClipConfig, CodecConfig, ModelsConfig
from licsearch.errors import InputError
from licsearch.train.adapter import AdapterTrainOptions, train_adapter
from licsearch.train.data import IngestView, ViewStream
from licsearch.train.loop import LoopOptions
from licsearch.train.run import RunDir
from licsearch.world import is_held_out, render, sample_specs
from tests.conftest import make_image, write_png


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_ingest_views_repeat_per_seed_and_cover_the_near_duplicate_edits() -> None:
    pixels = render(sample_specs(1, seed=3, split="train")[0], (256, 256))
    edit = IngestView()
    views = [edit(pixels, np.random.default_rng([0, p])) for p in range(80)]
    again = [edit(pixels, np.random.default_rng([0, p])) for p in range(80)]
    assert all(np.array_equal(a, b) for a, b in zip(views, again, strict=True))
    assert all(v.dtype == np.uint8 and v.ndim == 3 and min(v.shape[:2]) >= edit.min_side for v in views)
    sides = {v.shape[0] for v in views}
    assert 256 in sides and 128 in sides, f"native and 50 % views expected, got sides {sorted(sides)}"
    assert any(v.shape[0] % 64 for v in views), "crops that keep 80-95 % of a side (not a multiple of 64)"
    assert any(v.shape[:2] == (256, 256) and not np.array_equal(v, pixels) for v in views)  # flips or re-encodes


def test_view_stream_makes_new_train_scenes_and_repeats_a_chunk(tmp_path: Path) -> None:
    specs = sample_specs(12, seed=7, split="train")
    assert not any(is_held_out(s) for s in specs)
    write_png(tmp_path / "photos" / "a.png", make_image(1, 300, 200))
    from licsearch.train.data import ImageFolder

    stream = ViewStream(ImageFolder(tmp_path / "photos"), chunk=4, seed=0, world_seed=7, scene_side=64)
    first, second = stream.views(1, specs), stream.views(1, specs)
    assert len(first) == 4 and all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, stream.views(2, specs), strict=True))


def options(out: Path, steps: int, *, resume: bool = False, chunk: int = 4) -> AdapterTrainOptions:
    models = ModelsConfig(
        codec=CodecConfig(arch="bmshj2018-hyperprior", quality=1, weights="random"),
        clip=ClipConfig(model="licsearch-tiny", tag=None, weights="random"),
        adapter=AdapterConfig(width=32, hidden=64),
    )
    return AdapterTrainOptions(
        images=out.parent / "photos",
        out=out,
        loop=LoopOptions(steps=steps, log_every=1, checkpoint_every=1, progress=False),
        models=models,
        batch_size=2,
        device="cpu",
        eval_images=1,
        world=True,
        chunk=chunk,
        reuse=1,
        resume=resume,
    )


class Interrupted(Exception):
    pass


def test_world_recipe_trains_and_resumes_as_the_straight_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from licsearch.train.adapter import ChunkPairs

    write_png(tmp_path / "photos" / "a.png", make_image(2, 160, 128))
    straight = train_adapter(options(tmp_path / "straight", 4))
    assert straight.data["world_views"] == 8 and straight.data["chunks"] == 2
    assert straight.data["views_built_this_run"] == 8 and straight.data["views_per_second"] > 0
    batch = ChunkPairs.batch

    def stop_at_step_3(self: ChunkPairs, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if step == 3:
            raise Interrupted  # the run dies inside its second chunk, after the checkpoint of step 3
        return batch(self, step)

    with monkeypatch.context() as m:
        m.setattr(ChunkPairs, "batch", stop_at_step_3)
        with pytest.raises(Interrupted):
            train_adapter(options(tmp_path / "resumed", 4))
    resumed = train_adapter(options(tmp_path / "resumed", 4, resume=True))
    assert resumed.data["views_built_this_run"] == 4  # the chunk it stopped in, rebuilt
    a, b = RunDir(tmp_path / "straight").read_log(), RunDir(tmp_path / "resumed").read_log()
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=1e-6)
    prov = json.loads((tmp_path / "straight" / "provenance.json").read_text())
    assert prov["data"]["world_seed"] == 7 and prov["options"]["world"] is True
    with pytest.raises(InputError, match="--chunk"):
        train_adapter(options(tmp_path / "bad", 2, chunk=1))


def test_an_edit_names_its_original_and_whether_it_is_a_near_duplicate() -> None:
    pixels = render(sample_specs(1, seed=4, split="train")[0], (256, 256))
    edit = IngestView()
    kinds = set()
    for p in range(60):
        view, original, near = edit.edit(pixels, np.random.default_rng([1, p]))
        assert np.array_equal(view, edit(pixels, np.random.default_rng([1, p])))  # the same draws, the same view
        assert np.array_equal(original, pixels)
        u = np.random.default_rng([1, p]).random()  # the first draw picks the crop kind
        assert near == (not edit.crop_p <= u < edit.crop_p + edit.resized_p)
        kinds.add(near)
    assert kinds == {True, False}
    photo = make_image(5, 300, 200)
    _, original, _ = edit.edit(photo, np.random.default_rng(0), base_side=128)
    assert min(original.shape[:2]) == 128  # a photo's original is the photo at the view's base size


def test_original_targets_teach_a_near_duplicate_its_originals_embedding(tmp_path: Path) -> None:
    import dataclasses

    from licsearch.eval.semantic import Teacher
    from licsearch.model.codec import Codec
    from licsearch.train.adapter import ChunkPairs
    from licsearch.train.data import ImageFolder
    from licsearch.train.teacher import ClipTeacher

    write_png(tmp_path / "photos" / "a.png", make_image(3, 160, 128))
    opts = dataclasses.replace(options(tmp_path / "run", 2, chunk=8), view_target="original")
    codec = Codec.load("bmshj2018-hyperprior", 1, "random")
    clip = ClipTeacher.load("licsearch-tiny", None, "random", torch.device("cpu"))
    stream = ViewStream(ImageFolder(tmp_path / "photos"), 8, opts.seed, opts.world_seed, scene_side=64)
    pairs = ChunkPairs(codec, clip, stream, opts, torch.device("cpu"))
    pairs._build(0)
    edits = stream.edits(0, pairs.specs)
    teacher = Teacher(clip.model)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, (view, _, _) in enumerate(edits):
        by_shape.setdefault((-(-view.shape[0] // 64) * 64, -(-view.shape[1] // 64) * 64), []).append(i)
    got = torch.cat([t for _, t in pairs.groups])
    order = [i for _, idx in sorted(by_shape.items()) for i in idx]
    for row, i in enumerate(order):
        view, original, near = edits[i]
        want = teacher.embed([original if near else view])[0]
        assert np.allclose(got[row].numpy(), want, atol=1e-5)
    assert any(near and not np.array_equal(v, o) for v, o, near in edits), "an edited near-duplicate was drawn"
    report = train_adapter(opts)
    assert report.data["view_target"] == "original"
    with pytest.raises(InputError, match="--view-target"):
        train_adapter(dataclasses.replace(opts, out=tmp_path / "bad", view_target="pixels"))
