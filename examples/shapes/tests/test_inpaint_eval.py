"""The inpaint evaluation's readings on ground truth (hue, where the shape is, the chunks of an extended clip) and
its modes run end to end on a tiny inpaint model."""

from __future__ import annotations

import numpy as np
import pytest

from easyanimate.generation import load_pipeline, select_model
from easyanimate.tiny import write_tiny_model
from examples.shapes.classify import (
    PALETTE_HUES,
    as_frames,
    background_colour,
    centroid_distance,
    extension_chunks,
    hue_difference,
    psnr,
    read_clip,
    shape_centroid,
)
from examples.shapes.evaluate import (
    EXTENSION_COLUMNS,
    FIRST_LAST_COLUMNS,
    I2V_COLUMNS,
    format_table,
    generate_from_frames,
    given_clip,
    inpaint_scores,
    long_clip_scores,
)
from examples.shapes.world import WORLDS, Combination, all_combinations, load_world, render_clip, sample_clip


def test_the_hue_of_every_ground_truth_clip_is_its_colour():
    world = load_world(WORLDS["demo"])
    for index, combination in enumerate(all_combinations()):
        reading = read_clip(render_clip(world, sample_clip(world, combination, 0, index)), world.front_shade)
        assert reading.hue_error(combination.colour) < 1.0, (combination, reading.hue)
    assert hue_difference(350, 10) == 20 and hue_difference(10, 350) == 20 and hue_difference(0, 180) == 180
    assert PALETTE_HUES["red"] == 0 and 45 < PALETTE_HUES["yellow"] < 55


@pytest.mark.parametrize("world_name", ["demo", "long"])
def test_the_centroid_of_a_drawn_shape_is_where_the_world_put_it(world_name):
    world = load_world(WORLDS[world_name])
    for index, combination in enumerate(all_combinations()[::5]):
        spec = sample_clip(world, combination, 1, index)
        frames = render_clip(world, spec) / 255
        dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[combination.direction]
        for f in (0, world.frames - 1):
            where = shape_centroid(frames[f], background_colour(frames, world.wrap), combination.colour,
                                   world.front_shade, world.wrap)
            x, y = spec.start[0] + dx * spec.speed * f, spec.start[1] + dy * spec.speed * f
            if combination.shape == "triangle":
                y += spec.side / 6  # a triangle's centroid is a third of the half-side below its box centre
            assert centroid_distance(where, (x % world.size, y % world.size), world.size, world.wrap) < 1.5, (
                combination, f, where, (x, y))


def test_distances_go_the_short_way_round_in_a_wrapping_world():
    assert centroid_distance((1.0, 10.0), (63.0, 10.0), 64, wrap=True) == pytest.approx(2.0)
    assert centroid_distance((1.0, 10.0), (63.0, 10.0), 64, wrap=False) == pytest.approx(62.0)


def test_extension_chunks_and_their_seams_are_the_pipelines():
    assert extension_chunks(64, 16, 4) == ([(0, 16), (12, 28), (24, 40), (36, 52), (48, 64)], [16, 28, 40, 52])
    assert extension_chunks(40, 16, 4) == ([(0, 16), (12, 28), (24, 40)], [16, 28])
    assert extension_chunks(10, 4, 1) == ([(0, 4), (3, 7), (6, 10)], [4, 7])
    assert extension_chunks(16, 16, 4) == ([(0, 16)], [])


def test_psnr():
    image = np.random.default_rng(0).random((8, 8, 3))
    assert psnr(image, image) == float("inf") and psnr(image, image + 0.1) == pytest.approx(20.0)


def test_the_frames_given_come_from_seeds_no_training_clip_used():
    world = load_world(WORLDS["long"])
    combination = Combination("red", "circle", "left")
    index = all_combinations().index(combination)
    given = given_clip(world, combination, 0)
    assert given.shape == (16, 64, 64, 3)
    assert not np.array_equal(given, render_clip(world, sample_clip(world, combination, world.seed, index)))
    reading = read_clip(given, world.front_shade, world.wrap)
    assert (reading.colour, reading.direction, reading.facing) == ("red", "left", "left")


@pytest.fixture(scope="module")
def tiny_inpaint(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    paths = write_tiny_model(root, name="tiny-inpaint", inpaint=True)
    pipeline = load_pipeline(select_model(root, paths["model"]), device="cpu")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.mark.parametrize("mode", ["i2v", "first_last", "extension", "windows"])
def test_every_inpaint_mode_runs_and_scores_on_a_tiny_model(tiny_inpaint, mode):
    world = load_world(WORLDS["long"])
    combinations = all_combinations()[:2]
    seen = []
    results = generate_from_frames(tiny_inpaint, combinations, [0], {combinations[1]}, world, mode, steps=2,
                                   long_frames=10, context_frames=4, context_overlap=1,
                                   on_clip=lambda result, video: seen.append(video.shape))
    assert len(results) == 2 and [r.held_out for r in results] == [False, True]
    assert seen == [(3, 10 if mode in ("extension", "windows") else 16, 64, 64)] * 2
    if mode in ("extension", "windows"):
        scores = long_clip_scores(results)
        assert len(results[0].windows.readings) == 3 and scores["s per clip"] > 0
        assert "later direction" in format_table({f"{mode}/seen": scores}, EXTENSION_COLUMNS)
    else:
        scores = inpaint_scores(results)
        assert np.isfinite(scores["frame 0 dB"]) and np.isfinite(scores["VAE dB"])  # (the tiny VAE is random)
        assert ("end px" in scores) == (mode == "first_last")
        format_table({f"{mode}/seen": scores}, FIRST_LAST_COLUMNS if mode == "first_last" else I2V_COLUMNS)
    assert as_frames(np.zeros((2, 4, 4, 3), np.uint8)).shape == (2, 4, 4, 3)
