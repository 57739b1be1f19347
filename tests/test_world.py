"""Contracts of the procedural captioned world: determinism, captions, the held-out split, drawing, datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from licsearch import world
from licsearch.errors import InputError
from licsearch.world import COLORS, HELD_OUT, SHAPES, ObjectSpec, SceneSpec


def _scene(*objects: ObjectSpec, count: int = 1, background: str = "plain", seed: int = 0) -> SceneSpec:
    return SceneSpec(objects=objects, count=count, background=background, seed=seed)


def _color_mask(pixels: np.ndarray, color: str, tol: int = 40) -> np.ndarray:
    """Pixels within ``tol`` of a named colour on every channel."""
    target = np.array(COLORS[color], dtype=np.int16)
    return np.all(np.abs(pixels.astype(np.int16) - target) <= tol, axis=-1)


def _count_blobs(mask: np.ndarray) -> int:
    """Number of 4-connected regions of True pixels."""
    seen = np.zeros_like(mask)
    blobs = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        blobs += 1
        stack = [start]
        seen[start] = True
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
    return blobs


RED_CIRCLE_LEFT = _scene(ObjectSpec("circle", "red", "large", "left"))


def test_same_seed_same_pixels_and_captions() -> None:
    a, b = world.sample_specs(8, seed=3), world.sample_specs(8, seed=3)
    assert a == b
    assert [s.caption() for s in a] == [s.caption() for s in b]
    for spec in a[:3]:
        assert world.render(spec).tobytes() == world.render(spec).tobytes()
    assert [c for c, _ in world.sample_images(3)] == [c for c, _ in world.sample_images(3)]


def test_different_seeds_differ() -> None:
    assert world.sample_specs(8, seed=1) != world.sample_specs(8, seed=2)
    objects = RED_CIRCLE_LEFT.objects
    first, second = world.render(_scene(*objects, seed=1)), world.render(_scene(*objects, seed=2))
    assert not np.array_equal(first, second)


def test_caption_example() -> None:
    spec = _scene(
        ObjectSpec("circle", "red", "small", "left"),
        ObjectSpec("square", "blue", "large", "bottom"),
        count=2,
        background="stripes",
    )
    assert spec.caption() == (
        "two small red circles on the left and a large blue square at the bottom on a striped background"
    )
    assert _scene(ObjectSpec("cross", "black", "small", "center"), count=3).caption() == (
        "three small black crosses in the center on a plain background"
    )


def test_captions_mention_every_attribute() -> None:
    places = {
        "left": "on the left",
        "right": "on the right",
        "top": "at the top",
        "bottom": "at the bottom",
        "center": "in the center",
    }
    for spec in world.sample_specs(100, seed=0):
        caption = spec.caption()
        for obj in spec.objects:
            for word in (obj.shape, obj.color, obj.size, places[obj.position]):
                assert word in caption, (word, caption)
        assert caption.startswith({1: "a ", 2: "two ", 3: "three "}[spec.count])
        assert caption.count(" and ") == len(spec.objects) - 1


def test_held_out_rule_is_one_distinct_colour_per_shape() -> None:
    assert sorted(shape for shape, _ in HELD_OUT) == sorted(SHAPES)
    assert len({color for _, color in HELD_OUT}) == len(SHAPES)
    assert all(color in COLORS for _, color in HELD_OUT)


def test_splits_respect_held_out_rule() -> None:
    train = world.sample_specs(200, seed=0, split="train")
    test = world.sample_specs(200, seed=0, split="test")
    assert train and test
    assert not any(world.is_held_out(s) for s in train)
    assert not any((o.shape, o.color) in HELD_OUT for s in train for o in s.objects)
    assert all(world.is_held_out(s) for s in test)
    every = world.sample_specs(200, seed=0, split="all")
    assert 0 < sum(world.is_held_out(s) for s in every) < len(every)


@pytest.mark.parametrize("size", [(256, 256), (320, 240), (32, 32), (48, 100)])
def test_render_size(size: tuple[int, int]) -> None:
    pixels = world.render(world.sample_specs(1, seed=4)[0], size)
    assert pixels.shape == (size[1], size[0], 3)
    assert pixels.dtype == np.uint8


def test_object_is_drawn_where_the_caption_says() -> None:
    red = _color_mask(world.render(RED_CIRCLE_LEFT), "red")
    left, right = red[:, :128].sum(), red[:, 128:].sum()
    assert left > 0.5 * np.pi * (0.15 * 256) ** 2  # most of a circle of radius 0.15 * side
    assert right < 20


@pytest.mark.parametrize("position", world.POSITIONS)
def test_positions(position: str) -> None:
    spec = _scene(ObjectSpec("square", "yellow", "small", position), count=3, seed=7)
    ys, xs = np.nonzero(_color_mask(world.render(spec, (320, 240)), "yellow"))
    cx, cy = xs.mean() / 320, ys.mean() / 240
    expected = {
        "left": cx < 0.35,
        "right": cx > 0.65,
        "top": cy < 0.35,
        "bottom": cy > 0.65,
        "center": 0.35 < cx < 0.65 and 0.35 < cy < 0.65,
    }
    assert expected[position], (cx, cy)


@pytest.mark.parametrize("background", world.BACKGROUNDS)
def test_every_shape_is_visible_on_every_background(background: str) -> None:
    masks = []
    for shape in SHAPES:
        for color in ("white", "black", "purple"):
            spec = _scene(ObjectSpec(shape, color, "large", "center"), background=background, seed=11)
            mask = _color_mask(world.render(spec, (128, 128)), color, tol=30)
            assert mask.sum() > 150, (shape, color, background)
            masks.append(mask)
    shapes = masks[::3]
    assert all(not np.array_equal(a, b) for i, a in enumerate(shapes) for b in shapes[i + 1 :])


def test_copies_do_not_overlap() -> None:
    spec = _scene(
        ObjectSpec("circle", "blue", "large", "top"), ObjectSpec("circle", "red", "large", "left"), count=3, seed=5
    )
    assert _count_blobs(_color_mask(world.render(spec), "blue")) == 3


def test_write_dataset_round_trips(tmp_path: Path) -> None:
    captions = world.write_dataset(tmp_path / "ds", 5, seed=2, split="train", size=(64, 48))
    assert captions == tmp_path / "ds" / "captions.jsonl"
    rows = [json.loads(line) for line in captions.read_text().splitlines()]
    assert [r["file"] for r in rows] == [f"{i:05d}.png" for i in range(5)]
    for row in rows:
        spec = SceneSpec.from_dict(row["spec"])
        assert spec.caption() == row["caption"]
        assert not world.is_held_out(spec)
        with Image.open(captions.parent / row["file"]) as image:
            assert image.size == (64, 48)
            assert np.array_equal(np.asarray(image.convert("RGB")), world.render(spec, (64, 48)))
    assert sorted(p.name for p in captions.parent.iterdir()) == sorted([*(r["file"] for r in rows), "captions.jsonl"])


def test_interrupted_write_leaves_no_captions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ds"
    world.write_dataset(out, 2, seed=0, size=(32, 32))
    calls = []

    def failing_render(spec: SceneSpec, size: tuple[int, int] = (256, 256)) -> np.ndarray:
        calls.append(spec)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return np.zeros((size[1], size[0], 3), np.uint8)

    monkeypatch.setattr(world, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        world.write_dataset(out, 3, seed=1, size=(32, 32))
    assert not (out / "captions.jsonl").exists()


def test_sample_images_are_varied() -> None:
    samples = world.sample_images(6)
    assert len(samples) == 6
    assert len({caption for caption, _ in samples}) == 6
    assert len({caption.split(" on a ")[-1] for caption, _ in samples}) == 5  # every background texture
    assert all(pixels.shape == (240, 320, 3) for _, pixels in samples)


def test_spec_round_trips_through_json() -> None:
    for spec in world.sample_specs(20, seed=9):
        assert SceneSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@pytest.mark.parametrize(
    "call",
    [
        lambda: world.sample_specs(3, seed=0, split="val"),  # type: ignore[arg-type]
        lambda: world.sample_specs(-1, seed=0),
        lambda: world.sample_specs(0, seed=0, split="val"),  # type: ignore[arg-type]
        lambda: world.sample_specs(2, seed=-5),
        lambda: world.render(RED_CIRCLE_LEFT, (256,)),  # type: ignore[arg-type]
        lambda: world.render(RED_CIRCLE_LEFT, (16, 256)),
        lambda: world.sample_images(2, size=(320, 31)),
        lambda: world.write_dataset(Path("unused"), 2, seed=0, fmt="gif"),
        lambda: world.write_dataset(Path("unused"), 2, seed=0, split="dev"),
        lambda: ObjectSpec("hexagon", "red", "small", "left"),
        lambda: ObjectSpec("circle", "teal", "small", "left"),
        lambda: _scene(ObjectSpec("circle", "red", "small", "left"), count=4),
        lambda: _scene(ObjectSpec("circle", "red", "small", "left"), ObjectSpec("star", "blue", "small", "left")),
        lambda: _scene(ObjectSpec("circle", "red", "small", "left"), background="dots"),
        lambda: _scene(ObjectSpec("circle", "red", "small", "left"), seed=-1),
        lambda: SceneSpec.from_dict({"objects": [], "count": 1}),
        lambda: SceneSpec.from_dict({"objects": [{"shape": "circle"}], "count": 1, "background": "plain", "seed": 0}),
    ],
)
def test_bad_arguments_raise_input_error(call: object) -> None:
    with pytest.raises(InputError) as info:
        call()  # type: ignore[operator]
    assert info.value.hint


def test_bad_output_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        world.write_dataset(blocker, 1, seed=0)
