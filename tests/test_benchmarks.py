"""The benchmark harness: the FLOP count on the meta device equals a real run's and the products written out, the
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
from benchmarks.flops import training_flops, transformer_flops
from benchmarks.harness import build_transformer, compare, original_layout, transformer_inputs
from benchmarks.scenarios import SCENARIOS
from easyanimate.config import load_config, transformer_kwargs_for_model
from easyanimate.models import Transformer3DModel

ROOT = Path(__file__).resolve().parents[1]
# Width 64 = 2 heads x 32: divisible by the motion module's 32 GroupNorm groups and its 8 heads.
TINY = dict(num_attention_heads=2, attention_head_dim=32, num_layers=2, cross_attention_dim=64,
            caption_channels=48, sample_size=8)
BATCH, FRAMES, HEIGHT, WIDTH, TEXT_LEN = 2, 3, 8, 12, 10

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


def counted_on_cpu(model: Transformer3DModel, backward: bool = False) -> int:
    """FLOPs of the model run for real on the CPU (the math SDPA backend exposes attention as bmm calls); with
    ``backward``, also of the backward of a mean-square loss (into the latents when no parameter trains)."""
    latents, *rest = tiny_inputs()
    latents.requires_grad_(backward and not any(p.requires_grad for p in model.parameters()))
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        output = model(latents, *rest).sample
        if backward:
            output.square().mean().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("additional", VARIANTS.values(), ids=VARIANTS.keys())
def test_the_meta_device_count_equals_a_real_run(additional):
    model = tiny_model(additional)
    with torch.no_grad():
        real = counted_on_cpu(model)
    assert transformer_flops(model.config, FRAMES, HEIGHT, WIDTH, batch=BATCH, text_len=TEXT_LEN) == real > 0


# which parameters train, and the training step's FLOPs in forwards: a weight gradient costs one more product per
# product and an input gradient another. The motion modules alone skip the image model's weight gradients; the whole
# model needs nearly all of both (not the input gradients of the patch embedding and caption projection, a larger
# share of this tiny model than of the released one); a LoRA's adapters are not counted, only the input gradients
# (both operands of an attention product are activations, so those take two products each).
TRAINABLE = {"whole model": (lambda name: True, 2.8, 3.0),
             "motion modules": (lambda name: "attn_temporal" in name, 2.0, 2.8),
             "no weight (LoRA)": (lambda name: False, 1.8, 2.2)}


@pytest.mark.parametrize("trainable, low, high", TRAINABLE.values(), ids=TRAINABLE.keys())
def test_the_meta_device_training_count_equals_a_real_backward(trainable, low, high):
    model = tiny_model(VARIANTS["grid motion module (v1 release)"])
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(trainable(name))
    counted = training_flops(model.config, FRAMES, HEIGHT, WIDTH, trainable, batch=BATCH, text_len=TEXT_LEN)
    assert counted == counted_on_cpu(model, backward=True)
    forward = transformer_flops(model.config, FRAMES, HEIGHT, WIDTH, batch=BATCH, text_len=TEXT_LEN)
    assert low * forward < counted <= high * forward


def test_a_released_block_counts_as_its_matrix_products_written_out():
    config = extras("easyanimate_video_motion_module_v1.yaml", num_layers=1, num_attention_heads=16,
                    attention_head_dim=72, cross_attention_dim=1152)
    frames, grid, text_len, width = 16, 16, 120, 1152  # 16 frames of 256x256 px: a 16x16 token grid per frame
    block = transformer_flops({**config, "num_layers": 2}, frames, 32, 32) - transformer_flops(config, frames, 32, 32)
    tokens = frames * grid * grid
    # per token: self-attention q/k/v/out 4 C^2, cross-attention q/out 2 C^2, feed-forward 8 C^2, motion module
    # projection in 2 C^2 + two temporal attentions 2 x 4 C^2 + its GEGLU feed-forward 12 C^2 = 36 C^2;
    # the text's keys and values 2 x 120 C^2
    linear = 36 * tokens * width**2 + 2 * text_len * width**2
    self_scores = frames * 2 * (grid * grid) ** 2 * width  # QK^T and AV over each frame's tokens
    cross_scores = 2 * tokens * text_len * width
    temporal_length = 2 * 2 * frames  # a 2x2 token grid across all frames
    temporal_scores = 2 * (tokens // temporal_length) * 2 * temporal_length**2 * width
    assert block == 2 * (linear + self_scores + cross_scores + temporal_scores)


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
    # left in sight: the side-by-side tables, which need the original's code (benchmarks/side_by_side.py)
    assert set(re.findall(r"\{\{([^}:]+)", docs.read_text())) == {"side-by-side", "side-by-side-control"}
    assert all(f"# {s.title}" in (tmp_path / f"{n}.md").read_text()
                                                  for n, s in SCENARIOS.items())


@pytest.mark.slow
def test_the_side_by_side_control_runs_both_workers_on_the_same_weights(tmp_path):
    from benchmarks import side_by_side

    side_by_side.main(["--original", "ours", "--out", str(tmp_path), "--frames", "4", "--size", "64",
                       "--rounds", "1", "--threads", "1"])
    report = json.loads((tmp_path / "side-by-side-control.json").read_text())
    # both workers loaded the one weights file and computed the same forward
    assert report["forward_outputs"]["max_abs_diff"] == 0
    ratios = {r["path"]: r["ours_over_original"] for r in report["rows"]}
    assert set(ratios) == {"forward, ours", "forward, original", "train, ours", "train, original"}
    assert ratios["train, ours"] > 0 and ratios["train, original"] is None
    assert "| train, ours |" in (tmp_path / "side-by-side-control.md").read_text()


def test_the_side_by_side_names_what_it_needs(tmp_path, capsys):
    from benchmarks import side_by_side

    with pytest.raises(SystemExit, match="checkout of the original v1 code"):
        side_by_side.main(["--original", str(tmp_path), "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())
