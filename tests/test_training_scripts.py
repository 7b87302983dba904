"""The production launchers scripts/train_{t2v,t2i,lora}.sh: a yaml recipe plus the dataset variables.

Each script runs with a stand-in launcher (``ACCELERATE=`` a script that records its arguments), and the
config the trainer would resolve from them is compared with what the scripts passed as flags before the
recipes moved into ``config/train/*.yaml`` (the old flags are written below as data).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from easyanimate.training.components import model_yaml
from easyanimate.training.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
PIXART = "models/Diffusion_Transformer/PixArt-XL-2-512x512"
GIRL = ("1girl, bangs, blue eyes, blunt bangs, blurry, blurry background, bob cut, depth of field, lips, looking at "
        "viewer, motion blur, nose, realistic, red lips, shirt, short hair, solo, white shirt.")

# What each script passed to train.py / train_lora.py before, with its default variables, and to the launcher.
OLD_FLAGS = {
    "train_t2v.sh": [
        f"--pretrained_model_name_or_path={PIXART}", "--train_data_dir=datasets/internal_datasets/",
        "--train_data_meta=datasets/internal_datasets/json_of_internal_datasets.json", "--train_data_format=normal",
        "--config_path", "config/easyanimate_video_motion_module_v1.yaml",
        "--sample_size=512", "--sample_stride=2", "--sample_n_frames=16",
        "--train_batch_size=2", "--gradient_accumulation_steps=1", "--dataloader_num_workers=8",
        "--num_train_epochs=100", "--checkpointing_steps=500",
        "--validation_prompts=A girl with delicate face is smiling.", "--validation_steps=100",
        "--learning_rate=2e-05", "--lr_scheduler=constant_with_warmup", "--lr_warmup_steps=100",
        "--seed=42", "--output_dir=output_dir", "--gradient_checkpointing", "--mixed_precision=bf16",
        "--adam_weight_decay=3e-2", "--adam_epsilon=1e-10", "--max_grad_norm=1", "--vae_mini_batch=16",
        "--use_ema", "--trainable_modules", "attn_temporal"],
    "train_t2i.sh": [
        f"--pretrained_model_name_or_path={PIXART}", "--train_data_dir=datasets/diffusers_images/",
        "--train_data_format=diffusers", "--caption_column=text",
        "--config_path", "config/easyanimate_image_normal_v1.yaml",
        "--sample_size=512", "--train_batch_size=2", "--gradient_accumulation_steps=1", "--dataloader_num_workers=8",
        "--num_train_epochs=50", "--checkpointing_steps=500",
        f"--validation_prompts={GIRL}", "--validation_steps=100", "--learning_rate=1e-05",
        "--lr_scheduler=constant_with_warmup", "--lr_warmup_steps=50",
        "--seed=42", "--max_grad_norm=1", "--output_dir=output_dir_t2i", "--gradient_checkpointing",
        "--mixed_precision=bf16", "--use_ema", "--trainable_modules", "."],
    "train_lora.sh": [
        f"--pretrained_model_name_or_path={PIXART}", "--train_data_dir=datasets/diffusers_images/",
        "--train_data_format=diffusers", "--caption_column=text",
        "--config_path", "config/easyanimate_image_normal_v1.yaml",
        "--sample_size=512", "--train_text_encoder", "--train_batch_size=2", "--dataloader_num_workers=8",
        "--max_train_steps=2500", "--checkpointing_steps=500",
        f"--validation_prompts={GIRL}", "--validation_steps=100", "--learning_rate=1e-04", "--seed=42",
        "--output_dir=output_dir_lora", "--gradient_checkpointing", "--mixed_precision=bf16"],
}
ENTRY_POINTS = {"train_t2v.sh": "train.py", "train_t2i.sh": "train.py", "train_lora.sh": "train_lora.py"}
RECORDER = '#!/bin/sh\nfor argument in "$@"; do printf "%s\\0" "$argument"; done > "$LAUNCH_LOG"\n'


def recorder(folder: Path) -> Path:
    """A stand-in for ``accelerate``: writes its arguments, NUL-separated, to $LAUNCH_LOG."""
    path = folder / "accelerate"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(RECORDER)
    path.chmod(0o755)
    return path


def launch(script: Path, log: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("MODEL_NAME", "DATASET_NAME", "DATASET_META_NAME", "train_data_format",
                                "MIXED_PRECISION", "ACCELERATE")}
    environment.update(LAUNCH_LOG=str(log), **env)
    return subprocess.run(["sh", str(script)], cwd=cwd, env=environment, capture_output=True, text=True, timeout=60)


def recorded(log: Path) -> tuple[list[str], str, list[str]]:
    """(launcher options, entry point, the entry point's arguments) of a recorded ``accelerate launch``."""
    words = log.read_text().split("\0")[:-1]
    assert words[0] == "launch", words
    entry = next(i for i, word in enumerate(words) if word.endswith(".py"))
    return words[1:entry], words[entry], words[entry + 1:]


@pytest.mark.parametrize("name", sorted(OLD_FLAGS))
def test_each_script_resolves_to_the_settings_it_passed_as_flags(name, tmp_path, monkeypatch):
    log = tmp_path / "launch.args"
    done = launch(ROOT / "scripts" / name, log, cwd=tmp_path, ACCELERATE=str(recorder(tmp_path / "bin")))
    assert done.returncode == 0, done.stderr
    launcher, entry, arguments = recorded(log)
    assert launcher == ["--mixed_precision=bf16"]  # once, to the launcher; the trainer follows it
    assert entry == ENTRY_POINTS[name]
    lora = entry == "train_lora.py"
    monkeypatch.chdir(ROOT)  # the script runs from the repository root, where its relative paths point
    new = parse_config(arguments, name, lora=lora)
    old = parse_config(OLD_FLAGS[name], name, lora=lora)
    # Deliberate differences: mixed precision now comes from the launcher (--mixed_precision=bf16 above), and the
    # t2v recipe names no model yaml so that a model folder's own yaml is used; the released PixArt folder has
    # none, which gives the v1 yaml the script passed before.
    expected = dataclasses.replace(old, mixed_precision=None)
    if name != "train_t2v.sh":  # the format's own caption column (text for diffusers) instead of repeating it
        assert old.caption_column == "text" and new.caption_column is None
        expected = dataclasses.replace(expected, caption_column=None)
    if name == "train_t2v.sh":
        assert model_yaml(new).path.resolve() == (ROOT / old.config_path).resolve()
        expected = dataclasses.replace(expected, config_path=None)
    assert new == expected


def test_the_video_recipe_on_the_demo_model_uses_the_demo_models_own_yaml(tmp_path, monkeypatch):
    """The shipped demo model has 4 motion-module heads and a 256-frame table; the v1 yaml 8 and 4096, which
    trained a motion module the demo model could not load."""
    log = tmp_path / "launch.args"
    done = launch(ROOT / "scripts" / "train_t2v.sh", log, cwd=tmp_path, ACCELERATE=str(recorder(tmp_path / "bin")),
                  MODEL_NAME="models/Diffusion_Transformer/EasyAnimate-Shapes-Demo")
    assert done.returncode == 0, done.stderr
    monkeypatch.chdir(ROOT)
    yaml = model_yaml(parse_config(recorded(log)[2], "t2v"))
    assert yaml.source == "the model folder's own"
    mm = yaml.config.transformer_additional_kwargs.motion_module_kwargs
    assert (mm.num_attention_heads, mm.temporal_position_encoding_max_len) == (4, 256)


def test_variables_and_flags_reach_the_trainer(tmp_path, monkeypatch):
    log = tmp_path / "launch.args"
    done = launch(ROOT / "scripts" / "train_t2v.sh", log, cwd=tmp_path, ACCELERATE=str(recorder(tmp_path / "bin")),
                  DATASET_NAME="datasets/webvid/videos/", DATASET_META_NAME="datasets/webvid/my clips.csv",
                  train_data_format="webvid", MIXED_PRECISION="fp16")
    assert done.returncode == 0, done.stderr
    launcher, _, arguments = recorded(log)
    arguments += ["--max_train_steps", "1000"]
    monkeypatch.chdir(ROOT)
    config = parse_config(arguments, "t2v")
    assert launcher == ["--mixed_precision=fp16"]
    assert (config.train_data_dir, config.train_data_meta, config.train_data_format) == (
        "datasets/webvid/videos/", "datasets/webvid/my clips.csv", "webvid")
    assert config.max_train_steps == 1000


def test_the_scripts_use_the_repository_venv_or_say_how_to_get_one(tmp_path):
    """Without an activated environment: .venv/bin/accelerate when the checkout has one, else one line saying what
    to do (a copy of the script in a folder laid out like the repository, and a PATH without accelerate)."""
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "scripts", checkout / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    recorder(checkout / ".venv" / "bin")
    log = tmp_path / "launch.args"
    path = "/usr/bin:/bin"
    assert shutil.which("accelerate", path=path) is None
    done = launch(checkout / "scripts" / "train_lora.sh", log, cwd=tmp_path, PATH=path)
    assert done.returncode == 0, done.stderr
    assert recorded(log)[1] == "train_lora.py"

    shutil.rmtree(checkout / ".venv")
    done = launch(checkout / "scripts" / "train_lora.sh", tmp_path / "none.args", cwd=tmp_path, PATH=path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: accelerate not found: run 'sh scripts/setup.sh' (it makes .venv) or activate your environment"]
