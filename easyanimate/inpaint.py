"""What an inpaint model is conditioned on: masks, masked videos and their latents; the random masks of training.

Conventions, the same in training and generation:

* a mask is 1 where the video is to be generated and 0 where it is known; pixel masks are
  ``(B, F, 1, H, W)`` beside pixel clips ``(B, F, 3, H, W)`` (the data loader's layout);
* the masked video has its masked pixels set to -1 (:data:`MASKED_PIXEL`, v1's choice: black);
* the model's ``inpaint_latents`` are ``(B, 1 + C, F, h, w)``: the mask at latent resolution
  (:func:`latent_mask`: a latent pixel is generated when any pixel it covers is) followed by the scaled
  VAE latents of the masked video.

Training draws one mask type per clip (:data:`MASK_TYPES`: v1's four, and ``all``), with the probabilities
of :class:`MaskSettings`:

* ``start``: every frame but the first (image-to-video); with ``max_start_frames`` k > 1 the first 1..k frames
  are known (extension from the last frames of a clip);
* ``start_and_end``: every frame but the first and the last (first-and-last-frame generation);
* ``box``: a random box in every frame (video inpainting);
* ``box_over_frames``: a random box over a random range of frames;
* ``all``: every frame (text-to-video, nothing known: only the prompt says what happens). Not one of v1's
  types; weight 0 by default.

Boxes are drawn as v1 drew them: a centre anywhere in the frame, a side from 1/4 to 3/4 of the frame's,
clipped to the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

MASKED_PIXEL = -1.0
"""The value of masked pixels in the masked video (pixels are in [-1, 1])."""

MASK_TYPES = ("start", "start_and_end", "box", "box_over_frames", "all")
"""v1's mask types, in the order of its ``get_random_mask``, then ``all`` (ours)."""


@dataclass(frozen=True)
class MaskSettings:
    """The mix of mask types training draws from (weights, normalised to probabilities), and the most known
    frames of a ``start`` mask. The defaults are v1's: each type a quarter of the time, one known frame."""

    start: float = 0.25
    start_and_end: float = 0.25
    box: float = 0.25
    box_over_frames: float = 0.25
    max_start_frames: int = 1
    all: float = 0.0

    def __post_init__(self) -> None:
        weights = self.weights()
        if any(w < 0 or w != w for w in weights) or sum(weights) <= 0:
            raise ValueError(f"mask type weights must be >= 0 with a positive sum, got "
                             f"{dict(zip(MASK_TYPES, weights))}")
        if self.max_start_frames < 1:
            raise ValueError(f"max_start_frames must be >= 1, got {self.max_start_frames}")

    def weights(self) -> list[float]:
        return [float(getattr(self, name)) for name in MASK_TYPES]


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """A whole number in ``[low, high)`` drawn from ``generator`` (on its own device)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(low, high, (1,), generator=generator, device=device).item())


def _random_box(height: int, width: int, generator: torch.Generator | None) -> tuple[slice, slice]:
    """Rows and columns of a box: centre anywhere, sides from 1/4 to 3/4 of the frame's, clipped to the frame."""
    def span(size: int) -> slice:
        centre = _randint(0, size, generator)
        side = _randint(max(size // 4, 1), max(size * 3 // 4, size // 4 + 1), generator)
        return slice(max(centre - side // 2, 0), min(centre + side // 2 + side % 2, size))

    rows = span(height)
    return rows, span(width)


def draw_mask(mask_type: str, frames: int, height: int, width: int, generator: torch.Generator | None = None,
              max_start_frames: int = 1) -> torch.Tensor:
    """One mask of the named type, ``(F, 1, H, W)`` float with 1 = generate; see the module docstring."""
    if mask_type not in MASK_TYPES:
        raise ValueError(f"unknown mask type {mask_type!r}; valid: {', '.join(MASK_TYPES)}")
    device = generator.device if generator is not None else "cpu"
    mask = torch.zeros(frames, 1, height, width, device=device)
    if mask_type == "start":
        known = _randint(1, max_start_frames + 1, generator)
        mask[known:] = 1
    elif mask_type == "start_and_end":
        mask[1:-1] = 1
    elif mask_type == "box":
        rows, cols = _random_box(height, width, generator)
        mask[:, :, rows, cols] = 1
    elif mask_type == "all":
        mask[:] = 1
    else:
        first = _randint(0, frames, generator)
        last = _randint(first, frames, generator)
        rows, cols = _random_box(height, width, generator)
        mask[first:last + 1, :, rows, cols] = 1
    return mask


def random_masks(batch: int, frames: int, height: int, width: int, settings: MaskSettings,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[str]]:
    """One random mask per clip, ``(B, F, 1, H, W)`` with 1 = generate, and the type of each."""
    device = generator.device if generator is not None else "cpu"
    weights = torch.tensor(settings.weights(), device=device)
    kinds = [MASK_TYPES[int(i)] for i in torch.multinomial(weights, batch, replacement=True, generator=generator)]
    masks = torch.stack([draw_mask(kind, frames, height, width, generator, settings.max_start_frames)
                         for kind in kinds])
    return masks, kinds


def mask_pixels(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The masked video: ``pixels`` ``(..., 3, H, W)`` in [-1, 1] with the masked pixels (``mask`` 1,
    ``(..., 1, H, W)``) set to :data:`MASKED_PIXEL`."""
    mask = mask.to(pixels.dtype)
    return pixels * (1 - mask) + MASKED_PIXEL * mask


def latent_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """A pixel mask ``(B, F, 1, H, W)`` at latent resolution ``(B, 1, F, H/factor, W/factor)``.

    A latent pixel is marked for generation when any of the ``factor x factor`` pixels it covers is: the
    region to generate never shrinks, so no masked pixel is taken as known.
    """
    batch = mask.shape[0]
    pooled = F.max_pool2d(mask.flatten(0, 1).float(), factor)
    return pooled.unflatten(0, (batch, -1)).transpose(1, 2)


def expand_latent_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """A latent mask ``(B, 1, F, h, w)`` at pixel resolution ``(B, F, 1, h*factor, w*factor)`` (for pictures of it)."""
    return mask.transpose(1, 2).repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
