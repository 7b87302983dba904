"""Benchmark the video transformer: time, peak memory and achieved FLOP/s against the measured matmul peak.

The model is built from a v1 yaml with random weights (motion modules included: their output
projections are *not* zero-initialised here, so the temporal path does real work) at the PixArt-XL
sizes of the :class:`~easyanimate.models.Transformer3DModel` defaults, optionally with fewer layers
or a smaller width. For each frame count it reports the median forward time (and forward+backward
with ``--backward``), the analytic matmul FLOPs of :mod:`easyanimate.flops`, the achieved FLOP/s,
and their ratio to a large square matmul timed in the same run, dtype and device.

Run from the repository root::

    python -m benchmarks.bench_transformer --layers 1 --frames 16 --height 256 --width-px 256 --backward
    python -m benchmarks.bench_transformer --layers 28 --dtype bf16 --sweep-frames 16,32,48,80 --markdown

See ``benchmarks/README.md`` for what each number means.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from easyanimate.config import load_config, transformer_kwargs_for_model
from easyanimate.flops import transformer_flops
from easyanimate.models import Transformer3DModel

from .common import (DTYPES, MIB, MatmulPeak, MemoryReading, default_device, default_peak_size, device_name,
                     peak_memory, synchronize, time_calls)

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "easyanimate_video_motion_module_v1.yaml"
WIDTHS = {"tiny": (2, 32), "small": (8, 64), "full": (16, 72)}  # heads x head dim; full = PixArt-XL (1152)
VAE_SCALE = 8  # pixels per latent pixel (the SD VAE of v1)
CAPTION_CHANNELS = 4096  # T5-XXL width


def parse_width(text: str) -> tuple[int, int]:
    """``tiny``, ``full`` or ``HEADSxHEAD_DIM`` (e.g. ``16x72``) -> (heads, head dim)."""
    if text in WIDTHS:
        return WIDTHS[text]
    try:
        heads, head_dim = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"width must be one of {', '.join(WIDTHS)} or HEADSxHEAD_DIM, "
                                         f"got {text!r}") from None
    return heads, head_dim


def parse_frames(text: str) -> list[int]:
    """``16,32,48`` -> [16, 32, 48]."""
    try:
        return [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated frame counts, got {text!r}") from None


def build_model(config_path: Path, layers: int, heads: int, head_dim: int, device: torch.device,
                dtype: torch.dtype, seed: int) -> Transformer3DModel:
    """The transformer of ``config_path`` at the given size, random weights, on ``device``."""
    extras = transformer_kwargs_for_model(load_config(config_path).transformer_additional_kwargs)
    if extras["motion_module_kwargs"] is not None:
        # A fresh motion module is the identity (zero output projection); benchmark a trained-like one.
        extras["motion_module_kwargs"]["zero_initialize"] = False
    torch.manual_seed(seed)
    with torch.device(device):
        model = Transformer3DModel(num_layers=layers, num_attention_heads=heads, attention_head_dim=head_dim,
                                   cross_attention_dim=heads * head_dim, caption_channels=CAPTION_CHANNELS,
                                   **extras)
    # diffusers warns on any ModelMixin.to(dtype); the cast is only needed for fp16/bf16 runs.
    return model if dtype == torch.float32 else model.to(dtype)


def make_inputs(batch: int, frames: int, latent_height: int, latent_width: int, text_len: int,
                device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Random latents ``(B, 4, F, H, W)``, text ``(B, L, 4096)``, an all-ones mask ``(B, L)`` and steps ``(B,)``."""
    generator = torch.Generator(device=device).manual_seed(1)
    latents = torch.randn(batch, 4, frames, latent_height, latent_width, device=device, dtype=dtype,
                          generator=generator)
    text = torch.randn(batch, text_len, CAPTION_CHANNELS, device=device, dtype=dtype, generator=generator)
    mask = torch.ones(batch, text_len, device=device)
    steps = torch.randint(0, 1000, (batch,), device=device, generator=generator)
    return latents, text, mask, steps


@dataclass
class Case:
    """One measured configuration and mode (forward, or forward+backward)."""

    mode: str
    frames: int
    times_s: list[float]
    flops: int
    memory: MemoryReading
    flops_by_part: dict[str, int] = field(default_factory=dict)

    @property
    def time_s(self) -> float:
        """Median of the timed calls."""
        return statistics.median(self.times_s)


def measure(model: Transformer3DModel, args: argparse.Namespace, frames: int, backward: bool,
            device: torch.device) -> Case:
    """Time the forward (or forward+backward) at ``frames`` frames and read its peak memory."""
    dtype = DTYPES[args.dtype]
    latent_height, latent_width = args.height // VAE_SCALE, args.width_px // VAE_SCALE
    inputs = make_inputs(args.batch, frames, latent_height, latent_width, args.text_len, device, dtype)
    count = transformer_flops(model.config, frames, latent_height, latent_width, args.batch, args.text_len)

    def forward() -> None:
        with torch.inference_mode():
            model(*inputs)

    def forward_backward() -> None:
        model(*inputs).sample.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    step = forward_backward if backward else forward
    model.train(backward)
    for _ in range(args.warmup):
        step()
    with peak_memory(device) as memory:
        times = time_calls(step, device, args.repeats, warmup=0)
    if args.profile:
        profile(step, device)
    return Case("forward+backward" if backward else "forward", frames, times,
                count.forward_backward if backward else count.total, memory, count.parts)


# Profiler op names by kind, for the time summary printed with --profile (first match wins).
OP_KINDS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "convolution"),
    "attention": ("scaled_dot_product", "flash_attention", "efficient_attention", "cudnn_attention"),
    "copy/layout": ("aten::copy_", "aten::clone", "aten::cat", "aten::_to_copy", "aten::repeat_interleave"),
    "norm": ("layer_norm", "group_norm"),
    "activation": ("gelu", "silu"),
}


def profile(step: Callable[[], None], device: torch.device, rows: int = 20) -> None:
    """Print the ops that take the most time in one call of ``step``, and the time by kind of op."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        step()
        synchronize(device)
    attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages(group_by_input_shape=True).table(sort_by=attribute, row_limit=rows,
                                                             max_name_column_width=40))
    seconds: dict[str, float] = {}
    for event in prof.key_averages():
        kind = next((k for k, names in OP_KINDS.items() if any(n in event.key for n in names)), "other")
        seconds[kind] = seconds.get(kind, 0.0) + getattr(event, attribute) / 1e6
    total = sum(seconds.values())
    print("time by kind of op: " + ", ".join(f"{kind} {secs:.3f} s ({100 * secs / total:.0f}%)"
                                             for kind, secs in sorted(seconds.items(), key=lambda kv: -kv[1])))


def result_record(case: Case, args: argparse.Namespace, peak: MatmulPeak) -> dict[str, Any]:
    """One JSON row; ratios are to the best matmul reading of the whole run."""
    achieved = case.flops / case.time_s
    best = case.flops / min(case.times_s)
    return {
        "mode": case.mode, "frames": case.frames, "height": args.height, "width": args.width_px,
        "batch": args.batch, "time_s": case.time_s, "times_s": case.times_s,
        "time_per_frame_s": case.time_s / case.frames, "flops": case.flops,
        "flops_per_s": achieved, "fraction_of_matmul_peak": achieved / peak.flops_per_s,
        "best_flops_per_s": best, "best_fraction_of_matmul_peak": best / peak.flops_per_s,
        "peak_memory_bytes": case.memory.peak_bytes, "peak_memory_delta_bytes": case.memory.delta_bytes,
        "memory_method": case.memory.method, "forward_flops_by_part": case.flops_by_part,
    }


MARKDOWN_HEADER = (
    "| device | dtype | layers | width | frames | size | mode | time (s) | s/frame | GFLOP | GFLOP/s "
    "| matmul peak GFLOP/s | % of peak | peak mem delta (MiB) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def markdown_row(record: dict[str, Any], settings: dict[str, Any], peak: MatmulPeak) -> str:
    """One markdown table row for a JSON row."""
    memory = record["peak_memory_delta_bytes"]
    cells = [
        settings["device_name"], settings["dtype"], settings["layers"], settings["width"], record["frames"],
        f"{record['height']}x{record['width']}", record["mode"], f"{record['time_s']:.3f}",
        f"{record['time_per_frame_s']:.4f}", f"{record['flops'] / 1e9:.1f}", f"{record['flops_per_s'] / 1e9:.1f}",
        f"{peak.flops_per_s / 1e9:.1f}", f"{100 * record['fraction_of_matmul_peak']:.1f}",
        "n/a" if memory is None else f"{memory / MIB:.0f}",
    ]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (flags alphabetised; see benchmarks/README.md)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--backward", action="store_true", help="also time forward+backward (a training step without the optimiser)")
    add("--batch", type=int, default=1, help="videos per forward")
    add("--compile", action="store_true",
        help="torch.compile every transformer block (compile time is spent in warmup)")
    add("--config", type=Path, default=DEFAULT_CONFIG, help="model yaml with transformer_additional_kwargs")
    add("--device", default=default_device(), help="torch device")
    add("--dtype", choices=sorted(DTYPES), default="fp32", help="weights and activations dtype")
    add("--frames", type=int, default=16, help="frames per video (latent frames: the v1 VAE is per frame)")
    add("--height", type=int, default=512, help="video height in pixels (multiple of 32)")
    add("--json", type=Path, default=None, help="write settings, matmul peak and results here")
    add("--layers", type=int, default=28, help="transformer blocks (28 in the release; 1 for a per-block figure)")
    add("--markdown", action="store_true", help="print the results as a markdown table")
    add("--peak-size", type=int, default=None, help="matmul size for the peak; unset: 2048 on CPU, 8192 on CUDA")
    add("--profile", action="store_true", help="print the top ops of one extra call per case (torch.profiler)")
    add("--repeats", type=int, default=3, help="timed calls per case; the median is reported")
    add("--seed", type=int, default=0, help="weight seed")
    add("--sweep-frames", type=parse_frames, default=None,
        help="comma-separated frame counts to run instead of --frames")
    add("--text-len", type=int, default=120, help="text tokens L")
    add("--threads", type=int, default=None, help="torch CPU threads; unset: torch's choice")
    add("--warmup", type=int, default=1, help="untimed calls before timing each case")
    add("--width", type=parse_width, default="full", help="tiny (2x32), small (8x64 = 512), full (16x72 = 1152) or HEADSxHEAD_DIM")
    add("--width-px", type=int, default=512, help="video width in pixels (multiple of 32)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark described by the command line; returns the JSON rows."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    heads, head_dim = args.width
    if args.height % VAE_SCALE or args.width_px % VAE_SCALE:
        raise SystemExit(f"pixel size {args.height}x{args.width_px} must be a multiple of {VAE_SCALE}")
    frame_counts = args.sweep_frames or [args.frames]
    model = build_model(args.config, args.layers, heads, head_dim, device, dtype, args.seed)
    model.check_latent_shape((args.batch, model.config.in_channels, frame_counts[0],
                              args.height // VAE_SCALE, args.width_px // VAE_SCALE))
    if args.compile:
        model.compile_blocks()

    peak = MatmulPeak(args.peak_size or default_peak_size(device))
    peak.measure(device, dtype)
    settings = {
        "config": str(args.config), "layers": args.layers, "width": f"{heads}x{head_dim}", "dtype": args.dtype,
        "device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
        "compile": args.compile, "repeats": args.repeats, "warmup": args.warmup, "text_len": args.text_len,
        "torch": torch.__version__, "forward_backward_flops": "3 x forward (analytic estimate)",
    }
    cases = []
    for frames in frame_counts:
        for backward in (False, True) if args.backward else (False,):
            cases.append(measure(model, args, frames, backward, device))
            peak.measure(device, dtype)
            print(f"{cases[-1].mode:>16} F={frames:<3} median {cases[-1].time_s:.3f} s "
                  f"(min {min(cases[-1].times_s):.3f} s)  matmul {peak.samples_flops_per_s[-1] / 1e9:.1f} GFLOP/s",
                  flush=True)
    records = [result_record(case, args, peak) for case in cases]
    print(f"{settings['device_name']}, {args.dtype}: {peak.size}^3 matmul peak {peak.flops_per_s / 1e9:.1f} GFLOP/s "
          f"(best of {len(peak.samples_flops_per_s)} readings)")
    for record in records:
        print(f"{record['mode']:>16} F={record['frames']:<3} {record['time_s']:.3f} s  "
              f"{record['flops'] / 1e9:.1f} GFLOP  {record['flops_per_s'] / 1e9:.1f} GFLOP/s "
              f"({100 * record['fraction_of_matmul_peak']:.1f}% of peak; best call "
              f"{100 * record['best_fraction_of_matmul_peak']:.1f}%)  "
              f"mem +{(record['peak_memory_delta_bytes'] or 0) / MIB:.0f} MiB")
    if args.markdown:
        print(MARKDOWN_HEADER)
        for record in records:
            print(markdown_row(record, settings, peak))
    if args.json is not None:
        args.json.write_text(json.dumps({"settings": settings, "matmul_peak": peak.record(), "results": records},
                                        indent=2))
    return records


if __name__ == "__main__":
    main()
