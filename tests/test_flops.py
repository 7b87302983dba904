"""The analytic FLOP count agrees with torch's own counter and scales as the formulas say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from easyanimate.config import load_config, transformer_kwargs_for_model
from easyanimate.flops import BLOCK_PARTS, GLOBAL_PARTS, transformer_flops
from easyanimate.models import Transformer3DModel

ROOT = Path(__file__).resolve().parents[1]
# Width 64 = 2 heads x 32: divisible by the motion module's 32 GroupNorm groups and its 8 heads.
TINY = dict(num_attention_heads=2, attention_head_dim=32, num_layers=2, cross_attention_dim=64,
            caption_channels=48, sample_size=8)
BATCH, FRAMES, HEIGHT, WIDTH, TEXT_LEN = 2, 3, 8, 12, 10

# Which analytic parts each top-level module (or block submodule) of the model computes.
PARTS_BY_MODULE = {
    "pos_embed": ["patch_embed"],
    "adaln_single": ["timestep_embedder"],
    "caption_projection": ["caption_projection"],
    "proj_out": ["output_proj"],
    "attn1": ["self_attn_proj", "self_attn_scores"],
    "attn2": ["cross_attn_proj", "cross_attn_text_kv", "cross_attn_scores"],
    "ff": ["ffn"],
    "attn_temporal": ["motion_proj", "motion_attn_proj", "motion_attn_scores", "motion_ffn"],
}


def extras(config_name: str, **overrides) -> dict:
    kwargs = transformer_kwargs_for_model(load_config(ROOT / "config" / config_name).transformer_additional_kwargs)
    return {**kwargs, **overrides}


VARIANTS = {
    "grid motion module (v1 release)": extras("easyanimate_video_motion_module_v1.yaml"),
    "per-position motion module": extras("easyanimate_video_motion_module_v1.yaml", motion_module_type="Vanilla"),
    "grid motion module, block_size 1": extras("easyanimate_video_motion_module_v1.yaml", motion_module_kwargs={
        **extras("easyanimate_video_motion_module_v1.yaml")["motion_module_kwargs"], "block_size": 1}),
    "whole-clip attention (long sequence)": extras("easyanimate_video_long_sequence_v1.yaml"),
}


def tiny_model(additional: dict) -> Transformer3DModel:
    torch.manual_seed(0)
    return Transformer3DModel(**TINY, **additional)


def tiny_inputs() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(BATCH, 4, FRAMES, HEIGHT, WIDTH, generator=generator)
    text = torch.randn(BATCH, TEXT_LEN, TINY["caption_channels"], generator=generator)
    mask = torch.ones(BATCH, TEXT_LEN)
    mask[0, 6:] = 0
    return latents, text, mask, torch.tensor([10, 500])


def counted_flops(model: Transformer3DModel, backward: bool = False) -> FlopCounterMode:
    """Run the model under torch's counter; the math SDPA backend exposes attention as bmm calls."""
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        output = model(*tiny_inputs()).sample
        if backward:
            output.sum().backward()
    return counter


@pytest.mark.parametrize("additional", VARIANTS.values(), ids=VARIANTS.keys())
def test_analytic_count_equals_torch_flop_counter(additional):
    model = tiny_model(additional)
    with torch.no_grad():
        counter = counted_flops(model)
    analytic = transformer_flops(model.config, FRAMES, HEIGHT, WIDTH, batch=BATCH, text_len=TEXT_LEN)
    # Both count matmuls, convolutions and attention products only (elementwise ops are ignored by
    # both), so the totals agree exactly, not just within a tolerance.
    assert analytic.total == counter.get_total_flops()
    by_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    for module, parts in PARTS_BY_MODULE.items():
        # the top-level module, or the same-named child of every transformer block
        pattern = re.compile(rf"Transformer3DModel(\.transformer_blocks\.\d+)?\.{module}")
        torch_count = sum(v for name, v in by_module.items() if pattern.fullmatch(name))
        assert sum(analytic.parts.get(part, 0) for part in parts) == torch_count, module


def test_forward_backward_is_about_three_forwards():
    model = tiny_model(VARIANTS["grid motion module (v1 release)"])
    forward = transformer_flops(model.config, FRAMES, HEIGHT, WIDTH, batch=BATCH, text_len=TEXT_LEN)
    training = counted_flops(model, backward=True).get_total_flops()
    # Under 3x because the input-side gradients of the patch embedding and caption projection are
    # not needed; those layers are a larger share of this tiny model than of the released one.
    assert 2.8 * forward.total < training <= forward.forward_backward


@pytest.mark.parametrize("additional", VARIANTS.values(), ids=VARIANTS.keys())
def test_doubling_frames_doubles_per_token_work_and_quadruples_temporal_scores(additional):
    config = {**TINY, **additional}
    one = transformer_flops(config, 8, 32, 32).parts
    two = transformer_flops(config, 16, 32, 32).parts
    whole_clip = additional["basic_block_type"] == "selfattentiontemporal"
    quadratic_in_frames = {"motion_attn_scores"} | ({"self_attn_scores"} if whole_clip else set())
    for part in one:
        if part in ("timestep_embedder", "caption_projection", "cross_attn_text_kv"):
            expected = 1
        elif part in quadratic_in_frames:
            expected = 4
        else:
            expected = 2
        assert two[part] == expected * one[part], part


def test_released_block_is_dominated_by_token_wise_linears():
    config = extras("easyanimate_video_motion_module_v1.yaml")
    count = transformer_flops(config, 16, 32, 32)  # 16 frames at 256x256 px
    block = count.per_block
    tokens, width = count.tokens, 1152
    # self-attn 4, cross-attn q/out 2, ffn 8, motion proj 2 + 2x4 attention + 12 GEGLU = 36 C^2 per token
    linear = sum(v for k, v in block.items() if not k.endswith("_scores"))
    assert linear == 2 * 36 * tokens * width**2 + 2 * 2 * 120 * width**2
    assert set(block) == set(BLOCK_PARTS)
    assert set(count.parts) == set(BLOCK_PARTS) | set(GLOBAL_PARTS)
    assert count.forward_backward == 3 * count.total


def test_odd_latent_sizes_are_rejected():
    config = extras("easyanimate_video_motion_module_v1.yaml")
    with pytest.raises(ValueError, match="patch size"):
        transformer_flops(config, 4, 33, 32)
    with pytest.raises(ValueError, match="groups 2x2 tokens"):
        transformer_flops(config, 4, 34, 32)


# ------------------------------------------------------------------------------------------------
# Computed memory (benchmarks/computed.py): the memory tiers rest on these.

def test_live_tensor_bytes_counts_new_storages_not_views_or_earlier_tensors():
    from benchmarks.computed import LiveTensorBytes

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
    from benchmarks.computed import activation_peak
    from benchmarks.setups import build_transformer, transformer_inputs

    real = build_transformer("tiny", 2, sample_size=8)
    inputs = transformer_inputs(real, 2, 3, 64, 64, text_len=12)
    meta = build_transformer("tiny", 2, device="meta", sample_size=8)
    meta_inputs = tuple(t.to("meta") for t in inputs)
    assert activation_peak(lambda: meta(*meta_inputs)) == activation_peak(lambda: real(*inputs)) > 0


def test_two_blocks_have_the_activation_peak_of_more_blocks():
    from benchmarks.computed import denoising_peak

    # denoising_peak builds 2 blocks for speed: every block allocates alike, so 2 give the peak of 28.
    two, three = (denoising_peak(4, 64, 64, torch.bfloat16, num_layers=n) for n in (2, 3))
    assert two == three


def test_temporal_windows_bound_the_computed_denoising_peak():
    from benchmarks.computed import denoising_peak

    whole = denoising_peak(64, 64, 64, torch.float32, batch=1)
    windowed = denoising_peak(64, 64, 64, torch.float32, batch=1, window=16)
    assert windowed < 0.5 * whole


def test_released_component_sizes():
    from benchmarks.computed import component_sizes

    sizes = component_sizes(torch.bfloat16)
    assert sizes.transformer_params == 1_429_029_536  # PixArt-XL-2 plus 28 grid motion modules
    assert sizes.text_encoder_params == 4_762_310_656  # T5 v1.1 XXL encoder
    assert sizes.vae_params == 83_653_863  # SD VAE
    assert sizes.transformer_bytes == 2 * (sizes.transformer_params + sizes.transformer_buffers)
