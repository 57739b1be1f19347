"""A procedural, captioned image world: coloured shapes on textured backgrounds.

No pretrained CLIP weights can be downloaded here, so the project makes its own captioned images: scenes of
one or two groups of shapes, each with a colour, a size and a position, on a textured background, together
with an English caption that describes them. Everything is drawn with numpy and Pillow and is deterministic:
a :class:`SceneSpec` (which carries its own jitter seed) always renders to the same pixels at a given size.

The world serves the offline demo's sample images (:func:`sample_images`) and a text-to-image retrieval
benchmark with a compositional split: a fixed set of (shape, colour) pairs, :data:`HELD_OUT`, never appears in
a training scene, and every test scene's first object is one of them (:func:`is_held_out`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

import numpy as np
from PIL import Image, ImageDraw

from licsearch.errors import InputError

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (228, 26, 28),
    "green": (30, 170, 60),
    "blue": (35, 80, 230),
    "yellow": (250, 220, 20),
    "orange": (255, 128, 0),
    "purple": (140, 50, 190),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
BACKGROUNDS = ("plain", "stripes", "checker", "noise", "gradient")

#: The (shape, colour) pairs kept out of training, a fixed diagonal: the ``i``-th of :data:`SHAPES` holds out the
#: ``i``-th of :data:`COLORS`, so every shape has exactly one held-out colour and no two shapes share one.
HELD_OUT = frozenset(
    {
        ("circle", "red"),
        ("square", "green"),
        ("triangle", "blue"),
        ("star", "yellow"),
        ("ring", "orange"),
        ("cross", "purple"),
    }
)

Split = Literal["train", "test", "all"]
MIN_SIDE, MAX_SIDE = 32, 4096

_PLURALS = {"cross": "crosses"}
_PLACES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
_TEXTURES = {"plain": "plain", "stripes": "striped", "checker": "checkered", "noise": "noisy", "gradient": "gradient"}
_COUNT_WORDS = {2: "two", 3: "three"}
# Where the centres of a group's copies may fall, as (x0, x1, y0, y1) fractions of the width and height.
_REGIONS = {
    "left": (0.06, 0.30, 0.18, 0.82),
    "right": (0.70, 0.94, 0.18, 0.82),
    "top": (0.25, 0.75, 0.06, 0.32),
    "bottom": (0.25, 0.75, 0.68, 0.94),
    "center": (0.34, 0.66, 0.34, 0.66),
}
# Radius as a fraction of the shorter side, shrunk for groups of copies so that they fit their region.
_RADIUS = {"small": 0.075, "large": 0.15}
_COPY_SCALE = {1: 1.0, 2: 0.8, 3: 0.68}
_SUPERSAMPLE = 2
_IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


def _check_choice(kind: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"unknown {kind} {value!r}", hint=f"use one of: {', '.join(choices)}")


@dataclass(frozen=True)
class ObjectSpec:
    """One group of identical objects: what it is and which region of the image it occupies."""

    shape: str
    color: str
    size: str
    position: str

    def __post_init__(self) -> None:
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("colour", self.color, tuple(COLORS))
        _check_choice("size", self.size, SIZES)
        _check_choice("position", self.position, POSITIONS)

    def phrase(self, count: int = 1) -> str:
        """English noun phrase with position, e.g. ``"two small red circles on the left"``."""
        noun = self.shape if count == 1 else _PLURALS.get(self.shape, self.shape + "s")
        return f"{_COUNT_WORDS.get(count, 'a')} {self.size} {self.color} {noun} {_PLACES[self.position]}"


@dataclass(frozen=True)
class SceneSpec:
    """A scene: one or two object groups (``count`` copies of the first, one of the second) on a background.

    Attributes:
        objects: the groups, each in its own position.
        count: how many copies of the first group are drawn (1 to 3); the second group is always one object.
        background: the texture behind the objects, one of :data:`BACKGROUNDS`.
        seed: jitter of exact placement, rotation and background colours; it never changes the caption.
    """

    objects: tuple[ObjectSpec, ...]
    count: int
    background: str
    seed: int

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= 2:
            raise InputError(f"a scene has 1 or 2 object groups, got {len(self.objects)}", hint="drop the extras")
        if len({obj.position for obj in self.objects}) != len(self.objects):
            raise InputError("two object groups share a position", hint="give each group its own position")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or not 1 <= self.count <= 3:
            raise InputError(f"count must be an integer from 1 to 3, got {self.count!r}", hint="use 1, 2 or 3")
        _check_choice("background", self.background, BACKGROUNDS)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {self.seed!r}", hint="use e.g. seed=0")

    def caption(self) -> str:
        """Deterministic English description of the scene, the text side of the CLIP pair."""
        groups = [self.objects[0].phrase(self.count), *(obj.phrase() for obj in self.objects[1:])]
        return f"{' and '.join(groups)} on a {_TEXTURES[self.background]} background"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that :meth:`from_dict` turns back into an equal spec."""
        return {
            "objects": [
                {"shape": o.shape, "color": o.color, "size": o.size, "position": o.position} for o in self.objects
            ],
            "count": self.count,
            "background": self.background,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneSpec:
        """Rebuild a spec from :meth:`to_dict` output, e.g. a line of a ``captions.jsonl`` file."""
        try:
            objects = tuple(ObjectSpec(**obj) for obj in data["objects"])
            return cls(objects=objects, count=data["count"], background=data["background"], seed=data["seed"])
        except (KeyError, TypeError) as exc:
            raise InputError(f"not a scene spec: {exc}", hint="pass a dict made by SceneSpec.to_dict()") from exc


def is_held_out(spec: SceneSpec) -> bool:
    """Whether the scene's first object is a held-out (shape, colour) pair, i.e. the scene belongs to the test split."""
    first = spec.objects[0]
    return (first.shape, first.color) in HELD_OUT


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or not all(isinstance(side, int) for side in size):
        raise InputError(f"image size must be a (width, height) pair of integers, got {size!r}", hint="e.g. (256, 256)")
    width, height = size
    if min(width, height) < MIN_SIDE or max(width, height) > MAX_SIDE:
        raise InputError(
            f"image size {width}x{height} is out of range",
            hint=f"use a width and height from {MIN_SIDE} to {MAX_SIDE} pixels, e.g. (256, 256)",
        )
    return int(width), int(height)


def _check_count(n: int, seed: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InputError(f"the number of scenes must be a non-negative integer, got {n!r}", hint="use e.g. n=100")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}", hint="use e.g. seed=0")


def _check_split(split: str) -> Split:
    if split not in get_args(Split):
        raise InputError(f"unknown split {split!r}", hint="use 'train', 'test' or 'all'")
    return cast(Split, split)


def _muted_color(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation mid-tone colour: distinct from every entry of :data:`COLORS`, white and black included."""
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.08, 0.28), rng.uniform(0.42, 0.72)
    rgb = np.clip(np.abs((hue * 6 + np.array([0.0, 4.0, 2.0])) % 6 - 3) - 1, 0, 1)  # pure hue on the colour wheel
    return (val * (1 - sat + sat * rgb) * 255).astype(np.float64)


def _background(kind: str, width: int, height: int, unit: float, rng: np.random.Generator) -> np.ndarray:
    """The texture as a float (H, W, 3) array in 0..255; lengths scale with ``unit`` so it looks alike at any size."""
    base = _muted_color(rng)
    other = np.clip(base * rng.choice([0.72, 1.3]) + rng.uniform(-15, 15, 3), 70, 200)  # mid-tones only
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) / unit
    angle = rng.uniform(0, math.pi)
    along = xs * math.cos(angle) + ys * math.sin(angle)
    if kind == "plain":
        mix = np.zeros_like(xs)
    elif kind == "stripes":
        period = rng.uniform(0.08, 0.16)
        mix = (np.sin(2 * math.pi * along / period) > 0).astype(np.float64)
    elif kind == "checker":
        cell = rng.uniform(0.07, 0.14)
        mix = ((np.floor(xs / cell) + np.floor(ys / cell)) % 2).astype(np.float64)
    elif kind == "noise":
        blobs = Image.fromarray(rng.uniform(0, 255, (6, 6)).astype(np.uint8))
        coarse = blobs.resize((width, height), Image.Resampling.BICUBIC)
        mix = np.asarray(coarse, dtype=np.float64) / 255 + rng.normal(0, 0.12, xs.shape)
    else:  # gradient
        mix = (along - along.min()) / max(float(np.ptp(along)), 1e-9)
    mix = np.clip(mix, 0, 1)[..., None]
    return base * (1 - mix) + other * mix


def _outline(shape: str, radius: float, angle: float) -> list[tuple[float, float]]:
    """Polygon vertices of a shape centred on the origin, rotated by ``angle`` radians."""
    if shape == "square":
        half = radius * 0.82
        points = [(-half, -half), (half, -half), (half, half), (-half, half)]
    elif shape == "triangle":
        points = [(radius * math.sin(k * 2 * math.pi / 3), -radius * math.cos(k * 2 * math.pi / 3)) for k in range(3)]
        points = [(x, y + radius * 0.18) for x, y in points]  # centre the triangle's bounding box on its position
    elif shape == "star":
        points = [
            (r * math.sin(k * math.pi / 5), -r * math.cos(k * math.pi / 5))
            for k, r in enumerate([radius, radius * 0.45] * 5)
        ]
    else:  # cross: a plus sign with arms of half-width w
        w = radius * 0.32
        quarter = [(w, -radius), (w, -w), (radius, -w)]
        points = []
        for k in range(4):
            c, s = math.cos(k * math.pi / 2), math.sin(k * math.pi / 2)
            points += [(x * c - y * s, x * s + y * c) for x, y in quarter]
    c, s = math.cos(angle), math.sin(angle)
    return [(x * c - y * s, x * s + y * c) for x, y in points]


def _place_group(
    obj: ObjectSpec,
    copies: int,
    placed: list[tuple[float, float, float]],
    width: int,
    height: int,
    rng: np.random.Generator,
) -> list[tuple[float, float, float]]:
    """Centres and radius ``(cx, cy, r)`` of a group's copies, clear of each other and of the groups ``placed``."""
    unit = min(width, height)
    copy_gap, group_gap, margin = 0.03 * unit, 0.08 * unit, 0.02 * unit  # groups keep further apart than copies
    x0, x1, y0, y1 = _REGIONS[obj.position]
    for attempt in range(200):
        # Shrink the group only when ten fresh layouts in a row did not fit its region.
        radius = _RADIUS[obj.size] * _COPY_SCALE[copies] * 0.93 ** (attempt // 10) * unit
        lo_x, hi_x = max(x0 * width, radius + margin), min(x1 * width, width - radius - margin)
        lo_y, hi_y = max(y0 * height, radius + margin), min(y1 * height, height - radius - margin)
        group: list[tuple[float, float, float]] = []
        for _ in range(30 * copies):
            cx = float(rng.uniform(lo_x, max(lo_x, hi_x)))
            cy = float(rng.uniform(lo_y, max(lo_y, hi_y)))
            clear_of_groups = all(math.hypot(cx - px, cy - py) >= radius + pr + group_gap for px, py, pr in placed)
            clear_of_copies = all(math.hypot(cx - px, cy - py) >= radius + pr + copy_gap for px, py, pr in group)
            if clear_of_groups and clear_of_copies:
                group.append((cx, cy, radius))
                if len(group) == copies:
                    return group
    raise RuntimeError(f"cannot place {obj} in a {width}x{height} image; this is a bug in the layout")


def _place(
    spec: SceneSpec, width: int, height: int, rng: np.random.Generator
) -> Iterator[tuple[ObjectSpec, float, float, float]]:
    """Yield ``(object, cx, cy, radius)`` for every copy, in pixels, so that no two copies overlap."""
    placed: list[tuple[float, float, float]] = []
    for index, obj in enumerate(spec.objects):
        group = _place_group(obj, spec.count if index == 0 else 1, placed, width, height, rng)
        placed += group
        yield from ((obj, cx, cy, r) for cx, cy, r in group)


def render(spec: SceneSpec, size: tuple[int, int] = (256, 256)) -> np.ndarray:
    """Draw a scene.

    Args:
        spec: what to draw; its seed fixes every random choice, so the result is deterministic.
        size: ``(width, height)`` in pixels, each from 32 to 4096. Layout is in fractions of the image, so one
            spec looks the same at any size.

    Returns:
        The (height, width, 3) uint8 RGB image, drawn at twice the size and downsampled for clean edges.
    """
    width, height = _check_size(size)
    big_w, big_h = width * _SUPERSAMPLE, height * _SUPERSAMPLE
    rng = np.random.default_rng([spec.seed, 0])
    texture = _background(spec.background, big_w, big_h, min(big_w, big_h), rng)
    canvas = Image.fromarray(np.clip(np.rint(texture), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for obj, cx, cy, radius in _place(spec, big_w, big_h, rng):
        fill = COLORS[obj.color]
        tilt = float(rng.uniform(-0.25, 0.25))
        if obj.shape == "circle":
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
        elif obj.shape == "ring":
            draw.ellipse(
                (cx - radius, cy - radius, cx + radius, cy + radius), outline=fill, width=max(2, round(radius * 0.36))
            )
        else:
            draw.polygon([(cx + x, cy + y) for x, y in _outline(obj.shape, radius, tilt)], fill=fill)
    return np.asarray(canvas.resize((width, height), Image.Resampling.LANCZOS))


def _random_object(
    rng: np.random.Generator,
    position: str,
    *,
    allow_held_out: bool,
    pair: tuple[str, str] | None = None,
    avoid: tuple[str, str] | None = None,
) -> ObjectSpec:
    while True:
        shape, color = pair or (str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))))
        if (allow_held_out or (shape, color) not in HELD_OUT) and (shape, color) != avoid:
            return ObjectSpec(shape, color, str(rng.choice(SIZES)), position)


def _random_scene(
    rng: np.random.Generator, split: Split, *, first: tuple[str, str] | None = None, background: str | None = None
) -> SceneSpec:
    """One random scene; train scenes hold no held-out pair anywhere, test scenes start with one."""
    if split == "test" and first is None:
        first = sorted(HELD_OUT)[int(rng.integers(len(HELD_OUT)))]
    positions = [str(p) for p in rng.permutation(POSITIONS)]
    allow = split != "train"
    objects = [_random_object(rng, positions[0], allow_held_out=allow, pair=first)]
    if rng.random() < 0.5:
        head = objects[0]
        objects.append(_random_object(rng, positions[1], allow_held_out=allow, avoid=(head.shape, head.color)))
    return SceneSpec(
        objects=tuple(objects),
        count=int(rng.integers(1, 4)),
        background=background or str(rng.choice(BACKGROUNDS)),
        seed=int(rng.integers(2**31)),
    )


def sample_specs(n: int, *, seed: int, split: Split = "all") -> list[SceneSpec]:
    """Draw ``n`` random scenes of one split; the same arguments always give the same list.

    ``"train"`` scenes never contain a :data:`HELD_OUT` pair (in any group), ``"test"`` scenes always start with
    one, and ``"all"`` draws from the whole world.
    """
    _check_count(n, seed)
    split = _check_split(split)
    rng = np.random.default_rng([seed, 1])
    return [_random_scene(rng, split) for _ in range(n)]


def write_dataset(
    out_dir: Path, n: int, *, seed: int, split: str = "all", size: tuple[int, int] = (256, 256), fmt: str = "png"
) -> Path:
    """Render ``n`` scenes into ``out_dir`` as ``00000.<fmt>``, ... and list them in ``captions.jsonl``.

    Each captions line is ``{"file": ..., "caption": ..., "spec": SceneSpec.to_dict()}``. Any old captions file
    is removed first and the new one is renamed into place only after every image is written, so an interrupted
    run never leaves a captions file that points at missing or mismatched images. Images of an earlier, larger
    run past index ``n - 1`` are left alone; only the captions file says what belongs to the dataset.

    Returns:
        The path of the captions file.
    """
    ext = fmt.lower()
    if ext not in _IMAGE_FORMATS:
        raise InputError(f"unknown image format {fmt!r}", hint=f"use one of: {', '.join(_IMAGE_FORMATS)}")
    specs = sample_specs(n, seed=seed, split=_check_split(split))
    _check_size(size)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} is a file, not a folder", hint="pass a folder path for the dataset")
    out_dir.mkdir(parents=True, exist_ok=True)
    captions = out_dir / "captions.jsonl"
    captions.unlink(missing_ok=True)
    lines = []
    for index, spec in enumerate(specs):
        name = f"{index:05d}.{ext}"
        tmp = out_dir / f".{name}.tmp"
        Image.fromarray(render(spec, size)).save(tmp, format=_IMAGE_FORMATS[ext])
        tmp.replace(out_dir / name)
        lines.append(json.dumps({"file": name, "caption": spec.caption(), "spec": spec.to_dict()}) + "\n")
    tmp = out_dir / ".captions.jsonl.tmp"
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(captions)
    return captions


def sample_images(n: int = 12, *, seed: int = 0, size: tuple[int, int] = (320, 240)) -> list[tuple[str, np.ndarray]]:
    """The demo's sample images as ``(caption, pixels)``: consecutive scenes differ in shape, colour and texture."""
    _check_count(n, seed)
    _check_size(size)
    rng = np.random.default_rng([seed, 2])
    shapes, colors, textures = (
        [str(v) for v in rng.permutation(choices)] for choices in (SHAPES, list(COLORS), BACKGROUNDS)
    )
    specs = [
        _random_scene(
            rng, "all", first=(shapes[i % len(shapes)], colors[i % len(colors)]), background=textures[i % len(textures)]
        )
        for i in range(n)
    ]
    return [(spec.caption(), render(spec, size)) for spec in specs]
