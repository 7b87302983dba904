"""Generate videos from text with EasyAnimate.

With no flags it uses the released v1 weights under ``models/`` and the original defaults (DPM++,
30 steps, guidance 6.0, seed 43, 512x512, 80 frames at 12 fps). When those weights are absent it
falls back to the small demo model shipped in ``models/`` and that model's own defaults.

Examples::

    python predict_t2v.py --prompt "a blue square moving up"
    python predict_t2v.py --prompts-file prompts.txt --format both --seed -1
    python predict_t2v.py --model models/Diffusion_Transformer/PixArt-XL-2-512x512 --memory-mode model_cpu_offload
    python predict_t2v.py --frames 240 --context-frames 80 --context-overlap 20     # longer than trained
    python predict_t2v.py --compile                                                # compiled blocks

On a Linux CPU the allocator matters too. Starting the process with
``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647:glibc.malloc.top_pad=268435456``
keeps freed tensor memory mapped for reuse instead of returning it to the system after every step:
the settings of the benchmarks' ``retain`` mode, 1.28x for a full-width block (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from easyanimate.generation import (
    MEMORY_MODES,
    GenerationRequest,
    MissingWeightsError,
    apply_lora,
    best_device,
    check_sampler,
    generate,
    load_pipeline,
    model_zoo_text,
    resolve_dtype,
    run_record,
    save_result,
    select_model,
)
from easyanimate.schedulers import SAMPLER_NAMES

FORMATS = {"mp4": ("mp4",), "gif": ("gif",), "both": ("mp4", "gif")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    add("--fps", type=int, help="frames per second of the file (default 12)")
    add("--frames", type=int, help="number of frames; 1 writes an image (default 80)")
    add("--guidance-scale", type=float, help="classifier-free guidance (default 6.0)")
    add("--height", type=int, help="pixels, multiple of 32 (default 512)")
    add("--lora", help="LoRA file (kohya format) merged into the transformer and T5")
    add("--lora-weight", type=float, help="LoRA multiplier (default 0.55)")
    add("--memory-mode", default="none", choices=list(MEMORY_MODES), help="; ".join(f"{k}: {v}" for k, v in MEMORY_MODES.items()))
    add("--model", help="PixArt diffusers folder (default models/Diffusion_Transformer/PixArt-XL-2-512x512)")
    add("--models-dir", default="models", help="root of Diffusion_Transformer/, Motion_Module/, Personalized_Model/")
    add("--motion-module", help="motion-module file (default models/Motion_Module/easyanimate_v1_mm.safetensors)")
    add("--negative-prompt", help="what to avoid (default: the original negative prompt)")
    add("--no-motion-module", action="store_true", help="generate every frame independently (for comparison)")
    add("--output-dir", default="samples/easyanimate-videos", help="where videos and their JSON sidecars go")
    add("--prompt", help="text prompt (default: the model's default prompt)")
    add("--prompts-file", help="text file with one prompt per line; one video per line")
    add("--sampler", choices=SAMPLER_NAMES, help="sampler (default DPM++)")
    add("--seed", type=int, help="random seed; -1 draws one (default 43); the seed used is saved")
    add("--steps", type=int, help="denoising steps (default 30)")
    add("--transformer-path", help="personalized / full transformer checkpoint loaded over the base")
    add("--width", type=int, help="pixels, multiple of 32 (default 512)")
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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        selection = select_model(Path(args.models_dir), args.model, args.config, args.motion_module,
                                 args.transformer_path, args.lora, use_motion_module=not args.no_motion_module)
    except MissingWeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    d = selection.defaults
    prompts = read_prompts(args, d.prompt)
    pick = lambda value, default: default if value is None else value  # noqa: E731
    window = pick(args.context_frames, d.context_frames) or None  # 0: the whole video
    requests = [GenerationRequest(
        prompt=prompt, negative_prompt=pick(args.negative_prompt, d.negative_prompt),
        sampler=check_sampler(pick(args.sampler, d.sampler)), steps=pick(args.steps, d.steps),
        guidance_scale=pick(args.guidance_scale, d.guidance_scale), seed=pick(args.seed, d.seed),
        height=pick(args.height, d.height), width=pick(args.width, d.width), frames=pick(args.frames, d.frames),
        fps=pick(args.fps, d.fps), context_frames=window,
        context_overlap=pick(args.context_overlap, d.context_overlap) if window else None)
        for prompt in prompts]
    device = best_device() if args.device is None else __import__("torch").device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    lora_weight = pick(args.lora_weight, d.lora_weight)
    pipeline = load_pipeline(selection, requests[0].sampler, device, dtype, args.memory_mode)
    pipeline.check_inputs("x", requests[0].height, requests[0].width, requests[0].frames, requests[0].steps,
                          requests[0].guidance_scale, None, None, None, None, None, "pt", 1, None, None)
    if selection.lora is not None:
        apply_lora(pipeline, None, selection.lora, lora_weight)
    if args.compile:
        pipeline.transformer.compile_blocks(backend=args.compile)
    for request in requests:
        seed = request.resolved_seed()
        video = generate(pipeline, request, seed)
        record = {**run_record(request, seed, selection, lora_weight, dtype, device, args.memory_mode),
                  "compile": args.compile}
        for path in save_result(video, Path(args.output_dir), record, request.fps, FORMATS[args.format]):
            print(f"wrote {path} (seed {seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
