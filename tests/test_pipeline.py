"""End-to-end generation with the tiny model: samplers, seeds, outputs, LoRA, input errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from easyanimate import EasyAnimatePipeline
from easyanimate.generation import apply_lora, load_pipeline, select_model, set_sampler
from easyanimate.schedulers import SAMPLER_NAMES

SMALL = dict(height=64, width=64, video_length=4, num_inference_steps=2, guidance_scale=6.0)


def run(pipe, seed=0, **kwargs):
    options = {**SMALL, **kwargs}
    return pipe("a red circle moving left", generator=torch.Generator().manual_seed(seed), **options).videos


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_generates_a_video(pipe, sampler):
    set_sampler(pipe, sampler)
    try:
        video = run(pipe, num_inference_steps=4 if sampler == "PNDM" else 2)  # PNDM's warm-up needs 4
    finally:
        set_sampler(pipe, "DPM++")
    assert video.shape == (1, 3, 4, 64, 64)
    assert torch.isfinite(video).all() and video.min() >= 0 and video.max() <= 1


def test_same_seed_same_video_other_seed_other_video(pipe):
    first, again, other = run(pipe, seed=1), run(pipe, seed=1), run(pipe, seed=2)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3


def test_latents_match_the_stored_slice(pipe):
    latents = run(pipe, seed=0, output_type="latent")
    assert latents.shape == (1, 4, 4, 8, 8)
    # Recorded from this implementation (tiny model, seed 0, DPM++ 2 steps); guards against silent changes.
    # (Random weights and guidance 6 give large latents, hence the relative tolerance.)
    expected = torch.tensor([-261.3182, -127.7383, -208.1435, -25.1426, 8.7933, 60.1119])
    torch.testing.assert_close(latents[0, 0, 0, 0, :6], expected, atol=1e-2, rtol=1e-4)


def test_one_frame_gives_an_image(pipe):
    video = run(pipe, video_length=1)
    assert video.shape == (1, 3, 1, 64, 64)


def test_output_types(pipe):
    as_np = run(pipe, output_type="np")
    as_pil = run(pipe, output_type="pil")
    as_pt = run(pipe, output_type="pt")
    assert as_np.shape == (1, 4, 64, 64, 3)
    np.testing.assert_allclose(as_np, as_pt.permute(0, 2, 3, 4, 1).numpy())
    assert len(as_pil) == 1 and len(as_pil[0]) == 4 and isinstance(as_pil[0][0], Image.Image)
    assert as_pil[0][0].size == (64, 64)


def test_chunked_decoding_equals_one_pass(pipe):
    latents = run(pipe, output_type="latent")
    with torch.no_grad():
        whole = pipe.decode_latents(latents, chunk_size=64)
        chunked = pipe.decode_latents(latents, chunk_size=1)
    torch.testing.assert_close(whole, chunked, atol=1e-5, rtol=0)


def test_num_images_per_prompt_and_prompt_lists(pipe):
    video = pipe(["a red circle moving left", "a blue square moving up"], num_images_per_prompt=2,
                 generator=torch.Generator().manual_seed(0), **SMALL).videos
    assert video.shape == (4, 3, 4, 64, 64)


def test_precomputed_embeddings_without_a_text_encoder(pipe):
    embeds, mask, negative, negative_mask = pipe.encode_prompt("a red circle moving left", True, "")
    reference = run(pipe, seed=3)
    textless = EasyAnimatePipeline(None, None, pipe.vae, pipe.transformer, pipe.scheduler)
    textless.set_progress_bar_config(disable=True)
    video = textless(prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=negative,
                     negative_prompt_attention_mask=negative_mask, generator=torch.Generator().manual_seed(3),
                     **SMALL).videos
    torch.testing.assert_close(video, reference)


def test_given_latents_are_scaled_by_init_noise_sigma(pipe):
    set_sampler(pipe, "Euler")
    try:
        noise = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(4))
        from_latents = run(pipe, seed=99, latents=noise)
        from_seed = run(pipe, seed=4)
    finally:
        set_sampler(pipe, "DPM++")
    torch.testing.assert_close(from_latents, from_seed)


def test_lora_changes_the_output_and_unmerging_restores_it_exactly(pipe, tiny_models):
    base = run(pipe, seed=5)
    merger = apply_lora(pipe, None, tiny_models["lora"], 1.0)
    styled = run(pipe, seed=5)
    apply_lora(pipe, merger, tiny_models["lora"], 0.5)
    apply_lora(pipe, merger, None, 0.0)
    assert (styled - base).abs().max() > 1e-3
    assert torch.equal(run(pipe, seed=5), base)


@pytest.mark.parametrize("bad,match", [
    (dict(height=48), "multiples of 32"),
    (dict(width=100), "multiples of 32"),
    (dict(video_length=0), "video_length"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(guidance_scale=-1.0), "guidance_scale"),
    (dict(guidance_scale=float("nan")), "guidance_scale"),
    (dict(output_type="mp4"), "output_type"),
    (dict(latents=torch.zeros(1, 4, 3, 8, 8)), "latents must have shape"),
])
def test_bad_inputs_are_rejected_before_any_work(pipe, bad, match):
    with pytest.raises(ValueError, match=match):
        run(pipe, **bad)


def test_mismatched_embeddings_are_rejected(pipe):
    embeds, mask, negative, negative_mask = pipe.encode_prompt("a red circle", True, "")
    with pytest.raises(ValueError, match="same shape"):
        pipe(prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=negative[:, :50],
             negative_prompt_attention_mask=negative_mask[:, :50], **SMALL)
    with pytest.raises(ValueError, match="exactly one of prompt and prompt_embeds"):
        pipe("a red circle", prompt_embeds=embeds, prompt_attention_mask=mask, **SMALL)


def test_save_pretrained_round_trip_generates_the_same_video(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    loaded = EasyAnimatePipeline.from_pretrained(str(tmp_path / "saved"))
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(run(loaded, seed=6), run(pipe, seed=6))


def test_without_a_motion_module_frames_are_independent_and_a_warning_says_so(tiny_models, caplog):
    selection = select_model(tiny_models["root"], model=tiny_models["model"], use_motion_module=False)
    with caplog.at_level(logging.WARNING):
        pipeline = load_pipeline(selection, device="cpu")
    assert "generated independently" in caplog.text
    pipeline.set_progress_bar_config(disable=True)
    noise = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    changed = noise.clone()
    changed[:, :, 2] = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    a = pipeline("a red circle", latents=noise, generator=torch.Generator().manual_seed(0),
                 **{**SMALL, "video_length": 3}).videos
    b = pipeline("a red circle", latents=changed, generator=torch.Generator().manual_seed(0),
                 **{**SMALL, "video_length": 3}).videos
    torch.testing.assert_close(a[:, :, :2], b[:, :, :2])


def test_a_pipeline_from_from_pretrained_switches_samplers_and_keeps_its_noise_schedule(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    loaded = EasyAnimatePipeline.from_pretrained(str(tmp_path / "saved"))
    loaded.set_progress_bar_config(disable=True)
    schedule = {k: loaded.scheduler.config[k] for k in ("beta_start", "beta_end", "beta_schedule", "steps_offset")}
    set_sampler(loaded, "Euler A")
    assert type(loaded.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert {k: loaded.scheduler.config[k] for k in schedule} == schedule
    assert run(loaded, seed=3).shape == (1, 3, 4, 64, 64)


def test_training_and_generation_encode_a_caption_alike(pipe):
    from easyanimate.text import encode_text

    with torch.no_grad():
        trainer_states, trainer_mask = encode_text(pipe.tokenizer, pipe.text_encoder, ["a red circle"], 120,
                                                   torch.device("cpu"))
    states, mask, _, _ = pipe.encode_prompt("A Red Circle ", do_classifier_free_guidance=False)
    assert torch.equal(trainer_mask, mask)  # the pipeline lower-cases and strips; captions are read raw
    torch.testing.assert_close(trainer_states, states)


def test_a_prompt_longer_than_the_tokenizer_reads_is_reported(pipe, caplog):
    length = pipe.default_max_sequence_length()
    with caplog.at_level(logging.WARNING):
        pipe.encode_prompt(" ".join(["red"] * (length + 5)), do_classifier_free_guidance=False)
    assert f"this model reads the first {length}" in caplog.text


def test_decode_chunk_size_is_a_call_argument_and_changes_nothing(pipe):
    whole = run(pipe, seed=8, decode_chunk_size=4)
    # The same video up to the rounding of another batch size.
    torch.testing.assert_close(run(pipe, seed=8, decode_chunk_size=1), whole, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="decode_chunk_size"):
        run(pipe, decode_chunk_size=0)


def test_a_grid_with_block_size_4_needs_multiples_of_64_pixels(pipe):
    """Same weights (block_size changes no key), 4x4 token neighbourhoods: patch 2 x 4 x 8 = 64 pixels."""
    config = dict(pipe.transformer.config)
    config["motion_module_kwargs"] = {**config["motion_module_kwargs"], "block_size": 4}
    transformer = type(pipe.transformer).from_config(config)
    transformer.load_state_dict(pipe.transformer.state_dict())
    wide = EasyAnimatePipeline(pipe.tokenizer, pipe.text_encoder, pipe.vae, transformer.eval(), pipe.scheduler)
    wide.set_progress_bar_config(disable=True)
    assert pipe.pixel_multiple == 32 and wide.pixel_multiple == 64
    assert run(wide).shape == (1, 3, 4, 64, 64)
    with pytest.raises(ValueError, match="multiples of 64"):
        run(wide, height=32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_seed_gives_the_same_initial_noise_in_every_dtype(pipe, dtype):
    """torch 2.11 draws another sequence for half dtypes than for float32: the noise is drawn in float32 and cast."""
    def noise(in_dtype):
        return pipe.prepare_latents(1, 4, 3, 64, 64, in_dtype, torch.device("cpu"), torch.Generator().manual_seed(8))

    assert torch.equal(noise(dtype), noise(torch.float32).to(dtype))
