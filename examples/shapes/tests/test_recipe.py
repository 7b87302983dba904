"""The shapes recipe (examples/shapes/train_shapes.sh) at reduced size: every stage lowers its loss, and a second
run from the same seed gives bit-identical weights.

About two minutes on 2 cores.

The stages run exactly as the script runs them (the same scripts, yamls and trainer), on a smaller
dataset, with smaller batches and a few hundred steps. "Lowers the loss" is measured where training
noise cannot fake it: the VAE's reconstruction error, and for the diffusion stages the loss on a fixed
batch with fixed noise and timesteps, before against after the stage.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from easyanimate.generation import ModelSelection, build_transformer
from easyanimate.lora import LoraMerger
from easyanimate.text import encode_text
from easyanimate.training.config import parse_config
from easyanimate.training.diffusion import ImprovedDDPM
from easyanimate.training.trainer import train
from examples.shapes import CONFIGS, build, make_dataset, vae
from examples.shapes.world import WORLDS, load_world


@functools.lru_cache
def fixed_batch(base: Path, metadata: Path, frames: int, clips: int = 8, low: int = 0):
    """Latents and text of the first ``clips`` clips of ``metadata``, and 4 draws of (timesteps, noise),
    all fixed by seed; encoded once and shared by the before/after losses of a stage."""
    from diffusers import AutoencoderKL
    from transformers import AutoTokenizer, T5EncoderModel

    from easyanimate.data import load_entries
    from easyanimate.video_io import read_video_frames

    vae = AutoencoderKL.from_pretrained(base / "vae").eval()
    tokenizer = AutoTokenizer.from_pretrained(base / "tokenizer")
    text_encoder = T5EncoderModel.from_pretrained(base / "text_encoder").eval()
    entries = load_entries("normal", str(metadata))[:clips]
    pixels = torch.stack([torch.from_numpy(read_video_frames(e.path)[:frames]) for e in entries])  # B F H W C
    pixels = pixels.permute(0, 1, 4, 2, 3).flatten(0, 1).float() / 127.5 - 1  # B*F C H W
    generator = torch.Generator().manual_seed(0)
    diffusion = ImprovedDDPM(num_timesteps=1000)
    with torch.no_grad():  # the posterior mean (not a sample, as training draws): the batch is fixed
        latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
        latents = latents.unflatten(0, (len(entries), frames)).transpose(1, 2)
        states, mask = encode_text(tokenizer, text_encoder, [e.text for e in entries], 120, torch.device("cpu"))
    draws = [(diffusion.sample_timesteps(len(entries), generator, low=low),
              torch.randn(latents.shape, generator=generator))
             for _ in range(4)]
    return latents, states, mask, draws


def fixed_batch_loss(base: Path, config_yaml: Path, metadata: Path, frames: int, transformer_path: Path | None = None,
                     motion_module: Path | None = None, lora: Path | None = None, low: int = 0) -> float:
    """Improved-DDPM loss of the given weights on :func:`fixed_batch` (timesteps from ``low`` up)."""
    selection = ModelSelection(model=base, config=config_yaml, motion_module=motion_module,
                               transformer_path=transformer_path)
    transformer = build_transformer(selection).eval()
    if lora is not None:
        LoraMerger(transformer).merge(lora, multiplier=1.0, transformer_only=True)
    latents, states, mask, draws = fixed_batch(base, metadata, frames, low=low)
    diffusion = ImprovedDDPM(num_timesteps=1000)
    losses = []
    with torch.no_grad():
        for t, noise in draws:
            noisy = diffusion.q_sample(latents, t, noise)
            output = transformer(noisy, states, mask, t, return_dict=False)[0]
            losses.append(diffusion.training_losses(output.float(), latents, noisy, t, noise)["loss"].mean().item())
    return float(np.mean(losses))


def run_reduced_recipe(root: Path) -> tuple[Path, Path]:
    """Run every stage of examples/shapes/train_shapes.sh at reduced size under ``root``; returns the
    dataset folder and the folder of the stages' outputs."""
    data, out = root / "data", root / "out"
    assert make_dataset.main(["--output-dir", str(data), "--clips-per-combination", "1",
                              "--style-clips-per-combination", "1", "--seed", "3"]) == 0
    assert vae.main(["--train_data_meta", str(data / "train.json"), str(data / "style.json"), "--output_dir",
                     str(out / "vae"), "--max_train_steps", "150", "--train_batch_size", "8", "--seed", "3"]) == 0
    assert build.main(["init", "--vae", str(out / "vae"), "--output", str(out / "base"), "--seed", "3"]) == 0
    common = ["--pretrained_model_name_or_path", str(out / "base"), "--train_data_dir", str(data), "--seed", "3",
              "--checkpointing_steps", "100000"]
    stages = {
        "t2i": (train, CONFIGS / "t2i.yaml", False, ["--train_data_meta", str(data / "train.json"), "--max_train_steps",
                                                      "200", "--train_batch_size", "8"]),
        "t2v": (train, CONFIGS / "t2v.yaml", False,
                ["--train_data_meta", str(data / "train.json"), "--transformer_path",
                                                      str(out / "t2i" / "pixart_transformer.safetensors"),
                                                      "--max_train_steps", "150", "--train_batch_size", "2",
                                                      "--sample_n_frames", "8"]),
        "lora": (train, CONFIGS / "lora.yaml", True,
                 ["--train_data_meta", str(data / "style.json"), "--transformer_path",
                                                       str(out / "t2i" / "pixart_transformer.safetensors"),
                                                       "--motion_module_path",
                                                       str(out / "t2v" / "motion_module.safetensors"),
                                                       "--max_train_steps", "150", "--train_batch_size", "2",
                                                       "--sample_n_frames", "8"]),
    }
    for name, (run, yaml, lora, flags) in stages.items():
        config = parse_config(["--train_config", str(yaml), *common, "--output_dir", str(out / name), *flags],
                              "shapes stage", lora=lora)
        run(config)
    return data, out


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    return run_reduced_recipe(tmp_path_factory.mktemp("shapes_recipe"))


def safetensors_content(path: Path) -> tuple[dict, dict[str, bytes]]:
    """The metadata and every tensor's raw bytes of a safetensors file. Not the file's own bytes: the
    safetensors writer orders the metadata of its header differently from one process to the next."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as file:
        names = file.keys()  # a safe_open handle, not a dict
        tensors = {key: file.get_tensor(key).contiguous().flatten().view(torch.uint8).numpy().tobytes()
                   for key in names}
        return file.metadata(), tensors


@pytest.mark.slow
def test_the_recipe_is_reproducible_from_its_seed(recipe, tmp_path):
    """A second run with the same seed writes the same dataset frames and bit-identical weights in every
    stage (the mp4s are lossless, so libx264's run-to-run choices cannot reach the training data)."""
    from safetensors.torch import load_file

    from easyanimate.video_io import read_video_frames

    first_data, first = recipe
    second_data, second = run_reduced_recipe(tmp_path)
    videos = sorted(p.relative_to(first_data) for p in first_data.glob("videos/*.mp4"))
    assert videos and videos == sorted(p.relative_to(second_data) for p in second_data.glob("videos/*.mp4"))
    for video in videos:
        assert np.array_equal(read_video_frames(first_data / video), read_video_frames(second_data / video)), video
    weights = sorted(p.relative_to(first) for p in first.rglob("*.safetensors"))
    stages = {path.parts[0] for path in weights}
    assert stages == {"vae", "base", "t2i", "t2v", "lora"}, stages
    for path in weights:
        assert safetensors_content(first / path) == safetensors_content(second / path), path
    # and the runs did train: the image stage moved the weights away from the base's
    trained, untrained = load_file(first / "t2i" / "pixart_transformer.safetensors"), load_file(
        next((first / "base" / "transformer").glob("*.safetensors")))
    assert any(not torch.equal(trained[k], untrained[k]) for k in untrained if k in trained)


@pytest.mark.slow
def test_vae_stage_lowers_reconstruction_error(recipe):
    _, out = recipe
    losses = json.loads((out / "vae" / "train_vae.json").read_text())["losses"]
    assert len(losses) == 150
    print(f"vae reconstruction {np.mean(losses[:20]):.4f} -> {np.mean(losses[-20:]):.4f}")
    assert np.mean(losses[-20:]) < 0.3 * np.mean(losses[:20])


@pytest.mark.slow
def test_image_stage_lowers_the_loss_on_a_fixed_batch(recipe):
    data, out = recipe
    video_yaml = CONFIGS / "easyanimate_shapes_video.yaml"
    before = fixed_batch_loss(out / "base", video_yaml, data / "train.json", frames=1)
    after = fixed_batch_loss(out / "base", video_yaml, data / "train.json", frames=1,
                             transformer_path=out / "t2i" / "pixart_transformer.safetensors")
    print(f"t2i fixed-batch loss {before:.4f} -> {after:.4f}")
    assert after < 0.5 * before, (before, after)


@pytest.mark.slow
def test_motion_module_stage_lowers_the_loss_on_a_fixed_batch(recipe):
    """On the timesteps the stage trains on (configs/t2v.yaml's min_train_timestep and up)."""
    data, out = recipe
    video_yaml = CONFIGS / "easyanimate_shapes_video.yaml"
    low = parse_config(["--train_config", str(CONFIGS / "t2v.yaml")], "t2v").min_train_timestep
    before = fixed_batch_loss(out / "base", video_yaml, data / "train.json", frames=8,
                              transformer_path=out / "t2i" / "pixart_transformer.safetensors", low=low)
    after = fixed_batch_loss(out / "base", video_yaml, data / "train.json", frames=8,
                             transformer_path=out / "t2i" / "pixart_transformer.safetensors",
                             motion_module=out / "t2v" / "motion_module.safetensors", low=low)
    print(f"t2v fixed-batch loss {before:.4f} -> {after:.4f}")
    assert after < 0.95 * before, (before, after)


@pytest.mark.slow
def test_lora_stage_lowers_the_loss_on_a_fixed_batch_of_styled_clips(recipe):
    data, out = recipe
    video_yaml = CONFIGS / "easyanimate_shapes_video.yaml"
    image, motion = out / "t2i" / "pixart_transformer.safetensors", out / "t2v" / "motion_module.safetensors"
    before = fixed_batch_loss(out / "base", video_yaml, data / "style.json", frames=8, transformer_path=image,
                              motion_module=motion)
    after = fixed_batch_loss(out / "base", video_yaml, data / "style.json", frames=8, transformer_path=image,
                             motion_module=motion, lora=out / "lora" / "lora.safetensors")
    print(f"lora fixed-batch loss {before:.4f} -> {after:.4f}")
    assert after < 0.9 * before, (before, after)


@pytest.mark.slow
def test_release_writes_a_model_predict_loads_and_a_mismatched_file_changes_nothing(recipe, tmp_path):
    """The last stage: the released layout is what select_model / load_pipeline pick up with its own
    defaults; a wrong checkpoint or LoRA is refused with the file named, and the previous release stays."""
    from safetensors.torch import load_file

    from easyanimate.generation import (
        DEMO_LORA,
        DEMO_MODEL,
        DEMO_MOTION_MODULE,
        GenerationRequest,
        generate,
        load_pipeline,
        select_model,
    )
    from easyanimate.models import WeightLoadError

    _, out = recipe
    models = tmp_path / "models"
    image, motion, lora = (out / "t2i" / "pixart_transformer.safetensors", out / "t2v" / "motion_module.safetensors",
                           out / "lora" / "lora.safetensors")
    def release(transformer=image, lora=lora):
        return build.main(["release", "--base", str(out / "base"), "--models_dir", str(models), "--transformer",
                           str(transformer), "--motion_module", str(motion), "--lora", str(lora)])
    assert release() == 0

    selection = select_model(models)
    assert selection.model == models / DEMO_MODEL and selection.defaults.frames == 16
    shipped = load_file(models / DEMO_MOTION_MODULE)
    assert shipped and all(torch.equal(shipped[k], v) for k, v in load_file(motion).items() if k in shipped)
    assert (models / DEMO_LORA).read_bytes() == lora.read_bytes()
    configs = "".join(p.read_text() for p in (models / DEMO_MODEL).rglob("*.json"))
    assert "_name_or_path" not in configs and str(out) not in configs  # nothing of the build folder
    pipeline = load_pipeline(selection, device="cpu")
    pipeline.set_progress_bar_config(disable=True)
    video = generate(pipeline, GenerationRequest(prompt="a red circle moving left", steps=2, height=64, width=64,
                                                 frames=4, guidance_scale=2.5), seed=0)
    assert video.shape == (3, 4, 64, 64) and torch.isfinite(video).all()

    before = {p: p.read_bytes() for p in models.rglob("*") if p.is_file()}
    with pytest.raises(WeightLoadError, match="motion_module.safetensors does not fit"):
        release(transformer=motion)  # the motion module given as the image model
    with pytest.raises(ValueError, match="is not a LoRA file"):
        release(lora=motion)  # found only when the staged release is loaded: after everything was written
    assert {p: p.read_bytes() for p in models.rglob("*") if p.is_file()} == before
    released_roots = {Path(name).parts[0] for name in (DEMO_MODEL, DEMO_MOTION_MODULE, DEMO_LORA)}
    assert {p.name for p in models.iterdir()} == released_roots  # no staging folder left behind


def test_a_release_swap_that_fails_halfway_puts_the_previous_release_back(tmp_path, monkeypatch):
    """If moving the third file into place fails, the two already moved are taken back out and the
    previous files return (no recipe needed: plain files stand in for the model)."""
    models, staging = tmp_path / "models", tmp_path / "staging"
    names = ("Diffusion_Transformer/Model", "Motion_Module/mm.safetensors", "Personalized_Model/lora.safetensors")
    for root, text in ((models, "old"), (staging, "new")):
        (root / names[0]).mkdir(parents=True)
        (root / names[0] / "weights").write_text(text)
        for name in names[1:]:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
    rename = Path.rename

    def failing_rename(self, target):
        if self == staging / names[2]:  # the new LoRA's move into place
            raise OSError("disk gone")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="disk gone"):
        build.swap_in(staging, models, names)
    assert (models / names[0] / "weights").read_text() == "old"
    assert [(models / name).read_text() for name in names[1:]] == ["old", "old"]


@pytest.mark.slow
def test_the_long_variant_is_released_beside_the_demo_model_with_its_window(recipe, tmp_path):
    """``release --variant long`` writes the long-clip model under its own names, next to the demo model,
    which stays the default; its defaults generate 64 frames in 16-frame windows and name its own world."""
    from easyanimate.generation import select_model

    _, out = recipe
    models = tmp_path / "models"
    for variant in ("demo", "long"):
        assert build.main(
            ["release", "--base", str(out / "base"), "--models_dir", str(models), "--variant", variant,
             "--transformer", str(out / "t2i" / "pixart_transformer.safetensors"),
             "--motion_module", str(out / "t2v" / "motion_module.safetensors"),
             "--lora", str(out / "lora" / "lora.safetensors")]) == 0
    assert all((models / name).exists() for names in build.RELEASES.values() for name in names)
    assert select_model(models).model == models / build.RELEASES["demo"].model

    model, motion_module, _ = build.RELEASES["long"]
    long = select_model(models, models / model)
    d = long.defaults
    assert (d.frames, d.context_frames, d.context_overlap) == (64, 16, 4)
    assert long.motion_module == models / motion_module
    assert load_world(models / model / "shapes_world.yaml") == load_world(WORLDS["long"])
    assert load_world(models / model / "shapes_world.yaml").wrap


STAGES = {"data": "examples.shapes.make_dataset", "vae": "examples.shapes.vae", "base": "examples.shapes.build init",
          "t2i": "configs/t2i.yaml", "t2v": "configs/t2v.yaml", "lora": "configs/lora.yaml",
          "inpaint": "configs/inpaint.yaml", "release": "examples.shapes.build release"}
"""What identifies each stage's command line in the recipe script."""


@pytest.fixture
def recipe_script(tmp_path, repo_root):
    """Runs examples/shapes/train_shapes.sh with a stand-in PYTHON that only records its arguments:
    ``run(env, *args, cwd=repo_root)`` returns the finished process and each stage's command line."""
    log = tmp_path / "calls"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)

    def run(env: dict[str, str], *args: str, cwd: Path = repo_root):
        log.write_text("")
        done = subprocess.run(["sh", str(repo_root / "examples/shapes/train_shapes.sh"), *args], cwd=cwd,
                              env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake), **env}, capture_output=True,
                              text=True)
        lines = log.read_text().splitlines()
        calls = {name: [line for line in lines if marker in line] for name, marker in STAGES.items()}
        assert all(len(found) <= 1 for found in calls.values()), lines
        return done, {name: found[0] for name, found in calls.items() if found}

    return run


def test_the_recipe_script_passes_each_variant_its_world_and_t2v_length(recipe_script, tmp_path):
    """The long variant makes its data from world_long.yaml, trains t2v (only) for 8000 steps, trains the
    inpaint model from its t2i and t2v outputs on the same clips, and releases both under their own names; the
    demo variant keeps the t2i and t2v yamls' lengths and has no inpaint stage; an unknown variant stops before anything
    runs."""
    folders = {"OUT": str(tmp_path / "out"), "DATA": str(tmp_path / "data")}
    done, long = recipe_script({"VARIANT": "long", **folders}, "--report_to", "none")
    assert done.returncode == 0, done.stderr
    assert "--world examples/shapes/configs/world_long.yaml" in long["data"]
    assert "--max_train_steps 8000 --report_to none" in long["t2v"]
    assert "--max_train_steps" not in long["t2i"] + long["lora"]
    assert "--variant long --world examples/shapes/configs/world_long.yaml" in long["release"]
    assert f"--pretrained_model_name_or_path {tmp_path / 'out'}/base" in long["t2v"]
    out = tmp_path / "out"
    assert f"--train_data_meta {tmp_path / 'data'}/train.json" in long["inpaint"]
    assert f"--transformer_path {out}/t2i/pixart_transformer.safetensors" in long["inpaint"]
    assert f"--motion_module_path {out}/t2v/motion_module.safetensors" in long["inpaint"]
    assert "--max_train_steps" not in long["inpaint"]
    assert (f"--inpaint_transformer {out}/inpaint/pixart_transformer.safetensors --inpaint_motion_module "
            f"{out}/inpaint/motion_module.safetensors") in long["release"]

    done, demo = recipe_script({"VARIANT": "demo", **folders}, "--report_to", "none")
    assert done.returncode == 0, done.stderr
    assert "--world examples/shapes/configs/world.yaml" in demo["data"]
    assert "--max_train_steps" not in demo["t2i"] + demo["t2v"]
    assert "--variant demo" in demo["release"]
    assert "inpaint" not in demo and "--inpaint" not in demo["release"]

    refused, calls = recipe_script({"VARIANT": "longer"})
    assert refused.returncode == 2 and "VARIANT is demo or long" in refused.stderr and not calls


def test_the_recipe_releases_into_its_own_output_folder_unless_asked(recipe_script, tmp_path, repo_root):
    """Without MODELS the release goes to OUT/models and the models folder is only named in the printed
    command that ships it; MODELS=models is the explicit request. The script runs from the root only."""
    out = tmp_path / "out"
    done, calls = recipe_script({"OUT": str(out), "DATA": str(tmp_path / "data")})
    assert done.returncode == 0, done.stderr
    assert calls["release"].endswith(f"--models_dir {out}/models")
    assert not any(" models" in line or "--models_dir models" in line for line in calls.values())
    shipping = done.stdout.splitlines()[-1]
    assert "-m examples.shapes.build release --base" in shipping and shipping.endswith("--models_dir models")
    assert f"--lora {out}/lora/lora.safetensors --variant demo" in shipping

    done, calls = recipe_script({"OUT": str(out), "DATA": str(tmp_path / "data"), "MODELS": "models"})
    assert done.returncode == 0, done.stderr
    assert calls["release"].endswith("--models_dir models") and "ship it" not in done.stdout

    refused, calls = recipe_script({"OUT": str(out)}, cwd=tmp_path)
    assert refused.returncode == 2 and "repository root" in refused.stderr and not calls


@pytest.mark.parametrize("variant", ["demo", "long"])
def test_a_dry_run_shortens_every_stage_and_keeps_to_its_own_folders(recipe_script, variant):
    """DRY_RUN=1: one clip per combination, 20 steps for the VAE and each training stage (the long
    variant's 8000 t2v steps too), outputs in ..._dry_run folders, and a release into models/ refused."""
    suffix = "_long" if variant == "long" else ""
    done, calls = recipe_script({"DRY_RUN": "1", "VARIANT": variant})
    assert done.returncode == 0, done.stderr
    assert set(calls) == set(STAGES) - ({"inpaint"} if variant == "demo" else set())
    assert "--clips-per-combination 1 --style-clips-per-combination 1" in calls["data"]
    assert f"--output-dir datasets/shapes{suffix}_dry_run" in calls["data"]
    for stage in {"vae", "t2i", "t2v", "lora", "inpaint"} & set(calls):
        assert calls[stage].endswith("--max_train_steps 20"), calls[stage]
    assert "8000" not in calls["t2v"]
    assert calls["release"].endswith(f"--models_dir output_dir/shapes{suffix}_dry_run/models")
    assert "nothing to ship" in done.stdout and "--models_dir models" not in done.stdout

    refused, calls = recipe_script({"DRY_RUN": "1", "VARIANT": variant, "MODELS": "models"})
    assert refused.returncode == 2 and "leave MODELS unset" in refused.stderr and not calls
    refused, calls = recipe_script({"DRY_RUN": "yes"})
    assert refused.returncode == 2 and "DRY_RUN is 0 or 1" in refused.stderr and not calls
