"""Every sampler draws the prompted video on the shipped demo model; v1's DDIM quirk, asked for, does not.

Measured on 9 seen combinations (seed 0, the model's 20 steps and guidance 2.0): colour and direction 100% for
every sampler; DDIM with the v1 quirks (x0 clipped to [-1, 1] in latent space) 22% colour, 11% direction.
"""

from __future__ import annotations

import pytest

from easyanimate.generation import select_model, set_sampler
from easyanimate.schedulers import SAMPLER_NAMES
from examples.shapes.evaluate import accuracy, generate_and_read

from .helpers import load_shapes_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(shipped_models):
    return load_shapes_model(select_model(shipped_models))


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_draws_the_prompted_colour_and_direction(demo, sampler):
    pipeline, seen, held_out, settings = demo
    set_sampler(pipeline, sampler)
    scores = accuracy(generate_and_read(pipeline, seen[::7], [0], held_out, **settings))
    assert scores["colour"] >= 0.8 and scores["direction"] >= 0.8, (sampler, scores)


def test_ddim_with_the_v1_quirks_loses_the_prompt(demo):
    pipeline, seen, held_out, settings = demo
    set_sampler(pipeline, "DDIM", v1_quirks=True)
    scores = accuracy(generate_and_read(pipeline, seen[::7], [0], held_out, **settings))
    assert scores["colour"] <= 0.5, scores  # the quirk is real, which is why it is off unless asked for
