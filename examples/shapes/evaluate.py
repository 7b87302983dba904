"""Evaluate a shapes demo model from the pixels it generates.

    python -m examples.shapes.evaluate                          # the shipped model, 4 seeds, every mode but long
    python -m examples.shapes.evaluate --seeds 0 --modes video  # quicker
    python -m examples.shapes.evaluate --json results.json --samples samples/shapes-eval
    python -m examples.shapes.evaluate --modes long             # 64-frame clips in 16-frame windows (slow)

Generates one 16-frame clip for every (colour, shape, direction) combination and seed, reads its colour,
shape and direction of motion from the pixels (:mod:`examples.shapes.classify`) and prints accuracy
tables for the combinations seen in training and those held out (from the model's shapes_world.yaml).
Modes:

* ``video``: the model as shipped (image model + motion module);
* ``no_motion_module``: the same without the motion module (every frame generated independently), so
  the direction accuracy shows whether the motion comes from the motion module (chance: 25%);
* ``lora``: prompts with " on a dark background" and the style LoRA merged at each ``--lora-weights``
  (default 0 and 1); "dark" is the fraction of clips with a dark background;
* in every mode but ``long``, "facing" is the fraction of clips whose darker front half (in worlds that
  draw one) is on the prompted side: the direction as the image model draws it in single frames, even
  where nothing moves;
* ``long`` (only when asked for: slow): one ``--long-frames`` clip per combination and seed, the motion
  module attending over windows of ``--context-frames`` frames that overlap by ``--context-overlap``
  (the pipeline's sliding temporal windows). Each window is read as a clip of its own: "colour kept" /
  "shape kept" is the fraction of clips whose every window shows the prompted colour / shape,
  "direction" the fraction of windows moving the prompted way, "seam median" / "seam max" the median
  and max over clips of the seam ratio (mean frame-to-frame change where windows hand over divided by
  the mean inside windows: ~1 is seamless; see :func:`examples.shapes.classify.read_long_clip`).

From Python: :func:`generate_and_read` with any pipeline, then :func:`accuracy` or :func:`long_clip_scores`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from easyanimate.generation import apply_lora, load_pipeline, select_model
from easyanimate.models.motion_module import default_context_overlap
from easyanimate.video_io import save_video

from .build import RELEASES
from .classify import ClipReading, LongClipReading, read_clip, read_long_clip, temporal_windows
from .world import Combination, all_combinations, caption, load_world

DEFAULT_MODES = ("video", "no_motion_module", "lora")
MODES = DEFAULT_MODES + ("long",)
COLUMNS = ("colour", "shape", "direction", "all", "facing", "dark", "clips")
LONG_COLUMNS = ("colour kept", "shape kept", "direction", "seam median", "seam max", "clips")


# ------------------------------------------------------------------------------------------------
# Generating and scoring


@dataclass
class ClipResult:
    """One generated clip: what was asked, what was read, and whether its combination was held out."""

    combination: Combination
    seed: int
    held_out: bool
    reading: ClipReading
    """the whole clip read at once."""
    windows: LongClipReading | None = None
    """per temporal window, when the clip was generated with ``context_frames``."""

    @property
    def correct(self) -> dict[str, bool]:
        r, c = self.reading, self.combination
        return {"colour": r.colour == c.colour, "shape": r.shape == c.shape, "direction": r.direction == c.direction}


def generate_and_read(pipeline, combinations: list[Combination], seeds: list[int], held_out: set[Combination],
                      style: bool = False, steps: int = 20, guidance_scale: float = 4.5, frames: int = 16,
                      size: int = 64, negative_prompt: str = "", batch_size: int = 16,
                      context_frames: int | None = None, context_overlap: int | None = None,
                      front_shade: float = 1.0, wrap: bool = False, on_clip=None) -> list[ClipResult]:
    """Generate one clip per (combination, seed) with ``pipeline`` and read each from its pixels.

    Clip ``(c, s)`` starts from the noise of ``torch.Generator().manual_seed(s)``, whatever the batch it
    runs in, so results do not depend on ``batch_size``. ``on_clip(result, video)`` sees every clip
    (``video`` is ``(3, F, H, W)`` in [0, 1]), e.g. to save samples. ``front_shade`` is the world's (the
    readings then include the facing), and so is ``wrap`` (shapes crossing the edges read whole). With
    ``context_frames`` the pipeline denoises in temporal windows (``context_overlap`` defaults to the
    pipeline's, :func:`default_context_overlap`) and each result also reads every window
    (:attr:`ClipResult.windows`).
    """
    windows = None
    if context_frames is not None:
        if context_overlap is None:
            context_overlap = default_context_overlap(context_frames)
        windows = temporal_windows(frames, context_frames, context_overlap)
    jobs = [(c, s) for s in seeds for c in combinations]
    results = []
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        generators = [torch.Generator().manual_seed(s) for _, s in batch]
        videos = pipeline([caption(c, style) for c, _ in batch], negative_prompt=[negative_prompt] * len(batch),
                          video_length=frames, height=size, width=size, num_inference_steps=steps,
                          guidance_scale=guidance_scale, generator=generators, output_type="pt",
                          context_frames=context_frames, context_overlap=context_overlap).videos
        for (combination, seed), video in zip(batch, videos):
            result = ClipResult(combination, seed, combination in held_out, read_clip(video, front_shade, wrap),
                                read_long_clip(video, windows, front_shade, wrap) if windows else None)
            results.append(result)
            if on_clip is not None:
                on_clip(result, video)
    return results


def accuracy(results: list[ClipResult]) -> dict[str, float]:
    """Fraction correct per attribute, all three at once, with the darker front half on the prompted side
    (worlds that draw one; 0 otherwise), and with a dark background; plus the count."""
    if not results:
        return {"clips": 0}
    scores = {name: float(np.mean([r.correct[name] for r in results])) for name in ("colour", "shape", "direction")}
    scores["all"] = float(np.mean([all(r.correct.values()) for r in results]))
    scores["facing"] = float(np.mean([r.reading.facing == r.combination.direction for r in results]))
    scores["dark"] = float(np.mean([r.reading.dark_background for r in results]))
    scores["clips"] = len(results)
    return scores


def long_clip_scores(results: list[ClipResult]) -> dict[str, float]:
    """Scores of long clips (generated with ``context_frames``), plus the count:

    * "colour kept" / "shape kept": fraction of clips whose every window reads the prompted colour / shape;
    * "direction": fraction of windows (over all clips) moving in the prompted direction;
    * "seam median" / "seam max": median and max over the clips of :attr:`LongClipReading.seam_ratio`
      (NaN ratios, from clips without seams or change, are left out).
    """
    if not results:
        return {"clips": 0}
    clips = [(r.windows, r.combination) for r in results]
    ratios = np.array([w.seam_ratio for w, _ in clips])
    ratios = ratios[~np.isnan(ratios)]
    return {"colour kept": float(np.mean([w.colour_kept(c.colour) == 1 for w, c in clips])),
            "shape kept": float(np.mean([w.shape_kept(c.shape) == 1 for w, c in clips])),
            "direction": float(np.mean([d == c.direction for w, c in clips for d in w.directions])),
            "seam median": float(np.median(ratios)) if len(ratios) else float("nan"),
            "seam max": float(ratios.max()) if len(ratios) else float("nan"),
            "clips": len(results)}


# ------------------------------------------------------------------------------------------------
# The command line


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
    add("--lora-weights", type=float, nargs="+", default=[0.0, 1.0], metavar="W",
        help="lora mode: the weights the LoRA is merged at, one row each (default: 0 1)")
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
        parser.error(f"need 0 <= --context-overlap < --context-frames, got {args.context_overlap} and "
                     f"{args.context_frames}")
    return args


def shipped_lora(models_dir: Path, model: Path) -> Path:
    """The style LoRA released with the shapes model in ``model`` (the demo model's for any other folder)."""
    for release in RELEASES.values():
        if model.resolve() == (models_dir / release.model).resolve():
            return models_dir / release.lora
    return models_dir / RELEASES["demo"].lora


def format_table(rows: dict[str, dict[str, float]], columns: tuple[str, ...] = COLUMNS) -> str:
    """Markdown table, one row per (mode, split): percentages, seam ratios as numbers, clip counts."""
    def cell(c, v):
        return str(v) if c == "clips" else f"{v:.2f}" if c.startswith("seam") else f"{v:.0%}"
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
    selection = select_model(Path(args.models_dir), motion_module=args.motion_module, use_motion_module=with_motion,
                             **choice)
    defaults = selection.defaults
    world = load_world(args.world or selection.model / "shapes_world.yaml")
    held_out = set(world.held_out_combinations())
    combinations = all_combinations()
    def pick(value, default):
        return default if value is None else value
    settings = dict(steps=pick(args.steps, defaults.steps),
                    guidance_scale=pick(args.guidance_scale, defaults.guidance_scale),
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
            for weight in args.lora_weights:
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
