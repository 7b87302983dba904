"""Training step time and peak memory per mode: motion module, whole model, LoRA; +/- checkpointing.

One optimizer step = forward on noisy latents, the improved-DDPM loss, backward, AdamW step, exactly
as ``easyanimate.training.trainer.training_step`` does it (latents and text states are random, as
with ``--precompute``). Each configuration runs in a fresh subprocess so peak memory is its own.

    python benchmarks/bench_train.py --width small --layers 2 --frames 16 --size 256
    python benchmarks/bench_train.py --device cuda --width full --layers 28 --frames 16 --size 512 --dtype bf16

Prints a markdown table; ``--json PATH`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

WIDTHS = {"tiny": (2, 32), "small": (8, 64), "full": (16, 72)}
MODES = ("motion_module", "full", "lora")


def measure(args: argparse.Namespace, mode: str, checkpointing: bool) -> dict:
    import torch

    from easyanimate.config import load_config, transformer_kwargs_for_model
    from easyanimate.lora import TRANSFORMER, lora_target_modules
    from easyanimate.models import Transformer3DModel
    from easyanimate.training.diffusion import ImprovedDDPM
    from easyanimate.training.trainer import select_trainable

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    heads, head_dim = WIDTHS[args.width]
    extras = transformer_kwargs_for_model(load_config(args.config).transformer_additional_kwargs)
    model = Transformer3DModel(num_attention_heads=heads, attention_head_dim=head_dim, num_layers=args.layers,
                               cross_attention_dim=heads * head_dim, caption_channels=args.text_dim,
                               sample_size=args.size // 8, **extras).to(device)
    if mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        names = lora_target_modules(model, TRANSFORMER)
        pattern = "^(" + "|".join(n.replace(".", r"\.") for n in names) + ")$"
        model.requires_grad_(False)
        inject_adapter_in_model(LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=pattern), model)
        params = [p for n, p in model.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
        groups = [{"params": params}]
    else:
        groups = select_trainable(model, ["attn_temporal"] if mode == "motion_module" else ["."], [], 1e-4)
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    optimizer = torch.optim.AdamW(groups, lr=1e-4)
    diffusion = ImprovedDDPM()
    latent = args.size // 8
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def step() -> float:
        x0 = torch.randn(args.batch, 4, args.frames, latent, latent, device=device)
        text = torch.randn(args.batch, 120, args.text_dim, device=device)
        noise = torch.randn_like(x0)
        t = diffusion.sample_timesteps(args.batch, device=device)
        noisy = diffusion.q_sample(x0, t, noise)
        with autocast:
            output = model(noisy, text, None, t, return_dict=False)[0]
        loss = diffusion.training_losses(output.float(), x0, noisy, t, noise)["loss"].mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    step()  # warm-up: optimizer state and allocator
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"mode": mode, "checkpointing": checkpointing, "trainable_params": trainable,
            "step_seconds_median": sorted(times)[len(times) // 2], "step_seconds_best": min(times),
            "peak_memory_mb": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1, help="clips per step")
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "config" /
                                                 "easyanimate_video_motion_module_v1.yaml"), help="model yaml")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="autocast dtype (weights stay fp32)")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    parser.add_argument("--rank", type=int, default=128, help="LoRA rank")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps")
    parser.add_argument("--size", type=int, default=256, help="pixel height and width")
    parser.add_argument("--text-dim", type=int, default=256, help="text-encoder width (4096 for T5-XXL)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--width", default="small", choices=list(WIDTHS), help="model width preset")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "CHECKPOINTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args, args.worker[0], args.worker[1] == "1")))
        return
    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("json", "worker")]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "0"}
    rows = []
    for mode in args.modes.split(","):
        for checkpointing in (False, True):
            out = subprocess.run([sys.executable, __file__, *passthrough, "--worker", mode, str(int(checkpointing))],
                                 capture_output=True, text=True, check=True, env=env)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.width} width, {args.layers} layers, {args.frames} frames, {args.size}x{args.size}, batch {args.batch}, "
          f"{args.dtype}, {args.device}")
    print("| mode | checkpointing | trainable params | step (s, median) | step (s, best) | peak memory (MB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {'yes' if r['checkpointing'] else 'no'} | {r['trainable_params']:,} | "
              f"{r['step_seconds_median']:.2f} | {r['step_seconds_best']:.2f} | {r['peak_memory_mb']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k not in ("json", "worker")},
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
