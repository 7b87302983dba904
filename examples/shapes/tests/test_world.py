"""The shapes world (its generator, yaml and dataset files) and the pixel classifiers on its ground truth."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from easyanimate.config import ConfigError
from easyanimate.video_io import read_video_frames
from examples.shapes.classify import read_clip, read_long_clip, temporal_windows
from examples.shapes.world import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    STYLE_SUFFIX,
    WORLDS,
    Combination,
    ShapesWorld,
    all_combinations,
    load_world,
    render_clip,
    sample_clip,
    validate_world,
    write_dataset,
)

WORLD = WORLDS["demo"]


# ------------------------------------------------------------------------------------------------
# The generator


def small_world(**changes) -> ShapesWorld:
    return dataclasses.replace(load_world(WORLD), clips_per_combination=1, style_clips_per_combination=1, **changes)


def test_same_seed_same_frames_and_other_seeds_differ():
    world = load_world(WORLD)
    combination = Combination("red", "circle", "left")
    first = render_clip(world, sample_clip(world, combination, seed=7, index=3))
    again = render_clip(world, sample_clip(world, combination, seed=7, index=3))
    other = render_clip(world, sample_clip(world, combination, seed=8, index=3))
    assert first.shape == (world.frames, world.size, world.size, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.slow  # writes the dataset twice
def test_written_dataset_is_deterministic_and_excludes_held_out(tmp_path):
    world = small_world()
    files = write_dataset(world, tmp_path / "a")
    write_dataset(world, tmp_path / "b")
    train = json.loads(files.train.read_text())
    style = json.loads(files.style.read_text())
    assert train == json.loads((tmp_path / "b" / "train.json").read_text())
    # The clips are written losslessly, so both writes decode to exactly the same frames (libx264 is
    # not bit-exact between writes, but a lossless stream decodes to its input whatever it chose); those
    # are the rendered frames up to 4:2:0 chroma subsampling (measured: 1.8 levels on average), far closer
    # than another clip of the same combination.
    clips = [(item, False) for item in train] + [(item, True) for item in style]
    for index, (item, is_style) in enumerate(clips):
        combination = Combination.parse(item["text"].removesuffix(STYLE_SUFFIX))
        rendered = render_clip(world, sample_clip(world, combination, world.seed, index, is_style)).astype(np.int16)
        decoded = [read_video_frames(tmp_path / side / item["file_path"]).astype(np.int16) for side in ("a", "b")]
        assert np.array_equal(decoded[0], decoded[1]), item["file_path"]
        assert np.abs(decoded[0] - rendered).mean() < 3, item["file_path"]
    held_out = {str(c) for c in world.held_out_combinations()}
    assert len(held_out) == 6
    seen_captions = {item["text"].removesuffix(" on a dark background") for item in train + style}
    assert not seen_captions & held_out
    assert len(seen_captions) == 48 - 6
    assert all(item["text"].endswith(" on a dark background") for item in style)
    assert all(item["type"] == "video" and item["file_path"].endswith(".mp4") for item in train + style)


def test_every_word_is_still_in_training_and_removing_one_is_refused():
    seen = load_world(WORLD).seen_combinations()
    assert {c.colour for c in seen} == set(COLOURS)
    assert {c.shape for c in seen} == set(SHAPES)
    assert {c.direction for c in seen} == set(DIRECTIONS)
    every_left = [f"{c} {s} left" for c in COLOURS for s in SHAPES]
    with pytest.raises(ConfigError, match="left"):
        validate_world(small_world(held_out=every_left))
    with pytest.raises(ConfigError, match="purple"):
        validate_world(small_world(held_out=["purple circle left"]))


def test_the_darker_front_half_shows_the_direction_in_every_single_frame():
    world = load_world(WORLD)
    assert world.front_shade < 1, "the shipped world draws the front half darker"
    plain = dataclasses.replace(world, front_shade=1.0)
    for index, combination in enumerate(all_combinations()):
        spec = sample_clip(world, combination, seed=2, index=index)
        clip = render_clip(world, spec)
        facing = [read_clip(frame[None], world.front_shade).facing for frame in clip]
        assert facing == [combination.direction] * world.frames, combination
        without = render_clip(plain, spec)
        assert read_clip(without, world.front_shade).facing is None  # one tone: nothing is darker
        assert read_clip(clip).facing is None  # not asked for
        # only pixels inside the shape change: the outline (and so the shape reading) is the same
        outline = (without != world.background).any(-1)
        assert np.array_equal((clip != world.background).any(-1), outline), combination
    with pytest.raises(ConfigError, match="front_shade"):
        validate_world(small_world(front_shade=0.0))


def test_shapes_stay_inside_the_clip():
    world = load_world(WORLD)
    for index, combination in enumerate(all_combinations()):
        clip = render_clip(world, sample_clip(world, combination, seed=1, index=index))
        border = np.concatenate([clip[:, 0], clip[:, -1], clip[:, :, 0], clip[:, :, -1]], axis=1)
        assert (border == world.background).all(), combination


def splits_over_opposite_edges(outline: np.ndarray, axis: int) -> bool:
    """Whether the shape of ``outline`` ``(F, H, W)`` covers both end rows (``axis`` 1) or both end
    columns (``axis`` 2) of some frame: split across the two edges of a wrapping clip."""
    return bool((outline.take(0, axis).any(-1) & outline.take(-1, axis).any(-1)).any())


def wrap_world(frames: int = 16) -> ShapesWorld:
    """The shipped world with clips that wrap around, ``frames`` long."""
    world = dataclasses.replace(load_world(WORLD), frames=frames, wrap=True)
    validate_world(world)
    return world


def test_without_wrap_the_clips_are_drawn_as_before():
    world = load_world(WORLD)
    assert world.wrap is False  # world.yaml has no wrap key: off by default
    unwrapped, wrapped = dataclasses.replace(world, wrap=False), dataclasses.replace(world, wrap=True)
    for index, combination in enumerate(all_combinations()[::7]):
        spec = sample_clip(world, combination, seed=4, index=index, style=index % 2 == 1)
        assert sample_clip(unwrapped, combination, seed=4, index=index, style=index % 2 == 1) == spec
        assert np.array_equal(render_clip(unwrapped, spec), render_clip(world, spec)), combination
        # wrapping draws in the same order: same size and speed, only the start differs
        other = sample_clip(wrapped, combination, seed=4, index=index, style=index % 2 == 1)
        assert (other.side, other.speed) == (spec.side, spec.speed) and other.start != spec.start


@pytest.mark.slow  # every combination, many starts
def test_a_wrapping_shape_crosses_the_edges_and_never_leaves():
    shaded = wrap_world(64)
    world = dataclasses.replace(shaded, front_shade=1.0)  # one tone: alpha from the colour alone
    for index, combination in enumerate(all_combinations()):
        spec = sample_clip(world, combination, seed=6, index=index)
        clip = render_clip(world, spec)
        background, colour = np.array(world.background, float), np.array(COLOURS[combination.colour], float)
        alpha = (clip - background) @ (colour - background) / ((colour - background) @ (colour - background))
        area = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}[combination.shape] * spec.side**2
        assert np.allclose(alpha.sum(axis=(1, 2)), area, rtol=0.03), combination  # whole at every frame
        # along the motion the shape is at some frame split over both opposite edges
        outline = (clip != world.background).any(-1)
        axis = 2 if DIRECTIONS[combination.direction][0] else 1
        assert splits_over_opposite_edges(outline, axis), combination
        # across the motion it stays inside
        assert not outline.take(0, 3 - axis).any() and not outline.take(-1, 3 - axis).any(), combination
        # the darker front half wraps with the outline: only pixels inside the shape change
        assert np.array_equal((render_clip(shaded, spec) != world.background).any(-1), outline), combination


def test_wrap_is_validated():
    with pytest.raises(ConfigError, match="wrap"):
        validate_world(small_world(wrap="yes"))
    with pytest.raises(ConfigError, match="wrap"):
        validate_world(small_world(wrap=True, shape_size=[40.0, 50.0]))
    with pytest.raises(ConfigError, match="needs"):  # without wrap, 64 frames of travel do not fit
        validate_world(small_world(frames=64))


def test_a_wrapping_world_loads_from_yaml(tmp_path):
    path = tmp_path / "world.yaml"
    path.write_text(WORLD.read_text().replace("frames: 16", "frames: 64") + "wrap: true\n")
    world = load_world(path)  # validated: 64 frames fit, since the shape never leaves
    assert world.wrap is True and world.frames == 64


# ------------------------------------------------------------------------------------------------
# The classifiers on ground truth


def test_classifiers_read_every_ground_truth_clip_correctly():
    world = load_world(WORLD)
    for index, combination in enumerate(all_combinations()):
        for style in (False, True):
            reading = read_clip(render_clip(world, sample_clip(world, combination, seed=5, index=index, style=style)),
                                world.front_shade)
            assert (reading.colour, reading.shape, reading.direction, reading.facing) == (
                combination.colour, combination.shape, combination.direction, combination.direction), (combination,
                                                                                                       reading)
            assert reading.dark_background == style


@pytest.mark.parametrize("frames", [16, pytest.param(64, marks=pytest.mark.slow)])
def test_classifiers_read_every_ground_truth_clip_of_a_wrapping_world(frames):
    world = wrap_world(frames)
    windows = temporal_windows(frames, 16, 4)
    clips = crossing = 0
    for index, combination in enumerate(all_combinations()):
        for style in (False, True) if frames == 16 or index % 8 == 0 else (False,):
            spec = sample_clip(world, combination, seed=5, index=index, style=style)
            clip = render_clip(world, spec)
            reading = read_clip(clip, world.front_shade, wrap=True)
            assert (reading.colour, reading.shape, reading.direction, reading.facing) == (
                combination.colour, combination.shape, combination.direction, combination.direction), (combination,
                                                                                                       reading)
            assert reading.dark_background == style
            dx, dy = DIRECTIONS[combination.direction]
            assert np.allclose(reading.velocity, (dx * spec.speed, dy * spec.speed), atol=0.02), (combination, reading)
            outline = (clip != np.array(world.style_background if style else world.background)).any(-1)
            axis = 2 if dx else 1
            clips += 1
            crossing += splits_over_opposite_edges(outline, axis)
            if index % 8 == 0:  # window by window, as long clips are read
                windowed = read_long_clip(clip, windows, world.front_shade, wrap=True)
                assert windowed.direction_kept(combination.direction) == windowed.shape_kept(combination.shape) == 1.0
    assert crossing > clips // 2, (crossing, clips)  # most clips split over two edges at some frame


def test_classifiers_read_decoded_mp4_clips(tmp_path):
    """H.264 halves the chroma resolution: the readings must survive it (as they must survive the VAE)."""
    world = small_world()
    files = write_dataset(world, tmp_path)
    items = json.loads(files.train.read_text())[::3] + json.loads(files.style.read_text())[::5]
    for item in items:
        reading = read_clip(read_video_frames(tmp_path / item["file_path"]), world.front_shade)
        expected = Combination.parse(item["text"].removesuffix(" on a dark background"))
        assert (reading.colour, reading.shape, reading.direction, reading.facing) == (
            expected.colour, expected.shape, expected.direction, expected.direction), (item, reading)
        assert reading.dark_background == item["text"].endswith("dark background")


def test_a_still_or_empty_clip_has_no_direction():
    world = load_world(WORLD)
    clip = render_clip(world, sample_clip(world, Combination("blue", "square", "up"), seed=0, index=0))
    assert read_clip(np.repeat(clip[:1], 16, axis=0)).direction == "static"
    assert read_clip(np.full_like(clip, 225)).colour is None


def test_start_behind_puts_every_start_behind_the_middle():
    """A wrapping shape with ``start_behind`` begins in the half of the clip its motion comes from, so the
    average position at each frame differs by direction; it still wraps, and needs wrap."""
    world = dataclasses.replace(wrap_world(), start_behind=True)
    validate_world(world)
    anywhere = wrap_world()
    for index, combination in enumerate(all_combinations()):
        dx, dy = DIRECTIONS[combination.direction]
        for seed in range(4):
            spec = sample_clip(world, combination, seed=seed, index=index)
            along = spec.start[0] if dx else spec.start[1]
            sign = dx + dy
            assert (along < world.size / 2) if sign > 0 else (along > world.size / 2), (combination, spec)
            free = sample_clip(anywhere, combination, seed=seed, index=index)
            assert (free.side, free.speed) == (spec.side, spec.speed)  # only the start is drawn differently
    alongs = [sample_clip(anywhere, c, seed=s, index=i).start[0 if DIRECTIONS[c.direction][0] else 1]
              for i, c in enumerate(all_combinations()) for s in range(4)]
    assert min(alongs) < world.size / 4 and max(alongs) > 3 * world.size / 4  # without it: anywhere
    with pytest.raises(ConfigError, match="start_behind needs wrap"):
        validate_world(small_world(start_behind=True))
