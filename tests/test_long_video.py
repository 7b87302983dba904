"""Sliding temporal windows for videos longer than the model was trained for."""

from __future__ import annotations

import pytest
import torch

from easyanimate import EasyAnimatePipeline
from easyanimate.models import get_motion_module
from easyanimate.models.motion_module import TemporalContext, window_weights

from .helpers import TINY_MM, randomize, tiny_pair


def generate(pipe, frames, seed=0, **kwargs):
    return pipe("a red circle moving left", height=64, width=64, video_length=frames, num_inference_steps=2,
                generator=torch.Generator().manual_seed(seed), **kwargs).videos


@pytest.mark.parametrize("window", [8, 12])
def test_a_window_at_least_as_long_as_the_clip_equals_plain_generation(pipe, window):
    assert torch.equal(generate(pipe, 8, context_frames=window, context_overlap=2), generate(pipe, 8))


@pytest.mark.parametrize("frames,window,overlap", [(10, 4, 1), (16, 8, 4), (9, 8, 0), (40, 16, 4)])
def test_windows_cover_the_clip_and_end_at_its_last_frame(frames, window, overlap):
    starts = TemporalContext(window, overlap).window_starts(frames)
    covered = set()
    for start in starts:
        covered.update(range(start, start + window))
    assert starts[0] == 0 and starts[-1] + window == frames and covered == set(range(frames))
    assert all(b - a <= window - overlap for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("grad", [False, True])
def test_windowed_motion_module_blends_per_window_results(grad):
    torch.manual_seed(0)
    module = get_motion_module(32, "VanillaGrid", TINY_MM).eval()
    randomize(module, seed=1)
    frames, h, w, window, overlap = 10, 2, 4, 4, 1
    x = torch.randn(1, frames * h * w, 32)
    with torch.set_grad_enabled(grad):  # training blends out of place, inference in place
        ours = module(x.clone(), frames, h, w, TemporalContext(window, overlap))
    with torch.no_grad():
        # Reference: run each window as its own clip, then average per frame with triangle weights.
        video = x.view(1, frames, h * w, 32)
        total, weight_sum = torch.zeros_like(video), torch.zeros(frames)
        for start in (0, 3, 6):
            clip = video[:, start:start + window].reshape(1, -1, 32)
            out = module(clip, window, h, w).view(1, window, h * w, 32)
            weights = torch.tensor([1.0, 2.0, 2.0, 1.0])
            total[:, start:start + window] += weights[:, None, None] * out
            weight_sum[start:start + window] += weights
        expected = (total / weight_sum[:, None, None]).reshape(1, -1, 32)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(window_weights(4), torch.tensor([1.0, 2.0, 2.0, 1.0]))


@pytest.mark.parametrize("grad", [False, True])
def test_chunked_per_frame_work_matches_one_pass(grad):
    _, model = tiny_pair()
    randomize(model, seed=2)
    x, text = torch.randn(1, 4, 12, 8, 8), torch.randn(1, 5, 16)
    with torch.set_grad_enabled(grad):
        whole = model(x, text, timestep=torch.tensor([5])).sample
        # The window covers the clip, so the motion modules see it whole; the per-frame work runs
        # in chunks of 5 frames (in place without gradients).
        chunked = model(x, text, timestep=torch.tensor([5]),
                        temporal_context=TemporalContext(12, 3, chunk_frames=5)).sample
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_rescheduled_noise_repeats_earlier_window_frames_in_shuffled_order():
    noise = torch.randn(1, 4, 20, 8, 8, generator=torch.Generator().manual_seed(0))
    out = EasyAnimatePipeline.reschedule_noise(noise, 8, 2, torch.Generator().manual_seed(1))
    assert torch.equal(out[:, :, :8], noise[:, :, :8])
    for chunk in (8, 14):  # stride 6: chunks [8, 14) and [14, 20) copy [0, 6) and [6, 12), shuffled
        sources = [out[:, :, f] for f in range(chunk - 8, chunk - 2)]
        copies = [out[:, :, f] for f in range(chunk, chunk + 6)]
        matched = [next(i for i, s in enumerate(sources) if torch.equal(c, s)) for c in copies]
        assert sorted(matched) == list(range(6))


def test_long_clip_is_generated_with_windows_and_the_next_plain_call_is_unaffected(pipe):
    before = generate(pipe, 8)
    video = generate(pipe, 20, context_frames=8, context_overlap=2)
    assert video.shape == (1, 3, 20, 64, 64) and torch.isfinite(video).all()
    assert torch.equal(generate(pipe, 8), before)  # the window is an argument of one call, not state


def test_bad_window_settings_are_refused(pipe):
    with pytest.raises(ValueError, match="context_overlap"):
        generate(pipe, 20, context_frames=8, context_overlap=8)
