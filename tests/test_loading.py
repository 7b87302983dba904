"""Every loading path of the video transformer, and each way a wrong file is refused."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import PixArtTransformer2DModel
from safetensors.torch import save_file

from easyanimate.config import ConfigError
from easyanimate.models import (
    MotionModuleSpec,
    Transformer3DModel,
    WeightLoadError,
    load_motion_module,
    load_transformer_checkpoint,
    read_state_dict,
    save_motion_module,
)
from easyanimate.models.loading import motion_module_state_dict

from .helpers import EXTRAS, TINY, TINY_MM, randomize, trained_video_model


@pytest.fixture()
def pixart_folder(tmp_path):
    """A tiny PixArt diffusers folder: <tmp>/pixart/transformer/{config.json, weights}."""
    torch.manual_seed(0)
    model = PixArtTransformer2DModel(**TINY)
    model.save_pretrained(tmp_path / "pixart" / "transformer")
    return tmp_path / "pixart"


def inputs(frames: int = 3):
    generator = torch.Generator().manual_seed(5)
    return (torch.randn(1, 4, frames, 8, 8, generator=generator), torch.randn(1, 5, 16, generator=generator),
            None, torch.tensor([11]))


def output(model, frames: int = 3):
    with torch.no_grad():
        return model(*inputs(frames)).sample


def test_from_pretrained_2d_loads_pixart_and_leaves_motion_modules_fresh(pixart_folder):
    model = Transformer3DModel.from_pretrained_2d(pixart_folder, subfolder="transformer",
                                                  transformer_additional_kwargs=EXTRAS).eval()
    image_model = PixArtTransformer2DModel.from_pretrained(pixart_folder, subfolder="transformer")
    for key, value in image_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    proj_out = model.transformer_blocks[0].attn_temporal.temporal_transformer.proj_out
    assert proj_out.weight.abs().sum() == 0 and proj_out.bias.abs().sum() == 0


def test_from_pretrained_2d_names_unexpected_and_missing_keys(pixart_folder):
    weights = pixart_folder / "transformer" / "diffusion_pytorch_model.safetensors"
    state = read_state_dict(weights)
    state["transformer_blocks.0.attn1.extra.weight"] = torch.zeros(1)
    del state["proj_out.bias"]
    save_file(state, str(weights))
    expected = r"missing keys, e.g. proj_out.bias.*unexpected keys, e.g. transformer_blocks.0.attn1.extra.weight"
    with pytest.raises(WeightLoadError, match=expected):
        Transformer3DModel.from_pretrained_2d(pixart_folder, transformer_additional_kwargs=EXTRAS)


def test_from_pretrained_2d_refuses_another_width(tmp_path):
    PixArtTransformer2DModel(**{**TINY, "attention_head_dim": 32}).save_pretrained(tmp_path / "wide" / "transformer")
    config_path = tmp_path / "wide" / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["attention_head_dim"] = 16  # config says width 32, weights are width 64
    config_path.write_text(json.dumps(config))
    with pytest.raises(WeightLoadError, match="shape mismatches"):
        Transformer3DModel.from_pretrained_2d(tmp_path / "wide", transformer_additional_kwargs=EXTRAS)


def test_from_pretrained_2d_reports_a_missing_folder_and_unknown_config_keys(tmp_path, pixart_folder):
    with pytest.raises(WeightLoadError, match="transformer/config.json"):
        Transformer3DModel.from_pretrained_2d(tmp_path / "nowhere")
    config_path = pixart_folder / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["rope_theta"] = 10000
    config_path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="rope_theta"):
        Transformer3DModel.from_pretrained_2d(pixart_folder, transformer_additional_kwargs=EXTRAS)


@pytest.mark.parametrize("with_tables", [True, False])
def test_motion_module_file_round_trip(tmp_path, with_tables):
    trained = trained_video_model()
    path = tmp_path / "mm.safetensors"
    count = save_motion_module(trained, path, include_position_tables=with_tables)
    assert all(".attn_temporal." in k for k in read_state_dict(path))
    assert count == 2 * (28 if with_tables else 26)  # per block: 28 entries, 2 of them position tables
    fresh = Transformer3DModel(**TINY, **EXTRAS).eval()
    fresh.load_state_dict({k: v for k, v in trained.state_dict().items() if ".attn_temporal." not in k}, strict=False)
    assert not torch.equal(output(fresh), output(trained))
    report = load_motion_module(fresh, path)
    assert report.loaded == count and report.computed_buffers_kept == (0 if with_tables else 4)
    assert torch.equal(output(fresh), output(trained))


def test_lora_given_as_motion_module_says_what_it_is(tmp_path):
    path = tmp_path / "style_lora.safetensors"
    save_file({"lora_unet__proj_out.lora_down.weight": torch.zeros(4, 32),
               "lora_unet__proj_out.lora_up.weight": torch.zeros(32, 4),
               "lora_unet__proj_out.alpha": torch.tensor(4.0)}, str(path))
    with pytest.raises(WeightLoadError, match="not a motion-module file.*LoRA"):
        load_motion_module(trained_video_model(), path)


def test_motion_module_of_another_width_or_depth_is_refused(tmp_path):
    wide = Transformer3DModel(**{**TINY, "attention_head_dim": 32}, **EXTRAS)
    save_motion_module(wide, tmp_path / "wide.safetensors")
    with pytest.raises(WeightLoadError,
                       match=r"motion-module file \(56 tensors, 2 blocks, width 64\).*shape mismatches"):
        load_motion_module(trained_video_model(), tmp_path / "wide.safetensors")
    shallow = Transformer3DModel(**{**TINY, "num_layers": 1}, **EXTRAS)
    save_motion_module(shallow, tmp_path / "shallow.safetensors")
    with pytest.raises(WeightLoadError, match="missing keys, e.g. transformer_blocks.1.attn_temporal"):
        load_motion_module(trained_video_model(), tmp_path / "shallow.safetensors")


def video_model_with(seed: int = 1, **motion_module_kwargs) -> Transformer3DModel:
    torch.manual_seed(seed)
    model = Transformer3DModel(**TINY, **{**EXTRAS, "motion_module_kwargs": {**TINY_MM, **motion_module_kwargs}})
    randomize(model.eval(), seed)
    return model


def test_a_motion_module_records_what_it_was_built_with_and_another_head_count_is_refused(tmp_path):
    """Two heads or four: the weights have the same shapes, so only the file's metadata can tell them apart."""
    path = tmp_path / "mm.safetensors"
    save_motion_module(video_model_with(num_attention_heads=2), path)
    assert MotionModuleSpec.of_file(path) == MotionModuleSpec(2, 1, 64, "VanillaGrid", 32)
    four_heads = video_model_with(num_attention_heads=4)
    before = output(four_heads)
    with pytest.raises(WeightLoadError, match=r"was built with 2 heads.*has motion modules with 4 heads.*"
                                              r"differs in num_attention_heads"):
        load_motion_module(four_heads, path)
    assert torch.equal(output(four_heads), before)
    # Without the metadata (as the released v1 file): it loads, and runs differently than it was trained.
    save_file(read_state_dict(path), str(tmp_path / "bare.safetensors"))
    assert MotionModuleSpec.of_file(tmp_path / "bare.safetensors") is None
    load_motion_module(four_heads, tmp_path / "bare.safetensors")
    two_heads = video_model_with(num_attention_heads=2, seed=2)
    load_motion_module(two_heads, path)
    assert not torch.equal(output(four_heads), output(two_heads))


def test_a_motion_module_without_its_tables_is_refused_for_another_table_length(tmp_path):
    path = tmp_path / "mm.safetensors"
    save_motion_module(video_model_with(temporal_position_encoding_max_len=64), path, include_position_tables=False)
    with pytest.raises(WeightLoadError, match="a 64-frame position table.*a 128-frame position table"):
        load_motion_module(video_model_with(temporal_position_encoding_max_len=128), path)


def test_truncated_and_missing_files_are_reported(tmp_path):
    path = tmp_path / "mm.safetensors"
    save_motion_module(trained_video_model(), path)
    path.write_bytes(path.read_bytes()[:1000])
    model = trained_video_model()
    before = output(model)
    with pytest.raises(WeightLoadError, match="truncated or corrupt"):
        load_motion_module(model, path)
    with pytest.raises(WeightLoadError, match="not found"):
        load_motion_module(model, tmp_path / "absent.safetensors")
    assert torch.equal(output(model), before)


def test_personalized_pixart_checkpoint_replaces_the_base_and_keeps_the_motion_module(tmp_path):
    trained = trained_video_model(seed=1)
    other = trained_video_model(seed=2)
    pixart_only = {k: v for k, v in other.state_dict().items() if ".attn_temporal." not in k}
    save_file(pixart_only, str(tmp_path / "portrait.safetensors"))
    report = load_transformer_checkpoint(trained, tmp_path / "portrait.safetensors")
    assert report.loaded == len(pixart_only)
    for key, value in trained.state_dict().items():
        source = other if ".attn_temporal." not in key else trained_video_model(seed=1)
        assert torch.equal(value, source.state_dict()[key]), key


def test_full_checkpoint_with_a_partial_motion_module_is_refused(tmp_path):
    state = trained_video_model().state_dict()
    del state["transformer_blocks.1.attn_temporal.temporal_transformer.proj_out.weight"]
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(WeightLoadError,
                       match="transformer_blocks.1.attn_temporal.temporal_transformer.proj_out.weight"):
        load_transformer_checkpoint(trained_video_model(), tmp_path / "partial.safetensors")


class NotATensor:
    """An arbitrary object: unpickling it would run code, so weights_only loading must refuse it."""


def test_pickle_checkpoints_load_only_as_plain_tensors(tmp_path):
    state = {k: v for k, v in trained_video_model().state_dict().items() if ".attn_temporal." not in k}
    torch.save({"state_dict": state}, tmp_path / "base.ckpt")
    load_transformer_checkpoint(trained_video_model(seed=3), tmp_path / "base.ckpt")

    torch.save({"weights": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(WeightLoadError, match="weights_only=True"):
        read_state_dict(tmp_path / "evil.pt")


def test_save_pretrained_round_trip_is_bit_exact(tmp_path):
    model = trained_video_model()
    model.save_pretrained(tmp_path / "saved")
    loaded, info = Transformer3DModel.from_pretrained(tmp_path / "saved", output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    loaded.eval()
    assert loaded.config.motion_module_kwargs["block_size"] == 2
    assert torch.equal(output(loaded), output(model))


def test_motion_module_extraction_ignores_unrelated_temporal_names():
    state = trained_video_model().state_dict()
    state["temporal_embedding.weight"] = torch.zeros(2)
    selected = motion_module_state_dict(state)
    assert "temporal_embedding.weight" not in selected
    assert len(selected) == 2 * 28


@pytest.mark.slow
def test_extract_motion_module_script_writes_original_keys_and_never_overwrites(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "extract_motion_module.py"
    model = trained_video_model()
    model.save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "diffusion_pytorch_model.safetensors"
    out = tmp_path / "mm.safetensors"
    done = subprocess.run([sys.executable, str(script), str(weights), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    extracted = read_state_dict(out)
    assert set(extracted) == {k for k in model.state_dict() if ".attn_temporal." in k}
    again = subprocess.run([sys.executable, str(script), str(weights), str(out)], capture_output=True, text=True)
    assert again.returncode != 0 and "exists" in again.stderr
    # A training checkpoint folder (checkpoint-<step>/transformer/...) is found, and what the module was built
    # with goes into the file; an empty folder is one line that says what it lacks.
    (tmp_path / "run" / "checkpoint-2").mkdir(parents=True)
    model.save_pretrained(tmp_path / "run" / "checkpoint-2" / "transformer")
    from_folder = tmp_path / "from_folder.safetensors"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "run" / "checkpoint-2"), str(from_folder)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert MotionModuleSpec.of_file(from_folder) == MotionModuleSpec.of_model(model)
    (tmp_path / "empty").mkdir()
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "empty"), str(tmp_path / "x.safetensors")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "without transformer weights" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("bad,match", [
    (torch.ones(2, 2, dtype=torch.int32), "is int32; weights must be floating point"),
    (torch.ones(2, 2, dtype=torch.bool), "is bool; weights must be floating point"),
    (torch.tensor([1.0, float("nan")]), "NaN or infinite"),
    (torch.tensor([float("inf")], dtype=torch.float16), "NaN or infinite"),
])
def test_weight_files_must_hold_finite_floating_point_tensors(tmp_path, bad, match):
    path = tmp_path / "weights.safetensors"
    save_file({"fine": torch.zeros(2), "transformer_blocks.0.attn1.to_q.weight": bad}, str(path))
    with pytest.raises(WeightLoadError, match=match) as caught:
        read_state_dict(path)
    assert "weights.safetensors" in str(caught.value) and "transformer_blocks.0.attn1.to_q.weight" in str(caught.value)


def loaded_the_plain_way(folder, motion_module=None) -> Transformer3DModel:
    """The reference: a fully initialised model, the files copied into it (``load_state_dict``), as loading was
    before the model was built empty."""
    config = {k: v for k, v in json.loads((folder / "transformer" / "config.json").read_text()).items()
              if not k.startswith("_")}
    model = Transformer3DModel.from_config({**config, **EXTRAS})
    model.load_state_dict(read_state_dict(folder / "transformer" / "diffusion_pytorch_model.safetensors"), strict=False)
    if motion_module is not None:
        model.load_state_dict(read_state_dict(motion_module), strict=False)
    return model.eval()


@pytest.mark.parametrize("with_tables", [True, False])
def test_loading_into_an_empty_model_gives_the_plain_loads_values_bit_for_bit(tmp_path, pixart_folder, with_tables):
    path = tmp_path / "mm.safetensors"
    save_motion_module(trained_video_model(), path, include_position_tables=with_tables)
    model = Transformer3DModel.from_pretrained_2d(pixart_folder, transformer_additional_kwargs=EXTRAS,
                                                  motion_module=path).eval()
    reference = loaded_the_plain_way(pixart_folder, path)
    assert model.state_dict().keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value) and model.state_dict()[key].dtype == value.dtype, key
    assert torch.equal(output(model, frames=4), output(reference, frames=4))


def test_fresh_motion_modules_of_an_empty_model_are_identities_as_before(pixart_folder):
    model = Transformer3DModel.from_pretrained_2d(pixart_folder, transformer_additional_kwargs=EXTRAS).eval()
    reference = loaded_the_plain_way(pixart_folder)  # its fresh motion modules: other random draws, also identities
    for key, value in model.state_dict().items():
        assert not value.is_meta and value.dtype == torch.float32, key
        if ".attn_temporal." not in key or key.endswith(".pe") or ".proj_out." in key:
            assert torch.equal(value, reference.state_dict()[key]), key
    assert torch.equal(output(model, frames=4), output(reference, frames=4))


def test_a_half_precision_file_loads_into_float32(pixart_folder):
    weights = pixart_folder / "transformer" / "diffusion_pytorch_model.safetensors"
    half = {k: v.half() for k, v in read_state_dict(weights).items()}
    save_file(half, str(weights))
    model = Transformer3DModel.from_pretrained_2d(pixart_folder, transformer_additional_kwargs=EXTRAS)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(model.proj_out.weight, half["proj_out.weight"].float())


def test_a_loaded_model_owns_its_memory(pixart_folder):
    model = Transformer3DModel.from_pretrained_2d(pixart_folder, transformer_additional_kwargs=EXTRAS).eval()
    before = output(model)
    weights = pixart_folder / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(bytes(weights.stat().st_size))  # a model still mapping its file would see the zeros
    assert torch.equal(output(model), before)
