"""What ``train_mode: inpaint`` adds to a training step: a random mask per clip and the masked clip's latents.

The model predicts the noise of the whole clip as in text-to-video (same target, same loss); it also gets
``inpaint_latents``: the mask at latent resolution (1 = to generate) and the latents of the clip with its
masked pixels at -1 (:mod:`easyanimate.inpaint`). Masks come from the run's noise generator, so a resumed run
draws the masks the uninterrupted run would have drawn.

Two ways to the masked latents:

* from the files (no ``precompute``): the mask is drawn at pixel resolution, the masked clip encoded by the
  VAE (sampled, as the clean clip is) and the mask max-pooled to latent resolution: v1's way;
* from the latent cache (``precompute``): the cache holds each clip's latents once, but a new mask is drawn at
  every step, so the masked latents are made in latent space: the mask is drawn at latent resolution (boxes on
  the 8-pixel grid) and every masked latent pixel takes the latent of a masked (all -1) frame. Encoding the
  masked clip again at every step would cost the VAE pass that the cache exists to save, and caching one mask
  per clip would show each clip with one mask for the whole run. For the frame masks (image-to-video, first
  and last frame, extension) this is what the VAE gives, since it encodes frame by frame; for boxes it differs
  within the VAE's reach of the box's edge, where an encoded masked frame mixes the box with its surroundings.

At start, :func:`write_sanity_check` writes a few clips next to their masked version, as v1 wrote its
``sanity_check`` gifs: the masks as the run draws them (at latent resolution with ``precompute``).
"""

from __future__ import annotations

import re
import weakref
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from ..inpaint import MaskSettings, expand_latent_mask, latent_mask, mask_pixels, random_masks
from ..video_io import save_video
from .config import TrainConfig, mask_settings
from .data import encode_video

SANITY_FOLDER = "sanity_check"


def vae_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent pixel along each side (8 for the SD VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


# VAE -> {(height, width): latent}; weak, so a finished run's VAE is not kept alive by it.
_MASKED_FRAME_LATENTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.no_grad()
def masked_frame_latent(vae: AutoencoderKL, height: int, width: int) -> torch.Tensor:
    """The scaled latent ``(C, h, w)`` of a frame whose every pixel is masked (-1), the VAE's posterior mean.

    The VAE is frozen in training, so the latent is encoded once per VAE and frame size and reused at every step
    (the latent cache exists to spare the VAE passes)."""
    latents = _MASKED_FRAME_LATENTS.setdefault(vae, {})
    if (height, width) not in latents:
        frame = torch.full((1, 3, height, width), -1.0, device=vae.device, dtype=vae.dtype)
        latents[height, width] = vae.encode(frame).latent_dist.mean[0].float() * vae.config.scaling_factor
    return latents[height, width]


@torch.no_grad()
def inpaint_latents_for_batch(batch: dict, latents: torch.Tensor, vae: AutoencoderKL, config: TrainConfig,
                              generator: torch.Generator) -> torch.Tensor:
    """``inpaint_latents`` ``(B, 1 + C, F, h, w)`` for a batch whose clean latents are ``latents`` ``(B, C, F, h, w)``:
    from the pixels when the batch has them, else from the cached latents (see the module docstring)."""
    settings = mask_settings(config)
    batch_size, _, frames, height, width = latents.shape
    if "pixel_values" not in batch:  # the latent cache
        masks, _ = random_masks(batch_size, frames, height, width, settings, generator)
        mask = masks.transpose(1, 2).to(latents)  # (B, 1, F, h, w)
        factor = vae_factor(vae)
        fill = masked_frame_latent(vae, height * factor, width * factor).to(latents)
        masked = latents * (1 - mask) + fill[None, :, None] * mask
    else:
        pixels = batch["pixel_values"]  # (B, F, 3, H, W)
        masks, _ = random_masks(batch_size, frames, *pixels.shape[-2:], settings, generator)
        masked = encode_video(vae, mask_pixels(pixels.to(masks.device), masks), config.vae_mini_batch, generator)
        mask = latent_mask(masks, vae_factor(vae)).to(latents)
        masked = masked.to(latents)
    return torch.cat([mask, masked], dim=1)


def write_sanity_check(dataset, config: TrainConfig, vae: AutoencoderKL, count: int = 4) -> list[Path]:
    """Write ``output_dir/sanity_check/<i>_<mask type>_<caption>.mp4`` for the first ``count`` items: each clip
    beside its masked version (masked pixels black), with masks drawn as the run draws them, from their own
    generator (the run's random state is not touched)."""
    settings: MaskSettings = mask_settings(config)
    generator = torch.Generator().manual_seed(config.seed or 0)
    factor = vae_factor(vae) if config.precompute else 1
    folder = Path(config.output_dir) / SANITY_FOLDER
    written = []
    for index in range(min(count, len(dataset))):
        example = dataset[index]
        pixels = example["pixel_values"]  # (F, 3, H, W) in [-1, 1]
        frames, _, height, width = pixels.shape
        masks, (kind,) = random_masks(1, frames, height // factor, width // factor, settings, generator)
        mask = expand_latent_mask(masks.transpose(1, 2), factor)[0] if factor > 1 else masks[0]
        side_by_side = torch.cat([pixels, mask_pixels(pixels, mask)], dim=-1)  # (F, 3, H, 2W)
        words = re.sub(r"[^A-Za-z0-9]+", "_", " ".join(str(example["text"]).split()[:10])).strip("_") or "no_caption"
        path = folder / f"{index}_{kind}_{words}.mp4"
        save_video((side_by_side.transpose(0, 1) + 1) / 2, path, fps=8)
        written.append(path)
    return written

