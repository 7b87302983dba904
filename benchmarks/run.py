"""Run benchmark scenarios: ``python -m benchmarks.run --scenarios all --out DIR [--docs docs/benchmarks.md]``.

Each scenario of :data:`benchmarks.scenarios.SCENARIOS` writes ``<out>/<name>.json`` (machine, settings, every
reading); its markdown and the ``--docs`` page are rendered from the JSON alone (``--render-only`` redoes them).
The kinds of measurement (:data:`KINDS`) are here; how each number is taken is in :mod:`benchmarks.harness`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import itertools
import json
import re
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from easyanimate.devices import DTYPES
from easyanimate.memory import component_sizes, memory_tiers, transformer_activation_bytes
from easyanimate.models import TemporalContext
from easyanimate.training.diffusion import ImprovedDDPM

from . import harness as h
from .flops import generation_flops, training_flops, transformer_flops
from .harness import render, write_docs
from .scenarios import SCENARIOS, Scenario, quick

SDPA = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
TOKENS = ("plain", "forward", "backward", "train-motion_module", "train-full", "train-lora", "checkpointing",
          "autocast", "foreach", "compiled", "retain", "bf16", "fp16", "v1-layout", *(f"sdpa-{name}" for name in SDPA))
EXACT = {"plain", "forward", "retain"}  # the tokens that leave the output bit for bit as it is


def slow_dtypes(device: torch.device, peaks: h.MatmulPeaks, floor: float = 0.25) -> dict[str, str]:
    """Reduced precisions whose 512^3 matmul runs below ``floor`` x fp32 here (CPUs without native fp16 use a slow
    fallback: a full-width forward would take hours), with the reason they are not run."""
    if device.type != "cpu":
        return {}
    fp32 = peaks.measure(torch.float32, size=512, repeats=3)
    rates = {name: peaks.measure(DTYPES[name], size=512, repeats=3) for name in ("bf16", "fp16")}
    return {name: f"{name} matmul runs at {rate / 1e9:.1f} GFLOP/s here ({100 * rate / fp32:.1f}% of fp32's "
                  f"{fp32 / 1e9:.1f} at 512^3)" for name, rate in rates.items() if rate < floor * fp32}


def transformer_variant(name: str, s: Scenario, base, malloc: str, slow: dict[str, str]):
    """The model of a ``+``-joined variant of :data:`TOKENS` (a copy of ``base`` where the variant changes it), its
    dtype, and a function from inputs to the :class:`~benchmarks.harness.Variant`."""
    tokens = name.split("+")
    if unknown := [t for t in tokens if t not in TOKENS]:
        raise ValueError(f"unknown variant token(s) {unknown}; valid: {', '.join(TOKENS)}")
    dtype = next((t for t in tokens if t in ("bf16", "fp16")), s.dtype)
    if dtype in slow:
        return base, dtype, lambda inputs: h.Variant(name, skip=slow[dtype])
    train = next((t.removeprefix("train-") for t in tokens if t.startswith("train-")), None)
    model = base if dtype == s.dtype and not train and "compiled" not in tokens else copy.deepcopy(base).to(
        DTYPES[dtype])
    optimizer = trainable(model, train, "checkpointing" in tokens, "foreach" not in tokens) if train else None
    diffusion = ImprovedDDPM()
    if "compiled" in tokens:
        model.compile_blocks(backend=s.compile_backend)
    sdpa = next((SDPA[t.removeprefix("sdpa-")] for t in tokens if t.startswith("sdpa-")), None)
    context = (lambda: sdpa_kernel([getattr(SDPBackend, sdpa)])) if sdpa else (
        h.original_layout if "v1-layout" in tokens else nullcontext)

    def train_step(x0: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, _) -> None:
        """One AdamW step: noise the latents at random timesteps, predict, improved-DDPM loss (as the trainer does)."""
        t = diffusion.sample_timesteps(x0.shape[0], device=x0.device)
        noise = torch.randn_like(x0)
        noisy = diffusion.q_sample(x0, t, noise)
        with context(), torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled="autocast" in tokens):
            output = model.train()(noisy, text, mask, t, return_dict=False)[0]
        diffusion.training_losses(output.float(), x0, noisy, t, noise)["loss"].mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def variant(inputs: tuple[torch.Tensor, ...], temporal: TemporalContext | None = None) -> h.Variant:
        inputs = tuple(t.to(model.dtype) if t.is_floating_point() and t.dim() > 2 else t for t in inputs)
        call = (lambda: train_step(*inputs)) if train else h.transformer_step(model, inputs, "backward" in tokens,
                                                                               context, temporal)
        return h.Variant(name, call, "retain" if "retain" in tokens else malloc, set(tokens) <= EXACT)
    return model, dtype, variant


def trainable(model, mode: str, checkpointing: bool, fused: bool = True) -> torch.optim.Optimizer:
    """Make the motion modules, the whole model or a rank-16 LoRA trainable (as the trainer does); AdamW over it,
    fused as the trainer makes it, or the default foreach implementation (``foreach`` token)."""
    from easyanimate.lora import TRANSFORMER, lora_target_modules
    from easyanimate.training.trainer import select_trainable

    if mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        pattern = "^(" + "|".join(map(re.escape, lora_target_modules(model, TRANSFORMER))) + ")$"
        model.requires_grad_(False)
        inject_adapter_in_model(LoraConfig(r=16, lora_alpha=16, target_modules=pattern), model)
        groups = [{"params": [p.requires_grad_() for n, p in model.named_parameters() if "lora_" in n]}]
    else:
        groups = select_trainable(model, ["attn_temporal"] if mode == "motion_module" else ["."], [], 1e-4)
    if checkpointing:
        model.enable_gradient_checkpointing()
    return torch.optim.AdamW(groups, lr=1e-4, fused=fused, foreach=not fused)


def measure_transformer(s: Scenario, device: torch.device, peaks: h.MatmulPeaks, malloc: str) -> dict[str, Any]:
    """Each case (frames at ``size``, then ``sizes`` at ``frames[0]``; x windows) compares the variants; rows add
    the FLOPs (for backward and training: with gradients for the variant's trainable parameters), rates, and the
    computed activation peak."""
    base = h.build_transformer(s.width, s.layers, device, DTYPES[s.dtype], caption_channels=s.text_dim)
    slow = slow_dtypes(device, peaks)
    variants = {name: transformer_variant(name, s, base, malloc, slow) for name in s.variants}
    meta_config = {**base.config, "num_layers": min(s.layers, 2)}  # every block allocates alike
    cases = [(frames, s.size) for frames in s.frames] + [(s.frames[0], px) for px in s.sizes if px != s.size]
    rows, rounds = [], []
    for (frames, px), window in itertools.product(cases, s.windows):
        if window is not None and window >= frames:
            continue  # a window as long as the clip is the plain path
        temporal = TemporalContext(window, window // 4) if window is not None else None
        forward_flops = transformer_flops(base.config, frames, px // 8, px // 8, s.batch)
        inputs = h.transformer_inputs(base, s.batch, frames, px, px)
        case_rows, case_rounds = h.compare_variants([factory(inputs, temporal) for _, _, factory in variants.values()],
                                                    device,
                                                    s.repeats, peaks, s.warmup)
        for row in case_rows:
            model, dtype, _ = variants[row["path"]]
            forward = not re.search("backward|train", row["path"])
            trained = {n for n, p in model.named_parameters() if p.requires_grad}
            row.update(frames=frames, height=px, width=px, batch=s.batch, window=window, dtype=dtype,
                       tokens=s.batch * frames * (px // 8 // base.config.patch_size) ** 2,
                       flops=forward_flops if forward else training_flops(
                           base.config, frames, px // 8, px // 8, trained.__contains__, s.batch),
                       trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad))
            if forward and not row.get("skipped"):
                row["computed_activation_bytes"] = transformer_activation_bytes(
                    meta_config, s.batch, frames, px // 8, px // 8, model.dtype, window)
        rows, rounds = rows + case_rows, rounds + [case_rounds]
        for dtype in {dtype for _, dtype, _ in variants.values()}:
            peaks.measure(DTYPES[dtype])
    return {"rows": [r if r.get("skipped") else h.add_rates(r, peaks) for r in rows], "rounds": rounds}


def measure_pipeline(s: Scenario, device: torch.device, peaks: h.MatmulPeaks, malloc: str) -> dict[str, Any]:
    """Whole generations from the same noise (``plain``, ``two-forwards``, ``bf16``, ``fp16``, ``memory-<mode>``)
    against the first, whose stages are also timed (``encode_prompt`` and ``decode_latents`` on their own, the
    denoising as the rest); then decodings of its latents (``chunk-<frames per VAE call>``, ``tiled``: tiles of half
    the frame) against the first of those."""
    size, slow, rows = h.PIPELINE_SIZES[s.pipeline], slow_dtypes(device, peaks), []
    decoding = [v for v in s.variants if v.startswith("chunk-") or v == "tiled"]
    generation = [v for v in s.variants if v not in decoding]
    build = functools.cache(lambda dtype, mode: h.build_pipeline(s.pipeline, device, DTYPES[dtype], mode))

    def generate(name: str, output_type: str = "pt") -> torch.Tensor:
        pipeline = build(name if name in DTYPES else "fp32", name[7:] if name.startswith("memory-") else "none")
        pipeline.batched_guidance = name != "two-forwards"
        return pipeline(h.PROMPT, video_length=frames, height=size, width=size, latents=noise, output_type=output_type,
                        num_inference_steps=s.steps, guidance_scale=s.guidance,
                        generator=torch.Generator().manual_seed(0)).videos

    def decode(name: str) -> torch.Tensor:
        vae, defaults = plain.vae, (plain.vae.tile_sample_min_size, plain.vae.tile_latent_min_size)
        if name == "tiled":
            vae.enable_tiling()
            vae.tile_sample_min_size, vae.tile_latent_min_size = size // 2, size // 2 // plain.vae_scale_factor
        try:
            with torch.no_grad():
                return plain.decode_latents(latents, chunk_size=8 if name == "tiled" else int(name[6:]))
        finally:
            vae.disable_tiling()
            vae.tile_sample_min_size, vae.tile_latent_min_size = defaults

    for frames in s.frames:
        common = {"pipeline": s.pipeline, "frames": frames, "height": size, "width": size, "steps": s.steps}
        noise = torch.randn(1, 4, frames, size // 8, size // 8, generator=torch.Generator().manual_seed(0)).to(device)
        group = h.compare_variants([h.Variant(n, lambda n=n: generate(n), malloc, n == generation[0], slow.get(n))
                                    for n in generation], device, s.repeats, peaks, s.warmup, data_range=1.0)[0]
        plain, latents = build("fp32", "none"), generate(generation[0], "latent")
        text = statistics.median(h.time_calls(
            lambda plain=plain: plain.encode_prompt(h.PROMPT, s.guidance > 1, device=device), device, s.repeats,
            warmup=1))
        with torch.no_grad():
            decode_s = statistics.median(h.time_calls(
                lambda plain=plain, latents=latents: plain.decode_latents(latents), device, s.repeats))
        group[0].update(text_encoding_s=text, decoding_s=decode_s, denoising_s=group[0]["median_s"] - text - decode_s)
        rows += [{**r, **common, "group": "generation"} for r in group]
        if decoding:
            variants = [h.Variant(n, lambda n=n: decode(n), malloc, n == decoding[0]) for n in decoding]
            group = h.compare_variants(variants, device, s.repeats, peaks, s.warmup, data_range=1.0)[0]
            rows += [{**r, **common, "group": "decoding"} for r in group]
    return {"rows": rows}


def measure_tiers(s: Scenario, device: torch.device, peaks: h.MatmulPeaks, malloc: str) -> dict[str, Any]:
    """:func:`easyanimate.memory.memory_tiers` of every setting (``variants``: dtypes) and the FLOPs of one
    generation; computed, not measured: nothing is allocated."""
    config = h.transformer_config(s.width, s.layers)
    components = {dtype: {name: dataclasses.asdict(size) for name, size in
                          component_sizes(config, DTYPES[dtype]).items()} for dtype in s.variants}
    return {"components": components, "rows": memory_tiers(config, s.sizes, s.frames, s.variants, s.windows),
            "generation_flops": generation_flops(config)}


KINDS = {"transformer": measure_transformer, "pipeline": measure_pipeline, "tiers": measure_tiers}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (flags alphabetised)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    add("--docs", type=Path, help="also write this markdown page from benchmarks/docs_template.md")
    add("--malloc", choices=sorted(h.MALLOC_MODES), default="default", help="CPU: glibc allocator mode of timed calls")
    add("--out", type=Path, default=Path("benchmarks/results"), help="folder of the JSON and markdown files")
    add("--quick", action="store_true", help="every scenario at tiny sizes (seconds): checks the harness")
    add("--render-only", action="store_true", help="measure nothing: re-render markdown and --docs from the JSON")
    add("--scenarios", default="all", help=f"all, or comma-separated from: {', '.join(SCENARIOS)}")
    add("--threads", type=int, help="torch CPU threads; unset: torch's choice")
    return parser.parse_args(argv)


def selected(args: argparse.Namespace) -> dict[str, Scenario]:
    """The scenarios named on the command line (``--quick``: at tiny sizes)."""
    names = list(SCENARIOS) if args.scenarios == "all" else args.scenarios.split(",")
    if unknown := [n for n in names if n not in SCENARIOS]:
        raise SystemExit(f"unknown scenario(s) {unknown}; valid: all, {', '.join(SCENARIOS)}")
    return {n: quick(SCENARIOS[n]) if args.quick else SCENARIOS[n] for n in names}


def main(argv: list[str] | None = None) -> None:
    """Measure (or re-render) the selected scenarios, then the docs page if asked."""
    args = parse_args(argv)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for name, scenario in selected(args).items():
        if not args.render_only:
            print(f"== {name}", flush=True)
            started, peaks = time.perf_counter(), h.MatmulPeaks(device, scenario.peak_size)
            results = KINDS[scenario.kind](scenario, device, peaks, args.malloc)
            payload = {"scenario": name, "settings": dataclasses.asdict(scenario), "malloc": args.malloc,
                       "machine": h.machine_info(device), "matmul_peaks": peaks.record(),
                       "wall_s": time.perf_counter() - started, **results}
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(render(args.out, name).get("", ""), flush=True)
    if args.docs is not None:
        write_docs(args.out, args.docs)


if __name__ == "__main__":
    main()
