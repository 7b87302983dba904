"""Generate videos from text with EasyAnimate: ``easyanimate-predict`` or ``python predict_t2v.py`` in a checkout.

With no flags it uses the released v1 weights under ``models/`` and the original defaults (DPM++,
30 steps, guidance 6.0, seed 43, 512x512, 80 frames at 12 fps). When those weights are absent it
falls back to the small demo model shipped in ``models/`` and that model's own defaults.

Examples::

    python predict_t2v.py --prompt "a blue square moving up"
    python predict_t2v.py --prompts-file prompts.txt --format both --seed -1
    python predict_t2v.py --model models/Diffusion_Transformer/PixArt-XL-2-512x512 --memory-mode model_cpu_offload
    python predict_t2v.py --frames 240 --context-frames 80 --context-overlap 20     # longer than trained
    python predict_t2v.py --compile                                                # compiled blocks
    accelerate launch --num_processes 4 predict_t2v.py --prompts-file prompts.txt  # prompts split over 4 GPUs
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import PartialState

from ..devices import best_device, resolve_dtype
from ..generation import (
    MEMORY_MODES,
    GenerationRequest,
    KnownContent,
    ModelLimits,
    ModelSelection,
    apply_lora,
    estimate_memory,
    generate,
    load_pipeline,
    model_zoo_text,
    run_record,
    save_result,
    select_model,
)
from ..lora import load_lora_state_dict
from ..schedulers import SAMPLER_NAMES

logger = logging.getLogger(__name__)

FORMATS = {"mp4": ("mp4",), "gif": ("gif",), "both": ("mp4", "gif")}


def build_parser(description: str = __doc__, inpaint: bool = False) -> argparse.ArgumentParser:
    """The flags of predict_t2v.py; with ``inpaint`` also predict_i2v.py's (what the video keeps, how long
    videos are made)."""
    d = GenerationRequest()  # the defaults; a model folder's easyanimate_defaults.yaml overrides them
    epilog = "" if inpaint else "Model zoo (put the files here):\n" + model_zoo_text()
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=epilog)
    add = parser.add_argument
    if inpaint:
        add("--box", type=int, nargs=4, metavar=("LEFT", "TOP", "RIGHT", "BOTTOM"),
            help="with --video: regenerate this box (pixels of the generated video) in every frame")
        add("--end-image", help="with --image: the last frame (first-and-last-frame generation)")
        add("--extend", type=int, metavar="K", help="with --video: continue it; its last K frames start the --frames "
            "generated frames, and the whole video is written")
        add("--image", help="the first frame: image-to-video (resized and centre-cropped to the size)")
        add("--keep-known", action=argparse.BooleanOptionalAction, default=None, help="put the known latents back "
            "after every step, so the given frames come out as the VAE's reconstruction of them (default: the "
            f"model's, else {d.keep_known}); --no-keep-known leaves them to the model")
        add("--long-video", choices=["windows", "extension"], help="videos longer than --context-frames: all frames "
            "in temporal windows, or by repeated extension, chunk by chunk from the last --context-overlap frames "
            f"(default: the model's, else {d.long_video})")
        add("--mask", help="with --video: an image (all frames) or a video (one per frame) of the video's size, white "
            "where the video is regenerated")
        add("--video", help="the video to inpaint (--mask or --box) or to continue (--extend)")
    add("--context-frames", type=int, help="temporal window for long videos: the motion module sees at most this "
        "many frames at once (e.g. 16 or the model's training length); 0: the whole video; default: the model's "
        "(its easyanimate_defaults.yaml), else the whole video")
    add("--context-overlap", type=int, help="frames shared by consecutive windows (default: the model's, else a "
        "quarter of the window)")
    add("--compile", nargs="?", const="inductor", metavar="BACKEND", help="torch.compile the transformer blocks "
        "(backend default inductor): the first step compiles, later steps run faster (1.14x for a full-width block "
        "on CPU, docs/benchmarks.md); outputs match the plain path up to float rounding")
    add("--config", help="model yaml (default: the model's own, else config/easyanimate_video_motion_module_v1.yaml)")
    add("--debug", action="store_true", help="show the full traceback of an error (also: EASYANIMATE_DEBUG=1)")
    add("--device", help="cuda, cuda:1, mps or cpu (default: best available)")
    add("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
        help="weights dtype (auto: fp16 on GPU, fp32 on CPU)")
    add("--format", default="mp4", choices=list(FORMATS), help="output file format")
    add("--fps", type=int, help=f"frames per second of the file (default {d.fps})")
    add("--frames", type=int, help=f"number of frames; 1 writes an image (default {d.frames})")
    add("--guidance-scale", type=float, help=f"classifier-free guidance (default {d.guidance_scale})")
    add("--height", type=int, help=f"pixels, multiple of 32 (16 x the grid's block_size) (default {d.height})")
    add("--lora", help="LoRA file (kohya format) merged into the transformer and T5")
    add("--lora-weight", type=float, help=f"LoRA multiplier (default {d.lora_weight})")
    add("--memory-mode", default="none", choices=list(MEMORY_MODES),
        help="; ".join(f"{k}: {v}" for k, v in MEMORY_MODES.items()))
    add("--model", help="model folder (default models/Diffusion_Transformer/" + (
        "EasyAnimate-Shapes-Inpaint, the shipped inpaint demo: v1 released no inpaint weights)" if inpaint else
        "PixArt-XL-2-512x512)"))
    add("--models-dir", default="models", help="root of Diffusion_Transformer/, Motion_Module/, Personalized_Model/")
    add("--motion-module", help="motion-module file (default models/Motion_Module/easyanimate_v1_mm.safetensors)")
    add("--negative-prompt", help="what to avoid (default: the original negative prompt)")
    add("--no-motion-module", action="store_true", help="generate every frame independently (for comparison)")
    add("--output-dir", default="samples/easyanimate-videos", help="where videos and their JSON sidecars go")
    add("--prompt", help="text prompt (default: the model's default prompt)")
    add("--prompts-file", help="text file with one prompt per line; one video per line")
    add("--sampler", choices=SAMPLER_NAMES, help=f"sampler (default {d.sampler})")
    add("--v1-sampler-quirks", action="store_true", default=None, help="PNDM's Runge-Kutta warm-up and DDIM's "
        "clipping of latent x0, as the original had them (off: every sampler draws the prompted video)")
    add("--seed", type=int, help=f"random seed; -1 draws one (default {d.seed}); the seed used is saved")
    add("--steps", type=int, help=f"denoising steps (default {d.steps})")
    add("--transformer-path", help="personalized / full transformer checkpoint loaded over the base")
    add("--width", type=int, help=f"pixels, multiple of 32 (16 x the grid's block_size) (default {d.width})")
    return parser


def parse_args(argv: list[str] | None = None, inpaint: bool = False, description: str = __doc__) -> argparse.Namespace:
    args = build_parser(description, inpaint).parse_args(argv)
    args.inpaint = inpaint
    return args


def read_prompts(args: argparse.Namespace, default: str) -> list[str]:
    if args.prompts_file is None:
        return [default if args.prompt is None else args.prompt]
    path = Path(args.prompts_file)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text (byte {error.start} cannot be read); save it as UTF-8") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path} has no prompts (expected one prompt per line)")
    return prompts


def requests_for(args: argparse.Namespace, defaults: GenerationRequest,
                 video_frames: int | None = None) -> list[GenerationRequest]:
    """One request per prompt: the model's defaults, overridden by the flags that were given. A video to inpaint
    (``video_frames``, without --extend) sets the frame count."""
    window = args.context_frames if args.context_frames is not None else defaults.context_frames
    frames = args.frames
    if video_frames is not None and getattr(args, "extend", None) is None:
        if frames is not None and frames != video_frames:
            raise ValueError(f"--frames {frames}: the video to inpaint has {video_frames} frames")
        frames = video_frames
    base = defaults.overridden(
        negative_prompt=args.negative_prompt, sampler=args.sampler, steps=args.steps,
        guidance_scale=args.guidance_scale, seed=args.seed, height=args.height, width=args.width,
        frames=frames, fps=args.fps, lora_weight=args.lora_weight, context_overlap=args.context_overlap,
        v1_sampler_quirks=args.v1_sampler_quirks, long_video=getattr(args, "long_video", None),
        keep_known=getattr(args, "keep_known", None))
    base.context_frames = window or None  # 0: the whole video
    if base.context_frames is None:
        base.context_overlap = None
    return [base.overridden(prompt=prompt) for prompt in read_prompts(args, defaults.prompt)]


def choose_device(name: str | None, memory_mode: str) -> torch.device:
    """The device asked for, checked to exist; offload modes need an accelerator."""
    if name is None:
        device = best_device()
    else:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        found = torch.cuda.device_count()
        raise ValueError(f"device {name!r} is not available: this machine has {found} CUDA device(s); "
                         f"use {'cuda:0' if found else 'cpu'}")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' is not available on this machine; use cpu")
    if memory_mode in ("model_cpu_offload", "sequential_cpu_offload") and device.type == "cpu":
        raise ValueError(f"--memory-mode {memory_mode} moves weights between the CPU and an accelerator; "
                         "on a CPU-only run use none")
    return device


def check_writable(folder: Path) -> None:
    """Refuse an output folder that cannot be created or written, before any generation (nothing is created)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OSError(f"cannot write into the output folder {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OSError(f"cannot write into the output folder {folder}: {existing} is not writable by this user")


def known_content(args: argparse.Namespace) -> KnownContent | None:
    """What the video keeps (predict_i2v.py), None for text-to-video."""
    if not args.inpaint:
        return None
    path = lambda value: Path(value) if value else None  # noqa: E731
    return KnownContent(path(args.image), path(args.end_image), path(args.video), path(args.mask),
                        tuple(args.box) if args.box else None, args.extend)


def main(argv: list[str] | None = None, inpaint: bool = False, description: str = __doc__) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv, inpaint, description)
    try:
        return run(args)
    except torch.OutOfMemoryError:
        if args.debug or os.environ.get("EASYANIMATE_DEBUG"):
            raise
        print("error: out of memory: use a smaller size or fewer frames, a temporal window (--context-frames), "
              "or --memory-mode model_cpu_offload / sequential_cpu_offload", file=sys.stderr)
        return 2
    except (ValueError, OSError) as error:  # user errors: one line (ConfigError and WeightLoadError included)
        if args.debug or os.environ.get("EASYANIMATE_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: videos already written are complete; nothing half-written was kept", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    """Check everything that can be checked from the config files, then load, generate and save."""
    known = known_content(args)
    video_frames = known.check() if known is not None else None  # a wrong file is refused before any loading
    selection = select_model(Path(args.models_dir), args.model, args.config, args.motion_module,
                             args.transformer_path, args.lora, use_motion_module=not args.no_motion_module,
                             inpaint=args.inpaint)
    limits = ModelLimits.of_selection(selection)
    limits.check_kind(selection.model, args.inpaint)
    requests = requests_for(args, selection.defaults.request, video_frames)
    for request in requests:
        request.validate(limits)
        if known is not None:
            known.check_box(request.width, request.height)
    for warning in dict.fromkeys(w for request in requests for w in request.warnings(selection.defaults.request)):
        logger.warning("warning: %s", warning)
    # Under `accelerate launch` with several processes: each generates its share on its own device.
    state = PartialState(cpu=not torch.cuda.is_available()) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    device = state.device if state is not None else choose_device(args.device, args.memory_mode)
    dtype = resolve_dtype(args.dtype, device)
    output_dir = Path(args.output_dir)
    check_writable(output_dir)
    if state is None or state.is_main_process:
        report_memory(selection, requests[0], device, dtype, args.memory_mode)  # the requests differ in prompt only
    if selection.lora is not None:
        load_lora_state_dict(selection.lora)  # a LoRA that cannot be merged is refused before the model loads
    pipeline = load_pipeline(selection, requests[0].sampler, device, dtype, args.memory_mode)
    if selection.lora is not None:
        apply_lora(pipeline, None, selection.lora, requests[0].lora_weight)
    if args.compile:
        pipeline.transformer.compile_blocks(backend=args.compile)
    written = 0
    with split(state, requests) as mine:
        for request in mine:
            seed = request.resolved_seed()
            video = generate(pipeline, request, seed, known=known)
            record = {**run_record(request, seed, selection, dtype, device, args.memory_mode), "compile": args.compile,
                      **(known.record() if known is not None else {})}
            for path in save_result(video, output_dir, record, request.fps, FORMATS[args.format]):
                print(f"wrote {path} (seed {seed})")
            written += 1
    if state is not None:
        state.wait_for_everyone()
    if state is None or state.is_main_process:
        processes = f" by {state.num_processes} processes" if state is not None else ""
        print(f"done: {len(requests)} video(s) in {output_dir}{processes}")
    return 0


def report_memory(selection: ModelSelection, request: GenerationRequest, device: torch.device, dtype: torch.dtype,
                  memory_mode: str) -> None:
    """Print what the setting needs (computed from the model's configs), and warn when the device has less.

    Advice only: the run goes on whatever it says, and a setting it cannot compute is reported and passed.
    """
    try:
        advice = estimate_memory(selection, request, device, dtype, memory_mode)
    except Exception as error:  # noqa: BLE001 (advice only: nothing here may stop a generation)
        print(f"memory: not estimated ({type(error).__name__}: {error})")
        return
    print(advice.summary())
    if (warning := advice.warning()) is not None:
        print(f"warning: {warning}", file=sys.stderr)


@contextmanager
def split(state: PartialState | None, requests: list[GenerationRequest]) -> Iterator[list[GenerationRequest]]:
    """This process's share of the requests under ``accelerate launch`` (accelerate's own split), else all."""
    if state is None:
        yield requests
        return
    with state.split_between_processes(requests) as mine:
        yield mine


if __name__ == "__main__":
    sys.exit(main())
