"""The inpaint transformer: 9 input channels built from any 4-channel checkpoint equal that checkpoint at the start,
saved inpaint models load back as inpaint models, and every channel mismatch is named."""

from __future__ import annotations

import pytest
import torch
from diffusers import PixArtTransformer2DModel
from safetensors.torch import save_file

from easyanimate.config import ConfigError
from easyanimate.models import Transformer3DModel, WeightLoadError, load_transformer_checkpoint

from .helpers import EXTRAS, TINY, randomize, trained_video_model


def noisy_and_masked(frames: int = 3, seed: int = 5):
    """Latents (1, 4, F, 8, 8), text, timestep and random inpaint latents (1, 5, F, 8, 8) (mask + masked latents)."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, frames, 8, 8, generator=generator)
    text = torch.randn(1, 5, 16, generator=generator)
    mask = (torch.rand(1, 1, frames, 8, 8, generator=generator) > 0.5).float()
    masked = torch.randn(1, 4, frames, 8, 8, generator=generator)
    return latents, text, torch.tensor([11]), torch.cat([mask, masked], dim=1)


def save_trained(tmp_path, model: Transformer3DModel) -> tuple:
    """A trained 4-channel video model as a PixArt folder plus a full checkpoint (all keys)."""
    folder = tmp_path / "pixart"
    image_model = PixArtTransformer2DModel(**TINY)
    image_model.load_state_dict({k: v for k, v in model.state_dict().items() if ".attn_temporal." not in k})
    image_model.save_pretrained(folder / "transformer")
    checkpoint = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    return folder, checkpoint


def test_channel_counts_of_text_to_video_and_inpaint_models():
    t2v = Transformer3DModel(**TINY, **EXTRAS)
    inpaint = Transformer3DModel(**{**TINY, "in_channels": 9}, **EXTRAS)
    assert (t2v.latent_channels, t2v.inpaint_channels, t2v.is_inpaint) == (4, 0, False)
    assert (inpaint.latent_channels, inpaint.inpaint_channels, inpaint.is_inpaint) == (4, 5, True)
    assert inpaint.pos_embed.proj.weight.shape[1] == 9 and inpaint.proj_out.out_features == 2 * 2 * 8
    with pytest.raises(ConfigError, match="takes 4 .* or 9"):
        Transformer3DModel(**{**TINY, "in_channels": 6}, **EXTRAS)


def test_inpaint_model_built_from_a_4_channel_folder_and_checkpoint_equals_it_at_the_start(tmp_path):
    trained = trained_video_model()
    folder, checkpoint = save_trained(tmp_path, trained)
    from_folder = Transformer3DModel.from_pretrained_2d(folder, transformer_additional_kwargs=EXTRAS, inpaint=True)
    inpaint = Transformer3DModel.from_pretrained_2d(folder, transformer_additional_kwargs=EXTRAS,
                                                    transformer_path=checkpoint, inpaint=True)
    for model in (from_folder, inpaint):
        weight = model.pos_embed.proj.weight
        assert model.config.in_channels == 9 and not weight[:, 4:].any()
        assert torch.equal(weight[:, :4], trained.pos_embed.proj.weight)
    latents, text, t, inpaint_latents = noisy_and_masked()
    with torch.no_grad():
        expected = trained.eval()(latents, text, None, t).sample
        for masked in (inpaint_latents, torch.randn_like(inpaint_latents)):  # whatever the masked video
            assert torch.equal(inpaint.eval()(latents, text, None, t, inpaint_latents=masked).sample, expected)


def test_the_extra_channels_change_the_output_once_they_have_weights():
    model = Transformer3DModel(**{**TINY, "in_channels": 9}, **EXTRAS).eval()
    randomize(model)
    latents, text, t, inpaint_latents = noisy_and_masked()
    with torch.no_grad():
        first = model(latents, text, None, t, inpaint_latents=inpaint_latents).sample
        second = model(latents, text, None, t, inpaint_latents=torch.zeros_like(inpaint_latents)).sample
    assert first.shape == (1, 8, 3, 8, 8) and not torch.allclose(first, second)


def test_saved_inpaint_models_load_back_with_their_channels(tmp_path):
    model = Transformer3DModel(**{**TINY, "in_channels": 9}, **EXTRAS).eval()
    randomize(model)
    model.save_pretrained(tmp_path / "transformer")
    loaded = Transformer3DModel.from_pretrained(tmp_path / "transformer").eval()
    assert loaded.is_inpaint
    latents, text, t, inpaint_latents = noisy_and_masked()
    with torch.no_grad():
        assert torch.equal(loaded(latents, text, None, t, inpaint_latents=inpaint_latents).sample,
                           model(latents, text, None, t, inpaint_latents=inpaint_latents).sample)
    # A PixArt folder holding a 9-channel image model builds an inpaint model without being asked.
    image_model = PixArtTransformer2DModel(**{**TINY, "in_channels": 9})
    image_model.save_pretrained(tmp_path / "pixart9" / "transformer")
    assert Transformer3DModel.from_pretrained_2d(tmp_path / "pixart9", transformer_additional_kwargs=EXTRAS).is_inpaint
    with pytest.raises(WeightLoadError, match="is an inpaint model .* EasyAnimateInpaintPipeline"):
        Transformer3DModel.from_pretrained_2d(tmp_path / "pixart9", transformer_additional_kwargs=EXTRAS, inpaint=False)


def test_an_inpaint_checkpoint_into_a_text_to_video_model_is_named(tmp_path):
    inpaint = Transformer3DModel(**{**TINY, "in_channels": 9}, **EXTRAS)
    path = tmp_path / "inpaint.safetensors"
    save_file({k: v.contiguous() for k, v in inpaint.state_dict().items()}, str(path))
    with pytest.raises(WeightLoadError, match="is an inpaint checkpoint \\(9 input channels.*text-to-video model \\(4"):
        load_transformer_checkpoint(Transformer3DModel(**TINY, **EXTRAS), path)


def test_inpaint_latents_are_required_by_an_inpaint_model_and_refused_by_a_text_to_video_model():
    latents, text, t, inpaint_latents = noisy_and_masked()
    inpaint = Transformer3DModel(**{**TINY, "in_channels": 9}, **EXTRAS)
    with pytest.raises(ValueError, match="inpaint model .* needs inpaint_latents \\(B, 5, F, H, W\\)"):
        inpaint(latents, text, None, t)
    with pytest.raises(ValueError, match="inpaint_latents must have shape \\(1, 5, 3, 8, 8\\)"):
        inpaint(latents, text, None, t, inpaint_latents=inpaint_latents[:, :, :2])
    with pytest.raises(ValueError, match="text-to-video model .* takes no inpaint_latents"):
        Transformer3DModel(**TINY, **EXTRAS)(latents, text, None, t, inpaint_latents=inpaint_latents)
