"""Tests for easyanimate.lora: v1 kohya naming, file validation, peft export and exact merge/unmerge.

Tiny real components are built in code (PixArt transformer with 2 blocks, T5 encoder with 2 layers);
the full-size naming checks build PixArt-XL-2-512 and T5-XXL on the meta device (no memory, no weights)
and compare with the reference key list of the original v1 LoRA network.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from diffusers import PixArtTransformer2DModel
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import T5Config, T5EncoderModel

from easyanimate.lora import (
    LoraMerger,
    is_lora_layer,
    kohya_component,
    kohya_module_name,
    load_lora_state_dict,
    lora_target_modules,
    peft_state_dict_to_kohya,
    resolve_kohya_module,
    save_kohya_lora,
)

from .helpers import key_list

TRANSFORMER_BLOCK_TARGETS = 10  # attn1 q/k/v/out.0, attn2 q/k/v/out.0, ff.net.0.proj, ff.net.2
TRANSFORMER_TOP_LEVEL_TARGETS = 6  # 2 timestep-embedder linears, adaln_single.linear, 2 caption linears, proj_out


def tiny_transformer() -> PixArtTransformer2DModel:
    """PixArt transformer with 2 blocks of width 16 (the same key names as our video transformer)."""
    torch.manual_seed(0)
    return PixArtTransformer2DModel(
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        cross_attention_dim=16,
        caption_channels=12,
        sample_size=8,
        patch_size=2,
    )


def tiny_t5(feed_forward_proj: str = "gated-gelu") -> T5EncoderModel:
    """T5 encoder with 2 layers, d_model 32; gated-gelu gives wi_0/wi_1 like T5 v1.1."""
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=64, d_model=32, num_layers=2, num_heads=2, d_kv=16, d_ff=64, feed_forward_proj=feed_forward_proj
    )
    return T5EncoderModel(config)


def random_lora(
    model: nn.Module, component: str, paths: list[str], rank: int, alpha: float | None, seed: int
) -> dict[str, torch.Tensor]:
    """Kohya LoRA tensors with random down/up for the given module paths of ``model``."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for path in paths:
        weight = model.get_submodule(path).weight
        name = kohya_module_name(path, component)
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, *weight.shape[1:], generator=generator)
        tensors[f"{name}.lora_up.weight"] = torch.randn(weight.shape[0], rank, *weight.shape[2:], generator=generator)
        if alpha is not None:
            tensors[f"{name}.alpha"] = torch.tensor(alpha)
    return tensors


def snapshot(*models: nn.Module) -> list[torch.Tensor]:
    """Copies of every parameter of the models, in order."""
    return [param.detach().clone() for model in models for param in model.parameters()]


def assert_bit_equal(before: list[torch.Tensor], *models: nn.Module) -> None:
    """Every parameter of the models equals its snapshot bit for bit."""
    after = [param.detach() for model in models for param in model.parameters()]
    assert len(before) == len(after)
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def expected_merge(weight: torch.Tensor, lora: dict[str, torch.Tensor], name: str, multiplier: float) -> torch.Tensor:
    """Reference merge ``W + m * (alpha / rank) * up @ down`` for a Linear weight."""
    up, down = lora[f"{name}.lora_up.weight"], lora[f"{name}.lora_down.weight"]
    scale = lora[f"{name}.alpha"].item() / up.shape[1]
    return weight + multiplier * scale * (up @ down)


def reference_entries(prefix: str) -> dict[str, list[int]]:
    """``{key: shape}`` of the v1 reference LoRA keys (``tests/data/v1_lora_keys.tsv``) starting with ``prefix``."""
    return {key: shape for key, shape in key_list("v1_lora_keys").items() if key.startswith(prefix)}


def generated_entries(model: nn.Module, component: str, rank: int) -> dict[str, list[int]]:
    """``{key: shape}`` our naming gives for a rank-``rank`` LoRA over the default targets."""
    entries: dict[str, list[int]] = {}
    for path in lora_target_modules(model, component):
        out_features, in_features = model.get_submodule(path).weight.shape[:2]
        name = kohya_module_name(path, component)
        entries[f"{name}.alpha"] = []
        entries[f"{name}.lora_down.weight"] = [rank, in_features]
        entries[f"{name}.lora_up.weight"] = [out_features, rank]
    return entries


# ---------------------------------------------------------------------------------------------
# Naming
# ---------------------------------------------------------------------------------------------


def test_transformer_targets_and_names_round_trip() -> None:
    model = tiny_transformer()
    paths = lora_target_modules(model, "transformer")
    assert len(paths) == 2 * TRANSFORMER_BLOCK_TARGETS + TRANSFORMER_TOP_LEVEL_TARGETS
    assert "pos_embed.proj" not in paths  # a 2x2 conv is not adapted
    names = [kohya_module_name(path, "transformer") for path in paths]
    for expected in (
        "lora_unet__transformer_blocks_0_attn1_to_q",
        "lora_unet__transformer_blocks_0_attn1_to_out_0",
        "lora_unet__transformer_blocks_1_ff_net_0_proj",
        "lora_unet__transformer_blocks_1_ff_net_2",
        "lora_unet__adaln_single_linear",
        "lora_unet__adaln_single_emb_timestep_embedder_linear_1",
        "lora_unet__caption_projection_linear_2",
        "lora_unet__proj_out",
    ):
        assert expected in names
    for path, name in zip(paths, names):
        assert resolve_kohya_module(model, name) is model.get_submodule(path)
        assert kohya_component(name) == "transformer"


def test_transformer_targets_skip_attn_temporal() -> None:
    model = tiny_transformer()
    expected = lora_target_modules(model, "transformer")
    for block in model.transformer_blocks:
        block.attn_temporal = nn.ModuleDict({"to_q": nn.Linear(16, 16), "to_out": nn.ModuleList([nn.Linear(16, 16)])})
    assert lora_target_modules(model, "transformer") == expected
    temporal = resolve_kohya_module(model, "lora_unet__transformer_blocks_1_attn_temporal_to_out_0")
    assert temporal is model.transformer_blocks[1].attn_temporal["to_out"][0]


MOTION_MODULE_TARGETS = 12  # proj_in, 2 temporal attentions x (q, k, v, out.0), ff.net.0.proj, ff.net.2, proj_out


def test_motion_module_targets_are_opt_in_and_round_trip() -> None:
    """A 2-block video model with v1's motion-module layout: 26 targets by default (v1's), 50 with the motion module."""
    from easyanimate.models import Transformer3DModel
    from easyanimate.tiny import tiny_motion_module_kwargs, tiny_transformer_config

    config = {k: v for k, v in tiny_transformer_config(num_layers=2).items() if k != "_class_name"}
    model = Transformer3DModel(**config, motion_module_kwargs=tiny_motion_module_kwargs())
    layers = [path for path, module in model.named_modules() if path and is_lora_layer(module)]
    temporal = [path for path in layers if ".attn_temporal." in path]
    default = lora_target_modules(model, "transformer")
    with_motion_module = lora_target_modules(model, "transformer", motion_module=True)
    assert default == [path for path in layers if path not in temporal]
    assert with_motion_module == layers
    assert len(default) == 2 * TRANSFORMER_BLOCK_TARGETS + TRANSFORMER_TOP_LEVEL_TARGETS == 26
    assert len(temporal) == 2 * MOTION_MODULE_TARGETS and len(with_motion_module) == 50
    t5 = tiny_t5()
    assert lora_target_modules(t5, "text_encoder", motion_module=True) == lora_target_modules(t5, "text_encoder")
    for path in temporal:
        name = kohya_module_name(path, "transformer")
        assert name.startswith("lora_unet__transformer_blocks_") and "_attn_temporal_temporal_transformer_" in name
        assert resolve_kohya_module(model, name) is model.get_submodule(path)


@pytest.mark.parametrize(
    ("feed_forward_proj", "ff_layers"), [("gated-gelu", ["wi_0", "wi_1", "wo"]), ("relu", ["wi", "wo"])]
)
def test_t5_targets_and_names_round_trip(feed_forward_proj: str, ff_layers: list[str]) -> None:
    model = tiny_t5(feed_forward_proj)
    paths = lora_target_modules(model, "text_encoder")
    assert len(paths) == 2 * (4 + len(ff_layers))
    assert not any("relative_attention_bias" in path for path in paths)
    names = [kohya_module_name(path, "text_encoder") for path in paths]
    assert "lora_te_encoder_block_0_layer_0_SelfAttention_q" in names
    assert "lora_te_encoder_block_1_layer_0_SelfAttention_o" in names
    assert all(f"lora_te_encoder_block_1_layer_1_DenseReluDense_{layer}" in names for layer in ff_layers)
    for path, name in zip(paths, names):
        assert resolve_kohya_module(model, name) is model.get_submodule(path)
        assert kohya_component(name) == "text_encoder"


def test_resolve_rejects_unknown_names() -> None:
    model = tiny_transformer()
    with pytest.raises(LookupError, match="lora_unet__transformer_blocks_7_attn1_to_q"):
        resolve_kohya_module(model, "lora_unet__transformer_blocks_7_attn1_to_q")
    with pytest.raises(ValueError, match="known prefixes"):
        resolve_kohya_module(model, "lora_vae_decoder_conv_in")


def test_a_name_two_module_paths_share_is_refused_not_guessed() -> None:
    root = nn.Module()
    root.a_b = nn.Module()
    root.a_b.c = nn.Linear(2, 2)
    root.a = nn.Module()
    root.a.b_c = nn.Linear(2, 2)  # "a_b.c" and "a.b_c" both read "a_b_c"
    root.other = nn.Linear(2, 2)
    assert resolve_kohya_module(root, "lora_unet__other") is root.other
    with pytest.raises(LookupError, match="ambiguous"):
        resolve_kohya_module(root, "lora_unet__a_b_c")


def test_full_size_transformer_names_match_v1_reference() -> None:
    reference = reference_entries("lora_unet")
    with torch.device("meta"):  # PixArt-XL-2-512x512 layout: 28 blocks, width 1152, T5 captions of 4096
        model = PixArtTransformer2DModel(num_layers=28, sample_size=64, caption_channels=4096)
    assert len(lora_target_modules(model, "transformer")) == 286
    assert generated_entries(model, "transformer", rank=128) == reference


def test_full_size_t5_names_match_v1_reference() -> None:
    reference = reference_entries("lora_te")
    config = T5Config(d_model=4096, num_layers=24, num_heads=64, d_kv=64, d_ff=10240, feed_forward_proj="gated-gelu")
    with torch.device("meta"):
        model = T5EncoderModel(config)
    assert len(lora_target_modules(model, "text_encoder")) == 168
    assert generated_entries(model, "text_encoder", rank=128) == reference


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------


def test_load_rejects_motion_module_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "motion_module.safetensors"
    save_file(
        {
            "transformer_blocks.0.attn_temporal.to_q.weight": torch.zeros(4, 4),
            "transformer_blocks.0.attn_temporal.to_out.0.bias": torch.zeros(4),
        },
        str(path),
    )
    with pytest.raises(ValueError, match=r"transformer/motion-module state dict: keys such as transformer_blocks\.0"):
        load_lora_state_dict(path)
    with pytest.raises(ValueError, match="expected a kohya-style LoRA"):
        LoraMerger(tiny_transformer()).merge(path)


def test_load_rejects_peft_keys_and_malformed_modules(tmp_path: Path) -> None:
    peft_path = tmp_path / "peft.safetensors"
    save_file({"base_model.model.proj_out.lora_A.weight": torch.zeros(2, 16)}, str(peft_path))
    with pytest.raises(ValueError, match="peft_state_dict_to_kohya"):
        load_lora_state_dict(peft_path)
    broken_path = tmp_path / "broken.safetensors"
    save_file({"lora_unet__proj_out.lora_down.weight": torch.zeros(2, 16)}, str(broken_path))
    with pytest.raises(ValueError, match=r"lora_unet__proj_out: missing \['lora_up.weight'\]"):
        load_lora_state_dict(broken_path)


def test_load_accepts_pickle_with_weights_only(tmp_path: Path) -> None:
    lora = random_lora(tiny_transformer(), "transformer", ["proj_out"], rank=2, alpha=1.0, seed=0)
    path = tmp_path / "lora.pt"
    torch.save(lora, path)
    loaded = load_lora_state_dict(path)
    assert loaded.keys() == lora.keys()
    assert all(torch.equal(loaded[key], lora[key]) for key in lora)


# ---------------------------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------------------------


def test_merge_matches_formula_on_transformer_and_t5(tmp_path: Path) -> None:
    transformer, text_encoder = tiny_transformer(), tiny_t5()
    transformer_paths = ["transformer_blocks.0.attn1.to_q", "adaln_single.linear", "proj_out"]
    t5_paths = ["encoder.block.0.layer.0.SelfAttention.q", "encoder.block.1.layer.1.DenseReluDense.wi_0"]
    lora = random_lora(transformer, "transformer", transformer_paths, rank=4, alpha=2.0, seed=1)
    lora |= random_lora(text_encoder, "text_encoder", t5_paths, rank=4, alpha=2.0, seed=2)
    path = tmp_path / "lora.safetensors"
    save_kohya_lora(path, lora)
    before = {
        **{("transformer", p): transformer.get_submodule(p).weight.detach().clone() for p in transformer_paths},
        **{("text_encoder", p): text_encoder.get_submodule(p).weight.detach().clone() for p in t5_paths},
    }
    untouched = transformer.get_submodule("transformer_blocks.1.attn1.to_q").weight.detach().clone()

    merged = LoraMerger(transformer, text_encoder).merge(path, multiplier=0.7)

    assert (merged.source, merged.multiplier, merged.num_modules) == (str(path), 0.7, 5)
    roots = {"transformer": transformer, "text_encoder": text_encoder}
    for (component, module_path), weight in before.items():
        expected = expected_merge(weight, lora, kohya_module_name(module_path, component), 0.7)
        torch.testing.assert_close(roots[component].get_submodule(module_path).weight.detach(), expected)
    assert torch.equal(transformer.get_submodule("transformer_blocks.1.attn1.to_q").weight, untouched)


def test_merge_1x1_conv_and_reject_larger_kernels() -> None:
    torch.manual_seed(0)
    model = nn.Module()
    model.proj = nn.Conv2d(8, 6, kernel_size=1)
    model.patch = nn.Conv2d(8, 6, kernel_size=2)
    assert lora_target_modules(model, "transformer") == ["proj"]
    lora = random_lora(model, "transformer", ["proj"], rank=3, alpha=3.0, seed=0)
    before = snapshot(model)
    merger = LoraMerger(model)
    merger.merge(lora, multiplier=0.5)
    delta = (lora["lora_unet__proj.lora_up.weight"].flatten(1) @ lora["lora_unet__proj.lora_down.weight"].flatten(1))
    torch.testing.assert_close(model.proj.weight.detach(), before[0] + 0.5 * delta[:, :, None, None])
    merger.unmerge()
    assert_bit_equal(before, model)
    wrong_kernel = random_lora(model, "transformer", ["proj"], rank=3, alpha=3.0, seed=0)
    wrong_kernel = {key.replace("__proj", "__patch"): value for key, value in wrong_kernel.items()}
    with pytest.raises(ValueError, match="lora_unet__patch: target is a Conv2d, not a Linear or 1x1 Conv2d"):
        merger.merge(wrong_kernel)
    assert_bit_equal(before, model)


def test_unmerge_is_bit_exact_after_switching_in_fp16(tmp_path: Path) -> None:
    transformer, text_encoder = tiny_transformer().half(), tiny_t5().half()
    lora_a = random_lora(transformer, "transformer", lora_target_modules(transformer, "transformer"), 4, 2.0, 1)
    lora_a |= random_lora(text_encoder, "text_encoder", lora_target_modules(text_encoder, "text_encoder"), 4, 2.0, 2)
    lora_b = random_lora(transformer, "transformer", lora_target_modules(transformer, "transformer"), 2, None, 3)
    path_a, path_b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_kohya_lora(path_a, lora_a, dtype=torch.float16)
    save_kohya_lora(path_b, lora_b, dtype=torch.float16)
    original = snapshot(transformer, text_encoder)
    merger = LoraMerger(transformer, text_encoder)

    for path, multiplier in [(path_a, 0.55), (path_b, 1.0), (path_a, 2.0), (path_a, 0.55), (path_b, 0.3)] * 3:
        merger.merge(path, multiplier)
        assert merger.merged is not None and merger.merged.multiplier == multiplier
        changed = [p for p, o in zip(transformer.parameters(), original) if not torch.equal(p, o)]
        assert changed  # the merge really modified weights
    merger.merge(path_a, 0.55, transformer_only=True)
    merger.unmerge()

    assert merger.merged is None
    assert_bit_equal(original, transformer, text_encoder)


def test_same_lora_twice_is_a_no_op(tmp_path: Path) -> None:
    transformer = tiny_transformer()
    path = tmp_path / "lora.safetensors"
    save_kohya_lora(path, random_lora(transformer, "transformer", ["proj_out"], rank=2, alpha=1.0, seed=0))
    merger = LoraMerger(transformer)
    merger.merge(path, 0.55)
    once = snapshot(transformer)
    merger.merge(path, 0.55)
    assert_bit_equal(once, transformer)


def test_unmatched_names_raise_and_leave_weights_unchanged(tmp_path: Path) -> None:
    transformer = tiny_transformer()
    original = snapshot(transformer)
    merger = LoraMerger(transformer)
    merger.merge(random_lora(transformer, "transformer", ["proj_out"], rank=2, alpha=1.0, seed=0), 0.5)
    merged_state, merged_info = snapshot(transformer), merger.merged
    bad = random_lora(transformer, "transformer", ["adaln_single.linear", "transformer_blocks.0.attn1.to_k"], 2, 1.0, 1)
    bad["lora_unet__transformer_blocks_7_attn1_to_q.lora_down.weight"] = torch.zeros(2, 16)
    bad["lora_unet__transformer_blocks_7_attn1_to_q.lora_up.weight"] = torch.zeros(16, 2)
    path = tmp_path / "bad.safetensors"
    save_kohya_lora(path, bad)

    with pytest.raises(ValueError, match="1 LoRA module name.*lora_unet__transformer_blocks_7_attn1_to_q.*2 matched"):
        merger.merge(path)

    assert_bit_equal(merged_state, transformer)
    assert merger.merged == merged_info
    merger.unmerge()
    assert_bit_equal(original, transformer)


def test_wrong_shapes_raise_and_leave_weights_unchanged() -> None:
    transformer = tiny_transformer()
    before = snapshot(transformer)
    lora = random_lora(transformer, "transformer", ["proj_out", "transformer_blocks.0.attn1.to_q"], 4, 4.0, 0)
    lora["lora_unet__transformer_blocks_0_attn1_to_q.lora_down.weight"] = torch.zeros(4, 17)
    with pytest.raises(
        ValueError,
        match=r"lora_unet__transformer_blocks_0_attn1_to_q: expected lora_down \[4, 16\] and lora_up \[16, 4\], "
        r"got \[4, 17\] and \[16, 4\]",
    ):
        LoraMerger(transformer).merge(lora)
    assert_bit_equal(before, transformer)


def test_text_encoder_lora_without_text_encoder(caplog: pytest.LogCaptureFixture) -> None:
    transformer, text_encoder = tiny_transformer(), tiny_t5()
    transformer_lora = random_lora(transformer, "transformer", ["proj_out"], rank=2, alpha=1.0, seed=0)
    t5_lora = random_lora(text_encoder, "text_encoder", ["encoder.block.0.layer.0.SelfAttention.q"], 2, 1.0, 1)
    merger = LoraMerger(transformer)
    before = transformer.proj_out.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="easyanimate.lora"):
        merged = merger.merge(transformer_lora | t5_lora)
    assert merged.num_modules == 1
    assert "text encoder" in caplog.text
    assert not torch.equal(transformer.proj_out.weight, before)
    with pytest.raises(ValueError, match="no LoRA module matched any layer"):
        merger.merge(t5_lora)


# ---------------------------------------------------------------------------------------------
# peft export
# ---------------------------------------------------------------------------------------------


def test_peft_export_merges_like_peft(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    base = tiny_transformer()
    ours = copy.deepcopy(base)
    targets = lora_target_modules(base, "transformer")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, alpha_pattern={"proj_out": 2})
    peft_model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    peft_weights = get_peft_model_state_dict(peft_model)
    assert next(iter(peft_weights)).startswith("base_model.model.")

    kohya = peft_state_dict_to_kohya(peft_weights, "transformer", alpha=8, alphas={"proj_out": 2})
    path = tmp_path / "exported.safetensors"
    save_kohya_lora(path, kohya, metadata={"ss_network_dim": "4"})
    LoraMerger(ours).merge(path, multiplier=1.0)
    peft_merged = peft_model.merge_and_unload()

    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["lora_format"] == "kohya-ss"
        assert handle.metadata()["ss_network_dim"] == "4"
    assert len(kohya) == 3 * len(targets)
    for target in targets:
        torch.testing.assert_close(ours.get_submodule(target).weight, peft_merged.get_submodule(target).weight)


def test_peft_conversion_errors() -> None:
    with pytest.raises(ValueError, match="not a peft LoRA weight key"):
        peft_state_dict_to_kohya({"proj_out.weight": torch.zeros(2, 2)}, "transformer", alpha=1.0)
    with pytest.raises(ValueError, match="no LoRA alpha for module 'proj_out'"):
        peft_state_dict_to_kohya(
            {"proj_out.lora_A.weight": torch.zeros(2, 4), "proj_out.lora_B.weight": torch.zeros(4, 2)}, "transformer"
        )
    with pytest.raises(ValueError, match="unknown LoRA component 'unet'"):
        peft_state_dict_to_kohya({}, "unet", alpha=1.0)
