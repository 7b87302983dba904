"""Reading long clips window by window (examples.shapes.classify.read_long_clip) and the long eval mode."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from easyanimate.models.motion_module import TemporalContext
from examples.shapes.classify import read_long_clip, seam_transitions, temporal_windows
from examples.shapes.evaluate import LONG_COLUMNS, format_table, generate_and_read, long_clip_scores, parse_args
from examples.shapes.world import (
    WORLDS,
    Combination,
    all_combinations,
    load_world,
    render_clip,
    sample_clip,
    validate_world,
)

FRAMES, CONTEXT, OVERLAP = 64, 16, 4
WINDOWS = temporal_windows(FRAMES, CONTEXT, OVERLAP)


def long_world():
    """The shipped world, 64 frames long: smaller and slower shapes so they stay in frame throughout."""
    world = dataclasses.replace(load_world(WORLDS["demo"]), frames=FRAMES,
                                shape_size=[18.0, 22.0], speed=[0.5, 0.6])
    validate_world(world)
    return world


def long_clip(combination: Combination, index: int = 0, style: bool = False) -> np.ndarray:
    world = long_world()
    return render_clip(world, sample_clip(world, combination, seed=3, index=index, style=style))


def test_windows_are_the_pipelines():
    starts = TemporalContext(CONTEXT, OVERLAP).window_starts(FRAMES)
    assert WINDOWS == [(start, start + CONTEXT) for start in starts] == [(0, 16), (12, 28), (24, 40), (36, 52),
                                                                         (48, 64)]
    assert seam_transitions(WINDOWS, FRAMES) == [12, 16, 24, 28, 36, 40, 48, 52]
    assert temporal_windows(16, CONTEXT, OVERLAP) == [(0, 16)] and seam_transitions([(0, 16)], 16) == []


@pytest.mark.slow  # 64-frame clips of every combination
def test_every_window_of_a_ground_truth_clip_is_read_correctly_and_seamless():
    ratios = []
    for index, combination in enumerate(all_combinations()):
        for style in (False, True) if index % 4 == 0 else (False,):
            reading = read_long_clip(long_clip(combination, index, style), WINDOWS, long_world().front_shade)
            assert reading.windows == WINDOWS and len(reading.readings) == len(WINDOWS)
            for window in reading.readings:
                assert (window.colour, window.shape, window.direction, window.facing, window.dark_background) == (
                    combination.colour, combination.shape, combination.direction, combination.direction, style), (
                    combination, window)
            assert reading.colour_kept(combination.colour) == reading.shape_kept(combination.shape) == 1.0
            assert reading.direction_kept(combination.direction) == 1.0
            assert reading.colour_kept("purple") == 0.0
            assert 0.67 < reading.seam_ratio < 1.5, (combination, reading)
            ratios.append(reading.seam_ratio)
    assert 0.8 < np.median(ratios) < 1.25


@pytest.mark.parametrize("seam", [24, 28])  # a window's first frame; the frame after a window's last
def test_a_jump_at_a_seam_raises_the_seam_ratio(seam):
    clip = long_clip(Combination("blue", "square", "right"))
    steady = read_long_clip(clip, WINDOWS).seam_ratio
    jumped = clip.copy()
    jumped[seam:] = np.roll(clip[seam:], 4, axis=1)  # 4 px down (across the motion) from the seam on
    assert steady < 1.5 < read_long_clip(jumped, WINDOWS).seam_ratio
    # the same jump inside a window counts as inside: the ratio falls instead
    inside = clip.copy()
    inside[seam + 3:] = np.roll(clip[seam + 3:], 4, axis=1)
    assert read_long_clip(inside, WINDOWS).seam_ratio < steady


def test_float_pipeline_output_reads_like_uint8_and_one_window_has_no_seam_ratio():
    clip = long_clip(Combination("green", "triangle", "up"))
    video = torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 255  # (3, F, H, W), the pipeline's layout
    as_float, as_uint8 = read_long_clip(video, WINDOWS), read_long_clip(clip, WINDOWS)  # equal up to float32 rounding
    def words(reading):
        return [(r.colour, r.shape, r.direction) for r in reading.readings]
    assert words(as_float) == words(as_uint8) == [("green", "triangle", "up")] * len(WINDOWS)
    assert as_float.seam_ratio == pytest.approx(as_uint8.seam_ratio, rel=1e-5)
    assert math.isnan(read_long_clip(clip[:16], [(0, 16)]).seam_ratio)
    with pytest.raises(ValueError, match="do not fit"):
        read_long_clip(clip[:40], WINDOWS)


class RenderingPipeline:
    """Stands in for EasyAnimatePipeline: returns the ground-truth clip of each prompt, records the call."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, **kwargs):
        self.calls.append(kwargs)
        assert kwargs["video_length"] == FRAMES
        videos = [torch.from_numpy(long_clip(Combination.parse(p))).permute(3, 0, 1, 2).float() / 255 for p in prompts]
        return SimpleNamespace(videos=torch.stack(videos))


def test_generate_and_read_passes_the_windows_to_the_pipeline_and_scores_long_clips():
    pipeline, combinations = RenderingPipeline(), all_combinations()[:6]
    held_out = {combinations[0]}
    results = generate_and_read(pipeline, combinations, [0], held_out, frames=FRAMES, batch_size=4,
                                context_frames=CONTEXT, context_overlap=OVERLAP)
    assert [(c["context_frames"], c["context_overlap"]) for c in pipeline.calls] == [(CONTEXT, OVERLAP)] * 2
    assert all(r.windows.windows == WINDOWS for r in results)
    scores = long_clip_scores([r for r in results if not r.held_out])
    assert scores["clips"] == 5
    assert scores["colour kept"] == scores["shape kept"] == scores["direction"] == 1.0
    assert 0.67 < scores["seam median"] <= scores["seam max"] < 1.5
    plain = generate_and_read(RenderingPipeline(), combinations[:1], [0], held_out, frames=FRAMES)
    assert plain[0].windows is None and plain[0].reading.direction == combinations[0].direction


def test_eval_script_long_mode_flags():
    args = parse_args(["--modes", "long"])
    assert args.modes == ["long"] and (args.long_frames, args.context_frames, args.context_overlap) == (64, 16, 4)
    args = parse_args(["--modes", "video", "long", "--long-frames", "40", "--context-frames", "8",
                       "--context-overlap", "2"])
    assert (args.long_frames, args.context_frames, args.context_overlap) == (40, 8, 2)
    assert "long" not in parse_args([]).modes
    with pytest.raises(SystemExit):
        parse_args(["--modes", "long", "--context-frames", "8", "--context-overlap", "8"])
    table = format_table({"long/seen": {"colour kept": 1.0, "shape kept": 0.5, "direction": 0.75,
                                        "seam median": 1.04, "seam max": 2.5, "clips": 42}}, LONG_COLUMNS)
    assert table.splitlines()[-1] == "| long | seen | 100% | 50% | 75% | 1.04 | 2.50 | 42 |"
