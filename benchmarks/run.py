"""One entry point for the speed and memory benchmarks: ``python -m benchmarks.run --suites ...``.

Suites (each writes ``<out>/<suite>.json`` and ``<out>/<suite>.md``, plots as ``<out>/<suite>_*.png``):

* ``transformer``: forward (and, with ``--backward``, forward+backward) time, peak memory, analytic
  FLOPs, achieved FLOP/s and the ratio to the matmul peak measured in the same run, against frames
  (``--frames``, at ``--size``) and resolution (``--resolutions``, at the first frame count);
* ``generation``: whole generations of the tiny/small pipelines (text encoding + ``--steps`` guided
  steps + VAE decoding) against frames;
* ``fast-paths``: each fast path against the plain path in the same run, with max abs difference
  and PSNR of the outputs (transformer output; decoded video of a pipeline), and the offload modes;
* ``target``: the CPU target, full-width single block, 16 frames of 256x256, fp32: plain against
  the fast settings, interleaved call by call;
* ``tiers``: computed (not measured) GPU memory of the released model per setting and memory mode,
  the 12/16/24/40/80 GB tiers, and the FLOPs of a full generation.

Examples (repository root)::

    python -m benchmarks.run --suites transformer --width full --layers 1 --backward --out docs/benchmarks
    python -m benchmarks.run --suites generation,fast-paths --out docs/benchmarks
    python -m benchmarks.run --suites transformer --device cuda --dtype bf16 --layers 28 --size 512
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from easyanimate.flops import transformer_flops

from . import computed, measure, report
from .common import DTYPES, GIB, MALLOC_MODES, MatmulPeaks, default_device, machine_info, set_malloc, time_calls
from .setups import NATIVE_SIZE, PIPELINES, WIDTHS, build_pipeline, build_transformer, transformer_inputs

SUITES = ("transformer", "generation", "fast-paths", "target", "tiers")


def parse_ints(text: str) -> list[int]:
    """``16,32,48`` -> [16, 32, 48]."""
    try:
        return [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_suites(text: str) -> list[str]:
    """``all`` or a comma-separated list of :data:`SUITES`."""
    names = list(SUITES) if text == "all" else [part for part in text.split(",") if part]
    unknown = [name for name in names if name not in SUITES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown suite(s) {unknown}; valid: all, {', '.join(SUITES)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (flags alphabetised)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--backward", action="store_true", help="transformer suite: also time forward+backward")
    add("--batch", type=int, default=1, help="transformer suite: videos per forward (2 = guidance in one forward)")
    add("--device", default=default_device(), help="torch device")
    add("--dtype", choices=sorted(DTYPES), default="fp32", help="transformer suite: weights and activations")
    add("--frames", type=parse_ints, default=[16, 32, 48, 80], help="frame counts of the sweeps")
    add("--guidance", type=float, default=6.0, help="generation: classifier-free guidance scale (v1 default 6)")
    add("--layers", type=int, default=1, help="transformer blocks (28 in the release)")
    add("--malloc", choices=sorted(MALLOC_MODES), default="default",
        help="CPU: glibc allocator mode for the timed calls (see benchmarks.common.MALLOC_MODES)")
    add("--out", type=Path, default=Path("benchmarks/results"), help="folder for the JSON, markdown and PNGs")
    add("--pipeline-frames", type=parse_ints, default=[16, 32, 48, 80], help="generation: frame counts")
    add("--pipelines", default="tiny,small", help=f"generation: comma-separated, from {', '.join(PIPELINES)}")
    add("--repeats", type=int, default=3,
        help="timed calls per case; interleaved rounds of the fast paths; target: timed calls at 16 and 80 frames")
    add("--resolutions", type=parse_ints, default=[128, 256, 384, 512],
        help="transformer: pixel sizes (square, multiples of 32) of the resolution sweep")
    add("--size", type=int, default=256, help="transformer: pixel size of the frame sweep and the fast paths")
    add("--steps", type=int, default=10, help="generation: denoising steps")
    add("--suites", type=parse_suites, default=list(SUITES), help=f"all, or comma-separated from {SUITES}")
    add("--target-repeats", type=int, default=7, help="target: interleaved rounds (one timed call per variant each)")
    add("--threads", type=int, default=None, help="torch CPU threads; unset: torch's choice")
    add("--warmup", type=int, default=1, help="untimed calls before each case")
    add("--width", choices=sorted(WIDTHS), default="full", help="transformer width: tiny 64, small 512, full 1152")
    return parser.parse_args(argv)


def write(out: Path, suite: str, payload: dict[str, Any], markdown: str) -> None:
    """``<out>/<suite>.json`` and ``<out>/<suite>.md``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{suite}.json").write_text(json.dumps(payload, indent=2, default=str))
    (out / f"{suite}.md").write_text(markdown + "\n")
    print(markdown, flush=True)


def header(args: argparse.Namespace, device: torch.device, peaks: MatmulPeaks | None = None) -> str:
    """Where the numbers came from, as the first lines of every markdown file."""
    info = machine_info(device)
    where = info.get("gpu") or f"{info['cpu']} ({', '.join(info['cpu_flags'])})"
    lines = [f"Machine: {where}, {info['logical_cpus']} logical CPUs, torch {info['torch']} with "
             f"{info['torch_threads']} threads; load average at the end {info.get('load_average_1_5_15min')}."]
    if peaks is not None:
        lines.append("Matmul peak (best of the readings taken during the run): " + ", ".join(
            f"{name} {record['flops_per_s'] / 1e9:.1f} GFLOP/s ({len(record['samples_flops_per_s'])} readings, "
            f"worst {min(record['samples_flops_per_s']) / 1e9:.1f})" for name, record in peaks.record().items()))
    if device.type == "cpu":
        lines.append(f"Allocator mode for timed calls: `{args.malloc}`.")
    return "\n\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# Suites

def run_transformer(args: argparse.Namespace, device: torch.device, peaks: MatmulPeaks) -> None:
    dtype = DTYPES[args.dtype]
    model = build_transformer(args.width, args.layers, device, dtype)
    peaks.measure(dtype)
    cases = [(frames, args.size) for frames in args.frames]
    cases += [(args.frames[0], size) for size in args.resolutions if size != args.size]
    rows = []
    for frames, size in cases:
        for backward in (False, True) if args.backward else (False,):
            row = measure.transformer_case(model, args.width, frames, size, size, args.batch, backward, device,
                                           args.repeats, args.warmup, args.malloc, peaks)
            rows.append(row)
            print(f"{row['mode']:>16} F={frames:<3} {size}px median {row['median_s']:.3f} s "
                  f"best {row['best_s']:.3f} s  matmul {row['matmul_peak_after_case'] / 1e9:.1f} GFLOP/s", flush=True)
    rows = [measure.add_rates(row, peaks) for row in rows]
    frame_rows = [r for r in rows if r["height"] == args.size]
    size_rows = [r for r in rows if r["frames"] == args.frames[0]]
    what = f"{args.width} width ({'x'.join(map(str, WIDTHS[args.width]))}), {args.layers} block(s), {args.dtype}"
    report.plot_transformer(frame_rows, "frames", args.out / "transformer_frames.png",
                            f"Transformer, {what}, {args.size}x{args.size} px, {device.type}")
    report.plot_transformer(size_rows, "resolution", args.out / "transformer_resolution.png",
                            f"Transformer, {what}, {args.frames[0]} frames, {device.type}")
    scaling = frame_scaling(rows, args)
    markdown = (f"# Transformer: {what}, batch {args.batch}\n\n{header(args, device, peaks)}\n"
                f"{report.transformer_table(rows)}\n\n{scaling['text']}\n")
    write(args.out, "transformer", {"machine": machine_info(device), "settings": vars_of(args),
                                    "matmul_peaks": peaks.record(), "rows": rows, "frame_scaling": scaling},
          markdown)


def frame_scaling(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Time per frame at the longest clip over the shortest: measured here, and computed for the release."""
    forward = sorted((r for r in rows if r["mode"] == "forward" and r["height"] == args.size), key=lambda r: r["frames"])
    result: dict[str, Any] = {}
    lines = []
    if len(forward) >= 2:
        short, long = forward[0], forward[-1]
        result["measured_ratio_median"] = long["time_per_frame_s"] / short["time_per_frame_s"]
        result["measured_ratio_best"] = (long["best_s"] / long["frames"]) / (short["best_s"] / short["frames"])
        result["measured_flops_ratio"] = (long["flops"] / long["frames"]) / (short["flops"] / short["frames"])
        lines.append(f"Time per frame, {long['frames']} over {short['frames']} frames (measured, this model): "
                     f"{result['measured_ratio_median']:.3f}x (medians), {result['measured_ratio_best']:.3f}x "
                     f"(fastest calls); FLOPs per frame {result['measured_flops_ratio']:.3f}x.")
    model = computed.v1_transformer(num_layers=28)
    per_frame = {frames: transformer_flops(model.config, frames, 64, 64, 2).total / frames for frames in (16, 80)}
    result["computed_release_flops_ratio_80_16"] = per_frame[80] / per_frame[16]
    lines.append(f"Released model (28 blocks, 512x512, guidance batch 2), computed: FLOPs per frame at 80 frames are "
                 f"{result['computed_release_flops_ratio_80_16']:.3f}x those at 16 frames (the only super-linear "
                 "part is the temporal attention over 4F-token grid sequences).")
    result["text"] = "\n".join(lines)
    return result


def run_generation(args: argparse.Namespace, device: torch.device) -> None:
    rows = []
    for name in args.pipelines.split(","):
        pipeline = build_pipeline(name, device)
        for frames in args.pipeline_frames:
            row = measure.generation_case(pipeline, frames, NATIVE_SIZE[name], args.steps, args.guidance, device,
                                          args.repeats, args.warmup, args.malloc)
            rows.append({"pipeline": name, **row})
            print(f"{name} F={frames}: {row['median_s']:.2f} s (text {row['text_encoding_s']:.3f}, "
                  f"denoise {row['denoising_s']:.2f}, decode {row['decoding_s']:.2f})", flush=True)
    report.plot_generation(rows, args.out / "generation_frames.png",
                           f"Whole generation on {device.type}, guidance {args.guidance}, fp32")
    markdown = (f"# Whole generation (text encoding + {args.steps} guided steps + VAE decoding), fp32\n\n"
                f"{header(args, device)}\n{report.generation_table(rows)}\n")
    write(args.out, "generation", {"machine": machine_info(device), "settings": vars_of(args), "rows": rows}, markdown)


def run_fast_paths(args: argparse.Namespace, device: torch.device, peaks: MatmulPeaks) -> None:
    frames = args.frames[0]
    print(f"transformer fast paths: {args.width}, {args.layers} block(s), {frames} frames, {args.size}px", flush=True)
    transformer_rows, transformer_rounds = measure.transformer_fast_paths(
        args.width, args.layers, frames, args.size, device, args.repeats, args.warmup, args.malloc, peaks)
    transformer_rows = [row if row.get("skipped") else measure.add_rates(row, peaks) for row in transformer_rows]
    pipeline_name = args.pipelines.split(",")[-1]
    size = NATIVE_SIZE[pipeline_name]
    print(f"pipeline fast paths: {pipeline_name}, {frames} frames, {size}px", flush=True)
    pipeline_rows = measure.pipeline_fast_paths(pipeline_name, frames, size, args.steps, args.guidance, device,
                                                args.repeats, args.malloc, peaks)
    offload_rows = measure.offload_modes(frames, NATIVE_SIZE["tiny"], args.steps, args.guidance, device,
                                         args.repeats, args.warmup)
    generation = [r for r in pipeline_rows if r["path"].startswith("generation")]  # plain first
    decoding = [r for r in pipeline_rows if r["path"].startswith("decoding")]
    offload = report.table(["memory mode", "status", "median s", "peak memory MiB"],
                           [[r["memory_mode"], r["status"], f"{r['median_s']:.3f}" if "median_s" in r else "-",
                             report.mib(r.get("peak_memory_bytes"))] for r in offload_rows])
    quiet = len(measure.quiet_rounds(transformer_rounds, peaks.best(torch.float32)))
    markdown = (f"# Fast paths against the plain path, same run\n\n{header(args, device, peaks)}\n"
                f"Every group is timed in {args.repeats} interleaved rounds (one call of every path per round); "
                "'quiet' rounds are those whose matmul readings before and after are within 10% of the best.\n\n"
                f"## Transformer forward: {args.width} width, {args.layers} block(s), {frames} frames of "
                f"{args.size}x{args.size}\n\n{quiet} of {args.repeats} rounds quiet. Differences are of the transformer "
                f"output; PSNR uses the plain output's range as the peak.\n\n"
                f"{report.fast_path_table(transformer_rows, transformer_rows[0])}\n\n"
                f"## Whole generation: {pipeline_name} pipeline, {frames} frames of {size}x{size}, {args.steps} "
                f"steps, guidance {args.guidance}\n\nDifferences are of the decoded video in [0, 1] (PSNR peak 1).\n\n"
                f"{report.fast_path_table(generation, generation[0])}\n\n"
                f"## VAE decoding of the same latents\n\n{report.fast_path_table(decoding, decoding[0])}\n\n"
                f"## Memory modes (tiny pipeline)\n\n{offload}\n")
    write(args.out, "fast-paths", {"machine": machine_info(device), "settings": vars_of(args),
                                   "matmul_peaks": peaks.record(), "transformer": transformer_rows,
                                   "transformer_rounds": transformer_rounds, "pipeline": pipeline_rows,
                                   "memory_modes": offload_rows}, markdown)


TARGET_VARIANTS = (("plain", "default", False), ("compiled", "default", True), ("malloc retain", "retain", False),
                   ("compiled + malloc retain", "retain", True))


def run_target(args: argparse.Namespace, device: torch.device, peaks: MatmulPeaks) -> None:
    """Full width, one block, 16 frames of 256x256, fp32 forward: plain, compiled, ``retain`` allocator, both.

    The variants are timed in interleaved rounds (:func:`benchmarks.measure.interleaved_rounds`), so
    contention from other work falls on all of them alike; medians over all rounds, the fastest
    call, and medians over the quiet rounds are reported.
    """
    if device.type != "cpu":
        raise SystemExit("the target suite is the CPU target; on a GPU run the transformer suite "
                         "(--dtype bf16 --layers 28 --size 512 --frames 80 --batch 2)")
    frames, size = 16, 256
    eager = build_transformer("full", 1, device)
    compiled = build_transformer("full", 1, device)
    compiled.compile_blocks()
    inputs = transformer_inputs(eager, 1, frames, size, size)
    flops = transformer_flops(eager.config, frames, size // 8, size // 8, 1).total
    steps = {False: measure.transformer_step(eager, inputs, False), True: measure.transformer_step(compiled, inputs, False)}
    started = time.perf_counter()
    steps[True]()
    compile_s = time.perf_counter() - started
    variants = [measure.Variant(name, steps[use_compiled], malloc) for name, malloc, use_compiled in TARGET_VARIANTS]
    rounds = measure.interleaved_rounds(variants, device, args.target_repeats, peaks)
    scaling = target_frame_scaling(eager, compiled, args, peaks)
    set_malloc(args.malloc)
    peak = peaks.best(torch.float32)
    rows = [measure.add_rates({"variant": name, "malloc": malloc, "compiled": use_compiled, "flops": flops,
                               "dtype": "fp32", **measure.round_times(rounds, name, peak)}, peaks)
            for name, malloc, use_compiled in TARGET_VARIANTS]
    quiet = rows[0]["quiet_rounds"]
    table = report.table(
        ["variant", "median s", "best s", "% of peak (median, all rounds)", "% of peak (best call)",
         f"% of peak (median of the {quiet} quiet rounds)"],
        [[r["variant"], f"{r['median_s']:.3f}", f"{r['best_s']:.3f}", report.pct(r["fraction_of_matmul_peak"]),
          report.pct(r["best_fraction_of_matmul_peak"]), report.pct(r.get("quiet_fraction_of_matmul_peak"))]
         for r in rows])
    scaling_table = report.table(
        ["variant", "s/frame at 16 frames (median / best)", "s/frame at 80 frames (median / best)",
         "80 over 16 (median / best)"],
        [[r["variant"], f"{r['16']['median_s'] / 16:.4f} / {r['16']['best_s'] / 16:.4f}",
          f"{r['80']['median_s'] / 80:.4f} / {r['80']['best_s'] / 80:.4f}",
          f"{r['ratio_median']:.3f}x / {r['ratio_best']:.3f}x"] for r in scaling])
    markdown = (f"# CPU target: full-width single block, {frames} frames of {size}x{size}, fp32 forward\n\n"
                f"{header(args, device, peaks)}\n{flops / 1e9:.1f} GFLOP per forward (analytic); "
                f"{args.target_repeats} interleaved rounds, {quiet} quiet (both matmul readings of the round "
                f"within 10% of the best); compilation took {compile_s:.1f} s.\n\n{table}\n\n"
                f"## Time per frame, 80 against 16 frames (same block, {size}x{size})\n\n{scaling_table}\n")
    write(args.out, "target", {"machine": machine_info(device), "settings": vars_of(args),
                               "matmul_peaks": peaks.record(), "rows": rows, "rounds": rounds,
                               "compile_s": compile_s, "frame_scaling": scaling}, markdown)


def target_frame_scaling(eager, compiled, args: argparse.Namespace, peaks: MatmulPeaks) -> list[dict[str, Any]]:
    """Seconds per frame at 16 and 80 frames for the plain and the fastest variant (``--repeats`` timed calls each,
    after one untimed call, which recompiles the compiled blocks for the new shape)."""
    results = []
    for name, malloc, model in (("plain", "default", eager), ("compiled + malloc retain", "retain", compiled)):
        set_malloc(malloc)
        result: dict[str, Any] = {"variant": name}
        for frames in (16, 80):
            inputs = transformer_inputs(model, 1, frames, 256, 256)
            times = time_calls(measure.transformer_step(model, inputs, False), model.device, args.repeats,
                               warmup=1)
            result[str(frames)] = {"times_s": times, "median_s": statistics.median(times), "best_s": min(times)}
            peaks.measure(torch.float32)
        result["ratio_median"] = (result["80"]["median_s"] / 80) / (result["16"]["median_s"] / 16)
        result["ratio_best"] = (result["80"]["best_s"] / 80) / (result["16"]["best_s"] / 16)
        print(f"frame scaling {name}: 80/16 per-frame {result['ratio_median']:.3f}x (median)", flush=True)
        results.append(result)
    return results


def run_tiers(args: argparse.Namespace, device: torch.device) -> None:
    sizes = {name: computed.component_sizes(DTYPES[name]) for name in ("bf16", "fp32")}
    cache: dict = {}
    rows = [computed.generation_peak(setting, sizes[setting.dtype], cache) for setting in computed.default_settings()]
    summary = computed.tier_summary(rows)
    release = [r for r in rows if (r["height"], r["frames"], r["window"]) == (512, 80, None)]
    flops = computed.generation_flops()
    b = sizes["bf16"]
    components = report.table(
        ["component", "parameters", "buffers", "bf16 bytes", "fp32 bytes"],
        [["transformer (with motion modules)", f"{b.transformer_params:,}", f"{b.transformer_buffers:,}",
          report.gib(b.transformer_bytes), report.gib(sizes["fp32"].transformer_bytes)],
         ["T5-XXL encoder", f"{b.text_encoder_params:,}", "0", report.gib(b.text_encoder_bytes),
          report.gib(sizes["fp32"].text_encoder_bytes)],
         ["SD VAE", f"{b.vae_params:,}", "0", report.gib(b.vae_bytes), report.gib(sizes["fp32"].vae_bytes)]])
    flop_lines = report.table(
        ["part", "TFLOP"],
        [["T5-XXL, prompt + negative prompt", f"{flops['text_encoding'] / 1e12:.1f}"],
         ["transformer, one step (batch 2)", f"{flops['transformer_per_step'] / 1e12:.1f}"],
         ["transformer, 30 steps", f"{flops['denoising'] / 1e12:,.0f}"],
         ["VAE decoding, 80 frames", f"{flops['decoding'] / 1e12:.0f}"],
         ["total", f"{flops['total'] / 1e12:,.0f}"]])
    at_rates = report.table(
        ["achieved rate (assumed)", "seconds for the whole generation (computed)"],
        [[f"{rate} TFLOP/s", f"{flops['total'] / (rate * 1e12):.0f}"] for rate in (100, 200, 400, 800)])
    markdown = (
        "# Memory tiers of the released model (computed, not measured)\n\n"
        f"Weights from parameter counts of the real classes built on the meta device; activations from "
        f"running the real forward code on meta tensors and tracking live tensor bytes; "
        f"{computed.CUDA_OVERHEAD_BYTES / GIB:.0f} GiB added for the CUDA context and library workspaces. "
        "Attention as a fused kernel (PyTorch's flash / memory-efficient SDPA on a GPU). VAE decoding "
        f"{computed.VAE_DECODE_CHUNK} frames per call. 1 GB = 10^9 bytes.\n\n{components}\n\n"
        "## Largest setting per tier, bf16\n\n" + report.tier_summary_table(summary, "bf16") +
        "\n\n## Largest setting per tier, fp32\n\n" + report.tier_summary_table(summary, "fp32") +
        "\n\n## 512x512x80 (the v1 default), every mode\n\n" + report.tiers_table(release) +
        "\n\n## Every setting\n\n" + report.tiers_table(rows) +
        "\n\n## FLOPs of one 512x512x80 generation, 30 steps with guidance (computed)\n\n" + flop_lines +
        "\n\n" + at_rates + "\n")
    write(args.out, "tiers", {"components": {k: vars(v) for k, v in sizes.items()}, "rows": rows,
                              "summary": summary, "generation_flops": flops}, markdown)


def vars_of(args: argparse.Namespace) -> dict[str, Any]:
    """The command line as JSON."""
    return {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}


def main(argv: list[str] | None = None) -> None:
    """Run the suites named on the command line."""
    args = parse_args(argv)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        set_malloc(args.malloc)
    args.out.mkdir(parents=True, exist_ok=True)
    peaks = MatmulPeaks(device)
    runners = {"transformer": lambda: run_transformer(args, device, peaks),
               "generation": lambda: run_generation(args, device),
               "fast-paths": lambda: run_fast_paths(args, device, peaks),
               "target": lambda: run_target(args, device, peaks),
               "tiers": lambda: run_tiers(args, device)}
    for suite in args.suites:
        print(f"== {suite}", flush=True)
        runners[suite]()


if __name__ == "__main__":
    main()
