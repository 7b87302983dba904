"""The benchmark harness: the analytic FLOP count agrees with torch's own counter and scales as the formulas say, the
comparison and the original-layout reference are right, and every kind of scenario runs end to end at a tiny size."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import run
from benchmarks.flops import BLOCK_PARTS, GLOBAL_PARTS, transformer_flops
from benchmarks.harness import build_transformer, compare, original_layout, transformer_inputs
from benchmarks.scenarios import SCENARIOS
from easyanimate.config import load_config, transformer_kwargs_for_model
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


def test_compare_reports_max_abs_difference_and_psnr():
    reference = torch.zeros(4, 4)
    candidate = reference.clone()
    assert compare(reference, candidate, data_range=1.0)["psnr_db"] == float("inf")
    candidate[0, 0] = 0.4  # MSE = 0.16 / 16 = 0.01 -> 20 dB at peak 1
    result = compare(reference, candidate, data_range=1.0)
    assert result["max_abs_diff"] == pytest.approx(0.4)
    assert result["psnr_db"] == pytest.approx(20.0)


def test_contiguous_grid_sequences_equal_the_original_per_attention_layout():
    # The benchmark's plain reference for the grid layout must compute the same function.
    model = build_transformer("tiny", 2, sample_size=8)
    inputs = transformer_inputs(model, 2, 3, 64, 96, text_len=12)
    with torch.no_grad():
        fast = model(*inputs).sample
        with original_layout():
            original = model(*inputs).sample
    torch.testing.assert_close(original, fast, atol=1e-6, rtol=0)
    with torch.no_grad():
        assert torch.equal(model(*inputs).sample, fast)  # the context manager restored the fast path


def run_quick(names: list[str], out: Path) -> None:
    threads = torch.get_num_threads()
    try:
        run.main(["--quick", "--threads", "1", "--scenarios", ",".join(names), "--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # the command sets it for the whole process; later tests need their own


# The quickest scenario of each kind of measurement, at the tiny sizes of --quick.
QUICKEST = {"transformer": "transformer_backward", "pipeline": "fast-paths-pipeline", "tiers": "tiers"}


@pytest.mark.parametrize("name", QUICKEST.values(), ids=QUICKEST.keys())
def test_the_quickest_scenario_of_each_kind_writes_its_json_and_markdown(name, tmp_path):
    run_quick([name], tmp_path)
    payload = json.loads((tmp_path / f"{name}.json").read_text())
    assert payload["settings"]["kind"] in QUICKEST and payload["rows"]
    markdown = (tmp_path / f"{name}.md").read_text()
    assert markdown.startswith(f"# {SCENARIOS[name].title}") and "| " in markdown


@pytest.mark.slow
def test_every_scenario_runs_quick_and_fills_the_docs_template(tmp_path):
    run_quick(list(SCENARIOS), tmp_path)
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == sorted(SCENARIOS)
    docs = tmp_path / "benchmarks.md"
    run.main(["--render-only", "--out", str(tmp_path), "--docs", str(docs)])
    assert "{{" not in docs.read_text() and all(f"# {s.title}" in (tmp_path / f"{n}.md").read_text()
                                                  for n, s in SCENARIOS.items())
