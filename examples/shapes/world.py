"""The "shapes" world: a deterministic generator of captioned clips of one coloured shape in motion.

Every clip shows one shape (circle, square or triangle) of one colour (red, green, blue or yellow)
moving in a straight line (left, right, up or down) at constant speed over a plain background, and is
captioned ``"a red circle moving left"``; "style" clips have a dark background and the caption suffix
``" on a dark background"``. Clips are ``(F, H, W, 3)`` uint8; image coordinates: x to the right,
y downwards, so "up" is decreasing y.

A clip is a pure function of ``(world, seed, index)``: the world (sizes, speeds, palette, held-out
combinations) comes from ``configs/world.yaml``, and the per-clip randomness (shape size, speed,
start position) from ``numpy.random.default_rng([seed, index])``. Held-out (colour, shape, direction)
combinations never appear in the training metadata; the evaluation renders them from text only.

The dataset is written as real H.264 mp4 files plus json metadata in the "normal" format
(``[{"file_path", "text", "type"}]``), so training reads it through exactly the path real data takes.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from easyanimate.config import ConfigError
from easyanimate.video_io import save_video

from . import CONFIGS

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
}
"""Fill colour (RGB) of each colour word."""

SHAPES = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
"""Unit step ``(dx, dy)`` in image coordinates (y grows downwards)."""

WORLDS = {"demo": CONFIGS / "world.yaml", "long": CONFIGS / "world_long.yaml"}
"""The world yaml of each shapes demo model: the default model's, and the long-clip model's (wrapping), which the
inpaint model shares."""

STYLE_SUFFIX = " on a dark background"
SUPERSAMPLING = 4  # coverage is computed on a 4x finer grid, so edges are anti-aliased


@dataclass(frozen=True)
class Combination:
    """One (colour, shape, direction) triple; ``str()`` is its caption without the style suffix."""

    colour: str
    shape: str
    direction: str

    def __str__(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction}"

    @classmethod
    def parse(cls, text: str) -> Combination:
        """``"red circle left"`` (or a caption ``"a red circle moving left"``) -> Combination."""
        words = [w for w in text.split() if w not in ("a", "moving")]
        if len(words) != 3 or words[0] not in COLOURS or words[1] not in SHAPES or words[2] not in DIRECTIONS:
            raise ConfigError(f"{text!r} is not '<colour> <shape> <direction>' with colour in {list(COLOURS)}, "
                              f"shape in {list(SHAPES)}, direction in {list(DIRECTIONS)}")
        return cls(*words)


@dataclass
class ShapesWorld:
    """Everything that defines the world (``configs/world.yaml``); sizes in pixels."""

    size: int = 64
    """clip height and width."""
    frames: int = 16
    """frames per clip."""
    fps: int = 8
    """frame rate written into the mp4 files."""
    shape_size: list[float] = field(default_factory=lambda: [28.0, 32.0])
    """range of the shape's bounding-box side."""
    speed: list[float] = field(default_factory=lambda: [1.0, 1.8])
    """range of the speed, pixels per frame."""
    margin: float = 1.0
    """smallest gap between the shape and the clip's edge, at every frame."""
    background: list[int] = field(default_factory=lambda: [225, 225, 225])
    """plain (light) background."""
    style_background: list[int] = field(default_factory=lambda: [30, 30, 40])
    """background of the style ("on a dark background") clips."""
    front_shade: float = 1.0
    """brightness of the shape's front half (the half facing its motion) relative to the rest: 1 draws one
    tone; below 1 a darker front, which shows in a single frame which way the shape moves (like a face or
    headlights), so an image model trained on frames learns the direction word (see :func:`front_mask`)."""
    wrap: bool = False
    """the clip wraps around along the motion: a shape leaving through one edge comes back in through the
    opposite one (split across both while it crosses), so the motion goes on for any number of frames;
    across the motion it stays inside. Off: the shape stays inside at every frame, which bounds the travel."""
    start_behind: bool = False
    """with ``wrap``: the shape starts behind the middle of the clip, as seen from its motion (its centre in
    the first half for right and down, the second for left and up), instead of anywhere. Then, as without
    wrap, where a clip's shape is on average at each frame differs by direction, which is what a motion
    module can learn from the caption at high noise; from anywhere that average is the same for all
    four directions."""
    held_out: list[str] = field(default_factory=list)
    """combinations never written into training data, as "<colour> <shape> <direction>"."""
    clips_per_combination: int = 8
    """training clips per seen combination."""
    style_clips_per_combination: int = 2
    """style clips per seen combination (LoRA data)."""
    seed: int = 0
    """seed of the whole dataset."""

    def held_out_combinations(self) -> list[Combination]:
        return [Combination.parse(text) for text in self.held_out]

    def seen_combinations(self) -> list[Combination]:
        held = set(self.held_out_combinations())
        return [c for c in all_combinations() if c not in held]


def load_world(path: str | Path) -> ShapesWorld:
    """Read and validate a world yaml (unknown keys and bad values are errors)."""
    try:
        world = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ShapesWorld), OmegaConf.load(path)))
    except (OmegaConfBaseException, OSError) as error:
        raise ConfigError(f"invalid shapes world {path}: {error}") from error
    validate_world(world)
    return world


def save_world(world: ShapesWorld, path: str | Path) -> None:
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.structured(world)))


def validate_world(world: ShapesWorld) -> None:
    """Refuse a world whose clips cannot be drawn, or whose held-out set removes a whole word."""
    held = world.held_out_combinations()
    if len(set(held)) != len(held):
        raise ConfigError(f"held_out lists a combination twice: {world.held_out}")
    if not 0 < world.front_shade <= 1:
        raise ConfigError(f"front_shade is a brightness factor in (0, 1], got {world.front_shade}")
    if not isinstance(world.wrap, bool):
        raise ConfigError(f"wrap is true or false, got {world.wrap!r}")
    if not isinstance(world.start_behind, bool):
        raise ConfigError(f"start_behind is true or false, got {world.start_behind!r}")
    if world.start_behind and not world.wrap:
        raise ConfigError("start_behind needs wrap: true (without wrap the start is always as far back as "
                          "the travel needs)")
    travel = 0.0 if world.wrap else world.speed[1] * (world.frames - 1)  # a wrapping shape never leaves
    longest = world.shape_size[1] + travel + 2 * world.margin
    if longest > world.size:
        raise ConfigError(f"a {world.shape_size[1]} px shape at {world.speed[1]} px/frame over {world.frames} "
                          f"frames needs {longest:.1f} px; the clip is {world.size} px")
    if world.wrap and world.shape_size[1] > 0.75 * world.size:
        # the triangle reaches 2/3 of its side from its centroid, around which its front half (and the
        # evaluation's reading) wraps: that must stay within half the clip
        raise ConfigError(f"with wrap, shapes are at most 3/4 of the clip ({0.75 * world.size:g} px), "
                          f"got {world.shape_size[1]}")
    seen = world.seen_combinations()
    for words, position in ((COLOURS, 0), (SHAPES, 1), (DIRECTIONS, 2)):
        missing = set(words) - {(c.colour, c.shape, c.direction)[position] for c in seen}
        if missing:
            raise ConfigError(f"held_out removes every training clip of {sorted(missing)}")


def all_combinations() -> list[Combination]:
    """All 48 (colour, shape, direction) combinations, in a fixed order."""
    return [Combination(*c) for c in itertools.product(COLOURS, SHAPES, DIRECTIONS)]


def caption(combination: Combination, style: bool = False) -> str:
    return str(combination) + (STYLE_SUFFIX if style else "")


# ------------------------------------------------------------------------------------------------
# Drawing


@dataclass(frozen=True)
class ClipSpec:
    """The drawn parameters of one clip: side of the bounding box, speed, centre at frame 0."""

    combination: Combination
    side: float
    speed: float
    start: tuple[float, float]
    style: bool = False


def sample_clip(world: ShapesWorld, combination: Combination, seed: int, index: int, style: bool = False) -> ClipSpec:
    """Draw size, speed and start so that the shape stays fully inside the clip at every frame (with
    ``world.wrap``: across the motion; along it the start is anywhere in the clip, or behind its middle
    with ``world.start_behind``)."""
    rng = np.random.default_rng([seed, index])
    side = float(rng.uniform(*world.shape_size))
    speed = float(rng.uniform(*world.speed))
    travel = speed * (world.frames - 1)
    low, high = world.margin + side / 2, world.size - world.margin - side / 2
    dx, dy = DIRECTIONS[combination.direction]
    if world.wrap:  # start, along the motion
        along = rng.uniform(0, world.size / 2 if world.start_behind else world.size)
    else:
        along = rng.uniform(low, high - travel)
    across = rng.uniform(low, high)
    from_far_side = dx + dy < 0 and (world.start_behind or not world.wrap)
    start = world.size - along if from_far_side else along  # moving left/up starts from the far side
    x, y = (start, across) if dx else (across, start)
    return ClipSpec(combination, side, speed, (float(x), float(y)), style)


def _fine_offsets(size: int, origin: tuple[float, float],
                  wrap_axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``x`` ``(1, fine)`` and ``y`` ``(fine, 1)`` offsets from ``origin`` of the centres of the
    ``SUPERSAMPLING``-times finer grid over a ``size`` x ``size`` frame. Along ``wrap_axis`` (0: x, 1: y)
    the frame is a loop: offsets are taken modulo ``size`` into [-size/2, size/2), the nearest way round."""
    coords = (np.arange(size * SUPERSAMPLING) + 0.5) / SUPERSAMPLING
    x, y = coords[None, :] - origin[0], coords[:, None] - origin[1]
    if wrap_axis == 0:
        x = (x + size / 2) % size - size / 2
    elif wrap_axis == 1:
        y = (y + size / 2) % size - size / 2
    return x, y


def _coverage(inside: np.ndarray, size: int) -> np.ndarray:
    """Fraction ``(size, size)`` of each pixel's fine samples where ``inside`` (fine grid) holds."""
    return inside.reshape(size, SUPERSAMPLING, size, SUPERSAMPLING).mean(axis=(1, 3))


def shape_mask(shape: str, size: int, centre: tuple[float, float], side: float,
               wrap_axis: int | None = None) -> np.ndarray:
    """Coverage ``(size, size)`` in [0, 1] of a shape whose bounding box is ``side`` wide, centred at ``centre``
    (wrapping around the frame along ``wrap_axis``, see :func:`_fine_offsets`).

    The triangle points up (apex at the top of the box, base at the bottom), filling half its box.
    """
    x, y = _fine_offsets(size, centre, wrap_axis)
    half = side / 2
    if shape == "circle":
        inside = x**2 + y**2 <= half**2
    elif shape == "square":
        inside = (np.abs(x) <= half) & (np.abs(y) <= half)
    elif shape == "triangle":
        inside = (y <= half) & (np.abs(x) <= (y + half) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")
    return _coverage(inside, size)


def front_mask(shape: str, size: int, centre: tuple[float, float], side: float, direction: str,
               wrap_axis: int | None = None) -> np.ndarray:
    """Coverage ``(size, size)`` of the shape's front half: the part beyond its centroid in ``direction``.

    The centroid is the box centre for the circle and the square, and a third of the half-side below it
    for the (upward-pointing) triangle. Anti-aliased along the dividing line like the outline; wraps
    along ``wrap_axis`` with it (around the centroid, so the front stays on the front side).
    """
    dx, dy = DIRECTIONS[direction]
    x, y = _fine_offsets(size, (centre[0], centre[1] + (side / 6 if shape == "triangle" else 0.0)), wrap_axis)
    return _coverage(x * dx + y * dy > 0, size) * shape_mask(shape, size, centre, side, wrap_axis)


def render_clip(world: ShapesWorld, spec: ClipSpec) -> np.ndarray:
    """The clip of ``spec`` as ``(F, H, W, 3)`` uint8 (the front half darker when ``world.front_shade < 1``;
    wrapping around along the motion with ``world.wrap``, where the centre may run past the clip)."""
    background = np.array(world.style_background if spec.style else world.background, dtype=np.float64)
    colour = np.array(COLOURS[spec.combination.colour], dtype=np.float64)
    shape, direction = spec.combination.shape, spec.combination.direction
    dx, dy = DIRECTIONS[direction]
    wrap_axis = (0 if dx else 1) if world.wrap else None  # only the motion's axis wraps
    frames = np.empty((world.frames, world.size, world.size, 3), np.uint8)
    for f in range(world.frames):
        centre = (spec.start[0] + dx * spec.speed * f, spec.start[1] + dy * spec.speed * f)
        alpha = shape_mask(shape, world.size, centre, spec.side, wrap_axis)[..., None]
        frame = background * (1 - alpha) + colour * alpha
        if world.front_shade < 1:
            front = front_mask(shape, world.size, centre, spec.side, direction, wrap_axis)[..., None]
            frame -= (1 - world.front_shade) * colour * front
        frames[f] = np.round(frame).astype(np.uint8)
    return frames


# ------------------------------------------------------------------------------------------------
# Writing the dataset


@dataclass
class DatasetFiles:
    """What :func:`write_dataset` wrote: the metadata files and the number of clips in each."""

    train: Path
    style: Path
    counts: dict[str, int]


def write_dataset(world: ShapesWorld, root: str | Path) -> DatasetFiles:
    """Write the training clips and metadata under ``root``.

    * ``train.json``: ``clips_per_combination`` light-background clips of every seen combination;
    * ``style.json``: ``style_clips_per_combination`` dark-background clips of every seen combination,
      captioned with the style suffix (the LoRA data);
    * ``videos/*.mp4``; ``world.yaml``: the world the files were drawn from.

    Clip ``index`` (its position over both lists) fixes its randomness. The mp4s are lossless H.264
    (``crf`` 0, yuv420p): libx264 at its usual ``crf`` 18 decides differently from one write of the same
    frames to the next (measured: 9 of 40 clips, up to 28 levels apart), which made two runs of the recipe
    train on different pixels. Losslessly, every write decodes to the same frames (the rendered ones after
    4:2:0 chroma subsampling), whatever bytes the encoder chose; that costs about 6 KB per clip instead of 3.
    """
    validate_world(world)
    root = Path(root)
    lists = {"train": (world.clips_per_combination, False), "style": (world.style_clips_per_combination, True)}
    index = 0
    written = {}
    for name, (per_combination, style) in lists.items():
        items = []
        for combination in world.seen_combinations():
            for _ in range(per_combination):
                spec = sample_clip(world, combination, world.seed, index, style)
                file_path = f"videos/{index:05d}_{combination.colour}_{combination.shape}_{combination.direction}.mp4"
                save_video(render_clip(world, spec), root / file_path, fps=world.fps, crf=0)
                items.append({"file_path": file_path, "text": caption(combination, style), "type": "video"})
                index += 1
        (root / f"{name}.json").write_text(json.dumps(items, indent=1))
        written[name] = len(items)
    save_world(world, root / "world.yaml")
    return DatasetFiles(root / "train.json", root / "style.json", written)
