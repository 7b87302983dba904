"""Evaluate the shapes demo model from the pixels it generates.

    python scripts/eval_shapes.py                          # the shipped model, 4 seeds, every mode
    python scripts/eval_shapes.py --seeds 0 --modes video  # quicker
    python scripts/eval_shapes.py --json results.json --samples samples/shapes-eval

Generates one 16-frame clip for every (colour, shape, direction) combination and seed, reads its colour,
shape and direction of motion from the pixels (easyanimate/evaluation/shapes.py) and prints accuracy
tables for the combinations seen in training and those held out (from the model's shapes_world.yaml).
Modes:

* ``video``: the model as shipped (image model + motion module);
* ``no_motion_module``: the same without the motion module (every frame generated independently), so
  the direction accuracy shows whether the motion comes from the motion module (chance: 25%);
* ``lora``: prompts with " on a dark background" and the style LoRA at weights 0 and 1; "dark" is the
  fraction of clips with a dark background.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from easyanimate.data.shapes import all_combinations, load_world
from easyanimate.evaluation.shapes import accuracy, generate_and_read
from easyanimate.generation import apply_lora, load_pipeline, select_model
from easyanimate.video_io import save_video

MODES = ("video", "no_motion_module", "lora")
COLUMNS = ("colour", "shape", "direction", "all", "dark", "clips")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--batch-size", type=int, default=16, help="clips generated at once")
    add("--config", help="model yaml (default: the model's own)")
    add("--guidance-scale", type=float, help="classifier-free guidance (default: the model's)")
    add("--json", help="write the per-mode accuracies here")
    add("--lora", help="style LoRA (default: the one in the model's defaults, else the shipped file)")
    add("--model", help="model folder (default: the released weights, else the shipped demo model)")
    add("--models-dir", default="models", help="root of the model layout")
    add("--modes", nargs="+", default=list(MODES), choices=MODES, help="what to evaluate")
    add("--motion-module", help="motion-module file (default: the model's own)")
    add("--negative-prompt", help="negative prompt (default: the model's)")
    add("--samples", help="save every clip as mp4 here, named <mode>_<colour>_<shape>_<direction>_<seed>.mp4")
    add("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="noise seeds; one clip per combination each")
    add("--steps", type=int, help="sampling steps (default: the model's)")
    add("--threads", type=int, help="torch CPU threads")
    add("--transformer-path", help="image-model checkpoint loaded over the model's (e.g. a t2i stage's output)")
    add("--world", help="world yaml with the held-out combinations (default: the model's shapes_world.yaml)")
    return parser.parse_args(argv)


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """Markdown table, one row per (mode, split), percentages."""
    lines = ["| mode | combinations | " + " | ".join(COLUMNS) + " |", "|" + " --- |" * (len(COLUMNS) + 2)]
    for name, scores in rows.items():
        mode, split = name.split("/")
        cells = [f"{scores[c]:.0%}" if c != "clips" else str(scores[c]) for c in COLUMNS]
        lines.append(f"| {mode} | {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    choice = dict(model=args.model, config=args.config, transformer_path=args.transformer_path)
    with_motion = "video" in args.modes or "lora" in args.modes
    selection = select_model(Path(args.models_dir), motion_module=args.motion_module, use_motion_module=with_motion, **choice)
    defaults = selection.defaults
    world = load_world(args.world or selection.model / "shapes_world.yaml")
    held_out = set(world.held_out_combinations())
    combinations = all_combinations()
    pick = lambda value, default: default if value is None else value  # noqa: E731
    settings = dict(steps=pick(args.steps, defaults.steps), guidance_scale=pick(args.guidance_scale, defaults.guidance_scale),
                    negative_prompt=pick(args.negative_prompt, defaults.negative_prompt), frames=world.frames,
                    size=world.size, batch_size=args.batch_size)
    rows: dict[str, dict[str, float]] = {}

    def run(mode: str, pipeline, style: bool = False) -> None:
        start = time.time()

        def save(result, video) -> None:
            c = result.combination
            save_video(video, Path(args.samples) / f"{mode}_{c.colour}_{c.shape}_{c.direction}_{result.seed}.mp4",
                       fps=defaults.fps)

        results = generate_and_read(pipeline, combinations, args.seeds, held_out, style=style,
                                    on_clip=save if args.samples else None, **settings)
        rows[f"{mode}/seen"] = accuracy([r for r in results if not r.held_out])
        rows[f"{mode}/held-out"] = accuracy([r for r in results if r.held_out])
        print(f"{mode}: {len(results)} clips in {time.time() - start:.0f}s", flush=True)

    if with_motion:
        pipeline = load_pipeline(selection, defaults.sampler, device="cpu")
        pipeline.set_progress_bar_config(disable=True)
        if "video" in args.modes:
            run("video", pipeline)
        if "lora" in args.modes:
            lora = Path(args.lora) if args.lora else selection.lora or Path(args.models_dir) / "Personalized_Model" / "easyanimate_shapes_dark_lora.safetensors"
            merger = None
            for weight in (0.0, 1.0):
                merger = apply_lora(pipeline, merger, lora, weight)
                run(f"lora {weight:g}", pipeline, style=True)
    if "no_motion_module" in args.modes:
        plain = select_model(Path(args.models_dir), use_motion_module=False, **choice)
        pipeline = load_pipeline(plain, defaults.sampler, device="cpu")
        pipeline.set_progress_bar_config(disable=True)
        run("no motion module", pipeline)

    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
