"""The device check: the GPU path at the released model's size, in one unattended run that fits a time budget.

    bash benchmarks/gpu_check.sh OUT                               # a bare GPU machine: carried wheels, then this
    python -m benchmarks.gpu_check --device cpu --tiny --out OUT   # every stage at toy size, in seconds (a test)

Models: ``harness.build_pipeline("full")``, the v1 transformer with motion modules (doing work: not zero-initialised),
T5-XXL and the SD VAE, with random weights drawn on the device in bf16; fp32 and fp16 models are casts of them.
Stages, in order (sizes: :data:`FULL`):

* ``correctness``: a short guided generation in fp32 (TF32 off), bf16, fp16, and in bf16 in every memory mode, from
  the same noise: finite and within :data:`TOLERANCE_DB` of its reference; and a transformer forward whose temporal
  window covers the clip, run in chunks, against the plain forward;
* ``memory``: max allocated and reserved memory of a 2-step generation in each memory mode and of the windowed long
  clip (bf16), beside ``easyanimate.memory.estimate_generation_memory``;
* ``speed-<dtype>-<eager|compiled>``: 30 guided DPM++ steps: median seconds per step (synchronised), end to end, and
  the share of the run's matmul peak (``benchmarks.flops``); compiled: ``compile_repeated_blocks`` on a copy of the
  transformer. With too little time left, fewer steps run and the time of 30 is projected;
* ``training``: a motion-module AdamW step (fp32 weights, bf16 autocast, as the trainer runs), with and without
  gradient checkpointing, by the harness protocol.

A stage the time left would not cover is skipped, one that fails is recorded, and after each the reports
``gpu-checks``, ``gpu-memory``, ``gpu-speed`` and ``gpu-training`` are rewritten (``.json`` with how their stages
went, and ``.md``): scenario records, which ``benchmarks.run --render-only --docs`` renders like any other.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import signal
import statistics
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch

from easyanimate.generation import apply_memory_mode
from easyanimate.memory import MEMORY_MODES, estimate_generation_memory
from easyanimate.models import TemporalContext
from easyanimate.pipelines import EasyAnimatePipeline

from . import harness as h
from .flops import training_flops, transformer_flops
from .run import transformer_variant
from .scenarios import Scenario

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
NAMES = {BF16: "bf16", FP16: "fp16", FP32: "fp32"}
TOLERANCE_DB = {"memory mode": 40.0, "half precision": 30.0, "window": 40.0}
"""Least PSNR against the reference: a memory mode against bf16 without offloading, fp16 and bf16 against fp32, the
covering window against the plain forward (videos in [0, 1]; a forward over its reference's range)."""
REPORTS = {"gpu-checks": "checks", "gpu-memory": "device-memory", "gpu-speed": "speed", "gpu-training": "train"}


@dataclass(frozen=True)
class Sizes:
    """A ``build_pipeline`` name, (pixels, frames, steps) of the checks and of speed and memory, the windowed clip
    (frames, window), the training step (pixels, frames), the budget, the compile backend, the matmul-peak side."""

    pipeline: str
    check: tuple[int, int, int]
    speed: tuple[int, int, int]
    long: tuple[int, int]
    train: tuple[int, int]
    budget_s: float
    compile_backend: str
    matmul: int


FULL = Sizes("full", (256, 16, 4), (512, 80, 30), (240, 80), (512, 16), 420.0, "inductor", 8192)
TINY = Sizes("toy", (64, 4, 2), (64, 8, 3), (12, 4), (64, 4), 120.0, "eager", 256)


class Check:
    """One run: device, sizes, deadline, the bf16 pipeline the stages start from, and the reports."""

    def __init__(self, device: torch.device, sizes: Sizes, out: Path, budget_s: float):
        self.device, self.sizes, self.out, self.started = device, sizes, out, time.monotonic()
        self.deadline, self.peaks = self.started + budget_s, h.MatmulPeaks(device, sizes.matmul)
        self.master: EasyAnimatePipeline | None = None
        self.fp16: EasyAnimatePipeline | None = None
        self.step_s: float | None = None  # bf16 seconds per step at the speed size, once measured
        self.rows: dict[str, list[dict[str, Any]]] = {name: [] for name in REPORTS}
        self.stages: dict[str, dict[str, Any]] = {name: {} for name in REPORTS}
        self.machine, self.budget_s, self.parameters = h.machine_info(device), budget_s, {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def stage(self, name: str, report: str, needs_s: float, run: Callable[[], list[dict[str, Any]]]) -> None:
        """Run ``run`` unless it needs more than the time left; its rows (or why it did not run) go to ``report``."""
        started, record = time.monotonic(), {"status": "ok"}
        if needs_s > self.left():
            record = {"status": "skipped", "reason": f"needs about {needs_s:.0f} s, {max(self.left(), 0):.0f} s left"}
        else:
            print(f"== {name} ({self.left():.0f} s left)", flush=True)
            try:
                self.rows[report] += run()
            except Exception as error:  # noqa: BLE001 (recorded; the next stage runs)
                record = {"status": "failed", "reason": f"{type(error).__name__}: {error}"[:1000],
                          "traceback": traceback.format_exc(limit=-6)}
        if record["status"] != "ok":
            self.rows[report].append({"path": name, "skipped": True, "what": record["reason"].splitlines()[0][:200]})
        self.stages[report][name] = {**record, "seconds": time.monotonic() - started}
        free()
        self.write(report)

    def write(self, report: str) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        settings = {"kind": "gpu", "view": REPORTS[report], "title": f"Device check: {report[4:]}",
                    **asdict(self.sizes)}
        payload = {"scenario": report, "settings": settings, "machine": self.machine, "malloc": "default",
                   "matmul_peaks": self.peaks.record(), "wall_s": time.monotonic() - self.started,
                   "budget_s": self.budget_s, "tolerance_psnr_db": TOLERANCE_DB, "parameters": self.parameters,
                   "stages": self.stages[report], "rows": self.rows[report]}
        (self.out / f"{report}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        h.render(self.out, report)


def free() -> None:
    """Hand what the last case left (offload hooks hold cycles) back to the device."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def replica(master: EasyAnimatePipeline, dtype: torch.dtype, where: torch.device | str,
            text_where: torch.device | str | None = None) -> EasyAnimatePipeline:
    """Copies of the master's models in ``dtype`` on ``where`` (T5 on ``text_where`` if given; in fp16 T5's ``wo``
    stays in fp32, as ``from_pretrained`` keeps it)."""
    models = {}
    for name in ("text_encoder", "vae", "transformer"):
        model = copy.deepcopy(getattr(master, name))  # nn.Module.to: diffusers' own warns about modules kept in fp32
        torch.nn.Module.to(model, text_where or where if name == "text_encoder" else where, dtype)
        keep = (getattr(model, "_keep_in_fp32_modules", None) or ()) if dtype == FP16 else ()
        for module_name, module in model.named_modules():
            if module_name.rpartition(".")[2] in keep:
                module.float()
        models[name] = model
    pipeline = EasyAnimatePipeline(master.tokenizer, models["text_encoder"], models["vae"], models["transformer"],
                                   copy.deepcopy(master.scheduler))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def in_mode(c: Check, dtype: torch.dtype, mode: str) -> EasyAnimatePipeline:
    """A replica placed as ``mode`` places the models (the offload modes start from the CPU)."""
    where = c.device if mode in ("none", "text_encoder_cpu") else "cpu"
    pipeline = replica(c.master, dtype, where, "cpu" if mode == "text_encoder_cpu" else None)
    apply_memory_mode(pipeline, c.device, mode)
    return pipeline


def generate(pipeline: EasyAnimatePipeline, pixels: int, frames: int, steps: int, window: int | None = None,
             stamps: list[float] | None = None) -> torch.Tensor:
    """A guided DPM++ generation from fixed noise; ``stamps`` gets the synchronised time after each step."""
    def on_step(pipe, step, timestep, tensors) -> dict:
        h.synchronize(pipe._execution_device)
        stamps.append(time.perf_counter())
        return {}

    return pipeline(h.PROMPT, video_length=frames, height=pixels, width=pixels, output_type="pt", latents=torch.randn(
        1, 4, frames, pixels // 8, pixels // 8, generator=torch.Generator().manual_seed(0)), num_inference_steps=steps,
                    guidance_scale=6.0, generator=torch.Generator().manual_seed(0), context_frames=window,
                    callback_on_step_end=on_step if stamps is not None else None).videos


@contextmanager
def exact_fp32():
    """TF32 off (matmuls and convolutions) for the fp32 reference."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def judged(name: str, reference: torch.Tensor, output: torch.Tensor, tolerance: str, pixels: int,
           frames: int) -> dict[str, Any]:
    """A comparison row: finite, max abs difference, PSNR, and whether it is within the stated tolerance."""
    result = h.compare(reference, output, None if tolerance == "window" else 1.0)
    finite = bool(torch.isfinite(output).all())
    return {"path": name, "height": pixels, "width": pixels, "frames": frames, "finite": finite, **result,
            "tolerance_psnr_db": TOLERANCE_DB[tolerance], "passed": finite and result["psnr_db"] >= TOLERANCE_DB[
                tolerance]}


def failed(name: str, error: Exception) -> dict[str, Any]:
    """The row of a case that raised: a finding, recorded, and the stage goes on."""
    return {"path": name, "skipped": True, "passed": False,
            "what": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]}


def build(c: Check) -> list[dict[str, Any]]:
    c.master = h.build_pipeline(c.sizes.pipeline, c.device, BF16)
    for dtype in (BF16, FP16, FP32):
        c.peaks.measure(dtype)
    c.parameters.update({name: sum(p.numel() for p in getattr(c.master, name).parameters())
                         for name in ("text_encoder", "vae", "transformer")})
    return []


def correctness(c: Check) -> list[dict[str, Any]]:
    pixels, frames, steps = size = c.sizes.check
    with exact_fp32():
        reference = generate(replica(c.master, FP32, c.device), *size)
    plain = generate(c.master, *size)
    rows = [judged("bf16", reference, plain, "half precision", pixels, frames)]
    for name, dtype, mode, against, tolerance in [("fp16", FP16, "none", reference, "half precision")] + [
            (f"bf16 {mode}", BF16, mode, plain, "memory mode") for mode in MEMORY_MODES if mode != "none"]:
        try:
            rows.append(judged(name, against, generate(in_mode(c, dtype, mode), *size), tolerance, pixels, frames))
        except Exception as error:  # noqa: BLE001
            rows.append(failed(name, error))
        free()
    model = c.master.transformer
    inputs = h.transformer_inputs(model, 2, frames, pixels, pixels)
    context = TemporalContext(frames, frames // 4, chunk_frames=max(frames // 4, 1))
    with torch.inference_mode():
        covered = model(*inputs, temporal_context=context).sample.float()
        rows.append(judged(f"transformer, window of {frames} frames in chunks of {context.chunk_frames}",
                           model(*inputs).sample.float(), covered, "window", pixels, frames))
    return rows


def measured(c: Check, pipeline: EasyAnimatePipeline, name: str, mode: str, frames: int,
             window: int | None) -> dict[str, Any]:
    """Peak memory and step times of a 2-step generation at the speed size, beside the computed peak."""
    pixels, stamps = c.sizes.speed[0], []
    free()
    with h.peak_memory(c.device) as reading:
        generate(pipeline, pixels, frames, 2, window, stamps)
    computed = estimate_generation_memory(
        dict(c.master.transformer.config), pixels, pixels, frames, BF16, mode, context_frames=window,
        text_encoder_config=c.master.text_encoder.config.to_dict(), vae_config=dict(c.master.vae.config))
    return {"path": name, "height": pixels, "width": pixels, "frames": frames, "window": window, **reading,
            "measured_bytes": reading["peak_memory_bytes" if c.device.type == "cuda" else "peak_memory_delta_bytes"],
            "computed_peak_bytes": computed.peak_bytes, "computed_stages": computed.stages,
            "denoising_s": stamps[-1] - stamps[0], "steps": len(stamps) - 1}


def memory(c: Check) -> list[dict[str, Any]]:
    (_, frames, _), (long_frames, window) = c.sizes.speed, c.sizes.long
    rows = []
    c.master.to("cpu")  # only the measured pipeline on the device: the offload modes first
    for mode, count, context in [(m, frames, None) for m in MEMORY_MODES if m != "none"] + [
            ("none", frames, None), ("none", long_frames, window)]:
        name = f"bf16 {mode}" + (f", window {context}" if context else "")
        try:
            pipeline = c.master.to(c.device) if mode == "none" else in_mode(c, BF16, mode)
            rows.append(measured(c, pipeline, name, mode, count, context))
        except Exception as error:  # noqa: BLE001
            rows.append(failed(name, error))
        pipeline = None
        free()
    c.master.to(c.device)
    c.step_s = next((r["denoising_s"] for r in rows if r["path"] == "bf16 none" and "steps" in r), None)
    return rows


def speed(c: Check, dtype: torch.dtype, compiled: bool) -> list[dict[str, Any]]:
    pixels, frames, steps = c.sizes.speed
    if dtype == FP16 and c.fp16 is None:
        c.fp16 = replica(c.master, FP16, c.device)
    pipeline = c.fp16 if dtype == FP16 else c.master
    warmup_s = time.perf_counter()
    if compiled:  # a copy: the eager transformer stays eager for the stages after this one
        pipeline = EasyAnimatePipeline(pipeline.tokenizer, pipeline.text_encoder, pipeline.vae,
                                       copy.deepcopy(pipeline.transformer), pipeline.scheduler)
        pipeline.set_progress_bar_config(disable=True)
        pipeline.transformer.compile_blocks(backend=c.sizes.compile_backend)
    generate(pipeline, pixels, frames, 2)  # compiles; warms the kernels and the allocator
    warmup_s = time.perf_counter() - warmup_s
    run_steps = min(steps, int((c.left() - 10) / (c.step_s or warmup_s / 2)) - 2)
    if run_steps < 3:
        raise TimeoutError(f"too little time left for 3 steps ({c.left():.0f} s)")
    h.synchronize(c.device)
    text_s = time.perf_counter()
    pipeline.encode_prompt(h.PROMPT, True, device=c.device)
    h.synchronize(c.device)
    text_s, stamps, start = time.perf_counter() - text_s, [], time.perf_counter()
    generate(pipeline, pixels, frames, run_steps, stamps=stamps)
    end_to_end, step_s = time.perf_counter() - start, statistics.median(b - a for a, b in pairwise(stamps))
    flops = transformer_flops(pipeline.transformer.config, frames, pixels // 8, pixels // 8, batch=2)
    c.peaks.measure(dtype)
    return [{"path": f"{NAMES[dtype]} {'compiled' if compiled else 'eager'}", "height": pixels, "width": pixels,
             "frames": frames, "steps": steps, "steps_run": run_steps, "warmup_s": warmup_s, "step_s": step_s,
             "step_times_s": [b - a for a, b in pairwise([start, *stamps])], "text_encoding_s": text_s,
             "decoding_s": end_to_end - (stamps[-1] - start), "end_to_end_s": end_to_end,
             "projected_s": end_to_end + (steps - run_steps) * step_s, "flops": flops,
             "fraction_of_matmul_peak": flops / step_s / c.peaks.best(dtype)}]


def training(c: Check) -> list[dict[str, Any]]:
    pixels, frames = c.sizes.train
    scenario = Scenario("transformer", "train", "training", width=h.BUILT[c.sizes.pipeline][2], size=pixels,
                        frames=(frames,))
    flops = training_flops(c.master.transformer.config, frames, pixels // 8, pixels // 8,
                           lambda name: "attn_temporal" in name)
    rows = []
    c.master.to("cpu")  # the training step alone on the device
    try:
        for name in ("train-motion_module+autocast", "train-motion_module+autocast+checkpointing"):
            base = copy.deepcopy(c.master.transformer).to(c.device, FP32)
            inputs = h.transformer_inputs(base, 1, frames, pixels, pixels)
            model, _, factory = transformer_variant(name, scenario, base, "default", {})  # trains a copy of base
            variant, trainable = factory(inputs), sum(p.numel() for p in model.parameters() if p.requires_grad)
            del base, model
            row = h.compare_variants([variant], c.device, 2, c.peaks, 1)[0][0]
            row.update(trainable_params=trainable, flops=flops, dtype="bf16", frames=frames, height=pixels)
            rows.append(row if row.get("skipped") else h.add_rates(row, c.peaks))
            del variant
            free()
    finally:
        c.master.to(c.device)
    return rows


def out_of_time(signum, frame) -> None:
    raise TimeoutError("the time budget ran out")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, help="seconds for all stages (default: 420; --tiny: 120)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--out", type=Path, required=True, help="folder of the reports")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (seconds on a CPU): checks the script")
    args = parser.parse_args(argv)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # every cast and offload of a pipeline would warn
    sizes = TINY if args.tiny else FULL
    c = Check(torch.device(args.device), sizes, args.out, args.budget_s or sizes.budget_s)
    alarm = hasattr(signal, "SIGALRM")
    if alarm:  # a stage still running 30 s after the budget is stopped (and recorded as failed)
        signal.signal(signal.SIGALRM, out_of_time)
        signal.alarm(int(c.left()) + 30)
    eager_s = lambda: 10 + (sizes.speed[2] + 3) * (c.step_s or 1.5)  # noqa: E731
    try:
        c.stage("build", "gpu-checks", 0, lambda: build(c))
        if c.master is not None:
            c.stage("correctness", "gpu-checks", 30, lambda: correctness(c))
            c.stage("memory", "gpu-memory", 40, lambda: memory(c))
            c.stage("speed-bf16-eager", "gpu-speed", eager_s(), lambda: speed(c, BF16, False))
            c.stage("training", "gpu-training", 30, lambda: training(c))
            c.stage("speed-bf16-compiled", "gpu-speed", eager_s() + 40, lambda: speed(c, BF16, True))
            c.stage("speed-fp16-eager", "gpu-speed", eager_s(), lambda: speed(c, FP16, False))
            c.stage("speed-fp16-compiled", "gpu-speed", 10 * (c.step_s or 1.5) + 60, lambda: speed(c, FP16, True))
    finally:
        if alarm:
            signal.alarm(0)
    for report in REPORTS:
        c.write(report)
        print((args.out / f"{report}.md").read_text())
    return 0 if c.master is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
