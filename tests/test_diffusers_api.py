"""The library used the way diffusers, peft and AnimateDiff users use theirs, with tiny real components."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor, FusedAttnProcessor2_0

from easyanimate import EasyAnimateMotionModule, EasyAnimatePipeline, EasyAnimateV1Pipeline, Transformer3DModel
from easyanimate.config import load_config
from easyanimate.models import WeightLoadError
from easyanimate.video_io import read_video_frames, save_video

from .helpers import RecordingBackend

SMALL = dict(height=64, width=64, num_inference_steps=2, guidance_scale=6.0)


@pytest.fixture(scope="module")
def api_pipe(tiny_models):
    pipeline = EasyAnimatePipeline.from_pretrained(tiny_models["model"], motion_module=tiny_models["motion_module"])
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def run(pipe, seed=0, **kwargs):
    return pipe("a red circle moving left", generator=torch.Generator().manual_seed(seed), **{**SMALL, **kwargs})


def motion_state(transformer) -> dict[str, torch.Tensor]:
    return {k: v for k, v in transformer.state_dict().items() if ".attn_temporal." in k}


# ------------------------------------------------------------------------------------------------
# Loading


def test_from_pretrained_on_a_pixart_folder_builds_the_video_model(api_pipe, tiny_models):
    index = json.loads((tiny_models["model"] / "model_index.json").read_text())
    assert index["_class_name"] == "PixArtAlphaPipeline" and index["transformer"][1] == "PixArtTransformer2DModel"
    assert isinstance(api_pipe, EasyAnimateV1Pipeline) and isinstance(api_pipe.transformer, Transformer3DModel)
    assert api_pipe.transformer.config.motion_module_kwargs["num_attention_heads"] == 2  # the folder's own yaml
    reference = Transformer3DModel.from_pretrained_2d(
        tiny_models["model"],
        transformer_additional_kwargs=load_config(tiny_models["config"]).transformer_additional_kwargs,
        motion_module=tiny_models["motion_module"])
    for key, value in motion_state(reference).items():
        assert torch.equal(api_pipe.transformer.state_dict()[key], value)


def test_a_folder_without_a_model_yaml_takes_the_released_v1_yaml(tiny_models, tmp_path):
    folder = tmp_path / "pixart"
    shutil.copytree(tiny_models["model"], folder)
    (folder / "easyanimate_config.yaml").unlink()
    (folder / "easyanimate_defaults.yaml").unlink()
    loaded = EasyAnimatePipeline.from_pretrained(folder)
    assert loaded.transformer.config.motion_module_kwargs["num_attention_heads"] == 8


def test_a_shipped_demo_folder_brings_its_own_motion_module():
    loaded = EasyAnimatePipeline.from_pretrained("models/Diffusion_Transformer/EasyAnimate-Shapes-Demo")
    motion = motion_state(loaded.transformer)
    assert any(v.abs().sum() > 0 for k, v in motion.items() if k.endswith("proj_out.weight"))  # not fresh


def test_saved_folders_load_through_the_generic_diffusion_pipeline(api_pipe, tmp_path):
    api_pipe.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "model_index.json").read_text())["_class_name"] == "EasyAnimateV1Pipeline"
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is EasyAnimateV1Pipeline and EasyAnimatePipeline is EasyAnimateV1Pipeline
    torch.testing.assert_close(run(loaded, seed=1).videos, run(api_pipe, seed=1).videos)


def test_a_transformer_of_another_model_is_refused_with_what_to_do(tiny_models, tmp_path):
    folder = tmp_path / "v5"
    shutil.copytree(tiny_models["model"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["transformer"] = ["diffusers", "EasyAnimateTransformer3DModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="EasyAnimateTransformer3DModel.*PixArtTransformer2DModel.*V5.1"):
        EasyAnimatePipeline.from_pretrained(folder)


# ------------------------------------------------------------------------------------------------
# The motion module as a model


def test_the_motion_module_round_trips_as_a_configured_model(api_pipe, tiny_models, tmp_path):
    motion = EasyAnimateMotionModule.from_single_file(tiny_models["motion_module"], config=tiny_models["config"])
    assert (motion.config.in_channels, motion.config.num_layers, motion.config.num_attention_heads) == (32, 2, 2)
    assert motion.config.temporal_position_encoding_max_len == 256
    motion.save_pretrained(tmp_path / "mm")
    again = EasyAnimateMotionModule.from_pretrained(tmp_path / "mm")
    assert json.loads((tmp_path / "mm" / "config.json").read_text())["num_attention_heads"] == 2
    for key, value in motion_state(api_pipe.transformer).items():
        assert torch.equal(again.state_dict()[key], value)  # the released key names, unchanged


def test_the_transformer_and_the_pipeline_accept_a_motion_module_object(api_pipe, tiny_models):
    motion = EasyAnimateMotionModule.from_single_file(tiny_models["motion_module"], config=tiny_models["config"])
    loaded = EasyAnimatePipeline.from_pretrained(tiny_models["model"], motion_module=motion)
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(run(loaded, seed=2).videos, run(api_pipe, seed=2).videos)
    copied = EasyAnimateMotionModule.from_transformer(loaded.transformer)
    assert all(torch.equal(copied.state_dict()[k], v) for k, v in motion.state_dict().items())


def test_a_motion_module_built_for_other_settings_is_refused(tiny_models):
    motion = EasyAnimateMotionModule.from_single_file(tiny_models["motion_module"], config=tiny_models["config"])
    other = EasyAnimateMotionModule(**{**motion.config, "num_attention_heads": 4})
    other.load_state_dict(motion.state_dict())
    with pytest.raises(WeightLoadError, match="num_attention_heads: motion module 4, transformer 2"):
        EasyAnimatePipeline.from_pretrained(tiny_models["model"], motion_module=other)


def test_a_file_that_is_not_a_motion_module_is_refused(tiny_models):
    with pytest.raises(WeightLoadError, match="not a motion-module file.*LoRA"):
        EasyAnimateMotionModule.from_single_file(tiny_models["lora"])


# ------------------------------------------------------------------------------------------------
# The video-pipeline contract


def test_num_frames_is_video_length(api_pipe):
    assert torch.equal(run(api_pipe, num_frames=3).videos, run(api_pipe, video_length=3).videos)
    with pytest.raises(ValueError, match="num_frames=3 and video_length=4 disagree"):
        run(api_pipe, num_frames=3, video_length=4)


def test_frames_are_frame_major_and_save_like_diffusers_expects(api_pipe, tmp_path):
    output = run(api_pipe, num_frames=3)
    assert output.videos.shape == (1, 3, 3, 64, 64)  # the original's layout stays the default
    assert output.frames.shape == (1, 3, 64, 64, 3) and output.frames.dtype == np.float32
    np.testing.assert_array_equal(output.frames[0][1], output.videos[0, :, 1].permute(1, 2, 0).numpy())
    assert run(api_pipe, num_frames=3, output_type="np").frames.shape == (1, 3, 64, 64, 3)
    assert len(run(api_pipe, num_frames=3, output_type="pil").frames[0]) == 3
    written = save_video(output.frames[0], tmp_path / "video.mp4", fps=8)
    assert read_video_frames(written).shape == (3, 64, 64, 3)


def test_diffusers_export_to_video_takes_the_default_output(api_pipe, tmp_path):
    from diffusers.utils import export_to_video  # writes through imageio (a dev requirement here)

    path = export_to_video(run(api_pipe, num_frames=3).frames[0], str(tmp_path / "exported.mp4"), fps=8)
    assert read_video_frames(path).shape[0] == 3


def test_step_callbacks_can_replace_latents_and_text_states(api_pipe):
    seen = []

    def callback(pipeline, step, timestep, tensors):
        seen.append((step, pipeline.num_timesteps, pipeline.guidance_scale, pipeline.do_classifier_free_guidance,
                     sorted(tensors)))
        return {"latents": torch.zeros_like(tensors["latents"]),
                "prompt_embeds": torch.zeros_like(tensors["prompt_embeds"])}

    zeroed = run(api_pipe, num_frames=2, callback_on_step_end=callback,
                 callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"], output_type="latent").videos
    assert seen == [(0, 2, 6.0, True, ["latents", "prompt_embeds"]), (1, 2, 6.0, True, ["latents", "prompt_embeds"])]
    assert torch.equal(zeroed, torch.zeros_like(zeroed))
    with pytest.raises(ValueError, match=r"\['noise'\] are not tensors of this pipeline"):
        run(api_pipe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["noise"])


def test_interrupt_skips_the_remaining_steps(api_pipe):
    calls = []

    def stop_after_first(pipeline, step, timestep, tensors):
        calls.append(step)
        pipeline._interrupt = True  # diffusers' documented way to stop a pipeline from a step callback
        return {}

    run(api_pipe, num_frames=2, num_inference_steps=4, callback_on_step_end=stop_after_first)
    assert calls == [0] and api_pipe.interrupt


def test_a_generator_list_of_the_wrong_length_is_refused(api_pipe):
    with pytest.raises(ValueError, match="1 generators for 2 videos"):
        api_pipe("a red circle", num_images_per_prompt=2, generator=[torch.Generator()], **SMALL)


# ------------------------------------------------------------------------------------------------
# Transformer mixins


def test_attention_processors_reach_the_motion_modules(api_pipe):
    transformer = api_pipe.transformer
    names = list(transformer.attn_processors)
    assert sum(".attn_temporal." in name for name in names) == 4  # 2 blocks x 2 temporal attentions
    latents = run(api_pipe, num_frames=3, output_type="latent").videos
    before = dict(transformer.attn_processors)
    try:
        transformer.set_attn_processor(AttnProcessor())  # the classic, non-SDPA processor, everywhere
        assert all(type(p) is AttnProcessor for p in transformer.attn_processors.values())
        torch.testing.assert_close(run(api_pipe, num_frames=3, output_type="latent").videos, latents,
                                   atol=1e-3, rtol=1e-4)
    finally:
        transformer.set_attn_processor(before)


def test_fused_projections_give_the_same_output(tiny_models):
    loaded = EasyAnimatePipeline.from_pretrained(tiny_models["model"], motion_module=tiny_models["motion_module"])
    loaded.set_progress_bar_config(disable=True)
    plain = run(loaded, num_frames=3, output_type="latent").videos
    loaded.transformer.fuse_qkv_projections()
    assert all(isinstance(p, FusedAttnProcessor2_0) for p in loaded.transformer.attn_processors.values())
    torch.testing.assert_close(run(loaded, num_frames=3, output_type="latent").videos, plain, atol=1e-3, rtol=1e-4)
    loaded.transformer.unfuse_qkv_projections()
    assert not any(isinstance(p, FusedAttnProcessor2_0) for p in loaded.transformer.attn_processors.values())


def test_compile_repeated_blocks_compiles_every_block(tiny_models):
    loaded = EasyAnimatePipeline.from_pretrained(tiny_models["model"], motion_module=tiny_models["motion_module"])
    loaded.set_progress_bar_config(disable=True)
    plain = run(loaded, num_frames=2, output_type="latent").videos
    backend = RecordingBackend()
    loaded.transformer.compile_repeated_blocks(backend=backend)
    torch.testing.assert_close(run(loaded, num_frames=2, output_type="latent").videos, plain, atol=1e-5, rtol=1e-5)
    assert backend.graphs >= 1  # the blocks ran through torch.compile


def test_peft_adapters_attach_switch_and_disable(tiny_models):
    from peft import LoraConfig

    transformer = Transformer3DModel.from_pretrained_2d(
        tiny_models["model"],
        transformer_additional_kwargs=load_config(tiny_models["config"]).transformer_additional_kwargs)
    x, text, t = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 5, 32), torch.tensor([10])
    with torch.no_grad():
        plain = transformer(x, text, timestep=t).sample
        transformer.add_adapter(LoraConfig(r=4, target_modules=["to_q", "to_v"], init_lora_weights=False), "style")
        styled = transformer(x, text, timestep=t).sample
        transformer.disable_adapters()
        disabled = transformer(x, text, timestep=t).sample
        transformer.enable_adapters()
        transformer.set_adapters(["style"], weights=[0.0])
        zero = transformer(x, text, timestep=t).sample
    assert (styled - plain).abs().max() > 1e-4
    torch.testing.assert_close(disabled, plain)
    torch.testing.assert_close(zero, plain)


# ------------------------------------------------------------------------------------------------
# Memory modes, emulated on the CPU with accelerate's own hooks


def offload_sequentially(pipeline, device: torch.device) -> None:
    """What ``enable_sequential_cpu_offload`` does, with the execution device given as is.

    diffusers names the device ``<type>:<index>``; accelerate's tied-weight bookkeeping (T5 ties its
    input embedding) then breaks on ``cpu:0``, a device no user runs on, so the emulation passes ``cpu``.
    """
    from accelerate import cpu_offload

    for component in pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            own_parameters = any(True for _ in component.parameters(recurse=False))
            cpu_offload(component, device, offload_buffers=own_parameters)


@pytest.mark.parametrize("mode", ["model_cpu_offload", "sequential_cpu_offload", "text_encoder_cpu"])
def test_every_memory_mode_gives_the_plain_video(api_pipe, tiny_models, mode):
    plain = run(api_pipe, seed=4, num_frames=3).videos
    loaded = EasyAnimatePipeline.from_pretrained(tiny_models["model"], motion_module=tiny_models["motion_module"])
    loaded.set_progress_bar_config(disable=True)
    if mode == "model_cpu_offload":
        loaded.enable_model_cpu_offload(device="cpu")
        assert hasattr(loaded.transformer, "_hf_hook")
    elif mode == "sequential_cpu_offload":
        offload_sequentially(loaded, torch.device("cpu"))
        assert next(loaded.text_encoder.parameters()).device.type == "meta"  # weights live in the hooks
    else:
        from easyanimate.generation import apply_memory_mode

        apply_memory_mode(loaded, torch.device("cpu"), mode)
    torch.testing.assert_close(run(loaded, seed=4, num_frames=3).videos, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_generation_is_finite_and_close(api_pipe, tiny_models, dtype):
    plain = run(api_pipe, seed=5, num_frames=2).videos
    loaded = EasyAnimatePipeline.from_pretrained(tiny_models["model"], motion_module=tiny_models["motion_module"],
                                                 dtype=dtype)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.transformer.dtype == dtype and loaded.vae.dtype == dtype
    video = run(loaded, seed=5, num_frames=2).videos
    assert torch.isfinite(video).all()
    assert (video - plain).abs().mean() < 0.05


# ------------------------------------------------------------------------------------------------
# LoRA: kohya files and peft adapters, interchangeably


def test_a_kohya_lora_as_an_adapter_equals_merging_it(tiny_models):
    from easyanimate.lora import LoraMerger

    loaded = EasyAnimatePipeline.from_pretrained(tiny_models["model"], motion_module=tiny_models["motion_module"])
    loaded.set_progress_bar_config(disable=True)
    base = run(loaded, seed=6, num_frames=2).videos
    merger = LoraMerger(loaded.transformer, loaded.text_encoder)
    merger.merge(tiny_models["lora"], multiplier=0.7)
    merged = run(loaded, seed=6, num_frames=2).videos
    merger.unmerge()
    loaded.load_lora_weights(tiny_models["lora"], adapter_name="style", weight=0.7)
    assert loaded.adapter_names() == ["style"]
    torch.testing.assert_close(run(loaded, seed=6, num_frames=2).videos, merged, atol=1e-4, rtol=1e-4)
    assert (merged - base).abs().max() > 1e-3
    loaded.set_adapters("style", 0.0)
    torch.testing.assert_close(run(loaded, seed=6, num_frames=2).videos, base, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="already attached"):
        loaded.load_lora_weights(tiny_models["lora"], adapter_name="style")


def test_a_kohya_lora_converts_to_a_folder_peft_itself_loads(tiny_models, tmp_path):
    from peft import PeftModel

    from easyanimate.adapters import kohya_to_peft, save_peft_adapter
    from easyanimate.lora import LoraMerger, load_lora_state_dict

    def transformer():
        return Transformer3DModel.from_pretrained_2d(
            tiny_models["model"],
            transformer_additional_kwargs=load_config(tiny_models["config"]).transformer_additional_kwargs,
            motion_module=tiny_models["motion_module"]).eval()

    x, text, t = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 5, 32), torch.tensor([10])
    merged = transformer()
    LoraMerger(merged).merge(tiny_models["lora"], transformer_only=True)
    state, config = kohya_to_peft(load_lora_state_dict(tiny_models["lora"]), merged, "transformer")
    save_peft_adapter(tmp_path / "adapter", state, config)
    with torch.no_grad():
        expected = merged(x, text, timestep=t).sample
        through_peft = PeftModel.from_pretrained(transformer(), tmp_path / "adapter")(x, text, timestep=t).sample
    torch.testing.assert_close(through_peft, expected, atol=1e-4, rtol=1e-4)

    loaded = EasyAnimatePipeline.from_pretrained(tiny_models["model"], motion_module=tiny_models["motion_module"],
                                                 text_encoder=None, tokenizer=None)
    loaded.load_lora_weights(tmp_path / "adapter")
    with torch.no_grad():
        attached = loaded.transformer(x, text, timestep=t).sample
    torch.testing.assert_close(attached, expected, atol=1e-4, rtol=1e-4)
