"""Peak memory and time of one denoising step for long clips, with and without temporal windows.

Each configuration runs in a fresh subprocess (peak RSS only grows), builds a transformer with
random weights, then times one guided forward pass (batch 2, as with classifier-free guidance) on
``frames`` frames. Reported: peak memory above the loaded model ("activation peak"), time, and time
per frame. The question it answers: does memory follow the window or the clip length?

    python benchmarks/bench_long_video.py --window 16 --multiples 1,2,4 --size 256 --layers 2
    python benchmarks/bench_long_video.py --device cuda --width full --layers 28 --size 512 --window 80

Output: a markdown table on stdout and ``--json`` if given.
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


def measure(args: argparse.Namespace, frames: int, windowed: bool) -> dict:
    """Run in this process: build, one warm-up, then a measured forward."""
    import torch

    from easyanimate.config import load_config, transformer_kwargs_for_model
    from easyanimate.models import Transformer3DModel
    from easyanimate.models.motion_module import TemporalContext

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    heads, head_dim = WIDTHS[args.width]
    extras = transformer_kwargs_for_model(load_config(args.config).transformer_additional_kwargs)
    model = Transformer3DModel(num_attention_heads=heads, attention_head_dim=head_dim, num_layers=args.layers,
                               cross_attention_dim=heads * head_dim, caption_channels=args.text_dim,
                               sample_size=args.size // 8, **extras).to(device, dtype).eval()
    context = TemporalContext(args.window, args.window // 4) if windowed else None
    latent = args.size // 8
    x = torch.randn(2, 4, frames, latent, latent, device=device, dtype=dtype)
    text = torch.randn(2, 120, args.text_dim, device=device, dtype=dtype)
    t = torch.tensor([500, 500], device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.no_grad():
        start = time.perf_counter()
        model(x, text, timestep=t, temporal_context=context)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"frames": frames, "windowed": windowed, "window": args.window if windowed else None,
            "activation_peak_mb": (peak - base) / 2**20, "seconds": seconds, "seconds_per_frame": seconds / frames}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "config" /
                                                 "easyanimate_video_motion_module_v1.yaml"), help="model yaml")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="weights and activations")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks")
    parser.add_argument("--multiples", default="1,2,4", help="clip lengths as multiples of the window")
    parser.add_argument("--size", type=int, default=256, help="pixel height and width")
    parser.add_argument("--text-dim", type=int, default=256, help="text-encoder width (4096 for T5-XXL)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--width", default="full", choices=list(WIDTHS), help="model width preset")
    parser.add_argument("--window", type=int, default=16, help="temporal window (frames)")
    parser.add_argument("--worker", nargs=2, metavar=("FRAMES", "WINDOWED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args, int(args.worker[0]), args.worker[1] == "1")))
        return
    rows = []
    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("json", "worker")]
    for multiple in (int(m) for m in args.multiples.split(",")):
        frames = multiple * args.window
        for windowed in ((False, True) if multiple > 1 else (False,)):
            # Large blocks straight from mmap: freed tensors leave RSS, so peak RSS tracks live tensors.
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "0"}
            out = subprocess.run([sys.executable, __file__, *passthrough, "--worker", str(frames), str(int(windowed))],
                                 capture_output=True, text=True, check=True, env=env)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]["activation_peak_mb"]
    print("| frames | windowed | activation peak (MB) | vs one window | s/step | s/frame |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['frames']} | {'yes' if r['windowed'] else 'no'} | {r['activation_peak_mb']:.0f} | "
              f"{r['activation_peak_mb'] / base:.2f}x | {r['seconds']:.2f} | {r['seconds_per_frame']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k not in ("json", "worker")},
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
