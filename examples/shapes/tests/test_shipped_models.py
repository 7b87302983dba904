"""The shipped shapes demo models: the demo model is the default when the released weights are absent, and
on a small sample of its evaluation (examples.shapes.evaluate) it meets its model card's targets; the
long-clip model keeps colour and direction across the windows of 64-frame clips."""

from __future__ import annotations

import numpy as np
import pytest

from easyanimate.generation import apply_lora, load_pipeline, select_model
from examples.shapes.build import RELEASES
from examples.shapes.evaluate import accuracy, generate_and_read, long_clip_scores
from examples.shapes.world import Combination, load_world

from .helpers import load_shapes_model

DEMO, LONG = RELEASES["demo"], RELEASES["long"]


def every_nth(combinations: list[Combination], n: int, offset: int = 0) -> list[Combination]:
    return combinations[offset::n]


@pytest.fixture(scope="module")
def demo(shipped_models):
    selection = select_model(shipped_models)
    assert selection.model == shipped_models / DEMO.model, "without the released weights the demo model is the default"
    return (selection, *load_shapes_model(selection))


def test_shipped_files_are_small_and_in_the_released_layout(shipped_models):
    folder = shipped_models / DEMO.model
    files = [p for p in folder.rglob("*") if p.is_file()]
    files += [shipped_models / DEMO.motion_module, shipped_models / DEMO.lora]
    assert all(p.is_file() for p in files)
    assert sum(p.stat().st_size for p in files) <= 20 * 2**20
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / part).is_dir()


@pytest.fixture(scope="module")
def video_scores(demo):
    _, pipeline, seen, held_out, settings = demo
    return accuracy(generate_and_read(pipeline, every_nth(seen, 2), [0], held_out, **settings))


@pytest.mark.slow
def test_video_mode_meets_the_colour_and_shape_targets_on_seen_combinations(video_scores):
    assert video_scores["colour"] >= 0.95, video_scores
    assert video_scores["shape"] >= 0.80, video_scores


@pytest.mark.slow
def test_video_mode_draws_the_prompted_hue_on_seen_combinations(video_scores):
    """The shape's mean hue within 15 degrees of the prompted colour's (target >= 95% of clips): the nearest
    palette colour alone would pass a red drawn orange."""
    assert video_scores["hue"] >= 0.95, video_scores


@pytest.mark.slow
def test_video_mode_meets_the_direction_target_on_seen_combinations(video_scores):
    assert video_scores["direction"] >= 0.90, video_scores


@pytest.mark.slow
def test_without_the_motion_module_direction_is_about_chance(demo, shipped_models):
    selection, _, seen, held_out, settings = demo
    plain = select_model(shipped_models, use_motion_module=False)
    pipeline = load_pipeline(plain, selection.defaults.sampler, device="cpu")
    pipeline.set_progress_bar_config(disable=True)
    scores = accuracy(generate_and_read(pipeline, every_nth(seen, 2), [0], held_out, **settings))
    assert scores["colour"] >= 0.9, scores  # the image model alone still follows the text,
    assert scores["facing"] >= 0.9, scores  # draws the prompted direction into every frame,
    assert scores["direction"] <= 0.5, scores  # but only the motion module moves the shape that way


# The model card's style-LoRA table (examples/shapes/README.md, seen combinations, "... on a dark background"
# prompts) at the default LoRA weight: the colour and shape it keeps while it darkens the background. The LoRA
# costs colour, shape and direction at every weight that darkens the background (the card says so); the test
# holds the default weight to the dark background and to the card's colour and shape, less a margin for the
# 11-clip sample.
LORA_CARD = {"colour": 0.38, "shape": 0.33}
LORA_MARGIN = 0.2


@pytest.mark.slow
def test_style_lora_at_the_default_weight_sets_the_dark_background_as_the_card_says(demo, shipped_models):
    """The style LoRA merged at the weight in the model's defaults (what ``predict_t2v.py --lora`` and the UI
    use) gives the dark background (target >= 90% of clips) with the colour and shape of the card's table;
    unmerged, no dark background (<= 10%)."""
    selection, pipeline, seen, held_out, settings = demo
    sample = every_nth(seen, 4, offset=1)
    lora = shipped_models / DEMO.lora
    merger = apply_lora(pipeline, None, lora, selection.defaults.lora_weight)
    try:
        styled = accuracy(generate_and_read(pipeline, sample, [0], held_out, style=True, **settings))
        merger = apply_lora(pipeline, merger, lora, 0.0)
        plain = accuracy(generate_and_read(pipeline, sample, [0], held_out, style=True, **settings))
    finally:
        apply_lora(pipeline, merger, None, 0.0)
    assert styled["dark"] >= 0.9, styled
    assert styled["colour"] >= LORA_CARD["colour"] - LORA_MARGIN, styled
    assert styled["shape"] >= LORA_CARD["shape"] - LORA_MARGIN, styled
    assert plain["dark"] <= 0.1, plain


def test_shipped_long_clip_model_is_small_and_generates_64_frames_in_windows_by_default(shipped_models):
    folder = shipped_models / LONG.model
    files = [p for p in folder.rglob("*") if p.is_file()]
    files += [shipped_models / LONG.motion_module, shipped_models / LONG.lora]
    assert all(p.is_file() for p in files) and sum(p.stat().st_size for p in files) <= 20 * 2**20
    defaults = select_model(shipped_models, folder).defaults
    assert (defaults.frames, defaults.context_frames, defaults.context_overlap) == (64, 16, 4)
    assert load_world(folder / "shapes_world.yaml").wrap


@pytest.mark.slow
def test_long_clips_in_windows_keep_colour_and_direction_without_visible_seams(shipped_models):
    """The long-clip demo model with its own defaults: 64-frame clips denoised in 16-frame windows (4 shared),
    on 7 seen combinations. Every window of every clip shows the prompted colour; most windows move the
    prompted way (25% is chance), the later windows as often as the first, so the windows carry the
    direction on rather than each drawing its own; and the frame-to-frame change at window seams stays
    within 1.5x of the change inside windows (median over the clips)."""
    pipeline, seen, held_out, settings = load_shapes_model(select_model(shipped_models, shipped_models / LONG.model))
    assert (settings["frames"], settings["context_frames"], settings["context_overlap"]) == (64, 16, 4)
    results = generate_and_read(pipeline, every_nth(seen, 6, offset=2), [0], held_out, **settings)
    scores = long_clip_scores(results)
    assert scores["clips"] == 7 and scores["colour kept"] == 1.0, scores
    assert scores["direction"] >= 0.6, scores
    by_window = np.mean([[w == r.combination.direction for w in r.windows.directions] for r in results], axis=0)
    assert len(by_window) == 5 and by_window[1:].mean() >= by_window[0] - 0.15, by_window
    assert scores["seam median"] <= 1.5, scores
