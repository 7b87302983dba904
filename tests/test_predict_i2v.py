"""predict_i2v.py: image-to-video, inpainting and extension from files, the sidecar and numbering of
predict_t2v.py, the default inpaint model, and one-line errors that write nothing."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from easyanimate.cli import predict as predict_t2v
from easyanimate.cli import predict_i2v
from easyanimate.tiny import write_tiny_model
from easyanimate.video_io import read_video_frames, save_image, save_video

FAST = ["--steps", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def inpaint_models(tmp_path_factory) -> dict[str, Path]:
    """A models folder with a tiny inpaint model (random weights) and a tiny text-to-video model."""
    root = tmp_path_factory.mktemp("models")
    return {"root": root, **write_tiny_model(root, name="tiny-easyanimate-inpaint", inpaint=True),
            "t2v": write_tiny_model(root)["model"]}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A start and an end image, a wider image, a 5-frame clip, masks of its size (an image, a 5-frame video) and
    wrong ones (another size, 3 frames), a file that is not an image."""
    root = tmp_path_factory.mktemp("inputs")
    generator = np.random.default_rng(0)
    paths = {name: root / f"{name}.png" for name in ("start", "end", "wide", "mask", "small_mask", "broken")}
    save_image(generator.integers(0, 255, (64, 64, 3), dtype=np.uint8), paths["start"])
    save_image(generator.integers(0, 255, (64, 64, 3), dtype=np.uint8), paths["end"])
    save_image(generator.integers(0, 255, (48, 96, 3), dtype=np.uint8), paths["wide"])
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[16:48, 16:48] = 255
    save_image(mask, paths["mask"])
    save_image(mask[::2, ::2], paths["small_mask"])
    paths["broken"].write_text("not an image")
    paths["clip"] = root / "clip.mp4"
    save_video(generator.integers(0, 255, (5, 64, 64, 3), dtype=np.uint8), paths["clip"], fps=8)
    paths["mask_video"], paths["short_mask_video"] = root / "mask.mp4", root / "short_mask.mp4"
    save_video(np.repeat(mask[None], 5, axis=0), paths["mask_video"], fps=8)
    save_video(np.repeat(mask[None], 3, axis=0), paths["short_mask_video"], fps=8)
    return paths


def i2v(inpaint_models, out, *extra):
    return predict_i2v.main(["--models-dir", str(inpaint_models["root"]), "--model", str(inpaint_models["model"]),
                             "--output-dir", str(out), *FAST, *extra])


def written(out: Path) -> tuple[list[np.ndarray], dict]:
    (video,) = sorted(out.glob("*.mp4"))
    return read_video_frames(video), json.loads(video.with_suffix(".json").read_text())


def test_image_to_video_writes_the_video_and_a_sidecar_that_names_the_image(inpaint_models, files, tmp_path):
    assert i2v(inpaint_models, tmp_path, "--image", str(files["start"]), "--prompt", "a red circle", "--frames", "4",
               "--seed", "5") == 0
    frames, record = written(tmp_path)
    assert frames.shape == (4, 64, 64, 3)
    assert record["image"] == str(files["start"]) and record["end_image"] is None and record["seed"] == 5
    assert record["prompt"] == "a red circle" and record["model"] == str(inpaint_models["model"])


def test_first_and_last_frame_and_an_image_of_another_size(inpaint_models, files, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert i2v(inpaint_models, tmp_path, "--image", str(files["wide"]), "--end-image", str(files["end"]),
                   "--frames", "4") == 0
    assert "the image is 96x48 pixels: resized to 128x64 and centre-cropped to 64x64" in caplog.text
    frames, record = written(tmp_path)
    assert len(frames) == 4 and record["end_image"] == str(files["end"])


@pytest.mark.parametrize("flags", [["--box", "8", "8", "40", "32"], ["--mask", "mask"], ["--mask", "mask_video"]])
def test_inpainting_a_video_keeps_its_frame_count(inpaint_models, files, tmp_path, flags):
    flags = [str(files[f]) if f in files else f for f in flags]
    assert i2v(inpaint_models, tmp_path, "--video", str(files["clip"]), *flags) == 0
    frames, record = written(tmp_path)
    assert len(frames) == 5 and record["frames"] == 5 and record["video"] == str(files["clip"])


def test_extension_writes_the_whole_video(inpaint_models, files, tmp_path):
    assert i2v(inpaint_models, tmp_path, "--video", str(files["clip"]), "--extend", "2", "--frames", "4") == 0
    frames, record = written(tmp_path)
    assert len(frames) == 5 - 2 + 4 and record["extend"] == 2
    original = read_video_frames(files["clip"])
    assert np.abs(frames[:3].astype(int) - original[:3]).mean() < 10  # the given frames, as they were (up to H.264)


def test_a_long_video_by_extension_and_no_overwrite(inpaint_models, files, tmp_path):
    flags = ["--image", str(files["start"]), "--frames", "10", "--context-frames", "4", "--context-overlap", "1",
             "--long-video", "extension"]
    assert i2v(inpaint_models, tmp_path, *flags) == 0
    assert i2v(inpaint_models, tmp_path, *flags, "--long-video", "windows") == 0
    records = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))]
    assert [r["files"] for r in records] == [["00000001.mp4"], ["00000002.mp4"]]
    assert [r["long_video"] for r in records] == ["extension", "windows"]
    assert all(len(read_video_frames(tmp_path / r["files"][0])) == 10 for r in records)


@pytest.mark.parametrize("flags,message", [
    (["--image", "broken"], "cannot read image"),
    (["--image", "missing.png"], "image file not found"),
    (["--video", "clip", "--mask", "small_mask"], "the mask .* is 32x32 pixels, the video 64x64"),
    (["--video", "clip", "--mask", "short_mask_video"], "the mask .* has 3 frames, the video 5"),
    (["--video", "clip", "--box", "0", "0", "80", "8"], "--box 0 0 80 8 must lie inside the 64x64 video"),
    (["--video", "clip", "--extend", "9"], "--extend 9: the known frames must be from 1 to the video's 5 frames"),
    (["--video", "clip"], "inpainted .* or extended .*: give one of them"),
    ([], "give an image .* or a video"),
    (["--video", "clip", "--box", "0", "0", "8", "8", "--frames", "7"], "--frames 7: the video to inpaint has 5"),
    (["--image", "start", "--frames", "10", "--context-frames", "4", "--context-overlap", "0", "--long-video",
      "extension"], "give an overlap of at least 1"),
])
def test_errors_are_one_line_and_write_nothing(inpaint_models, files, tmp_path, capsys, flags, message):
    flags = [str(files[f]) if f in files else f for f in flags]
    assert i2v(inpaint_models, tmp_path / "out", *flags) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and re.search(message, error), error
    assert not (tmp_path / "out").exists()


def test_each_script_refuses_the_other_kind_of_model(inpaint_models, files, tmp_path, capsys):
    out = tmp_path / "out"
    code = predict_i2v.main(["--models-dir", str(inpaint_models["root"]), "--model", str(inpaint_models["t2v"]),
                             "--image", str(files["start"]), "--output-dir", str(out), *FAST])
    assert code == 2 and "is a text-to-video model; image-to-video" in capsys.readouterr().err
    code = predict_t2v.main(["--models-dir", str(inpaint_models["root"]), "--model", str(inpaint_models["model"]),
                             "--output-dir", str(out), *FAST])
    assert code == 2 and "is an inpaint model (image-to-video, inpainting, extension): use predict_i2v.py" in (
        capsys.readouterr().err)
    assert not out.exists()


def test_without_a_model_the_shipped_inpaint_demo_model_is_expected(files, tmp_path, capsys):
    for models in (tmp_path / "no-folder", tmp_path / "empty"):  # no models folder; one without the demo model
        if models.name == "empty":
            models.mkdir()
        code = predict_i2v.main(["--models-dir", str(models), "--image", str(files["start"]),
                                 "--output-dir", str(tmp_path / "out")])
        assert code == 2 and "EasyAnimate-Shapes-Inpaint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
