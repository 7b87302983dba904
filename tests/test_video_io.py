"""Writing and reading videos: formats, sizes, atomic writes, clear read errors."""

import os
import random

import av
import numpy as np
import pytest
import torch
from PIL import Image

from easyanimate import video_io
from easyanimate.video_io import (
    VideoInfo,
    VideoReadError,
    probe_video,
    read_image,
    read_video_frames,
    save_image,
    save_video,
)


def gray_ramp_video(num_frames: int = 8, height: int = 64, width: int = 64) -> torch.Tensor:
    """(3, F, H, W) in [0, 1]: frame i is a flat gray of level 8·i/255, so a frame's index is readable."""
    levels = torch.arange(num_frames, dtype=torch.float32) * 8 / 255
    return levels.view(1, num_frames, 1, 1).expand(3, num_frames, height, width).clone()


def decode_with_pyav(path) -> tuple[list[np.ndarray], av.video.stream.VideoStream]:
    """All frames of a file (RGB uint8) and its stream, decoded independently of video_io."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return frames, stream


def test_mp4_decodes_with_frame_count_size_fps_and_codec(tmp_path):
    video = gray_ramp_video(num_frames=10, height=48, width=64)
    path = save_video(video, tmp_path / "clip.mp4", fps=12)
    frames, stream = decode_with_pyav(path)
    assert len(frames) == 10
    assert frames[0].shape == (48, 64, 3)
    assert stream.average_rate == 12
    assert stream.codec_context.name == "h264"
    assert stream.codec_context.pix_fmt == "yuv420p"
    levels = [frame.mean() for frame in frames]
    np.testing.assert_allclose(levels, np.arange(10) * 8, atol=2)


def test_mp4_pads_odd_sizes_to_even(tmp_path):
    path = save_video(torch.rand(3, 2, 33, 47), tmp_path / "odd.mp4")
    frames, _ = decode_with_pyav(path)
    assert frames[0].shape == (34, 48, 3)


def test_mp4_accepts_uint8_frames_and_a_single_frame(tmp_path):
    frames = np.full((1, 32, 32, 3), 200, dtype=np.uint8)
    path = save_video(frames, tmp_path / "one.mp4", fps=8)
    info = probe_video(path)
    assert (info.num_frames, info.width, info.height, info.codec) == (1, 32, 32, "h264")
    assert info.fps == pytest.approx(8)
    assert abs(float(read_video_frames(path).mean()) - 200) < 3


def test_gif_has_frame_count_duration_and_loop(tmp_path):
    path = save_video(gray_ramp_video(num_frames=6, height=16, width=16), tmp_path / "clip.gif", fps=10)
    with Image.open(path) as gif:
        assert gif.n_frames == 6
        assert gif.info["loop"] == 0
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
    assert durations == [100] * 6


def test_format_can_be_forced_and_unknown_extensions_are_refused(tmp_path):
    path = save_video(gray_ramp_video(num_frames=2, height=16, width=16), tmp_path / "clip.bin", fmt="gif")
    assert Image.open(path).format == "GIF"
    with pytest.raises(ValueError, match=r"\['mp4', 'gif'\]"):
        save_video(gray_ramp_video(num_frames=2), tmp_path / "clip.avi")


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.full((3, 2, 16, 16), float("nan")), "NaN"),
        (torch.full((3, 2, 16, 16), -1.0), r"\[0, 1\]"),
        (torch.rand(2, 16, 16, 4), r"\(3, F, H, W\) or \(F, H, W, 3\)"),  # (F, H, W, 3) is diffusers' frames
    ],
)
def test_bad_data_is_refused_and_leaves_no_file(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        save_video(bad, tmp_path / "bad.mp4")
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"previous sample")
    real_from_ndarray = av.VideoFrame.from_ndarray
    calls = []

    def failing_from_ndarray(array, format):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("encoder crashed")
        return real_from_ndarray(array, format=format)

    monkeypatch.setattr(video_io.av.VideoFrame, "from_ndarray", failing_from_ndarray)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        save_video(gray_ramp_video(num_frames=6), target)
    assert os.listdir(tmp_path) == ["clip.mp4"]
    assert target.read_bytes() == b"previous sample"


def test_save_image_writes_png(tmp_path):
    image = torch.zeros(3, 20, 30)
    image[0] = 1.0
    path = save_image(image, tmp_path / "red.png")
    pixels = read_image(path)
    assert pixels.shape == (20, 30, 3)
    assert pixels[..., 0].min() == 255 and pixels[..., 1:].max() == 0
    save_image(image[:, None], tmp_path / "from_video.png")
    with pytest.raises(ValueError, match="one frame"):
        save_image(torch.rand(3, 2, 8, 8), tmp_path / "two.png")


def test_read_video_frames_returns_requested_indices_in_order(tmp_path):
    path = save_video(gray_ramp_video(num_frames=8), tmp_path / "ramp.mp4")
    frames = read_video_frames(path, [5, 0, 5, 7])
    assert frames.shape == (4, 64, 64, 3) and frames.dtype == np.uint8
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), [40, 0, 40, 56], atol=2)
    assert read_video_frames(path).shape[0] == 8
    assert probe_video(path) == VideoInfo(num_frames=8, fps=12.0, width=64, height=64, codec="h264")


def test_asking_past_the_end_is_a_read_error(tmp_path):
    path = save_video(gray_ramp_video(num_frames=4), tmp_path / "short.mp4")
    with pytest.raises(VideoReadError, match="decoded to 4 frames"):
        read_video_frames(path, [2, 9])


@pytest.mark.parametrize("content", [None, random.Random(0).randbytes(4096), b"not a video\n"],
                         ids=["missing", "random bytes", "text"])
def test_missing_or_corrupt_files_raise_video_read_error(tmp_path, content):
    path = tmp_path / "broken.mp4"
    if content is not None:
        path.write_bytes(content)
    for call in (probe_video, read_video_frames):
        with pytest.raises(VideoReadError, match="broken.mp4") as caught:
            call(path)
        assert isinstance(caught.value, ValueError) and isinstance(caught.value, OSError)


def test_corrupt_image_raises_video_read_error(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(os.urandom(256))
    with pytest.raises(VideoReadError, match="broken.png"):
        read_image(path)
