"""Which frames of a video make a training clip (the original ``VideoDataset``/``WebVid10M`` rule).

A clip of ``n_frames`` frames taken every ``stride`` frames spans ``(n_frames - 1) * stride + 1`` source
frames. It starts at a uniformly drawn frame and its indices are evenly spaced over the span, truncated to
integers. A video shorter than the span gives a shorter span and therefore repeated frames — unless the
caller sets ``min_frames``, in which case it is rejected with ``TooShortError``.
"""

from __future__ import annotations

import random

import numpy as np


class TooShortError(ValueError):
    """A video has fewer frames than the clip needs."""


def clip_span(n_frames: int, stride: int) -> int:
    """Number of source frames a clip of ``n_frames`` frames taken every ``stride`` frames covers."""
    return (n_frames - 1) * stride + 1


def _uniform_start(high: int, rng: np.random.Generator | random.Random) -> int:
    """An integer uniform in ``[0, high]`` from either kind of random generator."""
    if isinstance(rng, random.Random):
        return rng.randint(0, high)
    return int(rng.integers(0, high + 1))


def sample_frame_indices(
    num_frames: int,
    n_frames: int,
    stride: int,
    rng: np.random.Generator | random.Random,
    min_frames: int | None = None,
) -> np.ndarray:
    """Pick the frames of one training clip.

    Args:
        num_frames: frames in the video.
        n_frames: frames in the clip.
        stride: step between clip frames in the source video.
        rng: source of the start frame (a numpy ``Generator`` or ``random.Random``), for determinism.
        min_frames: reject videos with fewer frames than this (None accepts any non-empty video and
            repeats frames of short ones, as the original did; ``clip_span(n_frames, stride)`` accepts only
            videos long enough for an undistorted clip).

    Returns:
        ``(n_frames,)`` int64 indices, non-decreasing, all in ``[0, num_frames)``.

    Raises:
        TooShortError: the video is empty or shorter than ``min_frames``.
    """
    if n_frames < 1 or stride < 1:
        raise ValueError(f"n_frames and stride must be >= 1; got n_frames={n_frames}, stride={stride}")
    if num_frames < max(1, min_frames or 0):
        raise TooShortError(f"video has {num_frames} frames; at least {max(1, min_frames or 0)} needed")
    clip_length = min(num_frames, clip_span(n_frames, stride))
    start = _uniform_start(num_frames - clip_length, rng)
    return np.linspace(start, start + clip_length - 1, n_frames, dtype=int).astype(np.int64)
