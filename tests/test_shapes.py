"""The shapes world, its pixel classifiers, the shipped demo model and the training recipe that made it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from easyanimate.config import ConfigError
from easyanimate.data.shapes import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    STYLE_SUFFIX,
    Combination,
    ShapesWorld,
    all_combinations,
    load_world,
    render_clip,
    sample_clip,
    validate_world,
    write_dataset,
)
from easyanimate.evaluation.shapes import read_clip
from easyanimate.video_io import read_video_frames

ROOT = Path(__file__).resolve().parents[1]
WORLD = ROOT / "config" / "shapes" / "world.yaml"
MODELS = ROOT / "models"


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


# ------------------------------------------------------------------------------------------------
# The classifiers on ground truth


def test_classifiers_read_every_ground_truth_clip_correctly():
    world = load_world(WORLD)
    for index, combination in enumerate(all_combinations()):
        for style in (False, True):
            reading = read_clip(render_clip(world, sample_clip(world, combination, seed=5, index=index, style=style)),
                                world.front_shade)
            assert (reading.colour, reading.shape, reading.direction, reading.facing) == (
                combination.colour, combination.shape, combination.direction, combination.direction), (combination, reading)
            assert reading.dark_background == style


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
