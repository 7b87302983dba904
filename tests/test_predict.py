"""predict_t2v.py: files it writes, its defaults, and its errors."""

from __future__ import annotations

import json

import av
import pytest

from easyanimate.cli import predict as predict_t2v

FAST = ["--steps", "2", "--frames", "4", "--device", "cpu"]


def cli(tiny_models, out, *extra):
    return predict_t2v.main(["--models-dir", str(tiny_models["root"]), "--model", str(tiny_models["model"]),
                             "--output-dir", str(out), *FAST, *extra])


def test_writes_a_playable_h264_mp4_and_its_sidecar(tiny_models, tmp_path):
    assert cli(tiny_models, tmp_path, "--prompt", "a blue square moving up", "--fps", "10", "--seed", "7") == 0
    (video,) = sorted(tmp_path.glob("*.mp4"))
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        assert stream.codec_context.name == "h264"
        assert float(stream.average_rate) == 10
    assert len(frames) == 4 and (frames[0].width, frames[0].height) == (64, 64)
    record = json.loads(video.with_suffix(".json").read_text())
    assert record["prompt"] == "a blue square moving up" and record["seed"] == 7 and record["steps"] == 2
    assert record["sampler"] == "DPM++" and record["files"] == [video.name]


def test_model_defaults_apply_without_flags_and_random_seed_is_recorded(tiny_models, tmp_path):
    assert predict_t2v.main(["--models-dir", str(tiny_models["root"]), "--model", str(tiny_models["model"]),
                             "--output-dir", str(tmp_path), "--steps", "2", "--seed", "-1"]) == 0
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["prompt"] == "a red circle moving left" and record["frames"] == 8 and record["height"] == 64
    assert record["seed"] >= 0


def test_a_model_can_carry_its_temporal_window_and_the_flag_overrides_it(tiny_models, tmp_path):
    """A model whose defaults name a temporal window (the long-clip demo model does) generates in windows
    without flags; --context-frames 0 turns the windows off, and an explicit window wins over the model's."""
    import shutil

    from omegaconf import OmegaConf

    model = tmp_path / "model"
    shutil.copytree(tiny_models["model"], model)
    defaults = OmegaConf.load(model / "easyanimate_defaults.yaml")
    defaults.update({"frames": 10, "context_frames": 4, "context_overlap": 1})
    OmegaConf.save(defaults, model / "easyanimate_defaults.yaml")
    records = []
    for flags in ([], ["--context-frames", "0"], ["--context-frames", "6", "--context-overlap", "2"]):
        out = tmp_path / f"out{len(records)}"
        assert predict_t2v.main(["--models-dir", str(tiny_models["root"]), "--model", str(model), "--output-dir",
                                 str(out), "--steps", "2", "--device", "cpu", *flags]) == 0
        records.append(json.loads(next(out.glob("*.json")).read_text()))
    assert [(r["frames"], r["context_frames"], r["context_overlap"]) for r in records] == [
        (10, 4, 1), (10, None, None), (10, 6, 2)]


def test_prompts_file_writes_one_video_per_line_and_never_overwrites(tiny_models, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\n\na green triangle moving down\n")
    out = tmp_path / "out"
    assert cli(tiny_models, out, "--prompts-file", str(prompts), "--format", "both") == 0
    assert cli(tiny_models, out, "--prompt", "a yellow square moving right") == 0
    assert len(list(out.glob("*.mp4"))) == 3 and len(list(out.glob("*.gif"))) == 2
    records = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert sorted(records) == ["00000001", "00000002", "00000003"]
    assert records["00000001"]["prompt"] == "a red circle moving left"
    assert records["00000001"]["files"] == ["00000001.mp4", "00000001.gif"]
    assert records["00000003"]["prompt"] == "a yellow square moving right"


def test_one_frame_writes_an_image(tiny_models, tmp_path):
    assert cli(tiny_models, tmp_path, "--frames", "1") == 0
    assert [p.suffix for p in tmp_path.iterdir() if p.suffix != ".json"] == [".png"]


def test_missing_weights_list_the_expected_paths_and_write_nothing(tmp_path, capsys):
    code = predict_t2v.main(["--models-dir", str(tmp_path / "models"), "--output-dir", str(tmp_path / "out")])
    message = capsys.readouterr().err
    assert code == 2
    assert "PixArt-XL-2-512x512" in message and "easyanimate_v1_mm.safetensors" in message
    assert "11.4 GB" in message  # the model-zoo table
    assert not (tmp_path / "out").exists()


def test_bad_size_is_an_error_and_writes_nothing(tiny_models, tmp_path, capsys):
    assert cli(tiny_models, tmp_path / "out", "--height", "50") == 2
    message = capsys.readouterr().err
    last = message.strip().splitlines()[-1]
    assert last.startswith("error: ") and "multiples of 32" in last and "Traceback" not in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_wrong_file_as_motion_module_is_refused(tiny_models, tmp_path, capsys):
    assert cli(tiny_models, tmp_path / "out", "--motion-module", str(tiny_models["lora"])) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "is not a motion-module file" in last and "LoRA" in last
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # compiles
def test_compile_flag_compiles_the_blocks_and_keeps_the_video(tiny_models, tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from easyanimate.models.transformer3d import Transformer3DModel

    backends = []
    original = Transformer3DModel.compile_blocks

    def spy(self, **kwargs):
        backends.append(kwargs.get("backend"))
        original(self, **kwargs)

    monkeypatch.setattr(Transformer3DModel, "compile_blocks", spy)
    # One frame is written as a lossless png, so the comparison is not blurred by H.264.
    assert cli(tiny_models, tmp_path / "plain", "--seed", "3", "--frames", "1") == 0
    assert backends == []
    assert cli(tiny_models, tmp_path / "compiled", "--seed", "3", "--frames", "1", "--compile", "eager") == 0
    assert backends == ["eager"]
    (plain,), (compiled,) = (sorted((tmp_path / side).glob("*.png")) for side in ("plain", "compiled"))
    assert json.loads(compiled.with_suffix(".json").read_text())["compile"] == "eager"
    difference = np.asarray(Image.open(plain), dtype=int) - np.asarray(Image.open(compiled), dtype=int)
    assert abs(difference).max() <= 1  # float rounding of the compiled graph, then 8-bit rounding


@pytest.mark.slow
def test_accelerate_launch_splits_the_prompts_over_processes(tiny_models, tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:  # a free port for the process group
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\n", encoding="utf-8")
    done = subprocess.run(
        # --multi_gpu selects accelerate's torchrun launcher; without GPUs the processes use the CPU and gloo.
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
         "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), "-m",
         "easyanimate.cli.predict",
         "--models-dir", str(tiny_models["root"]), "--model", str(tiny_models["model"]), "--prompts-file", str(prompts),
         "--output-dir", str(tmp_path / "out"), *FAST],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sidecars = sorted((tmp_path / "out").glob("*.json"))
    assert [p.name for p in sidecars] == ["00000001.json", "00000002.json", "00000003.json"]
    assert sorted(json.loads(p.read_text())["prompt"] for p in sidecars) == ["a blue square", "a green triangle",
                                                                             "a red circle"]
    assert done.stdout.count("done: 3 video(s)") == 1 and "by 2 processes" in done.stdout


def test_far_settings_are_warned_about(tiny_models, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        assert cli(tiny_models, tmp_path / "out", "--frames", "20", "--steps", "2") == 0
    assert "more than twice the 8 this model makes" in caplog.text
