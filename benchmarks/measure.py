"""What the benchmark suites measure: one protocol for every case, so the cases compare.

Protocol of :func:`measure_call` for one case (a forward, a training step, a generation, ...):

1. ``warmup`` untimed calls (torch.compile compiles here);
2. one call for peak memory: on a CPU with the allocator in ``track`` mode (the resident set then
   follows the live tensors; :func:`benchmarks.common.set_malloc`), on CUDA ``max_memory_allocated``;
3. the allocator back in the timing mode, one more untimed call (so ``retain`` starts warm);
4. ``repeats`` timed calls: the median and the fastest are reported.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from easyanimate.flops import transformer_flops
from easyanimate.models import Transformer3DModel

from .common import DTYPES, MatmulPeak, MatmulPeaks, compare, peak_memory, set_malloc, summary, time_calls
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


def transformer_fast_paths(width: str, layers: int, frames: int, size: int, device: torch.device, repeats: int,
                           warmup: int, malloc: str, peaks: MatmulPeaks, compile_kwargs: dict | None = None,
                           ) -> list[dict[str, Any]]:
    """Forward time, memory and output difference of each transformer fast path against the plain path.

    Plain: fp32 eager, PyTorch's automatic attention kernel, the contiguous grid-sequence layout
    and the run's allocator mode. Differences are of the transformer output ``(1, 8, F, H/8, W/8)``.
    """
    model = build_transformer(width, layers, device)
    inputs = transformer_inputs(model, 1, frames, size, size)
    count = transformer_flops(model.config, frames, size // 8, size // 8, 1)
    with torch.inference_mode():
        reference = model(*inputs).sample.float()
    rows = []

    def case(path: str, what: str, run_model: Transformer3DModel, run_inputs, context=nullcontext,
             run_malloc: str = malloc, exact: bool = False, extra: dict | None = None) -> None:
        result = measure_call(transformer_step(run_model, run_inputs, False, context), device, repeats, warmup,
                              run_malloc)
        with torch.inference_mode(), context():
            output = run_model(*run_inputs).sample.float()
        peaks.measure(run_model.dtype)
        rows.append({"path": path, "what": what, "dtype": _dtype_name(run_model.dtype), "frames": frames,
                     "size": size, "flops": count.total, **result, "changes_outputs": not exact,
                     **compare(reference, output), **(extra or {})})
        print(f"  {path}: median {result['median_s']:.3f} s, best {result['best_s']:.3f} s", flush=True)

    case("plain", "fp32 eager; automatic attention kernel; contiguous grid sequences", model, inputs, exact=True)
    for name, backends in sdpa_backends(device).items():
        case(f"sdpa: {name} only", f"sdpa_kernel([{backends[0].name}])", model, inputs,
             context=lambda b=backends: sdpa_kernel(b))
    case("grid layout: per-attention rearranges", "the original v1 layout (benchmarks.setups.original_layout)",
         model, inputs, context=original_layout)
    if device.type == "cpu":
        other = "default" if malloc == "retain" else "retain"
        case(f"malloc: {other}", f"glibc allocator mode {other!r} (benchmarks.common.MALLOC_MODES)", model, inputs,
             run_malloc=other, exact=True)
    skipped = unusable_dtypes(device)
    for dtype_name in ("bf16", "fp16"):
        if dtype_name in skipped:
            rows.append({"path": dtype_name, "what": skipped[dtype_name], "skipped": True})
            continue
        cast = copy.deepcopy(model).to(DTYPES[dtype_name])
        cast_inputs = tuple(t.to(DTYPES[dtype_name]) if t.is_floating_point() else t for t in inputs)
        case(dtype_name, f"weights and activations in {dtype_name}", cast, cast_inputs)
        del cast
    compiled = copy.deepcopy(model)
    compiled.compile_blocks(**(compile_kwargs or {}))
    started = time.perf_counter()
    with torch.inference_mode():
        compiled(*inputs)
    case("torch.compile blocks", "Transformer3DModel.compile_blocks() (inductor)", compiled, inputs,
         extra={"first_call_with_compilation_s": time.perf_counter() - started})
    return rows


def pipeline_fast_paths(name: str, frames: int, size: int, steps: int, guidance: float, device: torch.device,
                        repeats: int, warmup: int, malloc: str) -> list[dict[str, Any]]:
    """Guidance batching, VAE chunking and tiling, and reduced precision on a whole pipeline.

    Outputs are decoded videos in [0, 1] (PSNR with peak 1). Generation paths are compared with the
    plain generation (fp32, guidance as one batched forward, 8 frames per VAE call, no tiling);
    decoding paths with the plain decoding of the same latents.
    """
    pipeline = build_pipeline(name, device)
    noise = torch.randn(1, 4, frames, size // 8, size // 8, generator=torch.Generator().manual_seed(0)).to(device)

    def generate(pipe, output_type: str = "pt"):
        return pipe(PROMPT, video_length=frames, height=size, width=size, latents=noise, num_inference_steps=steps,
                    guidance_scale=guidance, output_type=output_type, generator=torch.Generator().manual_seed(0)
                    ).videos

    def decode(chunk: int | None = None):
        with torch.no_grad():
            return pipeline.decode_latents(latents, chunk_size=chunk)

    rows = []

    def case(path: str, what: str, fn, reference: torch.Tensor, exact: bool = False) -> None:
        result = measure_call(fn, device, repeats, warmup, malloc)
        rows.append({"pipeline": name, "path": path, "what": what, "frames": frames, "size": size, "steps": steps,
                     **result, "changes_outputs": not exact, **compare(reference, fn(), data_range=1.0)})
        print(f"  {path}: median {result['median_s']:.3f} s", flush=True)

    plain = generate(pipeline)
    case("generation: plain", "fp32; guidance as one forward of batch 2", lambda: generate(pipeline), plain, True)
    pipeline.batched_guidance = False
    case("generation: guidance as two forwards", "pipeline.batched_guidance = False", lambda: generate(pipeline),
         plain)
    pipeline.batched_guidance = True
    skipped = unusable_dtypes(device) if name != "tiny" else {}
    for dtype_name in ("bf16", "fp16"):
        if dtype_name in skipped:
            rows.append({"pipeline": name, "path": f"generation: {dtype_name}", "what": skipped[dtype_name],
                         "skipped": True})
            continue
        cast = build_pipeline(name, device, DTYPES[dtype_name])
        case(f"generation: {dtype_name}", f"transformer, VAE and text encoder in {dtype_name}",
             lambda p=cast: generate(p), plain)
        del cast

    latents = generate(pipeline, "latent")
    plain_decoding = decode()
    case(f"decoding: {pipeline.vae_decode_chunk_size} frames per VAE call (plain)", "the default chunk size", decode,
         plain_decoding, exact=True)
    for chunk in (1, frames):
        case(f"decoding: {chunk} frame{'s' if chunk > 1 else ''} per VAE call", f"decode_latents(chunk_size={chunk})",
             lambda c=chunk: decode(c), plain_decoding)
    vae = pipeline.vae
    default_tiles = (vae.tile_sample_min_size, vae.tile_latent_min_size)
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = size // 2, size // 16
    case(f"decoding: tiled, {size // 2} px tiles", "vae.enable_tiling(), tiles of half the frame, 25% overlap",
         decode, plain_decoding)
    vae.disable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = default_tiles
    return rows


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
