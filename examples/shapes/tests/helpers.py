"""Helpers shared by the shapes demo's test modules (they import from here, never from one another)."""

from __future__ import annotations

from easyanimate.generation import load_pipeline
from examples.shapes.world import all_combinations, load_world


def load_shapes_model(selection) -> tuple:
    """``(pipeline, seen, held_out, settings)`` for a shipped shapes model: its pipeline on the CPU, the seen
    combinations and the held-out ones of its world, and the :func:`generate_and_read` settings of its
    defaults and world (with the temporal window its defaults name, if any)."""
    d = selection.defaults
    world = load_world(selection.model / "shapes_world.yaml")
    pipeline = load_pipeline(selection, d.sampler, device="cpu")
    pipeline.set_progress_bar_config(disable=True)
    held_out = set(world.held_out_combinations())
    seen = [c for c in all_combinations() if c not in held_out]
    settings = {"steps": d.steps, "guidance_scale": d.guidance_scale, "negative_prompt": d.negative_prompt,
                "frames": d.frames, "size": world.size, "front_shade": world.front_shade, "wrap": world.wrap,
                **({"context_frames": d.context_frames, "context_overlap": d.context_overlap}
                   if d.context_frames else {})}
    return pipeline, seen, held_out, settings
