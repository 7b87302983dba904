"""Turning decoded frames into training clips.

Layouts: decoded frames are ``(F, H, W, 3)`` uint8; a training clip is a float tensor ``(F, 3, H, W)`` in
``[-1, 1]`` (frames first, as the original datasets return ``pixel_values``; the training step rearranges a
batch ``(B, F, 3, H, W)`` into the model's ``(B, C, F, H, W)``). An image is a clip with ``F = 1``.

Resizing is bilinear with antialiasing (``torch.nn.functional.interpolate``), the same filter family as the
original torchvision ``Resize``; no torchvision dependency. Aspect-ratio buckets live in ``buckets.py``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """``(F, H, W, 3)`` uint8 -> float32 ``(F, 3, H, W)`` in ``[0, 1]``."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (F, H, W, 3) uint8; got {frames.dtype} {tuple(frames.shape)}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)


def resize_to_cover(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Scale ``(F, 3, H, W)`` uniformly so it just covers ``size = (h, w)``: result ``h' >= h``, ``w' >= w``.

    For a square ``size`` this is torchvision's ``Resize(s)`` (shorter side to ``s``, longer side truncated).
    """
    height, width = clip.shape[-2:]
    scale = max(size[0] / height, size[1] / width)
    new_size = (max(size[0], int(height * scale)), max(size[1], int(width * scale)))
    if new_size == (height, width):
        return clip
    return F.interpolate(clip, size=new_size, mode="bilinear", align_corners=False, antialias=True)


def center_crop(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The central ``size = (h, w)`` window of ``(F, 3, H, W)`` (offsets rounded as torchvision's CenterCrop)."""
    height, width = clip.shape[-2:]
    top, left = int(round((height - size[0]) / 2.0)), int(round((width - size[1]) / 2.0))
    return clip[..., top : top + size[0], left : left + size[1]]


def random_crop(clip: torch.Tensor, size: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """A uniformly placed ``size = (h, w)`` window of ``(F, 3, H, W)``, the same for every frame."""
    height, width = clip.shape[-2:]
    top, left = int(rng.integers(0, height - size[0] + 1)), int(rng.integers(0, width - size[1] + 1))
    return clip[..., top : top + size[0], left : left + size[1]]


def prepare_clip(
    frames: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator | None = None,
    random_crop_window: bool = False,
    random_flip: bool = False,
) -> torch.Tensor:
    """Decoded frames -> a training clip: resize to cover ``size``, crop, optionally flip, scale to ``[-1, 1]``.

    Args:
        frames: ``(F, H, W, 3)`` uint8.
        size: output ``(height, width)``.
        rng: randomness for the crop position and flip (needed when either is random).
        random_crop_window: crop at a random position instead of the centre.
        random_flip: mirror the whole clip horizontally with probability 0.5.

    Returns:
        float32 ``(F, 3, height, width)`` in ``[-1, 1]``.
    """
    if (random_crop_window or random_flip) and rng is None:
        raise ValueError("random_crop_window/random_flip need an rng (numpy Generator)")
    clip = resize_to_cover(frames_to_tensor(frames), size)
    clip = random_crop(clip, size, rng) if random_crop_window else center_crop(clip, size)
    if random_flip and rng.random() < 0.5:
        clip = clip.flip(-1)
    return clip.mul(2.0).sub(1.0).clamp(-1.0, 1.0).contiguous()
