"""Reading a shapes clip from its pixels: colour, shape, direction of motion and a dark background.

No learned classifier: each answer is a short measurement, so a wrong answer can be looked at.

* background: the median colour of the clip's border pixels (all frames); "dark" when its luma < 0.35;
* foreground: per pixel, ``alpha = |pixel - background| / |colour - background|`` clipped to [0, 1] for the
  nearest palette colour, i.e. the fraction of the pixel the shape covers;
* colour: the palette colour nearest (RGB) to the mean of the pixels that clearly differ from the background;
* shape: the median over frames of the fill ratio ``area / bounding-box area`` (square 1, circle pi/4,
  triangle 1/2); the box spans the rows and columns holding at least half a pixel of shape;
* direction: the least-squares velocity of the alpha-weighted centroid over the frames; the larger of its
  two components, with its sign. A clip whose centroid moves less than ``MIN_TRAVEL`` px is "static".

Clips are ``(F, H, W, 3)`` uint8 or float ``(3, F, H, W)`` in [0, 1] (the pipeline's output).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.shapes import COLOURS, Combination, caption

DARK_LUMA = 0.35
FOREGROUND_DISTANCE = 0.25  # RGB distance (0..sqrt(3)) from the background that counts as "clearly shape"
MIN_AREA = 20.0  # px of shape for a frame to count
MIN_TRAVEL = 3.0  # px over the clip for motion to count
SQUARE_FILL, TRIANGLE_FILL = 0.9, 0.67  # fill-ratio thresholds: above -> square, below -> triangle
PALETTE = {name: np.array(rgb, dtype=np.float64) / 255 for name, rgb in COLOURS.items()}


@dataclass
class ClipReading:
    """What :func:`read_clip` saw. ``None`` when there was nothing to read (no shape found)."""

    colour: str | None
    shape: str | None
    direction: str | None
    dark_background: bool
    fill_ratio: float
    velocity: tuple[float, float]
    """centroid velocity ``(vx, vy)`` in px/frame (y grows downwards)."""


def as_frames(video: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(F, H, W, 3)`` float64 in [0, 1] from uint8 ``(F, H, W, 3)`` or float ``(3, F, H, W)``."""
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu().float().numpy()
    if video.dtype == np.uint8:
        return video.astype(np.float64) / 255
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected uint8 (F, H, W, 3) or float (3, F, H, W), got {video.dtype} {video.shape}")
    return np.moveaxis(video.astype(np.float64), 0, -1)


def background_colour(frames: np.ndarray) -> np.ndarray:
    """Median RGB of the one-pixel border of every frame."""
    border = np.concatenate([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], axis=1)
    return np.median(border.reshape(-1, 3), axis=0)


def read_clip(video: np.ndarray | torch.Tensor) -> ClipReading:
    """Colour, shape, direction and background of one clip (see the module docstring)."""
    frames = as_frames(video)
    background = background_colour(frames)
    dark = float(background @ np.array([0.299, 0.587, 0.114])) < DARK_LUMA
    distance = np.linalg.norm(frames - background, axis=-1)
    clear = distance > FOREGROUND_DISTANCE
    if clear.sum() < MIN_AREA:
        return ClipReading(None, None, None, dark, 0.0, (0.0, 0.0))
    mean = frames[clear].mean(axis=0)
    colour = min(PALETTE, key=lambda name: np.linalg.norm(mean - PALETTE[name]))
    alpha = np.clip(distance / np.linalg.norm(PALETTE[colour] - background), 0, 1)
    fill, centroids = _measure_frames(alpha)
    if not centroids:
        return ClipReading(colour, None, None, dark, 0.0, (0.0, 0.0))
    shape = "square" if fill > SQUARE_FILL else "triangle" if fill < TRIANGLE_FILL else "circle"
    velocity = _velocity(centroids)
    return ClipReading(colour, shape, _direction(velocity, len(frames)), dark, fill, velocity)


def _measure_frames(alpha: np.ndarray) -> tuple[float, list[tuple[int, float, float]]]:
    """Median fill ratio and ``(frame, x, y)`` centroids of the frames that show enough shape."""
    fills, centroids = [], []
    ys, xs = np.arange(alpha.shape[1], dtype=np.float64), np.arange(alpha.shape[2], dtype=np.float64)
    for index, frame in enumerate(alpha):
        area = frame.sum()
        if area < MIN_AREA:
            continue
        inside = frame > 0.5
        rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
        if len(rows):
            fills.append(inside.sum() / ((rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)))
        centroids.append((index, float(frame.sum(0) @ xs / area), float(frame.sum(1) @ ys / area)))
    return (float(np.median(fills)) if fills else 0.0), centroids


def _velocity(centroids: list[tuple[int, float, float]]) -> tuple[float, float]:
    """Least-squares slope of x and y over the frame index, px/frame."""
    if len(centroids) < 2:
        return (0.0, 0.0)
    t, x, y = (np.array(v) for v in zip(*centroids))
    t = t - t.mean()
    return (float(t @ (x - x.mean()) / (t @ t)), float(t @ (y - y.mean()) / (t @ t)))


def _direction(velocity: tuple[float, float], num_frames: int) -> str:
    vx, vy = velocity
    if max(abs(vx), abs(vy)) * (num_frames - 1) < MIN_TRAVEL:
        return "static"
    if abs(vx) >= abs(vy):
        return "right" if vx > 0 else "left"
    return "down" if vy > 0 else "up"


# ------------------------------------------------------------------------------------------------
# Generating and scoring


@dataclass
class ClipResult:
    """One generated clip: what was asked, what was read, and whether its combination was held out."""

    combination: Combination
    seed: int
    held_out: bool
    reading: ClipReading

    @property
    def correct(self) -> dict[str, bool]:
        r, c = self.reading, self.combination
        return {"colour": r.colour == c.colour, "shape": r.shape == c.shape, "direction": r.direction == c.direction}


def generate_and_read(pipeline, combinations: list[Combination], seeds: list[int], held_out: set[Combination],
                      style: bool = False, steps: int = 20, guidance_scale: float = 4.5, frames: int = 16,
                      size: int = 64, negative_prompt: str = "", batch_size: int = 16,
                      on_clip=None) -> list[ClipResult]:
    """Generate one clip per (combination, seed) with ``pipeline`` and read each from its pixels.

    Clip ``(c, s)`` starts from the noise of ``torch.Generator().manual_seed(s)``, whatever the batch it
    runs in, so results do not depend on ``batch_size``. ``on_clip(result, video)`` sees every clip
    (``video`` is ``(3, F, H, W)`` in [0, 1]), e.g. to save samples.
    """
    jobs = [(c, s) for s in seeds for c in combinations]
    results = []
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        generators = [torch.Generator().manual_seed(s) for _, s in batch]
        videos = pipeline([caption(c, style) for c, _ in batch], negative_prompt=[negative_prompt] * len(batch),
                          video_length=frames, height=size, width=size, num_inference_steps=steps,
                          guidance_scale=guidance_scale, generator=generators, output_type="pt").videos
        for (combination, seed), video in zip(batch, videos):
            result = ClipResult(combination, seed, combination in held_out, read_clip(video))
            results.append(result)
            if on_clip is not None:
                on_clip(result, video)
    return results


def accuracy(results: list[ClipResult]) -> dict[str, float]:
    """Fraction correct per attribute, all three at once, and with a dark background; plus the count."""
    if not results:
        return {"clips": 0}
    scores = {name: float(np.mean([r.correct[name] for r in results])) for name in ("colour", "shape", "direction")}
    scores["all"] = float(np.mean([all(r.correct.values()) for r in results]))
    scores["dark"] = float(np.mean([r.reading.dark_background for r in results]))
    scores["clips"] = len(results)
    return scores
