"""The inpaint pipeline on tiny components: image-to-video (with an end image), inpainting (mask or box) and
extension (from a clip, and long videos by repeated extension) each hand the model the known content, so that a
model that predicts the true noise reproduces it after decoding; inputs of any size are fitted with a message;
guidance keeps the known content in both branches; each misuse is a clear error."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from easyanimate.config import load_config
from easyanimate.generation import load_pipeline, select_model
from easyanimate.models import Transformer3DModel
from easyanimate.pipelines import EasyAnimateInpaintPipeline, EasyAnimateV1InpaintPipeline, EasyAnimateV1Pipeline

SIZE = 64
STEPS = dict(num_inference_steps=3, height=SIZE, width=SIZE, keep_known=False)  # the model alone keeps the content


class TrueNoise(Transformer3DModel):
    """An inpaint transformer that predicts the true noise for the clean latents ``x0`` that are the known latents
    where the mask is 0 and ``target`` (zero) where it is 1, so sampling ends exactly at that ``x0``. It records the
    ``inpaint_latents`` it is given."""

    def bind(self, scheduler) -> TrueNoise:
        self.scheduler, self.seen = scheduler, []
        return self

    def forward(self, hidden_states, encoder_hidden_states, encoder_attention_mask=None, timestep=None,
                added_cond_kwargs=None, return_dict=True, temporal_context=None, inpaint_latents=None):
        self.check_latent_shape(hidden_states.shape, None if inpaint_latents is None else inpaint_latents.shape)
        self.seen.append(inpaint_latents.clone())
        mask, known = inpaint_latents[:, :1], inpaint_latents[:, 1:]
        x0 = known * (1 - mask)  # the target of the part to generate: zero latents
        alpha = self.scheduler.alphas_cumprod.to(hidden_states.device)[timestep.long()].view(-1, 1, 1, 1, 1)
        noise = (hidden_states - alpha.sqrt() * x0) / (1 - alpha).sqrt()
        return (torch.cat([noise, torch.zeros_like(noise)], dim=1),)


@pytest.fixture(scope="module")
def t2v(tiny_models):
    pipeline = load_pipeline(select_model(tiny_models["root"], model=tiny_models["model"]), device="cpu")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def inpaint_transformer(tiny_models, cls=Transformer3DModel) -> Transformer3DModel:
    extras = load_config(tiny_models["config"]).transformer_additional_kwargs
    return cls.from_pretrained_2d(tiny_models["model"], transformer_additional_kwargs=extras,
                                  motion_module=tiny_models["motion_module"], inpaint=True).eval()


@pytest.fixture(scope="module")
def perfect(t2v, tiny_models):
    """The inpaint pipeline with the :class:`TrueNoise` transformer (fresh record per test)."""
    pipeline = EasyAnimateInpaintPipeline(t2v.tokenizer, t2v.text_encoder, t2v.vae,
                                          inpaint_transformer(tiny_models, TrueNoise), t2v.scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture
def stub(perfect):
    perfect.transformer.bind(perfect.scheduler)
    return perfect


def reconstruction(pipe, frames: torch.Tensor) -> torch.Tensor:
    """The VAE's own reconstruction ``(3, F, H, W)`` in [0, 1] of frames ``(F, 3, H, W)`` in [0, 1]."""
    with torch.no_grad():
        latents = pipe.vae.encode(frames * 2 - 1).latent_dist.mode()
        return (pipe.vae.decode(latents).sample / 2 + 0.5).clamp(0, 1).transpose(0, 1)


def blank(pipe) -> torch.Tensor:
    """What zero latents decode to, ``(3, H, W)``: the stub's generated frames."""
    with torch.no_grad():
        return (pipe.vae.decode(torch.zeros(1, 4, SIZE // 8, SIZE // 8)).sample[0] / 2 + 0.5).clamp(0, 1)


def clip(frames: int, seed: int = 0) -> torch.Tensor:
    """A smooth random clip ``(3, F, 64, 64)`` in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(3, frames, 8, 8, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


def test_image_to_video_reproduces_the_image_and_generates_the_rest(stub):
    image = clip(1)[:, 0]
    video = stub("a red circle", image=image, video_length=5, **STEPS).videos[0]
    torch.testing.assert_close(video[:, 0], reconstruction(stub, image[None])[:, 0], atol=1e-4, rtol=0)
    for frame in range(1, 5):
        torch.testing.assert_close(video[:, frame], blank(stub), atol=1e-4, rtol=0)
    mask = stub.transformer.seen[0][:, 0]  # (B, F, h, w): 0 where known
    assert mask.shape == (2, 5, 8, 8)  # guidance: both branches see the known content
    assert not mask[:, 0].any() and mask[:, 1:].all()
    assert torch.equal(stub.transformer.seen[0][0], stub.transformer.seen[0][1])


def test_first_and_last_frame(stub):
    start, end = clip(1, seed=1)[:, 0], clip(1, seed=2)[:, 0]
    video = stub("a red circle", image=start, end_image=end, video_length=6, **STEPS).videos[0]
    torch.testing.assert_close(video[:, 0], reconstruction(stub, start[None])[:, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(video[:, -1], reconstruction(stub, end[None])[:, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(video[:, 3], blank(stub), atol=1e-4, rtol=0)


def test_inpainting_with_a_box_keeps_the_latents_outside_it(stub):
    given = clip(4, seed=3)
    latents = stub("a red circle", video=given, box=(16, 8, 40, 32), output_type="latent", **STEPS).videos[0]
    inpaint = stub.transformer.seen[-1][0]
    mask = inpaint[0]  # (F, h, w): rows 1..3, columns 2..4 of the 8x8 latent grid generated
    expected = torch.zeros(4, 8, 8)
    expected[:, 1:4, 2:5] = 1
    assert torch.equal(mask, expected)
    known = inpaint[1:]
    torch.testing.assert_close(latents * (1 - mask), known * (1 - mask), atol=1e-4, rtol=0)
    assert not (latents * mask).abs().max() > 1e-4


def test_inpainting_with_a_mask_video_of_the_video_size(stub):
    given = clip(3, seed=4)
    mask = np.zeros((3, SIZE, SIZE), np.uint8)
    mask[1, :32] = 255  # the top half of frame 1 only
    video = stub("a red circle", video=given, mask_video=mask, **STEPS).videos[0]
    seen = stub.transformer.seen[-1][0, 0]
    assert not seen[0].any() and not seen[2].any() and seen[1, :4].all() and not seen[1, 4:].any()
    torch.testing.assert_close(video[:, 0], reconstruction(stub, given[:, :1].transpose(0, 1))[:, 0], atol=1e-4, rtol=0)


def test_extension_keeps_the_given_frames_as_the_start(stub):
    given = clip(2, seed=5)
    video = stub("a red circle", video=given, video_length=5, **STEPS).videos[0]
    assert video.shape == (3, 5, SIZE, SIZE)
    torch.testing.assert_close(video[:, :2], reconstruction(stub, given.transpose(0, 1)), atol=1e-4, rtol=0)
    torch.testing.assert_close(video[:, 4], blank(stub), atol=1e-4, rtol=0)


def test_long_video_by_extension_starts_each_chunk_from_the_last_frames(stub):
    image = clip(1, seed=6)[:, 0]
    video = stub("a red circle", image=image, video_length=10, context_frames=4, context_overlap=1,
                 long_video="extension", **STEPS).videos[0]
    assert video.shape == (3, 10, SIZE, SIZE)
    chunks = {tuple(inpaint.shape) for inpaint in stub.transformer.seen}
    assert chunks == {(2, 5, 4, 8, 8)}  # frames 0-3, 3-6, 6-9: three chunks of 4
    starts = [inpaint[0, 0, 0] for inpaint in stub.transformer.seen[::3]]  # the first frame's mask, per chunk
    assert all(not s.any() for s in starts) and len(starts) == 3
    torch.testing.assert_close(video[:, 0], reconstruction(stub, image[None])[:, 0], atol=1e-4, rtol=0)
    # Each later chunk is told its first frame is the previous chunk's last frame, as decoded.
    second_known = stub.transformer.seen[3][0, 1:, 0]
    with torch.no_grad():
        expected = stub.vae.encode(video[:, 3][None] * 2 - 1).latent_dist.mode()[0] * stub.vae.config.scaling_factor
    torch.testing.assert_close(second_known, expected, atol=1e-4, rtol=0)


def test_inputs_of_another_size_are_fitted_with_a_message(stub, caplog):
    wide = Image.fromarray((clip(1, seed=7)[:, 0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).resize((128, 96))
    with caplog.at_level(logging.WARNING):
        video = stub("a red circle", image=wide, video_length=3, **STEPS).videos[0]
    assert "the image is 128x96 pixels: resized to 85x64 and centre-cropped to 64x64" in caplog.text
    assert video.shape == (3, 3, SIZE, SIZE)


def test_batches_of_images_one_per_prompt(stub):
    images = [clip(1, seed=8)[:, 0], clip(1, seed=9)[:, 0]]
    videos = stub(["a red circle", "a blue square"], image=images, video_length=3, **STEPS).videos
    for image, video in zip(images, videos):
        torch.testing.assert_close(video[:, 0], reconstruction(stub, image[None])[:, 0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("kwargs,match", [
    ({}, "give an image .* or a video"),
    ({"image": torch.rand(3, 64, 64), "video": torch.rand(3, 2, 64, 64)}, "exactly one"),
    ({"image": torch.rand(3, 64, 64), "box": (0, 0, 8, 8)}, "mask_video and box go with a video"),
    ({"video": torch.rand(3, 2, 64, 64), "end_image": torch.rand(3, 64, 64)}, "end_image goes with image"),
    ({"video": torch.rand(3, 2, 64, 64), "mask_video": np.zeros((2, 32, 32))},
     "the mask is 32x32 pixels, the video 64x64"),
    ({"video": torch.rand(3, 2, 64, 64), "mask_video": np.zeros((3, 64, 64))}, "the mask has 3 frames, the video 2"),
    ({"video": torch.rand(3, 2, 64, 64), "box": (0, 0, 80, 8)}, "box .* must lie inside the 64x64 video"),
    ({"video": torch.rand(3, 4, 64, 64), "video_length": 3}, "video_length must exceed its 4 frames"),
    ({"video": torch.rand(3, 4, 64, 64), "box": (0, 0, 8, 8), "video_length": 6}, "video to inpaint has 4 frames"),
    ({"image": torch.rand(3, 64, 64) * 2 - 1}, "values in \\[0, 1\\]"),
    ({"image": [torch.rand(3, 64, 64)] * 3}, "3 images for 1 prompts"),
    ({"image": torch.rand(3, 64, 64), "long_video": "chunks"}, "long_video must be one of"),
])
def test_misuse_is_a_clear_error(stub, kwargs, match):
    with pytest.raises(ValueError, match=match):
        stub("a red circle", **{"video_length": 2, **kwargs}, **STEPS)


def test_each_pipeline_refuses_the_other_kind_of_model(t2v, tiny_models):
    inpaint = inpaint_transformer(tiny_models)
    with pytest.raises(ValueError, match="inpaint model .* use EasyAnimateInpaintPipeline"):
        EasyAnimateV1Pipeline(t2v.tokenizer, t2v.text_encoder, t2v.vae, inpaint, t2v.scheduler)
    with pytest.raises(ValueError, match="text-to-video model .* need an inpaint model"):
        EasyAnimateV1InpaintPipeline(t2v.tokenizer, t2v.text_encoder, t2v.vae, t2v.transformer, t2v.scheduler)


def test_a_real_inpaint_model_saves_and_loads_as_the_inpaint_pipeline(t2v, tiny_models, tmp_path):
    pipeline = EasyAnimateInpaintPipeline(t2v.tokenizer, t2v.text_encoder, t2v.vae, inpaint_transformer(tiny_models),
                                          t2v.scheduler)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.save_pretrained(tmp_path / "saved")
    loaded = EasyAnimateInpaintPipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is EasyAnimateV1InpaintPipeline and loaded.transformer.is_inpaint
    options = dict(image=clip(1)[:, 0], video_length=3, generator=torch.Generator().manual_seed(0), **STEPS)
    first = pipeline("a red circle", **options).videos
    options["generator"] = torch.Generator().manual_seed(0)
    assert torch.equal(first, loaded("a red circle", **options).videos)
    with pytest.raises(ValueError, match="inpaint model"):
        EasyAnimateV1Pipeline.from_pretrained(tmp_path / "saved")


@pytest.mark.parametrize("sampler", ["DPM++", "Euler", "DDIM"])
def test_keep_known_puts_the_known_latents_back_whatever_the_model_predicts(t2v, tiny_models, sampler):
    """With keep_known (the default) the known frames' latents are the given content's, also for a model with
    random weights; the frames to generate are the model's."""
    from easyanimate.generation import set_sampler

    pipeline = EasyAnimateInpaintPipeline(t2v.tokenizer, t2v.text_encoder, t2v.vae, inpaint_transformer(tiny_models),
                                          t2v.scheduler)
    pipeline.set_progress_bar_config(disable=True)
    set_sampler(pipeline, sampler)
    image = clip(1, seed=10)[:, 0]
    options = dict(image=image, video_length=3, output_type="latent", num_inference_steps=3, height=SIZE, width=SIZE,
                   generator=torch.Generator().manual_seed(0))
    latents = pipeline("a red circle", **options).videos[0]
    with torch.no_grad():
        known = pipeline.vae.encode(image[None] * 2 - 1).latent_dist.mode()[0] * pipeline.vae.config.scaling_factor
    torch.testing.assert_close(latents[:, 0], known, atol=1e-5, rtol=0)
    options["generator"] = torch.Generator().manual_seed(0)
    alone = pipeline("a red circle", **options, keep_known=False).videos[0]
    assert (alone[:, 0] - known).abs().max() > 1e-2  # the random model alone does not reproduce it
