"""Before a generation starts, the command line and the page say what the setting needs, computed from the model's
own config files, and warn (without stopping anything) when the device has less."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from easyanimate.cli import predict as predict_t2v
from easyanimate.config import load_config, transformer_kwargs_for_model
from easyanimate.generation import GenerationRequest, estimate_memory, select_model
from easyanimate.memory import MEMORY_MODES, estimate_generation_memory

SETTING = GenerationRequest("a red circle", steps=2, height=64, width=64, frames=4)


def folder_configs(model: Path) -> dict[str, dict]:
    """The model folder's configs, read independently of the code under test."""
    configs = {name: {k: v for k, v in json.loads((model / name / "config.json").read_text()).items()
                      if not k.startswith("_")} for name in ("transformer", "text_encoder", "vae")}
    extras = load_config(model / "easyanimate_config.yaml").transformer_additional_kwargs
    configs["transformer"].update(transformer_kwargs_for_model(extras))
    return configs


def less_memory(monkeypatch, available: int) -> None:
    monkeypatch.setattr("easyanimate.generation.device_free_memory", lambda device: available)


def test_the_estimate_comes_from_the_models_own_configs(tiny_models, monkeypatch):
    less_memory(monkeypatch, 80 * 10**9)  # an 80 GB GPU, as this machine has none
    selection = select_model(tiny_models["root"], model=tiny_models["model"])
    configs = folder_configs(tiny_models["model"])
    expected = {mode: estimate_generation_memory(configs["transformer"], 64, 64, 4, torch.float16, mode,
                                                 text_encoder_config=configs["text_encoder"], vae_config=configs["vae"])
                for mode in MEMORY_MODES}
    on_gpu = estimate_memory(selection, SETTING, torch.device("cuda"), torch.float16, "model_cpu_offload")
    assert on_gpu.by_mode == {mode: e.total_bytes for mode, e in expected.items()}
    assert on_gpu.needed == expected["model_cpu_offload"].total_bytes
    # Not the released T5-XXL and SD VAE: the tiny model's whole peak is a few MB (plus the CUDA margin).
    assert expected["none"].peak_bytes < 50 * 2**20
    on_cpu = estimate_memory(selection, SETTING, torch.device("cpu"), torch.float32)
    assert on_cpu.needed == estimate_generation_memory(
        configs["transformer"], 64, 64, 4, torch.float32, "none", text_encoder_config=configs["text_encoder"],
        vae_config=configs["vae"]).peak_bytes


def test_the_warning_names_the_memory_modes_that_would_fit(tiny_models, monkeypatch):
    less_memory(monkeypatch, 80 * 10**9)
    selection = select_model(tiny_models["root"], model=tiny_models["model"])
    needs = estimate_memory(selection, SETTING, torch.device("cuda"), torch.float16).by_mode
    assert needs["sequential_cpu_offload"] < needs["none"]
    less_memory(monkeypatch, needs["sequential_cpu_offload"])
    advice = estimate_memory(selection, SETTING, torch.device("cuda"), torch.float16, "none")
    assert not advice.enough and "sequential_cpu_offload" in advice.warning()
    assert "may run out of memory" in advice.warning()
    less_memory(monkeypatch, None)  # a device that cannot say: no warning
    assert estimate_memory(selection, SETTING, torch.device("cuda"), torch.float16).warning() is None


def test_the_command_line_says_what_the_setting_needs_and_warns_without_stopping(tiny_models, tmp_path, capsys,
                                                                                 monkeypatch):
    args = ["--models-dir", str(tiny_models["root"]), "--model", str(tiny_models["model"]), "--steps", "2",
            "--frames", "4", "--device", "cpu"]
    assert predict_t2v.main([*args, "--output-dir", str(tmp_path / "a")]) == 0
    out, err = capsys.readouterr()
    assert "This setting needs about" in out and "of memory on cpu" in out and "warning:" not in err
    less_memory(monkeypatch, 10**6)
    assert predict_t2v.main([*args, "--output-dir", str(tmp_path / "b")]) == 0
    out, err = capsys.readouterr()
    assert "warning: cpu has 1 MB available but this setting needs about" in err
    assert len(list((tmp_path / "b").glob("*.mp4"))) == 1  # generated all the same


def test_an_estimate_that_fails_never_stops_a_generation(tiny_models, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise NotImplementedError("an op without a meta kernel")

    monkeypatch.setattr("easyanimate.cli.predict.estimate_memory", broken)
    assert predict_t2v.main(["--models-dir", str(tiny_models["root"]), "--model", str(tiny_models["model"]),
                             "--steps", "2", "--frames", "4", "--device", "cpu", "--output-dir", str(tmp_path)]) == 0
    assert "memory: not estimated (NotImplementedError" in capsys.readouterr().out
    assert len(list(tmp_path.glob("*.mp4"))) == 1


def test_the_page_shows_what_the_setting_needs_and_warns_before_generating(tiny_models, tmp_path, monkeypatch):
    from easyanimate.ui import EasyAnimateController
    from easyanimate.ui.page import PageHandlers

    handlers = PageHandlers(EasyAnimateController(tiny_models["root"], tmp_path, device="cpu"))
    model, motion_module = tiny_models["model"].name, tiny_models["motion_module"].name
    note = handlers.memory(model, 64, 64, 4, 6.0)
    assert note.startswith("This setting needs about") and "Warning" not in note
    assert handlers.memory("none", 64, 64, 4, 6.0) == ""
    less_memory(monkeypatch, 10**6)
    assert "**Warning:** cpu has 1 MB available" in handlers.memory(model, 64, 64, 4, 6.0)
    shown = []
    monkeypatch.setattr("gradio.Warning", lambda message, *args, **kwargs: shown.append(message))
    *_, (video, _, _, status) = handlers.generate(model, motion_module, "none", "none", 0.55, "a red circle", "",
                                                  "DPM++", 2, 64, 64, 4, 6.0, 7, progress=lambda *a, **k: None)
    assert shown[0].startswith("cpu has 1 MB available")  # shown before the worker starts; the video is made
    assert Path(video).is_file() and "may run out of memory" in status


@pytest.mark.parametrize("frames", [16, 80])
def test_the_released_setting_is_estimated_from_its_configs_alone(tmp_path, frames, monkeypatch):
    """A folder with the released configs and no weights: the estimate reads nothing else (the 80-frame setting
    needs the 22.5 GB of docs/benchmarks/tiers.md in bf16 without offloading)."""
    from easyanimate.memory import SD_VAE_CONFIG, T5_XXL_CONFIG

    model = tmp_path / "PixArt-XL-2-512x512"
    released = dict(num_layers=28, num_attention_heads=16, attention_head_dim=72, cross_attention_dim=1152,
                    caption_channels=4096, sample_size=64, in_channels=4, out_channels=8)
    for name, config in (("transformer", released), ("text_encoder", dict(T5_XXL_CONFIG)),
                         ("vae", dict(SD_VAE_CONFIG))):
        (model / name).mkdir(parents=True)
        (model / name / "config.json").write_text(json.dumps(config))
    selection = select_model(tmp_path, model=model, use_motion_module=False)
    less_memory(monkeypatch, 80 * 10**9)
    advice = estimate_memory(selection, GenerationRequest(frames=frames), torch.device("cuda"), torch.bfloat16)
    assert advice.by_mode["none"] > advice.by_mode["text_encoder_cpu"] > advice.by_mode["sequential_cpu_offload"]
    if frames == 80:
        assert round(advice.by_mode["none"] / 1e9, 1) == 22.5
