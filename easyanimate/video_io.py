"""Reading and writing videos and images.

Layouts at this boundary:

* what the pipeline produces and ``save_video`` takes: float ``(3, F, H, W)`` in ``[0, 1]`` (torch tensor
  or numpy array), or already-converted frames ``(F, H, W, 3)`` ``uint8``;
* what ``read_video_frames`` returns: ``(F, H, W, 3)`` ``uint8`` RGB.

Writing is atomic (:func:`easyanimate.files.atomic_write`): an interrupted or failed write never leaves
a half-written sample behind. Decoding uses PyAV, imported when a video is first written or read (the rest of
the package, the device check included, runs without it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from .files import atomic_write

if TYPE_CHECKING:
    import av


def __getattr__(name: str):
    """``video_io.av``: PyAV, imported on first use."""
    if name == "av":
        import av

        return av
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

PathLike = str | os.PathLike

VIDEO_FORMATS = ("mp4", "gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_RANGE_TOLERANCE = 1e-3


class VideoReadError(ValueError, OSError):
    """A video (or image) file is missing, corrupt or cannot be decoded."""


@dataclass(frozen=True)
class VideoInfo:
    """What a container says about its first video stream."""

    num_frames: int
    fps: float
    width: int
    height: int
    codec: str | None


# --------------------------------------------------------------------------------------------------
# Converting arrays to frames


def to_uint8_frames(video: torch.Tensor | np.ndarray | Sequence[Image.Image]) -> np.ndarray:
    """Convert a video to ``(F, H, W, 3)`` uint8 frames.

    Args:
        video: float ``(3, F, H, W)`` in ``[0, 1]`` (the pipeline's ``videos[i]``), float ``(F, H, W, 3)``
            in ``[0, 1]`` (its ``frames[i]``, diffusers' layout), uint8 ``(F, H, W, 3)``, or a list of
            PIL images. Float values may overshoot ``[0, 1]`` by 1e-3 (clipped); anything further out
            is an error, because it usually means a ``[-1, 1]`` tensor was passed without rescaling.

    Returns:
        ``(F, H, W, 3)`` uint8, values rounded to the nearest integer.
    """
    if isinstance(video, (list, tuple)) and video and all(isinstance(frame, Image.Image) for frame in video):
        return np.stack([np.asarray(frame.convert("RGB")) for frame in video])
    if isinstance(video, torch.Tensor):
        video = video.detach().to("cpu", torch.float32).numpy()
    video = np.asarray(video)
    if video.dtype == np.uint8:
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"uint8 videos must be (F, H, W, 3); got shape {tuple(video.shape)}")
        return video
    if not np.issubdtype(video.dtype, np.floating):
        raise ValueError(f"video must be float (3, F, H, W) or (F, H, W, 3) in [0, 1], or uint8 (F, H, W, 3); "
                         f"got dtype {video.dtype}")
    if video.ndim != 4 or 3 not in (video.shape[0], video.shape[-1]):
        raise ValueError(f"float videos must be (3, F, H, W) or (F, H, W, 3); got shape {tuple(video.shape)}")
    _check_unit_range(video)
    # (F, H, W, 3) when the last axis has 3 entries: a 3-pixel-wide channel-first video is not a real case,
    # a 3-frame frame-major one is.
    frames = video if video.shape[-1] == 3 else video.transpose(1, 2, 3, 0)
    return np.round(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_unit_range(values: np.ndarray) -> None:
    """Raise unless every value is finite and within ``[0, 1]`` (up to the tolerance)."""
    if not np.all(np.isfinite(values)):
        raise ValueError("video contains NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < -_RANGE_TOLERANCE or high > 1.0 + _RANGE_TOLERANCE:
        raise ValueError(
            f"float videos must lie in [0, 1]; got values in [{low:.3f}, {high:.3f}]"
            " (a [-1, 1] video should be passed as (video + 1) / 2)"
        )


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Repeat the last row/column so height and width are even, as H.264 with yuv420p requires."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not pad_h and not pad_w:
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


# --------------------------------------------------------------------------------------------------
# Writing


def _write_mp4(frames: np.ndarray, path: Path, fps: float, crf: int) -> None:
    """Encode ``(F, H, W, 3)`` uint8 frames (even H and W) as H.264 yuv420p in an mp4 container."""
    import av

    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        # One encoder thread and explicit timestamps (x264's rate control reads them) make repeated
        # writes of the same frames agree closely. They are still not byte-for-byte identical: within
        # one process, a rewrite was seen to differ by about 0.5 levels on average in a few clips.
        stream.options = {"crf": str(crf), "threads": "1"}
        for index, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts, picture.time_base = index, 1 / rate
            container.mux(stream.encode(picture))
        container.mux(stream.encode())


def _write_gif(frames: np.ndarray, path: Path, fps: float) -> None:
    """Write ``(F, H, W, 3)`` uint8 frames as a looping GIF with ``1000 / fps`` ms per frame.

    GIF stores durations in hundredths of a second, so 12 fps is played back at 80 ms per frame; Pillow
    merges consecutive identical frames into one longer frame (same playback, fewer stored frames).
    """
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=1000.0 / fps, loop=0)


def save_video(
    video: torch.Tensor | np.ndarray,
    path: PathLike,
    fps: float = 12,
    fmt: str | None = None,
    crf: int = 18,
) -> Path:
    """Write a video as H.264 mp4 or GIF, atomically, and return its path.

    Args:
        video: float ``(3, F, H, W)`` in ``[0, 1]`` or uint8 ``(F, H, W, 3)``; ``F = 1`` is allowed.
        path: destination; missing parent folders are created, an existing file is replaced.
        fps: frames per second.
        fmt: ``"mp4"`` or ``"gif"``; None picks it from the file extension.
        crf: x264 constant rate factor for mp4 (lower is better quality; 18 is visually lossless).

    mp4 frames with an odd height or width are padded by one repeated row/column, because H.264 in
    yuv420p needs even sizes; the file then reports the padded size.
    """
    fmt = _video_format(path, fmt)
    if fps <= 0:
        raise ValueError(f"fps must be positive; got {fps}")
    frames = to_uint8_frames(video)
    if frames.shape[0] == 0:
        raise ValueError("video has no frames")
    if fmt == "mp4":
        frames = _pad_to_even(frames)
        return atomic_write(path, lambda temporary: _write_mp4(frames, temporary, fps, crf))
    return atomic_write(path, lambda temporary: _write_gif(frames, temporary, fps))


def _video_format(path: PathLike, fmt: str | None) -> str:
    """The output format: ``fmt`` when given, else the extension of ``path``; raises for unknown ones."""
    chosen = (fmt or Path(path).suffix.lstrip(".")).lower()
    if chosen not in VIDEO_FORMATS:
        raise ValueError(
            f"cannot tell the video format of {os.fspath(path)!r} (fmt={fmt!r}); "
            f"use one of the extensions/formats {list(VIDEO_FORMATS)}"
        )
    return chosen


def save_image(image: torch.Tensor | np.ndarray, path: PathLike, fmt: str | None = None) -> Path:
    """Write one image (png, jpg, ...) atomically and return its path.

    Args:
        image: float ``(3, H, W)`` or a 1-frame video ``(3, 1, H, W)`` in ``[0, 1]``, or uint8 ``(H, W, 3)``.
        path: destination; its extension names the format unless ``fmt`` (e.g. ``"png"``) does.
    """
    suffix = f".{fmt.lower()}" if fmt else Path(path).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise ValueError(f"image format must be one of {list(IMAGE_EXTENSIONS)}; got {os.fspath(path)!r} (fmt={fmt!r})")
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        frames = to_uint8_frames(image[None])
    else:
        frames = to_uint8_frames(image[:, None] if image.ndim == 3 else image)
    if frames.shape[0] != 1:
        raise ValueError(f"save_image takes one frame; got {frames.shape[0]} (use save_video)")
    picture = Image.fromarray(frames[0])
    fmt = Image.registered_extensions()[suffix]
    return atomic_write(path, lambda temporary: picture.save(temporary, format=fmt))


# --------------------------------------------------------------------------------------------------
# Reading


def _open_container(path: PathLike) -> av.container.InputContainer:
    """Open ``path`` with PyAV, turning every failure into a ``VideoReadError`` that names the file."""
    import av

    if not os.path.isfile(path):
        raise VideoReadError(f"video file not found: {os.fspath(path)}")
    try:
        container = av.open(os.fspath(path), mode="r")
    except (av.FFmpegError, OSError, ValueError) as error:
        raise VideoReadError(f"cannot open video {os.fspath(path)}: {error}") from error
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"no video stream in {os.fspath(path)}")
    return container


def _probe_pyav(path: PathLike) -> VideoInfo:
    """``VideoInfo`` from the container header; frames are counted from packets when the header has no count."""
    import av

    with _open_container(path) as container:
        stream = container.streams.video[0]
        try:
            num_frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size > 0)
        except av.FFmpegError as error:
            raise VideoReadError(f"cannot read video {os.fspath(path)}: {error}") from error
        rate = stream.average_rate or stream.guessed_rate or 0
        context = stream.codec_context
        return VideoInfo(num_frames, float(rate), context.width, context.height, context.name)


def _read_pyav(path: PathLike, indices: np.ndarray | None) -> np.ndarray:
    """Decode frames in order, keeping those listed in ``indices`` (all when None)."""
    import av

    wanted = None if indices is None else set(indices.tolist())
    last = None if indices is None else int(indices.max())
    decoded: dict[int, np.ndarray] = {}
    count = 0
    with _open_container(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for position, frame in enumerate(container.decode(stream)):
                count = position + 1
                if wanted is None or position in wanted:
                    decoded[position] = frame.to_ndarray(format="rgb24")
                if last is not None and position >= last:
                    break
        except av.FFmpegError as error:
            raise VideoReadError(f"cannot decode video {os.fspath(path)}: {error}") from error
    order = sorted(decoded) if indices is None else indices.tolist()
    missing = [index for index in order if index not in decoded]
    if missing or not order:
        raise VideoReadError(
            f"video {os.fspath(path)} decoded to {count} frames; frame {missing[0] if missing else 0} "
            "was requested (the file is truncated or its header is wrong)"
        )
    return np.stack([decoded[index] for index in order])


def probe_video(path: PathLike) -> VideoInfo:
    """Frame count, fps, size and codec of a video without decoding it.

    Raises:
        VideoReadError: the file is missing, is not a video, or cannot be parsed.
    """
    return _probe_pyav(path)


def read_video_frames(path: PathLike, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Decode frames of a video.

    Args:
        path: the video file.
        indices: 0-based frame numbers to return, in the order given (repeats allowed); None for all frames.

    Returns:
        ``(F, H, W, 3)`` uint8 RGB, ``F = len(indices)``.

    Raises:
        VideoReadError: the file is missing/corrupt, or has fewer frames than an index asks for.
    """
    if indices is not None:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) == 0:
            raise ValueError("indices is empty; pass None to read every frame")
        if int(indices.min()) < 0:
            raise ValueError(f"frame indices must be >= 0; got {indices.tolist()}")
    return _read_pyav(path, indices)


def read_image(path: PathLike) -> np.ndarray:
    """Load an image as ``(H, W, 3)`` uint8 RGB; raises ``VideoReadError`` when missing or unreadable."""
    if not os.path.isfile(path):
        raise VideoReadError(f"image file not found: {os.fspath(path)}")
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise VideoReadError(f"cannot read image {os.fspath(path)}: {error}") from error


def probe_image(path: PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image from its header; raises ``VideoReadError`` when missing or unreadable."""
    if not os.path.isfile(path):
        raise VideoReadError(f"image file not found: {os.fspath(path)}")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise VideoReadError(f"cannot read image {os.fspath(path)}: {error}") from error
    return height, width
