"""Reading a shapes clip from its pixels: colour, shape, direction of motion and a dark background.

No learned classifier: each answer is a short measurement, so a wrong answer can be looked at.

* background: the median colour of the clip's border pixels (all frames); "dark" when its luma < 0.35;
* foreground: per pixel, ``alpha = |pixel - background| / |colour - background|`` clipped to [0, 1] for the
  nearest palette colour, i.e. the fraction of the pixel the shape covers;
* colour: the palette colour nearest (RGB) to the mean of the pixels that clearly differ from the background;
  hue: the HSV hue of that mean, in degrees (mixing a colour with a grey background, as anti-aliased edges
  do, and darkening it, as the front half is, leave its hue unchanged), to compare with the world's colour;
* shape: the median over frames of the fill ratio ``area / bounding-box area`` of the pixels with
  ``alpha > 0.5`` (square 1, circle pi/4, triangle 1/2); the half-coverage contour is where a symmetric
  blur (H.264 chroma, the VAE) leaves an edge, so the ratio survives both;
* direction: the least-squares velocity of the alpha-weighted centroid over the frames; the larger of its
  two components, with its sign. A clip whose centroid moves less than ``MIN_TRAVEL`` px is "static".
* facing (worlds whose shapes have a darker front half, ``front_shade < 1``): the side of the shape its
  darker half is on, from the offset of the shape pixels nearer to the darker tone than to the colour
  (and at least 3 px inside the shape's edge) from the shape's centroid, summed over the frames. It reads
  single frames, so it shows whether an image model draws the prompted direction even where nothing moves.
  With two tones the alpha above divides by the distance of the tone nearer to the background.
* wrap (worlds whose clips wrap around, ``wrap``): a shape crossing an edge shows at both opposite edges.
  Each frame (and its alpha) is rolled so that the shape's circular centroid (the alpha-weighted circular
  mean of the pixel positions, per axis) sits at the frame centre, where the shape, colour and facing
  readings above see it whole; the velocity comes from the centroids back in the clip's coordinates,
  unwrapped over the frames, and the background from all pixels (the shape often covers the border, but
  always well under half the frame).

Clips are ``(F, H, W, 3)`` uint8 or float ``(3, F, H, W)`` in [0, 1] (the pipeline's output).

Long clips (more frames than the motion modules attend over at once) are read window by window
(:func:`read_long_clip`): each temporal window the pipeline used gets its own reading, and the seam
ratio compares the frame-to-frame change where windows hand over with the change inside them. Clips made by
repeated extension are read chunk by chunk the same way, with the seams where chunks are joined
(:func:`extension_chunks`).

Where a single frame puts the shape (:func:`shape_centroid`, the alpha-weighted centroid; circular along
both axes in wrapping worlds) measures first-and-last-frame generation against the given end frame.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
import torch

from easyanimate.models.motion_module import TemporalContext

from .world import COLOURS

DARK_LUMA = 0.35
FOREGROUND_DISTANCE = 0.25  # RGB distance (0..sqrt(3)) from the background that counts as "clearly shape"
MIN_AREA = 20.0  # px of shape for a frame to count
MIN_TRAVEL = 3.0  # px over the clip for motion to count
MIN_FRONT = 6.0  # px of the darker tone inside the shape for a frame to show which way it faces
SQUARE_FILL, TRIANGLE_FILL = 0.9, 0.67  # fill-ratio thresholds: above -> square, below -> triangle
PALETTE = {name: np.array(rgb, dtype=np.float64) / 255 for name, rgb in COLOURS.items()}


def hue(rgb: np.ndarray) -> float:
    """HSV hue of an RGB colour in [0, 1], in degrees from 0 (red) through 120 (green) and 240 (blue)."""
    return colorsys.rgb_to_hsv(*(float(v) for v in rgb))[0] * 360


def hue_difference(a: float, b: float) -> float:
    """The angle between two hues, in degrees (0 to 180)."""
    return abs((a - b + 180) % 360 - 180)


PALETTE_HUES = {name: hue(rgb) for name, rgb in PALETTE.items()}
"""The hue of each of the world's colours: red 0, yellow 50, green 129, blue 227 degrees."""


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
    facing: str | None = None
    """the side of the shape its darker half is on ("left", "right", "up", "down"); None when not read
    (one-tone shapes) or not seen."""
    hue: float | None = None
    """HSV hue of the shape's mean colour, degrees; None when no shape was found."""

    def hue_error(self, colour: str) -> float:
        """Degrees between the shape's hue and the hue of the world's ``colour`` (180 when no shape was read)."""
        return 180.0 if self.hue is None else hue_difference(self.hue, PALETTE_HUES[colour])


def as_frames(video: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(F, H, W, 3)`` float64 in [0, 1] from uint8 ``(F, H, W, 3)`` or float ``(3, F, H, W)``."""
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu().float().numpy()
    if video.dtype == np.uint8:
        return video.astype(np.float64) / 255
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected uint8 (F, H, W, 3) or float (3, F, H, W), got {video.dtype} {video.shape}")
    return np.moveaxis(video.astype(np.float64), 0, -1)


def background_colour(frames: np.ndarray, wrap: bool = False) -> np.ndarray:
    """Median RGB of the one-pixel border of every frame; with ``wrap`` (shapes cross the border) of every
    pixel of every frame, which the shape covers well under half of."""
    if wrap:
        return np.median(frames.reshape(-1, 3), axis=0)
    border = np.concatenate([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], axis=1)
    return np.median(border.reshape(-1, 3), axis=0)


def read_clip(video: np.ndarray | torch.Tensor, front_shade: float = 1.0, wrap: bool = False) -> ClipReading:
    """Colour, shape, direction, background and (for ``front_shade < 1``, the world's) facing of one clip,
    of a world whose clips wrap around with ``wrap`` (see the module docstring)."""
    return read_frames(as_frames(video), front_shade, wrap)


def read_frames(frames: np.ndarray, front_shade: float = 1.0, wrap: bool = False) -> ClipReading:
    """:func:`read_clip` of frames already ``(F, H, W, 3)`` float in [0, 1] (see :func:`as_frames`)."""
    background = background_colour(frames, wrap)
    dark = float(background @ np.array([0.299, 0.587, 0.114])) < DARK_LUMA
    distance = np.linalg.norm(frames - background, axis=-1)
    clear = distance > FOREGROUND_DISTANCE
    if clear.sum() < MIN_AREA:
        return ClipReading(None, None, None, dark, 0.0, (0.0, 0.0))
    mean = frames[clear].mean(axis=0)
    colour = min(PALETTE, key=lambda name: np.linalg.norm(mean - PALETTE[name]))
    tones = (PALETTE[colour], PALETTE[colour] * front_shade)
    alpha = np.clip(distance / min(np.linalg.norm(tone - background) for tone in tones), 0, 1)
    if wrap:
        frames, alpha, shifts = _centre_shapes(frames, alpha)
    fill, centroids = _measure_frames(alpha)
    if not centroids:
        return ClipReading(colour, None, None, dark, 0.0, (0.0, 0.0), hue=hue(mean))
    if wrap:  # back in the clip's coordinates, continued across the edges
        t, x, y = (np.array(v) for v in zip(*centroids))
        x = np.unwrap(x - shifts[t, 0], period=alpha.shape[2])
        y = np.unwrap(y - shifts[t, 1], period=alpha.shape[1])
        centroids = list(zip(t, x, y))
    shape = "square" if fill > SQUARE_FILL else "triangle" if fill < TRIANGLE_FILL else "circle"
    velocity = _velocity(centroids)
    facing = _facing(frames, alpha, *tones) if front_shade < 1 else None
    return ClipReading(colour, shape, _direction(velocity, len(frames)), dark, fill, velocity, facing, hue(mean))


def _centre_shapes(frames: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``frames`` and ``alpha`` with each frame rolled so that its shape's circular centroid sits at the frame
    centre (a shape split across the edges of a wrapping clip joined up), and the ``(F, 2)`` integer
    ``(x, y)`` shifts rolled by."""
    shifts = []
    for weights in (alpha.sum(1), alpha.sum(2)):  # per frame, over x (columns) and over y (rows)
        n = weights.shape[1]
        angle = np.angle(weights @ np.exp(2j * np.pi * np.arange(n) / n))  # the circular mean, as an angle
        shifts.append((n - 1) / 2 - angle * n / (2 * np.pi))  # from there to the centre
    shifts = np.round(np.stack(shifts, axis=1)).astype(int)
    def roll(images):
        return np.stack([np.roll(image, (dy, dx), axis=(0, 1)) for image, (dx, dy) in zip(images, shifts)])
    return roll(frames), roll(alpha), shifts


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


def _side(dx: float, dy: float) -> str:
    """The direction word of the larger component of ``(dx, dy)``, with its sign (y grows downwards)."""
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _direction(velocity: tuple[float, float], num_frames: int) -> str:
    vx, vy = velocity
    if max(abs(vx), abs(vy)) * (num_frames - 1) < MIN_TRAVEL:
        return "static"
    return _side(vx, vy)


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` without the pixels within ``steps`` px (4-neighbourhood) of its outside: the shape's edge,
    where anti-aliasing and chroma blur mix the shape's colour with the background."""
    for _ in range(steps):
        padded = np.pad(mask, 1)
        mask = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask


def _facing(frames: np.ndarray, alpha: np.ndarray, colour: np.ndarray, front: np.ndarray) -> str | None:
    """Side of the shape its darker tone ``front`` is on, or None when no frame shows it (module docstring)."""
    ys, xs = np.mgrid[:alpha.shape[1], :alpha.shape[2]].astype(np.float64)
    offset = np.zeros(2)
    for frame, coverage in zip(frames, alpha):
        inside = coverage > 0.5
        dark = _erode(inside, 2) & (np.linalg.norm(frame - front, axis=-1) < np.linalg.norm(frame - colour, axis=-1))
        if inside.sum() < MIN_AREA or dark.sum() < MIN_FRONT:
            continue
        offset += (xs[dark].mean() - xs[inside].mean(), ys[dark].mean() - ys[inside].mean())
    return _side(*offset) if offset.any() else None


# ------------------------------------------------------------------------------------------------
# Long clips: sliding temporal windows


def temporal_windows(frames: int, context_frames: int, context_overlap: int) -> list[tuple[int, int]]:
    """``(start, stop)`` frame ranges of the windows the pipeline's motion modules attend over in a
    ``frames``-frame clip (:meth:`TemporalContext.window_starts`, as ``EasyAnimatePipeline`` uses it;
    the VAE does not compress time, so latent frames are video frames). One window when the clip fits."""
    context = TemporalContext(context_frames, context_overlap)
    return [(start, min(start + context_frames, frames)) for start in context.window_starts(frames)]


def seam_transitions(windows: list[tuple[int, int]], frames: int) -> list[int]:
    """The frames ``t`` whose transition ``t-1 -> t`` is at a seam, i.e. where blending starts or stops:
    ``t`` is the first frame of a window after the first (``t = start``), or ``t-1`` is the last frame of a
    window before the last (``t = stop``). Sorted, without duplicates, ``0 < t < frames``."""
    starts = {start for start, _ in windows[1:]}
    stops = {stop for _, stop in windows[:-1]}
    return sorted(t for t in starts | stops if 0 < t < frames)


@dataclass
class LongClipReading:
    """What :func:`read_long_clip` saw: one :class:`ClipReading` per window, and the seam statistic."""

    windows: list[tuple[int, int]]
    readings: list[ClipReading]
    """``readings[k]`` reads frames ``windows[k][0]:windows[k][1]`` as a clip of their own."""
    seam_difference: float
    """mean over the seam transitions (:func:`seam_transitions`) of ``mean |frame t - frame t-1|``."""
    inside_difference: float
    """the same mean over every other transition (the ones inside windows)."""

    @property
    def seam_ratio(self) -> float:
        """``seam_difference / inside_difference``: about 1 for steady motion, above 1 when the clip jumps
        where windows hand over. NaN without seams (a single window) or without any change at all."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.float64(self.seam_difference) / self.inside_difference)

    @property
    def directions(self) -> list[str | None]:
        return [r.direction for r in self.readings]

    def colour_kept(self, colour: str) -> float:
        """Fraction of windows that read ``colour``."""
        return float(np.mean([r.colour == colour for r in self.readings]))

    def shape_kept(self, shape: str) -> float:
        """Fraction of windows that read ``shape``."""
        return float(np.mean([r.shape == shape for r in self.readings]))

    def direction_kept(self, direction: str) -> float:
        """Fraction of windows that move in ``direction``."""
        return float(np.mean([d == direction for d in self.directions]))


def extension_chunks(frames: int, chunk_frames: int, overlap: int) -> tuple[list[tuple[int, int]], list[int]]:
    """The ``(start, stop)`` frame ranges of the chunks a clip of ``frames`` frames is made of by repeated extension
    (each chunk starting from the last ``overlap`` frames of the one before, as
    ``EasyAnimateInpaintPipeline(long_video="extension")`` makes it; the last may be shorter), and its seams: the
    frames ``t`` whose transition ``t-1 -> t`` joins a chunk's frames to the next chunk's new ones (the stops of
    every chunk but the last)."""
    chunks, start = [], 0
    while True:
        stop = min(start + chunk_frames, frames)
        chunks.append((start, stop))
        if stop == frames:
            return chunks, [stop for _, stop in chunks[:-1]]
        start = stop - overlap


def read_long_clip(video: np.ndarray | torch.Tensor, windows: list[tuple[int, int]],
                   front_shade: float = 1.0, wrap: bool = False, seams: list[int] | None = None) -> LongClipReading:
    """Read each temporal window of a long clip (see :func:`temporal_windows`) and measure its seams.

    Frame-to-frame difference of transition ``t-1 -> t``: ``mean |frame t - frame t-1|`` over all pixels and
    channels, float pixels in [0, 1]. Seam transitions are those of :func:`seam_transitions` (for 64 frames
    in windows of 16 overlapping by 4: ``t`` in 12, 16, 24, 28, 36, 40, 48, 52), or ``seams`` when given (the
    joins of a clip made by extension, :func:`extension_chunks`); inside: all the others.
    """
    frames = as_frames(video)
    if not windows or any(not 0 <= start < stop <= len(frames) for start, stop in windows):
        raise ValueError(f"windows {windows} do not fit a clip of {len(frames)} frames")
    readings = [read_frames(frames[start:stop], front_shade, wrap) for start, stop in windows]
    differences = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # [t - 1]: transition t-1 -> t
    at_seam = np.zeros(len(differences), bool)
    at_seam[[t - 1 for t in (seam_transitions(windows, len(frames)) if seams is None else seams)]] = True

    def mean(values):
        return float(values.mean()) if len(values) else float("nan")
    return LongClipReading(list(windows), readings, mean(differences[at_seam]), mean(differences[~at_seam]))


# ------------------------------------------------------------------------------------------------
# Single frames: where the shape is, and how close a frame is to another


def shape_centroid(frame: np.ndarray, background: np.ndarray, colour: str, front_shade: float = 1.0,
                   wrap: bool = False) -> tuple[float, float] | None:
    """The alpha-weighted centroid ``(x, y)`` in px of the ``colour`` shape in one frame ``(H, W, 3)`` float in [0, 1]
    over ``background``; in wrapping worlds the circular mean along each axis (a shape split across an edge is one
    shape). None when the frame shows less than ``MIN_AREA`` px of shape."""
    tones = (PALETTE[colour], PALETTE[colour] * front_shade)
    alpha = np.clip(np.linalg.norm(frame - background, axis=-1)
                    / min(np.linalg.norm(tone - background) for tone in tones), 0, 1)
    alpha = np.where(alpha > 0.5, alpha, 0.0)  # the shape, not the faint blur around it
    if alpha.sum() < MIN_AREA:
        return None
    centre = []
    for weights in (alpha.sum(0), alpha.sum(1)):  # over x (columns), over y (rows)
        n = len(weights)
        if wrap:
            angle = np.angle(weights @ np.exp(2j * np.pi * np.arange(n) / n))
            centre.append(float(angle * n / (2 * np.pi) % n))
        else:
            centre.append(float(weights @ np.arange(n) / weights.sum()))
    return centre[0], centre[1]


def centroid_distance(a: tuple[float, float], b: tuple[float, float], size: int, wrap: bool = False) -> float:
    """Pixels between two centroids; the shorter way round each axis in wrapping worlds."""
    steps = [abs(p - q) for p, q in zip(a, b)]
    if wrap:
        steps = [min(d, size - d) for d in steps]
    return float(np.hypot(*steps))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1] (infinite when equal)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)
