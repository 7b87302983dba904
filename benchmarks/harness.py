"""The benchmark harness: how every number is measured, the models at named widths, and the reports.

Protocol (:func:`compare_variants`; a case on its own is one variant): each variant gets ``warmup`` untimed calls
(torch.compile compiles here), then one call that reads the peak memory (CUDA ``max_memory_allocated``; on a CPU the
resident set sampled every millisecond, glibc in the ``track`` allocator mode so that it follows the live tensors)
and returns the output, compared with the first variant's (max abs difference, PSNR). Then all are timed in
interleaved rounds, one call of each between two fp32 matmul readings, so that other work slows all alike; a round
is "quiet" when both readings are within 10% of the run's best. "% of peak" is FLOPs / time over the run's best
matmul reading in that dtype. Reports are rendered from a scenario's JSON alone: its ``view`` names the columns of
its main table (:data:`VIEWS`, :data:`COLUMNS`); ``docs_template.md`` places ``{{name}}`` or ``{{name:section}}``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import os
import platform
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import psutil  # a dependency of accelerate
import torch
from einops import rearrange

from easyanimate.config import load_config, transformer_kwargs_for_model
from easyanimate.devices import DTYPES
from easyanimate.memory import MEMORY_MODES, TIERS_GB, largest_fitting
from easyanimate.models import Transformer3DModel
from easyanimate.models.motion_module import GRID, TemporalTransformer3DModel

MIB, GIB = 2**20, 2**30
WIDTHS = {"tiny": (2, 32), "small": (8, 64), "full": (16, 72)}  # heads x head dim; full = PixArt-XL (1152)
V1_CONFIG = Path(__file__).resolve().parents[1] / "config" / "easyanimate_video_motion_module_v1.yaml"
PIPELINE_SIZES = {"tiny": 64, "toy": 64, "small": 128, "full": 512}  # native pixel size of build_pipeline's
BUILT = {  # build_pipeline from configs: T5-XXL and SD VAE config overrides, transformer width (WIDTHS) and depth
    "toy": (dict(d_model=64, d_ff=128, num_layers=2, num_heads=2, d_kv=32), dict(block_out_channels=(32,) * 4,
                                                                              layers_per_block=1), "tiny", 2),
    "small": (dict(d_model=512, d_ff=1024, num_layers=4, num_heads=8), dict(block_out_channels=(64, 128, 256, 256)),
              "small", 4),
    "full": (dict(vocab_size=32128), {}, "full", 28),  # the released sizes
}
PROMPT = "a red circle moving left"
TEMPLATE = Path(__file__).with_name("docs_template.md")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 0) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    """Peak memory while the body runs, absolute and above its start (bytes): CUDA ``max_memory_allocated`` (not the
    caching allocator's reserve), or the CPU resident set sampled every millisecond."""
    reading: dict[str, Any] = {}
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield reading
        synchronize(device)
        peak, method = torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
        reading["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    else:
        process, done = psutil.Process(), threading.Event()
        samples = [process.memory_info().rss]

        def sample() -> None:
            while not done.wait(0.001):
                samples.append(process.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield reading
        finally:
            done.set()
            sampler.join()
        start, peak, method = samples[0], max(samples + [process.memory_info().rss]), "psutil rss, every 1 ms"
    reading.update(peak_memory_bytes=peak, peak_memory_delta_bytes=peak - start, memory_method=method)


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4  # glibc mallopt (malloc.h)
MALLOC_MODES = {
    # glibc's defaults: blocks over the (adaptive, at most 32 MiB) mmap threshold are mapped per allocation
    # and unmapped on free (the threshold becomes adaptive again only in a fresh process)
    "default": {_M_MMAP_MAX: 65536, _M_MMAP_THRESHOLD: 2**17, _M_TRIM_THRESHOLD: 2**17, _M_TOP_PAD: 2**17},
    # no mmap for tensors and no trimming: freed memory stays mapped and is reused, a forward touches no fresh pages
    "retain": {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 2**31 - 1, _M_TOP_PAD: 256 * MIB},
    # every block of 1 MiB or more mapped and unmapped on free: the resident set follows the live tensors
    "track": {_M_MMAP_MAX: 65536, _M_MMAP_THRESHOLD: MIB, _M_TRIM_THRESHOLD: 0, _M_TOP_PAD: 0},
}


def set_malloc(mode: str) -> bool:
    """Switch glibc's policy for big blocks (:data:`MALLOC_MODES`) at run time; False where there is no mallopt.
    (A benchmark setting: an application would set the ``MALLOC_*`` variables or use jemalloc or tcmalloc.)"""
    if mode not in MALLOC_MODES:
        raise ValueError(f"unknown malloc mode {mode!r}; valid: {', '.join(MALLOC_MODES)}")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = all(libc.mallopt(ctypes.c_int(key), ctypes.c_int(value)) == 1 for key, value in MALLOC_MODES[mode].items())
        if mode != "retain":
            libc.malloc_trim(ctypes.c_size_t(0))  # hand back what the previous policy kept
        return ok
    except (OSError, AttributeError):
        return False


class MatmulPeaks:
    """The practical matmul peak per dtype: the best FLOP/s of a square ``torch.mm`` (fastest of 5), re-read often."""

    def __init__(self, device: torch.device, size: int | None = None):
        self.device, self.size = device, size or (8192 if device.type == "cuda" else 2048)
        self.readings: dict[torch.dtype, list[float]] = {}

    def measure(self, dtype: torch.dtype, size: int | None = None, repeats: int = 5) -> float:
        """Take one reading in ``dtype`` (kept unless ``size`` is given) and return it."""
        n = size or self.size
        generator = torch.Generator(device=self.device).manual_seed(0)
        a, b = (torch.randn(n, n, device=self.device, dtype=dtype, generator=generator) for _ in range(2))
        rate = 2 * n**3 / min(time_calls(lambda: torch.mm(a, b), self.device, repeats, warmup=2))
        if size is None:
            self.readings.setdefault(dtype, []).append(rate)
        return rate

    def best(self, dtype: torch.dtype) -> float:
        """The best reading in ``dtype`` so far (taking one if there is none)."""
        return max(self.readings.get(dtype) or [self.measure(dtype)])

    def record(self) -> dict[str, Any]:
        """JSON: per dtype, the matmul size, the best FLOP/s and every reading."""
        return {str(d)[6:]: {"size": self.size, "flops_per_s": max(r), "samples_flops_per_s": r}
                for d, r in self.readings.items()}


def compare(reference: torch.Tensor, candidate: torch.Tensor, data_range: float | None = None) -> dict[str, float]:
    """Max abs difference and PSNR (dB) of ``candidate`` against ``reference``: 10 log10(range^2 / MSE), range =
    ``data_range`` (1 for videos in [0, 1]) or the reference's max - min; identical tensors give ``inf``."""
    reference, candidate = reference.detach().double().cpu(), candidate.detach().double().cpu()
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {tuple(reference.shape)} vs {tuple(candidate.shape)}")
    error = candidate - reference
    mse = error.square().mean().item()
    span = data_range if data_range is not None else (reference.max() - reference.min()).item()
    return {"max_abs_diff": error.abs().max().item(), "data_range": span,
            "psnr_db": math.inf if mse == 0 else 10 * math.log10(span**2 / mse)}


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where a result came from: CPU model and vector flags, cores, threads, memory, GPU, versions, load."""
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu, flags = (next((line.split(":", 1)[1] for line in lines if line.startswith(key)), "")
                  for key in ("model name", "flags"))
    info = {"cpu": cpu.strip() or platform.machine(), "cpu_flags": [
                f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16") if f in flags.split()],
            "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
            "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()]}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / GIB, 1),
                    cuda=torch.version.cuda)
    return info


@dataclass
class Variant:
    """One way of running a compared case: its call (a tensor it returns is compared), its allocator mode (CPU)."""

    name: str
    call: Callable[[], Any] | None = None
    malloc: str = "default"
    exact: bool = False  # True: the variant cannot change the output
    skip: str | None = None  # why it is not run (then it is only reported)


def compare_variants(variants: list[Variant], device: torch.device, rounds: int, peaks: MatmulPeaks, warmup: int,
                     data_range: float | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The protocol of the module docstring: one row per variant, and one record per timing round.

    A variant with a ``skip`` reason, or that raises in its warmup or memory call (a kernel this device lacks, an
    offload mode without a GPU), is reported as skipped, with the reason. In the rounds, variants of the same
    allocator mode run next to each other, and the first call after a mode switch is untimed.
    """
    rows, reference, ran = [], None, []
    for variant in variants:
        started = time.perf_counter()
        try:
            if variant.skip:
                raise ValueError(variant.skip)
            for _ in range(warmup):
                variant.call()
            warmup_s = time.perf_counter() - started  # includes compilation
            if device.type == "cpu":
                set_malloc("track")
            with peak_memory(device) as memory:
                output = variant.call()
        except (RuntimeError, ValueError) as error:
            rows.append({"path": variant.name, "what": f"not run: {str(error).splitlines()[0][:160]}", "skipped": True})
            continue
        rows.append({"path": variant.name, "warmup_s": warmup_s, **memory,
                     "changes_outputs": not variant.exact})
        if isinstance(output, torch.Tensor):
            reference = output if reference is None else reference
            rows[-1].update(compare(reference, output, data_range))
        ran.append(variant)
    current, records = None, []
    for index in range(rounds):
        record: dict[str, Any] = {"round": index, "matmul_before": peaks.measure(torch.float32)}
        for variant in sorted(ran, key=lambda v: v.malloc):
            if device.type == "cpu" and variant.malloc != current:
                current = variant.malloc
                set_malloc(current)
                variant.call()
            record[variant.name] = time_calls(variant.call, device, 1)[0]
        record.update(matmul_after=peaks.measure(torch.float32), load_average_1min=os.getloadavg()[0])
        records.append(record)
        print(f"  round {index}: " + ", ".join(f"{v.name} {record[v.name]:.3f}s" for v in ran), flush=True)
    best = peaks.best(torch.float32)
    for row in (r for r in rows if not r.get("skipped")):
        quiet = [r[row["path"]] for r in records if min(r["matmul_before"], r["matmul_after"]) >= 0.9 * best]
        times = [r[row["path"]] for r in records]
        row.update(times_s=times, median_s=statistics.median(times), best_s=min(times), quiet_rounds=len(quiet),
                   quiet_median_s=statistics.median(quiet) if quiet else None)
    return rows, records


def add_rates(row: dict[str, Any], peaks: MatmulPeaks) -> dict[str, Any]:
    """Achieved FLOP/s (median, fastest call) and its fraction of the run's best matmul reading (also of the median
    over the quiet rounds)."""
    peak = peaks.best(DTYPES[row["dtype"]])
    row.update(matmul_peak_flops_per_s=peak, flops_per_s=row["flops"] / row["median_s"],
               best_flops_per_s=row["flops"] / row["best_s"], quiet_fraction_of_matmul_peak=row["flops"] / row[
                   "quiet_median_s"] / peak if row.get("quiet_median_s") else None)
    return {**row, "fraction_of_matmul_peak": row["flops_per_s"] / peak,
            "best_fraction_of_matmul_peak": row["best_flops_per_s"] / peak}


def transformer_config(width: str, layers: int, caption_channels: int = 4096, sample_size: int = 64) -> dict[str, Any]:
    """:class:`Transformer3DModel` kwargs: the v1 yaml at a width of :data:`WIDTHS`, motion modules not the identity
    (a released one starts zero-initialised; a benchmark of the temporal path needs it to do work)."""
    if width not in WIDTHS:
        raise ValueError(f"unknown width {width!r}; valid: {', '.join(WIDTHS)}")
    heads, head_dim = WIDTHS[width]
    extras = transformer_kwargs_for_model(load_config(V1_CONFIG).transformer_additional_kwargs)
    if extras["motion_module_kwargs"] is not None:
        extras["motion_module_kwargs"]["zero_initialize"] = False
    return dict(num_layers=layers, num_attention_heads=heads, attention_head_dim=head_dim,
                cross_attention_dim=heads * head_dim, caption_channels=caption_channels, sample_size=sample_size,
                **extras)


def build_transformer(width: str, layers: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                      seed: int = 0, **config: Any) -> Transformer3DModel:
    """The v1 transformer of :func:`transformer_config` with random weights, in eval mode."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = Transformer3DModel(**transformer_config(width, layers, **config))
    return model.eval() if dtype == torch.float32 else model.to(dtype).eval()


def transformer_inputs(model: Transformer3DModel, batch: int, frames: int, height: int, width: int,
                       text_len: int = 120, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """Random latents ``(B, 4, F, H/8, W/8)`` and text ``(B, L, caption)`` in the model's dtype, a mask ``(B, L)``
    that pads the last quarter (as short prompts do), and timesteps ``(B,)``, on the model's device."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, frames, height // 8, width // 8, generator=generator)
    text = torch.randn(batch, text_len, model.config.caption_channels, generator=generator)
    mask = torch.ones(batch, text_len)
    mask[:, text_len - text_len // 4:] = 0
    steps = torch.randint(0, 1000, (batch,), generator=generator)
    device, dtype = model.device, model.dtype
    return latents.to(device, dtype), text.to(device, dtype), mask.to(device), steps.to(device)


def transformer_step(model: Transformer3DModel, inputs: tuple[torch.Tensor, ...], backward: bool = False,
                     context: Callable[[], Any] = nullcontext, temporal=None) -> Callable[[], torch.Tensor | None]:
    """One forward (eval, inference mode; returns the output in float32) or forward+backward (train mode, loss =
    the output's mean square, no optimiser step); ``temporal``: a ``TemporalContext`` (windows) or None."""
    def forward() -> torch.Tensor:
        with torch.inference_mode(), context():
            return model.eval()(*inputs, temporal_context=temporal).sample.float()

    def forward_backward() -> None:
        with context():
            model.train()(*inputs, temporal_context=temporal).sample.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    return forward_backward if backward else forward


def build_pipeline(name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   memory_mode: str = "none"):
    """``tiny``: the test model (``easyanimate.tiny``) loaded the way users load models, in any memory mode; the
    others (:data:`BUILT`) are built from the released T5-XXL and SD VAE configs and the v1 transformer at reduced
    sizes, with random weights drawn in float32 on the CPU and cast, except ``full``, drawn on ``device`` in
    ``dtype`` (T5-XXL alone is 19 GB in float32). Native sizes in :data:`PIPELINE_SIZES`."""
    from easyanimate.generation import load_pipeline, select_model
    from easyanimate.tiny import build_tiny_tokenizer, write_tiny_model

    if name == "tiny":
        with tempfile.TemporaryDirectory() as root:
            pipeline = load_pipeline(select_model(Path(root), model=write_tiny_model(root)["model"]), device=device,
                                     dtype=dtype, memory_mode=memory_mode)
    elif name in BUILT and memory_mode == "none":
        from diffusers import AutoencoderKL
        from transformers import T5Config, T5EncoderModel

        from easyanimate.memory import SD_VAE_CONFIG, T5_XXL_CONFIG
        from easyanimate.pipelines import EasyAnimatePipeline
        from easyanimate.schedulers import V1_NOISE_SCHEDULER_KWARGS, build_scheduler

        text, vae, width, layers = BUILT[name]
        tokenizer, size, where = build_tiny_tokenizer(), PIPELINE_SIZES[name], device if name == "full" else "cpu"
        torch.manual_seed(0)
        with torch.device(where), default_dtype(dtype if name == "full" else torch.float32):
            text_encoder = T5EncoderModel(T5Config(**{**T5_XXL_CONFIG, "vocab_size": len(tokenizer), **text,
                                                      "decoder_start_token_id": 0}))
            vae = AutoencoderKL(**{**SD_VAE_CONFIG, **vae, "sample_size": size})
            transformer = build_transformer(width, layers, where, seed=1, caption_channels=text_encoder.config.d_model,
                                            sample_size=size // 8)
        pipeline = EasyAnimatePipeline(tokenizer, text_encoder.eval(), vae.eval(), transformer,
                                       build_scheduler("DPM++", V1_NOISE_SCHEDULER_KWARGS)).to(device, dtype)
    else:
        raise ValueError(f"no pipeline {name!r} in memory mode {memory_mode!r} (tiny: any mode; "
                         f"{', '.join(BUILT)}: none)")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """New tensors (parameters included) are made in ``dtype`` inside the block."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _original_forward_clip(self: TemporalTransformer3DModel, x: torch.Tensor, num_frames: int, height: int,
                           width: int) -> torch.Tensor:
    """The motion module in the original v1 layout: the tokens stay frame-major ``(B*F, h*w, C)`` and every
    temporal attention rearranges its input into sequences and its output back."""
    def frame_major(sequences: torch.Tensor) -> torch.Tensor:
        tokens = self._from_sequences(sequences, num_frames, height, width)
        return rearrange(tokens, "b (f s) c -> (b f) s c", f=num_frames)

    tokens = self.proj_in(rearrange(self.norm(rearrange(x, "b (f s) c -> (b f) c s", f=num_frames)), "n c s -> n s c"))
    for block in self.transformer_blocks:
        for attention, norm in zip(block.attention_blocks, block.norms):
            sequences = self._to_sequences(norm(tokens), num_frames, height, width)
            tokens = tokens + frame_major(attention(sequences, num_frames, GRID * GRID if self.grid else 1))
        tokens = tokens + block.ff(block.ff_norm(tokens))
    return x + self.proj_out(rearrange(tokens, "(b f) s c -> b (f s) c", f=num_frames))


def original_layout():
    """A context in which every motion module runs in the original per-attention layout (the plain path of
    ``v1-layout``)."""
    return mock.patch.object(TemporalTransformer3DModel, "_forward_clip", _original_forward_clip)


def mib(value: float | None) -> str:
    """Bytes as MiB, or n/a."""
    return "n/a" if value is None else f"{value / MIB:,.0f}"


def pct(value: float | None) -> str:
    """A fraction as a percentage, or n/a."""
    return "n/a" if value is None else f"{100 * value:.1f}%"


COLUMNS: dict[str, Callable[[dict, dict], Any]] = {  # header: the cell of row r, given the plain row f of its table
    "path": lambda r, f: f"{r['path']} ({r['what']})" if r.get("skipped") else r["path"],
    "pipeline": lambda r, f: r["pipeline"], "frames": lambda r, f: r["frames"], "steps": lambda r, f: r["steps"],
    "window": lambda r, f: r["window"] or "-",
    "size": lambda r, f: f"{r['height']}x{r['width']}", "tokens": lambda r, f: f"{r['tokens']:,}",
    "GFLOP": lambda r, f: f"{r['flops'] / 1e9:,.1f}", "GFLOP/s": lambda r, f: f"{r['flops_per_s'] / 1e9:.1f}",
    "median s": lambda r, f: f"{r['median_s']:.3f}", "best s": lambda r, f: f"{r['best_s']:.3f}",
    "s/frame": lambda r, f: f"{r['median_s'] / r['frames']:.4f}",
    "s/frame vs first row": lambda r, f: f"{r['median_s'] * f['frames'] / (f['median_s'] * r['frames']):.3f}x",
    "% of peak (median / best / quiet)": lambda r, f: f"{pct(r['fraction_of_matmul_peak'])} / "
                                                      f"{pct(r['best_fraction_of_matmul_peak'])} / "
                                                      f"{pct(r.get('quiet_fraction_of_matmul_peak'))}",
    "speed vs plain (median / best call)":
        lambda r, f: f"{f['median_s'] / r['median_s']:.2f}x / {f['best_s'] / r['best_s']:.2f}x",
    "peak memory delta MiB": lambda r, f: mib(r["peak_memory_delta_bytes"]),
    "peak memory MiB": lambda r, f: mib(r["peak_memory_bytes"]),
    "peak memory vs plain MiB":
        lambda r, f: f"{(r['peak_memory_delta_bytes'] - f['peak_memory_delta_bytes']) / MIB:+,.0f}",
    "memory vs the shortest clip": lambda r, f: f"{r['peak_memory_delta_bytes'] / f['peak_memory_delta_bytes']:.2f}x",
    "computed activations MiB": lambda r, f: mib(r.get("computed_activation_bytes")),
    "can change outputs": lambda r, f: "yes" if r["changes_outputs"] else "no",
    "max abs diff": lambda r, f: f"{r['max_abs_diff']:.2e}",
    "PSNR": lambda r, f: "identical" if math.isinf(float(r["psnr_db"])) else f"{float(r['psnr_db']):.1f} dB",
    "trainable params": lambda r, f: f"{r['trainable_params']:,}",
    "text s": lambda r, f: f"{r['text_encoding_s']:.3f}", "denoising s": lambda r, f: f"{r['denoising_s']:.2f}",
    "s/step": lambda r, f: f"{r['denoising_s'] / r['steps']:.3f}", "decoding s": lambda r, f: f"{r['decoding_s']:.2f}",
    # the device check (benchmarks.gpu_check)
    "finite": lambda r, f: r["finite"], "PSNR at least": lambda r, f: f"{r['tolerance_psnr_db']} dB",
    "passed": lambda r, f: r["passed"], "reserved MiB": lambda r, f: mib(r["peak_reserved_bytes"]),
    "computed MiB": lambda r, f: mib(r["computed_peak_bytes"]),
    "measured / computed": lambda r, f: f"{r['measured_bytes'] / r['computed_peak_bytes']:.2f}",
    "steps run": lambda r, f: r["steps_run"], "median s/step": lambda r, f: f"{r['step_s']:.3f}",
    "end to end s": lambda r, f: f"{r['end_to_end_s']:.1f}", "30 steps s": lambda r, f: f"{r['projected_s']:.1f}",
    "% of matmul peak": lambda r, f: pct(r["fraction_of_matmul_peak"]),
    "ours / original (median of rounds)": lambda r, f: f"{r['ours_over_original']:.3f}x",
}
VIEWS = {  # the columns of each view's main table
    "sweep": ("path", "frames", "size", "tokens", "GFLOP", "median s", "best s", "s/frame", "s/frame vs first row",
              "GFLOP/s", "% of peak (median / best / quiet)", "peak memory delta MiB", "computed activations MiB"),
    "windows": ("frames", "window", "median s", "s/frame", "peak memory delta MiB", "memory vs the shortest clip",
                "computed activations MiB"),
    "paths": ("path", "median s", "best s", "speed vs plain (median / best call)", "% of peak (median / best / quiet)",
              "peak memory delta MiB", "peak memory vs plain MiB", "can change outputs", "max abs diff", "PSNR"),
    "train": ("path", "trainable params", "median s", "best s", "GFLOP/s", "% of peak (median / best / quiet)",
              "peak memory delta MiB", "peak memory MiB"),
    "generation": ("pipeline", "frames", "size", "steps", "median s", "best s", "text s", "denoising s", "s/step",
                   "decoding s", "s/frame", "peak memory delta MiB"),
    "checks": ("path", "size", "frames", "finite", "max abs diff", "PSNR", "PSNR at least", "passed"),
    "device-memory": ("path", "size", "frames", "window", "peak memory MiB", "reserved MiB", "computed MiB",
                      "measured / computed", "s/step"),
    "speed": ("path", "size", "frames", "steps run", "median s/step", "text s", "decoding s", "end to end s",
              "30 steps s", "GFLOP", "% of matmul peak"),
    "side-by-side": ("path", "median s", "best s", "% of matmul peak", "ours / original (median of rounds)"),
}


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def rows_table(view: str, rows: list[dict[str, Any]]) -> str:
    """The view's columns for ``rows``, compared with the first; '-' where a row lacks what a cell needs (skipped
    rows: their name and why)."""
    def cell(column: str, r: dict[str, Any]) -> Any:
        try:
            return COLUMNS[column](r, rows[0])
        except (KeyError, TypeError, ZeroDivisionError):
            return "-"

    return table(list(VIEWS[view]), [[cell(c, r) for c in VIEWS[view]] for r in rows])


def sections(p: dict[str, Any]) -> dict[str, str]:
    """The sections of a scenario's report: ``header`` (where it ran), ``""`` (its main table) and the view's own."""
    s, rows, result = p["settings"], p.get("rows", []), {"header": header(p)}
    if s["view"] == "tiers":
        return {**result, **tiers_sections(p)}
    if s["view"] == "paths":  # a table per group (pipeline: generation, decoding)
        groups = dict.fromkeys(r.get("group") for r in rows)
        return {**result, **{g or "": rows_table("paths", [r for r in rows if r.get("group") == g]) for g in groups}}
    if s["view"] == "side-by-side":
        o = p["forward_outputs"]
        return {**result, "": rows_table("side-by-side", rows), "outputs": f"max abs difference "
                f"{o['max_abs_diff']:.1e} over a range of {o['data_range']:.2f}, PSNR {o['psnr_db']:.0f} dB."}
    if s["view"] != "sweep":
        return {**result, "": rows_table(s["view"], rows)}
    return {**result, **{v: rows_table("sweep", [r for r in rows if r["path"] == v]) for v in s["variants"]}}


def tiers_sections(p: dict[str, Any]) -> dict[str, str]:
    """The largest setting per memory tier and mode in each dtype, and the FLOPs of a generation."""
    f, rows = p["generation_flops"], p["rows"]

    def largest(tier: int, dtype: str, mode: str) -> str:
        r = largest_fitting(rows, tier, dtype, mode)
        window = f", window {r['window']}" if r and r["window"] else ""
        return "nothing" if r is None else (f"{r['height']}x{r['width']}x{r['frames']}, {r['guidance']} guidance"
                                            f"{window} ({r['with_overhead_bytes'] / 1e9:.1f} GB)")

    return {**{dtype: table(["tier", *MEMORY_MODES], [[f"{tier} GB", *(largest(tier, dtype, m) for m in MEMORY_MODES)]
                                                  for tier in TIERS_GB]) for dtype in p["settings"]["variants"]},
        "flops": table(["part", "TFLOP"], [
            ["T5-XXL, prompt + negative prompt", f"{f['text_encoding'] / 1e12:.1f}"],
            ["transformer, one step (batch 2)", f"{f['transformer_per_step'] / 1e12:.1f}"],
            ["transformer, 30 steps", f"{f['denoising'] / 1e12:,.0f}"],
            ["VAE decoding, 80 frames", f"{f['decoding'] / 1e12:.0f}"], ["total", f"{f['total'] / 1e12:,.0f}"]])}


def header(p: dict[str, Any]) -> str:
    """Where the numbers of a scenario came from: machine, matmul peaks, allocator mode, settings (and the source of
    a converted record)."""
    peaks = ", ".join(f"{dtype} {r['flops_per_s'] / 1e9:.1f} GFLOP/s ({len(r['samples_flops_per_s'])} readings, worst "
                      f"{min(r['samples_flops_per_s']) / 1e9:.1f})" for dtype, r in p.get("matmul_peaks", {}).items())
    return (f"Machine: {', '.join(f'{k} {v}' for k, v in p['machine'].items())}.\n\nMatmul peak (best of the run): "
            f"{peaks or 'not measured'}. Allocator mode for timed calls: `{p.get('malloc', 'default')}`.\n\nScenario: "
            + ", ".join(f"{k} {v}" for k, v in p["settings"].items() if k not in ("kind", "view", "title")) + "."
            + (f"\n\nConverted from {p['converted_from']}." if "converted_from" in p else ""))


def render(out: Path, name: str) -> dict[str, str]:
    """Write ``<out>/<name>.md`` from ``<out>/<name>.json``; returns its sections."""
    payload = json.loads((out / f"{name}.json").read_text())
    parts = sections(payload)
    body = "\n\n".join(text if key in ("", "header") else f"## {key}\n\n{text}" for key, text in parts.items())
    (out / f"{name}.md").write_text(f"# {payload['settings']['title']}\n\n{body}\n")
    return parts


def write_docs(out: Path, path: Path) -> None:
    """Fill :data:`TEMPLATE` with the sections of the scenarios in ``out`` (``{{name}}``, ``{{name:section}}``; one
    that ``out`` lacks stays as it is, in sight)."""
    parts = {json_path.stem: render(out, json_path.stem) for json_path in sorted(out.glob("*.json"))}
    path.write_text(re.sub(r"\{\{([^}:]+):?([^}]*)\}\}", lambda m: parts.get(m[1], {}).get(m[2], m[0]),
                           TEMPLATE.read_text()))
