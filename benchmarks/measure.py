"""What the benchmark suites measure: one protocol for every case, so the cases compare.

Protocol of :func:`measure_call` for one case on its own (the transformer and generation sweeps):

1. ``warmup`` untimed calls (torch.compile compiles here);
2. one call for peak memory: on a CPU with the allocator in ``track`` mode (the resident set then
   follows the live tensors; :func:`benchmarks.common.set_malloc`), on CUDA ``max_memory_allocated``;
3. the allocator back in the timing mode, one more untimed call (so ``retain`` starts warm);
4. ``repeats`` timed calls: the median and the fastest are reported.

Cases that are compared with each other (the fast paths, the CPU target) are *variants*: each gets
its warmup and its memory call (:func:`memory_call`) on its own, and then all of them are timed
together in interleaved rounds (:func:`interleaved_rounds`), one call of every variant per round
between two matmul readings, so that contention from other work on a shared machine falls on
every variant alike and the undisturbed ("quiet") rounds can be told apart (:func:`quiet_rounds`).
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from easyanimate.flops import transformer_flops
from easyanimate.models import Transformer3DModel

from .common import DTYPES, MatmulPeak, MatmulPeaks, compare, peak_memory, set_malloc, summary, synchronize, time_calls
from .computed import activation_peak
from .setups import build_pipeline, build_transformer, original_layout, transformer_inputs


def measure_call(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int,
                 malloc: str = "default") -> dict[str, Any]:
    """Time ``fn`` and read its peak memory (the protocol in the module docstring)."""
    for _ in range(warmup):
        fn()
    if device.type == "cpu":
        set_malloc("track")
    with peak_memory(device) as memory:
        fn()
    if device.type == "cpu":
        set_malloc(malloc)
    times = time_calls(fn, device, repeats, warmup=1)
    return {"times_s": times, **summary(times), "peak_memory_bytes": memory.peak_bytes,
            "peak_memory_delta_bytes": memory.delta_bytes, "memory_method": memory.method}


def memory_call(fn: Callable[[], Any], device: torch.device) -> tuple[dict[str, Any], Any]:
    """Peak memory of one call of ``fn`` (step 2 of the protocol), and what the call returned.

    On a CPU this leaves the allocator in ``track`` mode; the timing that follows sets its own.
    """
    if device.type == "cpu":
        set_malloc("track")
    with peak_memory(device) as memory:
        result = fn()
    return {"peak_memory_bytes": memory.peak_bytes, "peak_memory_delta_bytes": memory.delta_bytes,
            "memory_method": memory.method}, result


@dataclass
class Variant:
    """One way of running a case: the call, and the allocator mode it runs under (CPU)."""

    name: str
    call: Callable[[], Any]
    malloc: str = "default"


def interleaved_rounds(variants: list[Variant], device: torch.device, rounds: int,
                       peaks: MatmulPeaks) -> list[dict[str, Any]]:
    """Time the variants round-robin, one call each per round, with a matmul reading before and after each round.

    Contention from other work then falls on every variant alike, and the readings tell which
    rounds ran undisturbed (:func:`quiet_rounds`). Variants with the same allocator mode run next to
    each other (on a CPU), and the first call after a mode switch is untimed. Returns one record per
    round: ``{"round", "matmul_before", "matmul_after", "load_average_1min", <variant name>: seconds, ...}``.
    """
    order = sorted(variants, key=lambda variant: variant.malloc)
    current = None
    records = []
    for index in range(rounds):
        record: dict[str, Any] = {"round": index, "matmul_before": peaks.measure(torch.float32)}
        for variant in order:
            if device.type == "cpu" and variant.malloc != current:
                set_malloc(variant.malloc)
                current = variant.malloc
                variant.call()
            start = time.perf_counter()
            variant.call()
            synchronize(device)
            record[variant.name] = time.perf_counter() - start
        record["matmul_after"] = peaks.measure(torch.float32)
        record["load_average_1min"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        records.append(record)
        print(f"  round {index}: " + ", ".join(f"{v.name} {record[v.name]:.3f}s" for v in variants)
              + f"; matmul {record['matmul_before'] / 1e9:.1f} / {record['matmul_after'] / 1e9:.1f} GFLOP/s",
              flush=True)
    return records


def quiet_rounds(records: list[dict[str, Any]], peak_flops_per_s: float, within: float = 0.1) -> list[dict[str, Any]]:
    """The rounds whose two matmul readings are both within ``within`` of the run's best reading."""
    return [r for r in records if min(r["matmul_before"], r["matmul_after"]) >= (1 - within) * peak_flops_per_s]


def round_times(records: list[dict[str, Any]], name: str, peak_flops_per_s: float) -> dict[str, Any]:
    """A variant's call times over all rounds (median, fastest) and its median over the quiet rounds."""
    times = [r[name] for r in records]
    quiet = [r[name] for r in quiet_rounds(records, peak_flops_per_s)]
    return {"times_s": times, **summary(times), "quiet_rounds": len(quiet),
            "quiet_median_s": statistics.median(quiet) if quiet else None}


# ------------------------------------------------------------------------------------------------
# Transformer

def transformer_step(model: Transformer3DModel, inputs: tuple[torch.Tensor, ...], backward: bool,
                     context: Callable[[], Any] = nullcontext) -> Callable[[], None]:
    """One forward (under inference mode) or forward+backward (loss = mean square of the output)."""
    def forward() -> None:
        with torch.inference_mode(), context():
            model(*inputs)

    def forward_backward() -> None:
        with context():
            model(*inputs).sample.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    model.train(backward)
    return forward_backward if backward else forward


def transformer_case(model: Transformer3DModel, width: str, frames: int, height: int, pixel_width: int, batch: int,
                     backward: bool, device: torch.device, repeats: int, warmup: int, malloc: str,
                     peaks: MatmulPeaks) -> dict[str, Any]:
    """Time, memory and FLOPs of one transformer case (rates are added at the end of the run).

    For a forward, the activation peak is also computed on meta tensors
    (:func:`benchmarks.computed.activation_peak`), to check the computed memory tiers against
    the measured resident set.
    """
    inputs = transformer_inputs(model, batch, frames, height, pixel_width)
    count = transformer_flops(model.config, frames, height // 8, pixel_width // 8, batch)
    result = measure_call(transformer_step(model, inputs, backward), device, repeats, warmup, malloc)
    row = {"mode": "forward+backward" if backward else "forward", "frames": frames, "height": height,
           "width": pixel_width, "batch": batch, "tokens": count.tokens, "dtype": _dtype_name(model.dtype),
           "flops": count.forward_backward if backward else count.total, **result,
           "time_per_frame_s": result["median_s"] / frames, "matmul_peak_after_case": peaks.measure(model.dtype)}
    if not backward:
        meta = build_transformer(width, model.config.num_layers, "meta", model.dtype,
                                 caption_channels=model.config.caption_channels, sample_size=model.config.sample_size)
        meta_inputs = tuple(t.to("meta") for t in inputs)
        row["computed_activation_bytes"] = activation_peak(lambda: meta(*meta_inputs))
    return row


def add_rates(row: dict[str, Any], peaks: MatmulPeaks) -> dict[str, Any]:
    """Achieved FLOP/s (median and fastest call) and their fraction of the run's best matmul reading."""
    peak = peaks.best(DTYPES[row["dtype"]])
    row["matmul_peak_flops_per_s"] = peak
    row["flops_per_s"] = row["flops"] / row["median_s"]
    row["best_flops_per_s"] = row["flops"] / row["best_s"]
    row["fraction_of_matmul_peak"] = row["flops_per_s"] / peak
    row["best_fraction_of_matmul_peak"] = row["best_flops_per_s"] / peak
    if row.get("quiet_median_s"):
        row["quiet_fraction_of_matmul_peak"] = row["flops"] / row["quiet_median_s"] / peak
    return row


def _dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


# ------------------------------------------------------------------------------------------------
# Whole generation

PROMPT = "a red circle moving left"


def generation_case(pipeline, frames: int, size: int, steps: int, guidance: float, device: torch.device,
                    repeats: int, warmup: int, malloc: str) -> dict[str, Any]:
    """Whole-generation time (text encoding + ``steps`` guided steps + VAE decoding) and its stages.

    The stages are timed on their own: ``encode_prompt`` and ``decode_latents`` calls, and the
    denoising as the whole call minus those two.
    """
    def generate(output_type: str = "pt"):
        return pipeline(PROMPT, video_length=frames, height=size, width=size, num_inference_steps=steps,
                        guidance_scale=guidance, output_type=output_type,
                        generator=torch.Generator().manual_seed(0)).videos

    total = measure_call(generate, device, repeats, warmup, malloc)
    latents = generate("latent")
    text = time_calls(lambda: pipeline.encode_prompt(PROMPT, guidance > 1, device=device), device, repeats, warmup=1)
    with torch.no_grad():
        decode = time_calls(lambda: pipeline.decode_latents(latents), device, repeats, warmup=0)
    text_s, decode_s = summary(text)["median_s"], summary(decode)["median_s"]
    denoise_s = total["median_s"] - text_s - decode_s
    return {"frames": frames, "size": size, "steps": steps, "guidance_scale": guidance, **total,
            "text_encoding_s": text_s, "decoding_s": decode_s, "denoising_s": denoise_s,
            "per_step_s": denoise_s / steps, "time_per_frame_s": total["median_s"] / frames}


# ------------------------------------------------------------------------------------------------
# Fast paths: each against the plain path, same inputs, same run

def unusable_dtypes(device: torch.device, floor: float = 0.25) -> dict[str, str]:
    """Reduced precisions whose matmuls run below ``floor`` x the fp32 rate here, with the reason.

    CPUs without native fp16 arithmetic (no AVX512-FP16/AMX-FP16) multiply fp16 matrices through a
    slow fallback: a full-width forward would take hours, so those paths are reported, not run.
    """
    if device.type != "cpu":
        return {}
    fp32 = MatmulPeak(512).measure(device, torch.float32, repeats=3)
    reasons = {}
    for name in ("bf16", "fp16"):
        rate = MatmulPeak(512).measure(device, DTYPES[name], repeats=3)
        if rate < floor * fp32:
            reasons[name] = (f"not run: {name} matmul runs at {rate / 1e9:.1f} GFLOP/s here "
                             f"({100 * rate / fp32:.1f}% of fp32's {fp32 / 1e9:.1f} GFLOP/s at 512^3)")
    return reasons


def sdpa_backends(device: torch.device) -> dict[str, list[SDPBackend]]:
    """The attention kernels to compare with PyTorch's automatic choice: each fused kernel, and math."""
    if device.type == "cuda":
        return {"flash": [SDPBackend.FLASH_ATTENTION], "efficient": [SDPBackend.EFFICIENT_ATTENTION],
                "cudnn": [SDPBackend.CUDNN_ATTENTION], "math": [SDPBackend.MATH]}
    return {"flash": [SDPBackend.FLASH_ATTENTION], "math": [SDPBackend.MATH]}


@dataclass
class FastPath:
    """A transformer fast path: the model and inputs it runs, the context it runs under, its allocator mode."""

    path: str
    what: str
    model: Transformer3DModel
    inputs: tuple[torch.Tensor, ...]
    context: Callable[[], Any] = nullcontext
    malloc: str | None = None  # None: the run's mode
    exact: bool = False  # True: the path cannot change the output

    def output(self) -> torch.Tensor:
        """One forward's output, as float32."""
        with torch.inference_mode(), self.context():
            return self.model(*self.inputs).sample.float()


def transformer_fast_paths(width: str, layers: int, frames: int, size: int, device: torch.device, rounds: int,
                           warmup: int, malloc: str, peaks: MatmulPeaks, compile_kwargs: dict | None = None,
                           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Forward time, memory and output difference of each transformer fast path against the plain path.

    Plain: fp32 eager, PyTorch's automatic attention kernel, the contiguous grid-sequence layout
    and the run's allocator mode. Each path gets ``warmup`` calls (at least one: compilation), then
    one call that reads the peak memory and returns the output compared with the plain output; then
    all paths are timed in ``rounds`` interleaved rounds
    (:func:`interleaved_rounds`). Differences are of the transformer output ``(1, 8, F, H/8, W/8)``.
    Returns one row per path (plain first, paths not run last) and the rounds.
    """
    model = build_transformer(width, layers, device)
    inputs = transformer_inputs(model, 1, frames, size, size)
    count = transformer_flops(model.config, frames, size // 8, size // 8, 1)
    paths = [FastPath("plain", "fp32 eager; automatic attention kernel; contiguous grid sequences", model, inputs,
                      exact=True)]
    for name, backends in sdpa_backends(device).items():
        paths.append(FastPath(f"sdpa: {name} only", f"sdpa_kernel([{backends[0].name}])", model, inputs,
                              context=lambda b=backends: sdpa_kernel(b)))
    paths.append(FastPath("grid layout: per-attention rearranges",
                          "the original v1 layout (benchmarks.setups.original_layout)", model, inputs,
                          context=original_layout))
    if device.type == "cpu":
        other = "default" if malloc == "retain" else "retain"
        paths.append(FastPath(f"malloc: {other}", f"glibc allocator mode {other!r} (MALLOC_MODES)", model, inputs,
                              malloc=other, exact=True))
    skipped = unusable_dtypes(device)
    for dtype_name in ("bf16", "fp16"):
        if dtype_name not in skipped:
            cast_inputs = tuple(t.to(DTYPES[dtype_name]) if t.is_floating_point() else t for t in inputs)
            paths.append(FastPath(dtype_name, f"weights and activations in {dtype_name}",
                                  copy.deepcopy(model).to(DTYPES[dtype_name]), cast_inputs))
    compiled = copy.deepcopy(model)
    compiled.compile_blocks(**(compile_kwargs or {}))
    paths.append(FastPath("torch.compile blocks", "Transformer3DModel.compile_blocks() (inductor)", compiled, inputs))

    rows, variants, reference = [], [], None
    for path in paths:
        step = transformer_step(path.model, path.inputs, False, path.context)
        started = time.perf_counter()
        for _ in range(max(warmup, 1)):  # at least one, so that compilation stays out of the memory call
            step()
        warmup_s = time.perf_counter() - started  # includes compilation for the compiled blocks
        memory, output = memory_call(path.output, device)
        reference = output if reference is None else reference  # the plain path is the first
        rows.append({"path": path.path, "what": path.what, "dtype": _dtype_name(path.model.dtype), "frames": frames,
                     "size": size, "flops": count.total, "warmup_s": warmup_s, **memory,
                     "changes_outputs": not path.exact, **compare(reference, output)})
        variants.append(Variant(path.path, step, path.malloc or malloc))
    records = interleaved_rounds(variants, device, rounds, peaks)
    for dtype in {path.model.dtype for path in paths}:  # more readings of each dtype's peak, for the rates
        for _ in range(3):
            peaks.measure(dtype)
    fp32_peak = peaks.best(torch.float32)  # the rounds' readings are fp32
    rows = [{**row, **round_times(records, row["path"], fp32_peak)} for row in rows]
    skipped_rows = [{"path": name, "what": reason, "skipped": True} for name, reason in skipped.items()]
    return rows + skipped_rows, records


def pipeline_fast_paths(name: str, frames: int, size: int, steps: int, guidance: float, device: torch.device,
                        rounds: int, malloc: str, peaks: MatmulPeaks) -> list[dict[str, Any]]:
    """Guidance batching, reduced precision, VAE chunking and tiling on a whole pipeline.

    Outputs are decoded videos in [0, 1] (PSNR with peak 1). Generation paths are compared with the
    plain generation (fp32, guidance as one batched forward, 8 frames per VAE call, no tiling);
    decoding paths with the plain decoding of the same latents. Every path's first call reads its
    peak memory and gives the output compared; then each group is timed in ``rounds`` interleaved
    rounds. The run starts from fixed noise, so every path denoises the same latents.
    """
    pipeline = build_pipeline(name, device)
    latent = size // pipeline.vae_scale_factor
    noise = torch.randn(1, pipeline.transformer.config.in_channels, frames, latent, latent,
                        generator=torch.Generator().manual_seed(0)).to(device)

    def generate(pipe, batched_guidance: bool = True, output_type: str = "pt"):
        pipe.batched_guidance = batched_guidance
        try:
            return pipe(PROMPT, video_length=frames, height=size, width=size, latents=noise, num_inference_steps=steps,
                        guidance_scale=guidance, output_type=output_type,
                        generator=torch.Generator().manual_seed(0)).videos
        finally:
            pipe.batched_guidance = True

    def decode(chunk: int | None = None, tiles: int | None = None):
        vae = pipeline.vae
        default_tiles = (vae.tile_sample_min_size, vae.tile_latent_min_size)
        if tiles is not None:
            vae.enable_tiling()
            vae.tile_sample_min_size, vae.tile_latent_min_size = tiles, tiles // pipeline.vae_scale_factor
        try:
            with torch.no_grad():
                return pipeline.decode_latents(latents, chunk_size=chunk)
        finally:
            vae.disable_tiling()
            vae.tile_sample_min_size, vae.tile_latent_min_size = default_tiles

    skipped = unusable_dtypes(device) if name != "tiny" else {}
    generation = [("generation: plain", "fp32; guidance as one forward of batch 2", lambda: generate(pipeline), True),
                  ("generation: guidance as two forwards", "pipeline.batched_guidance = False: two forwards of batch 1",
                   lambda: generate(pipeline, batched_guidance=False), False)]
    skipped_rows = [{"pipeline": name, "path": f"generation: {dtype_name}", "what": reason, "skipped": True}
                    for dtype_name, reason in skipped.items()]
    for dtype_name in ("bf16", "fp16"):
        if dtype_name not in skipped:
            cast = build_pipeline(name, device, DTYPES[dtype_name])
            generation.append((f"generation: {dtype_name}", f"transformer, VAE and text encoder in {dtype_name}",
                               lambda p=cast: generate(p), False))
    latents = generate(pipeline, output_type="latent")
    chunk = pipeline.vae_decode_chunk_size
    decoding = [(f"decoding: {chunk} frames per VAE call (plain)", "the default chunk size", decode, True),
                ("decoding: 1 frame per VAE call", "decode_latents(chunk_size=1)", lambda: decode(1), False),
                (f"decoding: {frames} frames per VAE call", f"decode_latents(chunk_size={frames})",
                 lambda: decode(frames), False),
                (f"decoding: tiled, {size // 2} px tiles", "vae.enable_tiling(), tiles of half the frame, 25% overlap",
                 lambda: decode(tiles=size // 2), False)]
    rows = []
    for group in (generation, decoding):
        measured = []
        reference = None
        for path, what, call, exact in group:
            memory, output = memory_call(call, device)
            reference = output if reference is None else reference  # the plain path is the first of the group
            measured.append({"pipeline": name, "path": path, "what": what, "frames": frames, "size": size,
                             "steps": steps, **memory, "changes_outputs": not exact,
                             **compare(reference, output, data_range=1.0)})
        records = interleaved_rounds([Variant(path, call, malloc) for path, _, call, _ in group], device, rounds,
                                     peaks)
        peak = peaks.best(torch.float32)
        rows += [{**row, **round_times(records, row["path"], peak)} for row in measured]
    if device.type == "cpu":
        set_malloc(malloc)
    return rows + skipped_rows


def offload_modes(frames: int, size: int, steps: int, guidance: float, device: torch.device, repeats: int,
                  warmup: int) -> list[dict[str, Any]]:
    """Generation time and peak GPU memory per memory mode (tiny pipeline); N/A rows on a CPU."""
    from easyanimate.generation import MEMORY_MODES

    rows = []
    for mode in MEMORY_MODES:
        if device.type != "cuda":
            rows.append({"memory_mode": mode, "status": "N/A on CPU: the modes move weights between CPU and GPU"})
            continue
        pipeline = build_pipeline("tiny", device, memory_mode=mode)
        generate = lambda p=pipeline: p(PROMPT, video_length=frames, height=size, width=size,  # noqa: E731
                                        num_inference_steps=steps, guidance_scale=guidance,
                                        generator=torch.Generator().manual_seed(0)).videos
        rows.append({"memory_mode": mode, "status": "measured", **measure_call(generate, device, repeats, warmup)})
        pipeline = generate = None
        torch.cuda.empty_cache()
    return rows
