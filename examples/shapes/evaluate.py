"""Evaluate a shapes demo model from the pixels it generates.

    python -m examples.shapes.evaluate                          # the shipped model, 4 seeds, every mode but long
    python -m examples.shapes.evaluate --seeds 0 --modes video  # quicker
    python -m examples.shapes.evaluate --json results.json --samples samples/shapes-eval
    python -m examples.shapes.evaluate --modes long             # 64-frame clips in 16-frame windows (slow)
    python -m examples.shapes.evaluate --modes i2v first_last extension windows   # the inpaint model

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
  the mean inside windows: ~1 is seamless; see :func:`examples.shapes.classify.read_long_clip`);
* "hue" (every mode): the fraction of clips whose shape's mean hue is within 15 degrees of the world's colour.

The inpaint model (``--inpaint-model``, default the shipped one; its own defaults and world) is evaluated from
frames of the world: the first (and last) frame of a clip drawn for each combination and seed (from seeds
the training data did not use), whose darker front half shows the direction the prompt names:

* ``i2v``: image-to-video from the first frame: colour, hue, direction and facing of the clip, and frame 0 against
  the image: "frame 0 dB" is its PSNR, "VAE dB" the PSNR of the image's own VAE reconstruction, "within 2 dB" the
  fraction of clips whose frame 0 is at most 2 dB below that;
* ``first_last``: the first and the last frame of the clip given: "end px" is the median distance between the
  shape's centroid in the generated last frame and in the given one, "within 4 px" the fraction within 4 px;
* ``extension`` / ``windows``: ``--long-frames`` frames from the first frame, by repeated extension (chunks of
  ``--context-frames`` each starting from the last ``--context-overlap`` frames) or in temporal windows of that
  size; read chunk by chunk (window by window) as in ``long``, with "later direction" the fraction of the
  chunks after the first that move the prompted way, the seams where chunks are joined (where windows hand
  over), and the seconds per clip.

From Python: :func:`generate_and_read` with any pipeline, then :func:`accuracy` or :func:`long_clip_scores`;
:func:`generate_from_frames` with an inpaint pipeline, then :func:`inpaint_scores` or :func:`long_clip_scores`.
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
from .classify import (
    ClipReading,
    LongClipReading,
    as_frames,
    background_colour,
    centroid_distance,
    extension_chunks,
    psnr,
    read_clip,
    read_long_clip,
    shape_centroid,
    temporal_windows,
)
from .world import Combination, ShapesWorld, all_combinations, caption, load_world, render_clip, sample_clip

DEFAULT_MODES = ("video", "no_motion_module", "lora")
INPAINT_MODES = ("i2v", "first_last", "extension", "windows")
MODES = DEFAULT_MODES + ("long",) + INPAINT_MODES
COLUMNS = ("colour", "hue", "shape", "direction", "all", "facing", "dark", "clips")
LONG_COLUMNS = ("colour kept", "shape kept", "direction", "seam median", "seam max", "clips")
I2V_COLUMNS = ("colour", "hue", "shape", "direction", "facing", "frame 0 dB", "VAE dB", "within 2 dB", "clips")
FIRST_LAST_COLUMNS = ("colour", "hue", "direction", "end px", "within 4 px", "clips")
EXTENSION_COLUMNS = ("colour kept", "direction", "later direction", "seam median", "seam max", "s per clip", "clips")
HUE_TOLERANCE = 15.0  # degrees
FRAME_SEEDS = 1000
"""The frames an inpaint model is given come from clips drawn with seeds from 1000 up: the training data's
are the world's seed (below 1000)."""


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
    scores["hue"] = float(np.mean([r.reading.hue_error(r.combination.colour) <= HUE_TOLERANCE for r in results]))
    scores["clips"] = len(results)
    return scores


@dataclass
class InpaintResult(ClipResult):
    """A clip an inpaint model made from frames of the world: :class:`ClipResult` plus how it kept them."""

    psnr_first: float = float("nan")
    """PSNR (dB) of the generated frame 0 against the given image."""
    psnr_vae: float = float("nan")
    """PSNR (dB) of the image's own VAE reconstruction against the image."""
    end_distance: float | None = None
    """first_last: px between the shape's centroid in the generated last frame and in the given one."""
    seconds: float = float("nan")
    """generation time per clip (the batch's time shared out)."""


def given_clip(world: ShapesWorld, combination: Combination, seed: int) -> np.ndarray:
    """The clip ``(F, H, W, 3)`` uint8 whose first (and last) frame an inpaint model is given for ``(combination,
    seed)``: drawn by the world with seed ``FRAME_SEEDS + seed``, which no training clip used."""
    index = all_combinations().index(combination)
    return render_clip(world, sample_clip(world, combination, FRAME_SEEDS + seed, index))


@torch.no_grad()
def vae_reconstruction(pipeline, image: np.ndarray) -> np.ndarray:
    """The VAE's reconstruction ``(H, W, 3)`` in [0, 1] of an image ``(H, W, 3)`` uint8 (the posterior mean)."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().to(pipeline.vae.device, pipeline.vae.dtype) / 127.5 - 1
    decoded = pipeline.vae.decode(pipeline.vae.encode(x).latent_dist.mode()).sample[0].float().cpu()
    return ((decoded + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()


def generate_from_frames(pipeline, combinations: list[Combination], seeds: list[int], held_out: set[Combination],
                         world: ShapesWorld, mode: str = "i2v", steps: int = 20, guidance_scale: float = 2.0,
                         negative_prompt: str = "", batch_size: int = 16, long_frames: int = 64,
                         context_frames: int = 16, context_overlap: int = 4, keep_known: bool = True,
                         on_clip=None) -> list[InpaintResult]:
    """Generate one clip per (combination, seed) with an inpaint ``pipeline`` from frames of :func:`given_clip`, and
    read it (see the module docstring for the modes). ``keep_known`` False leaves the given frames to the model
    (the pipeline's option). ``on_clip(result, video)`` sees every clip."""
    if mode not in INPAINT_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(INPAINT_MODES)}")
    long = mode in ("extension", "windows")
    frames = long_frames if long else world.frames
    if long:
        chunks, seams = (extension_chunks(frames, context_frames, context_overlap) if mode == "extension" else
                         (temporal_windows(frames, context_frames, context_overlap), None))
    jobs = [(c, s) for s in seeds for c in combinations]
    results = []
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        given = [given_clip(world, c, s) for c, s in batch]
        options = dict(end_image=[g[-1] for g in given]) if mode == "first_last" else {}
        if long:
            options = dict(context_frames=context_frames, context_overlap=context_overlap,
                           long_video="extension" if mode == "extension" else "windows")
        began = time.time()
        videos = pipeline([caption(c) for c, _ in batch], image=[g[0] for g in given],
                          negative_prompt=[negative_prompt] * len(batch), video_length=frames, height=world.size,
                          width=world.size, num_inference_steps=steps, guidance_scale=guidance_scale,
                          generator=[torch.Generator().manual_seed(s) for _, s in batch], output_type="pt",
                          keep_known=keep_known, **options).videos
        seconds = (time.time() - began) / len(batch)
        for (combination, seed), clip, video in zip(batch, given, videos):
            windows = read_long_clip(video, chunks, world.front_shade, world.wrap, seams) if long else None
            result = InpaintResult(combination, seed, combination in held_out,
                                   read_clip(video[:, :world.frames], world.front_shade, world.wrap), windows,
                                   seconds=seconds)
            made = as_frames(video)
            result.psnr_first = psnr(made[0], clip[0] / 255)
            result.psnr_vae = psnr(vae_reconstruction(pipeline, clip[0]), clip[0] / 255)
            if mode == "first_last":
                result.end_distance = _end_distance(made, clip, combination.colour, world)
            results.append(result)
            if on_clip is not None:
                on_clip(result, video)
    return results


def _end_distance(made: np.ndarray, given: np.ndarray, colour: str, world: ShapesWorld) -> float:
    """Px between the shape in the generated last frame and in the given one (the frame size when either shows
    no shape)."""
    wanted = shape_centroid(given[-1] / 255, background_colour(given[None, -1] / 255, world.wrap), colour,
                            world.front_shade, world.wrap)
    found = shape_centroid(made[-1], background_colour(made, world.wrap), colour, world.front_shade, world.wrap)
    if wanted is None or found is None:
        return float(world.size)
    return centroid_distance(found, wanted, world.size, world.wrap)


def inpaint_scores(results: list[InpaintResult]) -> dict[str, float]:
    """Scores of ``i2v`` and ``first_last`` clips (see the module docstring), plus the count."""
    if not results:
        return {"clips": 0}
    scores = accuracy(results)
    scores["frame 0 dB"] = float(np.mean([r.psnr_first for r in results]))
    scores["VAE dB"] = float(np.mean([r.psnr_vae for r in results]))
    scores["within 2 dB"] = float(np.mean([r.psnr_first >= r.psnr_vae - 2 for r in results]))
    ends = [r.end_distance for r in results if r.end_distance is not None]
    if ends:
        scores["end px"] = float(np.median(ends))
        scores["within 4 px"] = float(np.mean([d <= 4 for d in ends]))
    return scores


def long_clip_scores(results: list[ClipResult]) -> dict[str, float]:
    """Scores of long clips (generated with ``context_frames``), plus the count:

    * "colour kept" / "shape kept": fraction of clips whose every window reads the prompted colour / shape;
    * "direction": fraction of windows (over all clips) moving in the prompted direction; "later direction" the
      same over the windows after the first;
    * "seam median" / "seam max": median and max over the clips of :attr:`LongClipReading.seam_ratio`
      (NaN ratios, from clips without seams or change, are left out).
    """
    if not results:
        return {"clips": 0}
    clips = [(r.windows, r.combination) for r in results]
    ratios = np.array([w.seam_ratio for w, _ in clips])
    ratios = ratios[~np.isnan(ratios)]
    later = [d == c.direction for w, c in clips for d in w.directions[1:]]
    return {"colour kept": float(np.mean([w.colour_kept(c.colour) == 1 for w, c in clips])),
            "shape kept": float(np.mean([w.shape_kept(c.shape) == 1 for w, c in clips])),
            "direction": float(np.mean([d == c.direction for w, c in clips for d in w.directions])),
            "later direction": float(np.mean(later)) if later else float("nan"),
            "seam median": float(np.median(ratios)) if len(ratios) else float("nan"),
            "seam max": float(ratios.max()) if len(ratios) else float("nan"),
            "s per clip": float(np.mean([getattr(r, "seconds", float("nan")) for r in results])),
            "clips": len(results)}


# ------------------------------------------------------------------------------------------------
# The command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--batch-size", type=int, default=16, help="clips generated at once")
    add("--config", help="model yaml (default: the model's own)")
    add("--context-frames", type=int, default=16, help="long, extension, windows: frames the motion module sees at "
        "once (the chunk length of extension)")
    add("--context-overlap", type=int, default=4, help="long, extension, windows: frames shared by consecutive "
        "windows (chunks)")
    add("--guidance-scale", type=float, help="classifier-free guidance (default: the model's)")
    add("--inpaint-model", help="inpaint model folder for the inpaint modes (default: the shipped inpaint demo model)")
    add("--no-keep-known", action="store_true", help="inpaint modes: leave the given frames to the model (the "
        "pipeline's keep_known=False), to measure what the model alone keeps")
    add("--json", help="write the per-mode accuracies here")
    add("--long-frames", type=int, default=64, help="long, extension, windows: frames per clip")
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
    """Markdown table, one row per (mode, split): percentages, seam ratios, dB, px and seconds as numbers, clip
    counts."""
    numbers = ("seam", "dB", " px", "s per")

    def cell(c, v):
        if c == "clips":
            return str(v)
        if v is None:
            return "-"
        if any(n in c for n in numbers) and c not in ("within 2 dB", "within 4 px"):
            return f"{v:.2f}"
        return f"{v:.0%}"
    lines = ["| mode | combinations | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 2)]
    for name, scores in rows.items():
        mode, split = name.split("/")
        cells = [cell(c, scores.get(c)) for c in columns]
        lines.append(f"| {mode} | {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    choice = dict(model=args.model, config=args.config, transformer_path=args.transformer_path)
    with_motion = any(mode in args.modes for mode in ("video", "lora", "long"))
    text_to_video = any(mode not in INPAINT_MODES for mode in args.modes)
    rows: dict[str, dict[str, float]] = {}
    long_rows: dict[str, dict[str, float]] = {}
    inpaint_rows: dict[str, dict[str, dict[str, float]]] = {}
    if any(mode in INPAINT_MODES for mode in args.modes):
        evaluate_inpaint_model(args, inpaint_rows)
    if not text_to_video:
        return report(args, rows, long_rows, inpaint_rows)
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

    return report(args, rows, long_rows, inpaint_rows)


def evaluate_inpaint_model(args: argparse.Namespace, tables: dict[str, dict[str, dict[str, float]]]) -> None:
    """The inpaint modes asked for, with the inpaint model's defaults and world; rows go into ``tables``."""
    selection = select_model(Path(args.models_dir), model=args.inpaint_model, inpaint=True)
    defaults = selection.defaults
    world = load_world(selection.model / "shapes_world.yaml")
    held_out = set(world.held_out_combinations())
    pipeline = load_pipeline(selection, defaults.sampler, device="cpu")
    pipeline.set_progress_bar_config(disable=True)
    pick = lambda value, default: default if value is None else value  # noqa: E731
    settings = dict(steps=pick(args.steps, defaults.steps), guidance_scale=pick(args.guidance_scale,
                    defaults.guidance_scale), negative_prompt=pick(args.negative_prompt, defaults.negative_prompt),
                    batch_size=args.batch_size, long_frames=args.long_frames, context_frames=args.context_frames,
                    context_overlap=args.context_overlap, keep_known=not args.no_keep_known)
    for mode in (m for m in INPAINT_MODES if m in args.modes):
        start = time.time()

        def save(result, video, mode=mode) -> None:
            c = result.combination
            save_video(video, Path(args.samples) / f"{mode}_{c.colour}_{c.shape}_{c.direction}_{result.seed}.mp4",
                       fps=defaults.fps)

        results = generate_from_frames(pipeline, all_combinations(), args.seeds, held_out, world, mode,
                                       on_clip=save if args.samples else None, **settings)
        score = long_clip_scores if mode in ("extension", "windows") else inpaint_scores
        table = tables.setdefault({"i2v": "i2v", "first_last": "first_last"}.get(mode, "long"), {})
        table[f"{mode}/seen"] = score([r for r in results if not r.held_out])
        table[f"{mode}/held-out"] = score([r for r in results if r.held_out])
        print(f"{mode}: {len(results)} clips in {time.time() - start:.0f}s", flush=True)


def report(args: argparse.Namespace, rows, long_rows, inpaint_rows) -> int:
    """Print the tables and write ``--json``."""
    tables = [(rows, COLUMNS), (long_rows, LONG_COLUMNS), (inpaint_rows.get("i2v", {}), I2V_COLUMNS),
              (inpaint_rows.get("first_last", {}), FIRST_LAST_COLUMNS),
              (inpaint_rows.get("long", {}), EXTENSION_COLUMNS)]
    for table, columns in tables:
        if table:
            print(format_table(table, columns))
    if args.json:
        merged = {name: row for table, _ in tables for name, row in table.items()}
        Path(args.json).write_text(json.dumps(merged, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
