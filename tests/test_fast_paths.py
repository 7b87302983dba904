"""The switchable fast paths compute what the plain paths compute, and the switches do what they say."""

from __future__ import annotations

import pytest
import torch

from benchmarks.harness import build_transformer, compare, transformer_inputs

from .helpers import RecordingBackend

SMALL = dict(height=64, width=64, video_length=4, num_inference_steps=2, guidance_scale=6.0)


def generate_recording_batches(pipe) -> tuple[torch.Tensor, list[int]]:
    """The video, and the batch size of every transformer call that made it."""
    batches = []
    handle = pipe.transformer.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        video = pipe("a red circle moving left", generator=torch.Generator().manual_seed(0), **SMALL).videos
    finally:
        handle.remove()
    return video, batches


def test_guidance_defaults_to_one_batched_forward_per_step(pipe):
    assert pipe.batched_guidance
    _, batches = generate_recording_batches(pipe)
    assert batches == [2, 2]


def test_guidance_as_two_forwards_gives_the_same_video(pipe):
    batched, _ = generate_recording_batches(pipe)
    pipe.batched_guidance = False
    try:
        separate, batches = generate_recording_batches(pipe)
    finally:
        pipe.batched_guidance = True
    assert batches == [1, 1, 1, 1]
    # Same arithmetic on differently batched matrices: equal up to float rounding.
    torch.testing.assert_close(separate, batched, atol=1e-5, rtol=0)


def test_without_guidance_there_is_one_forward_per_step_either_way(pipe):
    pipe.batched_guidance = False
    try:
        batches = []
        handle = pipe.transformer.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
        pipe("a red circle", generator=torch.Generator().manual_seed(0), **{**SMALL, "guidance_scale": 1.0})
        handle.remove()
    finally:
        pipe.batched_guidance = True
    assert batches == [1, 1]


def tiny_model_and_inputs():
    model = build_transformer("tiny", 2, sample_size=8)
    return model, transformer_inputs(model, 2, 3, 64, 96, text_len=12)


@pytest.mark.slow  # compiles (eager backend); the fast tier compiles in test_diffusers_api
def test_compile_blocks_compiles_every_block_and_keeps_the_output():
    model, inputs = tiny_model_and_inputs()
    backend = RecordingBackend()
    with torch.no_grad():
        eager = model(*inputs).sample
        # A backend that runs the captured graphs as they are: this checks the wiring in seconds; the
        # inductor backend is covered by the opt-in slow test below.
        model.compile_blocks(backend=backend)
        compiled = model(*inputs).sample
    assert backend.graphs >= 1  # the blocks went through torch.compile (identical blocks share one graph)
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_inductor_compiled_blocks_match_eager():
    model, inputs = tiny_model_and_inputs()
    with torch.no_grad():
        eager = model(*inputs).sample
        model.compile_blocks()
        compiled = model(*inputs).sample
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


def test_tiled_decoding_differs_from_whole_frames_only_by_blending(pipe):
    latents = torch.randn(1, 4, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    vae = pipe.vae
    with torch.no_grad():
        whole = pipe.decode_latents(latents)
        vae.enable_tiling()
        try:
            tiled = pipe.decode_latents(latents)
        finally:
            vae.disable_tiling()
    assert vae.tile_latent_min_size < 16  # the tiny VAE's 64 px tiles really split a 128 px frame
    assert tiled.shape == whole.shape == (1, 3, 2, 128, 128)
    assert 0 < compare(whole, tiled, data_range=1.0)["max_abs_diff"] < 1
