"""The computed memory of a generation (``easyanimate.memory``): live-tensor tracking, activation peaks on meta
tensors, model sizes, and the peak per memory mode that the CLI and the memory tiers rest on."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from easyanimate.config import load_config, transformer_kwargs_for_model
from easyanimate.generation import MEMORY_MODES
from easyanimate.memory import (
    CUDA_OVERHEAD_BYTES,
    LiveTensorBytes,
    activation_peak,
    build_meta_model,
    component_sizes,
    estimate_generation_memory,
    transformer_activation_bytes,
)
from easyanimate.models import Transformer3DModel

ROOT = Path(__file__).resolve().parents[1]
RELEASED = transformer_kwargs_for_model(
    load_config(ROOT / "config" / "easyanimate_video_motion_module_v1.yaml").transformer_additional_kwargs)
TINY = dict(num_attention_heads=2, attention_head_dim=32, cross_attention_dim=64, caption_channels=48, sample_size=8,
            **RELEASED)


def test_live_tensor_bytes_counts_new_storages_not_views_or_earlier_tensors():
    before = torch.zeros(1000)  # made before the mode: not counted
    with LiveTensorBytes() as tracker:
        before.view(10, 100)  # a view allocates nothing
        before.add_(1)  # nor does an in-place op
        first = before + 1  # 4000 bytes
        second = first * 2  # 8000 live
        del first
        third = torch.empty(3000)  # 4000 + 12000 live: the peak
        del second, third
        torch.empty(1)
    assert tracker.peak_bytes == 16000
    assert tracker.current_bytes == 4


def test_activation_peak_on_meta_tensors_equals_the_real_run():
    torch.manual_seed(0)
    real = Transformer3DModel(num_layers=2, **TINY).eval()
    generator = torch.Generator().manual_seed(1)
    inputs = (torch.randn(2, 4, 3, 8, 12, generator=generator), torch.randn(2, 12, 48, generator=generator),
              torch.ones(2, 12), torch.tensor([10, 500]))
    meta = build_meta_model("transformer", {**TINY, "num_layers": 2})
    meta_inputs = tuple(t.to("meta") for t in inputs)
    assert activation_peak(lambda: meta(*meta_inputs)) == activation_peak(lambda: real(*inputs)) > 0


def test_two_blocks_have_the_activation_peak_of_more_blocks():
    # estimate_generation_memory builds 2 blocks for speed: every block allocates alike, so 2 give the peak of 28.
    two, three = (transformer_activation_bytes({**RELEASED, "num_layers": n}, 2, 4, 8, 8, torch.bfloat16)
                  for n in (2, 3))
    assert two == three


def test_temporal_windows_bound_the_computed_denoising_peak():
    config = {**RELEASED, "num_layers": 2}
    whole = transformer_activation_bytes(config, 1, 64, 8, 8, torch.float32)
    windowed = transformer_activation_bytes(config, 1, 64, 8, 8, torch.float32, context_frames=16)
    assert windowed < 0.5 * whole


def test_released_component_sizes():
    sizes = component_sizes(RELEASED, torch.bfloat16)
    assert sizes["transformer"].parameters == 1_429_029_536  # PixArt-XL-2 plus 28 grid motion modules
    assert sizes["text_encoder"].parameters == 4_762_310_656  # T5 v1.1 XXL encoder
    assert sizes["vae"].parameters == 83_653_863  # SD VAE
    assert sizes["transformer"].bytes == 2 * (sizes["transformer"].parameters + sizes["transformer"].buffers)


def test_the_memory_modes_keep_what_they_say_on_the_device():
    estimates = {mode: estimate_generation_memory(RELEASED, 256, 256, 16, torch.bfloat16, mode)
                 for mode in MEMORY_MODES}
    sizes = component_sizes(RELEASED, torch.bfloat16)
    none, cpu_text = estimates["none"], estimates["text_encoder_cpu"]
    assert none.weights == {name: size.bytes for name, size in sizes.items()}
    assert cpu_text.weights["text_encoder"] == 0 and cpu_text.stages["text_encoding"] == (
        sizes["transformer"].bytes + sizes["vae"].bytes)  # T5 and its activations are on the CPU
    offload = estimates["model_cpu_offload"]
    assert offload.stages["decoding"] == sizes["vae"].bytes + offload.activations["decoding"]
    # one layer at a time: T5's largest is its token embedding, under 3% of the encoder
    assert estimates["sequential_cpu_offload"].weights["text_encoder"] < sizes["text_encoder"].bytes / 30
    assert (estimates["sequential_cpu_offload"].peak_bytes < offload.peak_bytes < none.peak_bytes
            and cpu_text.peak_bytes < none.peak_bytes)
    assert none.total_bytes == none.peak_bytes + CUDA_OVERHEAD_BYTES
    assert none.peak_bytes == none.stages[none.peak_stage]


def test_guidance_in_two_forwards_halves_the_denoising_activations():
    batched, sequential = (estimate_generation_memory(RELEASED, 256, 256, 16, torch.bfloat16, batched_guidance=b)
                           for b in (True, False))
    assert sequential.activations["denoising"] * 2 == pytest.approx(batched.activations["denoising"], rel=0.01)


def test_the_released_setting_needs_the_published_memory():
    # 512x512x80, bf16, T5 on the CPU, guidance as one batch of 2 (docs/benchmarks/tiers.json: 11.9 GB, 13.0 with the
    # CUDA context).
    estimate = estimate_generation_memory(RELEASED, 512, 512, 80, torch.bfloat16, "text_encoder_cpu")
    assert estimate.peak_stage == "denoising"
    assert round(estimate.peak_bytes / 1e9, 1) == 11.9 and round(estimate.total_bytes / 1e9, 1) == 13.0


def test_an_unknown_memory_mode_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match="sequential_cpu_offload"):
        estimate_generation_memory(RELEASED, 64, 64, 4, memory_mode="gpu_only")


def test_the_library_imports_nothing_from_benchmarks_or_examples():
    for path in (ROOT / "easyanimate").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.split(".")[0] in ("benchmarks", "examples") for n in names), path
