"""Generation settings: one source of defaults, model folders overriding them, one validation."""

from __future__ import annotations

import pytest

from easyanimate.config import ConfigError
from easyanimate.generation import GenerationRequest, ModelDefaults, read_model_defaults, select_model


def test_the_defaults_are_the_original_scripts_and_a_model_folder_overrides_them(tmp_path):
    d = GenerationRequest()
    assert (d.sampler, d.steps, d.guidance_scale, d.seed, d.height, d.width, d.frames, d.fps, d.lora_weight) == (
        "DPM++", 30, 6.0, 43, 512, 512, 80, 12, 0.55)
    (tmp_path / "easyanimate_defaults.yaml").write_text("height: 64\nmotion_module: Motion_Module/x.safetensors\n")
    defaults = read_model_defaults(tmp_path)
    assert defaults.motion_module == "Motion_Module/x.safetensors"
    assert defaults.request == GenerationRequest(height=64)  # the rest stays the one source's
    assert read_model_defaults(tmp_path / "elsewhere") == ModelDefaults()


def test_an_unknown_key_in_a_model_defaults_file_names_the_key(tmp_path):
    (tmp_path / "easyanimate_defaults.yaml").write_text("hieght: 64\n")
    with pytest.raises(ConfigError, match="hieght"):
        read_model_defaults(tmp_path)


def test_flags_override_only_what_they_give():
    request = GenerationRequest(steps=20, seed=1).overridden(steps=None, seed=5, prompt="x")
    assert (request.steps, request.seed, request.prompt) == (20, 5, "x")


@pytest.mark.parametrize("change,match", [
    (dict(prompt="  "), "prompt is empty"),
    (dict(steps=1_000_000), "steps must be from 1 to 1000"),
    (dict(steps=0), "steps must be"),
    (dict(fps=0), "fps must be a positive"),
    (dict(seed=2**64), "seed must be"),
    (dict(sampler="Heun"), "unknown sampler 'Heun'"),
    (dict(context_frames=2, context_overlap=2), "overlap must be from 0 to one less"),
    (dict(frames=300), "exceeds the 256 frames of the motion module's position table"),
    (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
    (dict(height=50), "multiples of 32"),
    (dict(frames=0), "frames must be at least 1"),
])
def test_validation_names_the_setting_and_what_would_be_right(pipe, change, match):
    request = GenerationRequest(prompt="a red circle", height=64, width=64, frames=4, steps=2).overridden(**change)
    with pytest.raises(ValueError, match=match):
        request.validate(pipe)


def test_a_valid_request_passes(pipe):
    GenerationRequest(prompt="a red circle", height=64, width=64, frames=4, steps=2).validate(pipe)


def test_the_limits_read_from_config_files_equal_the_loaded_pipelines(pipe, tiny_models):
    from easyanimate.generation import ModelLimits

    from_files = ModelLimits.of_selection(select_model(tiny_models["root"], model=tiny_models["model"]))
    assert from_files == ModelLimits.of_pipeline(pipe)
    assert (from_files.pixel_multiple, from_files.position_table) == (32, 256)


def test_settings_far_from_what_the_model_makes_are_said_not_refused():
    made_for = GenerationRequest(height=64, width=64, frames=16)
    assert GenerationRequest(height=64, width=96, frames=24).warnings(made_for) == []
    big, long = GenerationRequest(height=256, width=256, frames=16), GenerationRequest(height=64, width=64, frames=64)
    assert "far from the 64x64 this model makes: expect repeated or striped content" in big.warnings(made_for)[0]
    assert "--context-frames 16" in long.warnings(made_for)[0]
    assert long.overridden(context_frames=16).warnings(made_for) == []  # a window is what keeps long motion


def test_a_missing_models_folder_says_where_it_looked_and_what_to_pass(tmp_path, monkeypatch):
    from easyanimate.generation import MissingWeightsError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingWeightsError) as caught:
        select_model()
    message = str(caught.value)
    assert str(tmp_path / "models") in message and "--models-dir" in message and "EasyAnimate-Shapes-Demo" in message
