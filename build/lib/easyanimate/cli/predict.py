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
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from ..devices import best_device, resolve_dtype
from ..generation import (
    MEMORY_MODES,
    GenerationRequest,
    MissingWeightsError,
    apply_lora,
    generate,
    load_pipeline,
    model_zoo_text,
    run_record,
    save_result,
    select_model,
)
from ..schedulers import SAMPLER_NAMES

FORMATS = {"mp4": ("mp4",), "gif": ("gif",), "both": ("mp4", "gif")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = GenerationRequest()  # the defaults; a model folder's easyanimate_defaults.yaml overrides them
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Model zoo (put the files here):\n" + model_zoo_text())
    add = parser.add_argument
    add("--context-frames", type=int, help="temporal window for long videos: the motion module sees at most this "
        "many frames at once (e.g. 16 or the model's training length); 0: the whole video; default: the model's "
        "(its easyanimate_defaults.yaml), else the whole video")
    add("--context-overlap", type=int, help="frames shared by consecutive windows (default: the model's, else a "
        "quarter of the window)")
    add("--compile", nargs="?", const="inductor", metavar="BACKEND", help="torch.compile the transformer blocks "
        "(backend default inductor): the first step compiles, later steps run faster (1.14x for a full-width block "
        "on CPU, docs/benchmarks.md); outputs match the plain path up to float rounding")
    add("--config", help="model yaml (default: the model's own, else config/easyanimate_video_motion_module_v1.yaml)")
    add("--device", help="cuda, cuda:1, mps or cpu (default: best available)")
    add("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"], help="weights dtype (auto: fp16 on GPU, fp32 on CPU)")
    add("--format", default="mp4", choices=list(FORMATS), help="output file format")
    add("--fps", type=int, help=f"frames per second of the file (default {d.fps})")
    add("--frames", type=int, help=f"number of frames; 1 writes an image (default {d.frames})")
    add("--guidance-scale", type=float, help=f"classifier-free guidance (default {d.guidance_scale})")
    add("--height", type=int, help=f"pixels, multiple of 32 (16 x the grid's block_size) (default {d.height})")
    add("--lora", help="LoRA file (kohya format) merged into the transformer and T5")
    add("--lora-weight", type=float, help=f"LoRA multiplier (default {d.lora_weight})")
    add("--memory-mode", default="none", choices=list(MEMORY_MODES), help="; ".join(f"{k}: {v}" for k, v in MEMORY_MODES.items()))
    add("--model", help="PixArt diffusers folder (default models/Diffusion_Transformer/PixArt-XL-2-512x512)")
    add("--models-dir", default="models", help="root of Diffusion_Transformer/, Motion_Module/, Personalized_Model/")
    add("--motion-module", help="motion-module file (default models/Motion_Module/easyanimate_v1_mm.safetensors)")
    add("--negative-prompt", help="what to avoid (default: the original negative prompt)")
    add("--no-motion-module", action="store_true", help="generate every frame independently (for comparison)")
    add("--output-dir", default="samples/easyanimate-videos", help="where videos and their JSON sidecars go")
    add("--prompt", help="text prompt (default: the model's default prompt)")
    add("--prompts-file", help="text file with one prompt per line; one video per line")
    add("--sampler", choices=SAMPLER_NAMES, help=f"sampler (default {d.sampler})")
    add("--seed", type=int, help=f"random seed; -1 draws one (default {d.seed}); the seed used is saved")
    add("--steps", type=int, help=f"denoising steps (default {d.steps})")
    add("--transformer-path", help="personalized / full transformer checkpoint loaded over the base")
    add("--width", type=int, help=f"pixels, multiple of 32 (16 x the grid's block_size) (default {d.width})")
    return parser.parse_args(argv)


def read_prompts(args: argparse.Namespace, default: str) -> list[str]:
    if args.prompts_file is None:
        return [args.prompt or default]
    path = Path(args.prompts_file)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path} has no prompts (expected one prompt per line)")
    return prompts


def requests_for(args: argparse.Namespace, defaults: GenerationRequest) -> list[GenerationRequest]:
    """One request per prompt: the model's defaults, overridden by the flags that were given."""
    window = args.context_frames if args.context_frames is not None else defaults.context_frames
    base = defaults.overridden(
        negative_prompt=args.negative_prompt, sampler=args.sampler, steps=args.steps,
        guidance_scale=args.guidance_scale, seed=args.seed, height=args.height, width=args.width,
        frames=args.frames, fps=args.fps, lora_weight=args.lora_weight, context_overlap=args.context_overlap)
    base.context_frames = window or None  # 0: the whole video
    if base.context_frames is None:
        base.context_overlap = None
    return [base.overridden(prompt=prompt) for prompt in read_prompts(args, defaults.prompt)]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        selection = select_model(Path(args.models_dir), args.model, args.config, args.motion_module,
                                 args.transformer_path, args.lora, use_motion_module=not args.no_motion_module)
    except MissingWeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    requests = requests_for(args, selection.defaults.request)
    device = best_device() if args.device is None else torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    pipeline = load_pipeline(selection, requests[0].sampler, device, dtype, args.memory_mode)
    try:
        for request in requests:
            request.validate(pipeline)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if selection.lora is not None:
        apply_lora(pipeline, None, selection.lora, requests[0].lora_weight)
    if args.compile:
        pipeline.transformer.compile_blocks(backend=args.compile)
    for request in requests:
        seed = request.resolved_seed()
        video = generate(pipeline, request, seed)
        record = {**run_record(request, seed, selection, dtype, device, args.memory_mode), "compile": args.compile}
        for path in save_result(video, Path(args.output_dir), record, request.fps, FORMATS[args.format]):
            print(f"wrote {path} (seed {seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
