"""Evaluate the shapes demo model from the pixels it generates.

    python scripts/eval_shapes.py                          # the shipped model, 4 seeds, every mode but long
    python scripts/eval_shapes.py --seeds 0 --modes video  # quicker
    python scripts/eval_shapes.py --json results.json --samples samples/shapes-eval
    python scripts/eval_shapes.py --modes long             # 64-frame clips in 16-frame windows (slow)

Generates one 16-frame clip for every (colour, shape, direction) combination and seed, reads its colour,
shape and direction of motion from the pixels (easyanimate/evaluation/shapes.py) and prints accuracy
tables for the combinations seen in training and those held out (from the model's shapes_world.yaml).
Modes:

* ``video``: the model as shipped (image model + motion module);
* ``no_motion_module``: the same without the motion module (every frame generated independently), so
  the direction accuracy shows whether the motion comes from the motion module (chance: 25%);
* ``lora``: prompts with " on a dark background" and the style LoRA at weights 0 and 1; "dark" is the
  fraction of clips with a dark background;
* in every mode but ``long``, "facing" is the fraction of clips whose darker front half (in worlds that
  draw one) is on the prompted side: the direction as the image model draws it in single frames, even
  where nothing moves;
* ``long`` (only when asked for: slow): one ``--long-frames`` clip per combination and seed, the motion
  module attending over windows of ``--context-frames`` frames that overlap by ``--context-overlap``
  (the pipeline's sliding temporal windows). Each window is read as a clip of its own: "colour kept" /
  "shape kept" is the fraction of clips whose every window shows the prompted colour / shape,
  "direction" the fraction of windows moving the prompted way, "seam median" / "seam max" the median
  and max over clips of the seam ratio (mean frame-to-frame change where windows hand over divided by
  the mean inside windows: ~1 is seamless; see easyanimate.evaluation.shapes.read_long_clip).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from easyanimate.data.shapes import all_combinations, load_world
from easyanimate.evaluation.shapes import accuracy, generate_and_read, long_clip_scores
from easyanimate.generation import SHAPES_RELEASES, apply_lora, load_pipeline, select_model
from easyanimate.video_io import save_video

DEFAULT_MODES = ("video", "no_motion_module", "lora")
MODES = DEFAULT_MODES + ("long",)
COLUMNS = ("colour", "shape", "direction", "all", "facing", "dark", "clips")
LONG_COLUMNS = ("colour kept", "shape kept", "direction", "seam median", "seam max", "clips")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--batch-size", type=int, default=16, help="clips generated at once")
    add("--config", help="model yaml (default: the model's own)")
    add("--context-frames", type=int, default=16, help="long mode: frames the motion module sees at once")
    add("--context-overlap", type=int, default=4, help="long mode: frames shared by consecutive windows")
    add("--guidance-scale", type=float, help="classifier-free guidance (default: the model's)")
    add("--json", help="write the per-mode accuracies here")
    add("--long-frames", type=int, default=64, help="long mode: frames per clip")
    add("--lora", help="style LoRA (default: the one in the model's defaults, else the shipped file)")
    add("--model", help="model folder (default: the released weights, else the shipped demo model)")
    add("--models-dir", default="models", help="root of the model layout")
    add("--modes", nargs="+", default=list(DEFAULT_MODES), choices=MODES,
        help=f"what to evaluate (default: {' '.join(DEFAULT_MODES)})")
    add("--motion-module", help="motion-module file (default: the model's own)")
    add("--negative-prompt", help="negative prompt (default: the model's)")
    add("--samples", help="save every clip as mp4 here, named <mode>_<colour>_<shape>_<direction>_<seed>.mp4")
    add("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="noise seeds; one clip per combination each")
    add("--steps", type=int, help="sampling steps (default: the model's)")
    add("--threads", type=int, help="torch CPU threads")
    add("--transformer-path", help="image-model checkpoint loaded over the model's (e.g. a t2i stage's output)")
    add("--world", help="world yaml with the held-out combinations (default: the model's shapes_world.yaml)")
    args = parser.parse_args(argv)
    if not 0 <= args.context_overlap < args.context_frames:
        parser.error(f"need 0 <= --context-overlap < --context-frames, got {args.context_overlap} and {args.context_frames}")
    return args


def shipped_lora(models_dir: Path, model: Path) -> Path:
    """The style LoRA released with the shapes model in ``model`` (the demo model's for any other folder)."""
    for name, _, lora in SHAPES_RELEASES.values():
        if model.resolve() == (models_dir / name).resolve():
            return models_dir / lora
    return models_dir / SHAPES_RELEASES["demo"][2]


def format_table(rows: dict[str, dict[str, float]], columns: tuple[str, ...] = COLUMNS) -> str:
    """Markdown table, one row per (mode, split): percentages, seam ratios as numbers, clip counts."""
    cell = lambda c, v: str(v) if c == "clips" else f"{v:.2f}" if c.startswith("seam") else f"{v:.0%}"
    lines = ["| mode | combinations | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 2)]
    for name, scores in rows.items():
        mode, split = name.split("/")
        cells = [cell(c, scores[c]) for c in columns]
        lines.append(f"| {mode} | {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    choice = dict(model=args.model, config=args.config, transformer_path=args.transformer_path)
    with_motion = any(mode in args.modes for mode in ("video", "lora", "long"))
    selection = select_model(Path(args.models_dir), motion_module=args.motion_module, use_motion_module=with_motion, **choice)
    defaults = selection.defaults
    world = load_world(args.world or selection.model / "shapes_world.yaml")
    held_out = set(world.held_out_combinations())
    combinations = all_combinations()
    pick = lambda value, default: default if value is None else value
    settings = dict(steps=pick(args.steps, defaults.steps), guidance_scale=pick(args.guidance_scale, defaults.guidance_scale),
                    negative_prompt=pick(args.negative_prompt, defaults.negative_prompt), frames=world.frames,
                    size=world.size, front_shade=world.front_shade, wrap=world.wrap,
                    batch_size=args.batch_size)
    long_settings = dict(settings, frames=args.long_frames, context_frames=args.context_frames,
                         context_overlap=args.context_overlap)
    rows: dict[str, dict[str, float]] = {}
    long_rows: dict[str, dict[str, float]] = {}

    def run(mode: str, pipeline, style: bool = False, long: bool = False) -> None:
        start = time.time()

        def save(result, video) -> None:
            c = result.combination
            save_video(video, Path(args.samples) / f"{mode}_{c.colour}_{c.shape}_{c.direction}_{result.seed}.mp4",
                       fps=defaults.fps)

        results = generate_and_read(pipeline, combinations, args.seeds, held_out, style=style,
                                    on_clip=save if args.samples else None, **(long_settings if long else settings))
        table, score = (long_rows, long_clip_scores) if long else (rows, accuracy)
        table[f"{mode}/seen"] = score([r for r in results if not r.held_out])
        table[f"{mode}/held-out"] = score([r for r in results if r.held_out])
        print(f"{mode}: {len(results)} clips in {time.time() - start:.0f}s", flush=True)

    if with_motion:
        pipeline = load_pipeline(selection, defaults.sampler, device="cpu")
        pipeline.set_progress_bar_config(disable=True)
        if "video" in args.modes:
            run("video", pipeline)
        if "long" in args.modes:  # before the LoRA is merged into the pipeline
            run("long", pipeline, long=True)
        if "lora" in args.modes:
            lora = Path(args.lora) if args.lora else (
                selection.lora or shipped_lora(Path(args.models_dir), selection.model))
            merger = None
            for weight in (0.0, 1.0):
                merger = apply_lora(pipeline, merger, lora, weight)
                run(f"lora {weight:g}", pipeline, style=True)
    if "no_motion_module" in args.modes:
        plain = select_model(Path(args.models_dir), use_motion_module=False, **choice)
        pipeline = load_pipeline(plain, defaults.sampler, device="cpu")
        pipeline.set_progress_bar_config(disable=True)
        run("no motion module", pipeline)

    for table, columns in ((rows, COLUMNS), (long_rows, LONG_COLUMNS)):
        if table:
            print(format_table(table, columns))
    if args.json:
        Path(args.json).write_text(json.dumps({**rows, **long_rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
