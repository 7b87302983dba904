"""Inpaint training: v1's four mask types, the masked clip's latents (from the files and from the latent cache), a
reduced inpaint stage that lowers its loss and resumes exactly, motion-module-only / full / LoRA runs and their
exports, the sanity-check clips, and the settings that are refused."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from easyanimate.config import ConfigError
from easyanimate.inpaint import (
    MASK_TYPES,
    MaskSettings,
    draw_mask,
    expand_latent_mask,
    latent_mask,
    mask_pixels,
    random_masks,
)
from easyanimate.models import Transformer3DModel
from easyanimate.training.config import config_from_sources
from easyanimate.training.inpaint import inpaint_latents_for_batch, masked_frame_latent
from easyanimate.video_io import save_image

from .helpers import ROOT, fixed_batch_loss_drop, run, settings

INPAINT = dict(train_mode="inpaint", train_data_meta=None)


def inpaint_run(tiny_models, dataset, out, **overrides):  # noqa: F811 (the fixture)
    return run(tiny_models, dataset, out, **{**INPAINT, "train_data_meta": str(dataset / "videos_only.json"),
                                             **overrides})


# ------------------------------------------------------------------------------------------------
# Masks


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_start_mask_keeps_the_first_frames_and_generates_the_rest():
    mask = draw_mask("start", 6, 16, 16, generator())
    assert mask.shape == (6, 1, 16, 16) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert not mask[0].any() and mask[1:].all()  # one known frame: image-to-video
    known = {int((draw_mask("start", 6, 4, 4, generator(s), max_start_frames=3).flatten(1).sum(1) == 0).sum())
             for s in range(40)}
    assert known == {1, 2, 3}  # extension: 1..3 known frames, each drawn


def test_start_and_end_mask_keeps_the_first_and_last_frame():
    mask = draw_mask("start_and_end", 5, 8, 8, generator())
    assert not mask[0].any() and not mask[-1].any() and mask[1:-1].all()


def test_box_mask_is_one_box_in_every_frame_with_sides_from_a_quarter_to_three_quarters():
    for seed in range(30):
        mask = draw_mask("box", 4, 32, 32, generator(seed))
        assert all(torch.equal(mask[0], frame) for frame in mask)
        rows, cols = mask[0, 0].any(1).nonzero(), mask[0, 0].any(0).nonzero()
        height, width = len(rows), len(cols)
        assert mask[0, 0].sum() == height * width  # a filled rectangle
        assert 1 <= height < 24 and 1 <= width < 24  # clipped at the frame's edge, never larger than 3/4
        assert rows.max() - rows.min() + 1 == height and cols.max() - cols.min() + 1 == width


def test_box_over_frames_mask_is_one_box_over_a_consecutive_range_of_frames():
    ranges = set()
    for seed in range(30):
        mask = draw_mask("box_over_frames", 8, 16, 16, generator(seed))
        masked = mask.flatten(1).any(1).nonzero().flatten().tolist()
        assert masked == list(range(masked[0], masked[-1] + 1))
        assert all(torch.equal(mask[masked[0]], mask[f]) for f in masked)
        ranges.add((masked[0], masked[-1]))
    assert len(ranges) > 5


def test_random_masks_follow_the_weights():
    masks, kinds = random_masks(64, 4, 8, 8, MaskSettings(start=0, start_and_end=0, box=1, box_over_frames=0),
                                generator())
    assert masks.shape == (64, 4, 1, 8, 8) and set(kinds) == {"box"}
    _, kinds = random_masks(400, 4, 8, 8, MaskSettings(), generator())
    v1_types = MASK_TYPES[:4]  # v1's mix by default: a quarter each, never "all"
    assert set(kinds) == set(v1_types) and all(60 < kinds.count(k) < 140 for k in v1_types)
    masks, kinds = random_masks(400, 4, 8, 8, MaskSettings(all=1 / 3), generator())
    chosen = torch.tensor([k == "all" for k in kinds])
    assert 80 < chosen.sum() < 180  # a quarter of the weight
    assert (masks[chosen] == 1).all() and not (masks[~chosen] == 1).all(dim=(1, 2, 3, 4)).any()
    with pytest.raises(ValueError, match="positive sum"):
        MaskSettings(start=0, start_and_end=0, box=0, box_over_frames=0)


def test_masked_pixels_are_minus_one_and_a_latent_pixel_is_generated_if_any_of_its_pixels_is():
    pixels = torch.rand(1, 2, 3, 16, 16) * 2 - 1
    mask = torch.zeros(1, 2, 1, 16, 16)
    mask[0, 1, 0, 3, 9] = 1  # one pixel in the latent pixel (0, 1) of frame 1
    masked = mask_pixels(pixels, mask)
    assert masked[0, 1, :, 3, 9].eq(-1).all() and torch.equal(masked[0, 0], pixels[0, 0])
    small = latent_mask(mask, 8)
    assert small.shape == (1, 1, 2, 2, 2) and small.sum() == 1 and small[0, 0, 1, 0, 1] == 1
    assert expand_latent_mask(small, 8).shape == (1, 2, 1, 16, 16)


def test_cached_latents_are_masked_in_latent_space(tiny_models):
    """With the latent cache, masked frames take the latent of an all -1 frame and known frames keep theirs."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_models["model"] / "vae")
    config = config_from_sources(None, {"pretrained_model_name_or_path": "x", "train_mode": "inpaint",
                                        "inpaint_mask_start_and_end": 0, "inpaint_mask_box": 0,
                                        "inpaint_mask_box_over_frames": 0})
    latents = torch.randn(2, 4, 5, 8, 8)
    conditioning = inpaint_latents_for_batch({"latents": latents}, latents, vae, config, generator())
    assert conditioning.shape == (2, 5, 5, 8, 8)
    mask, masked = conditioning[:, :1], conditioning[:, 1:]
    assert not mask[:, :, 0].any() and mask[:, :, 1:].all()
    assert torch.equal(masked[:, :, 0], latents[:, :, 0])
    fill = masked_frame_latent(vae, 64, 64)
    assert torch.allclose(masked[:, :, 3], fill.expand(2, -1, -1, -1))


def test_the_all_mask_from_the_config_hides_every_frame(tiny_models):
    """``inpaint_mask_all`` alone: text-to-video examples, every frame generated and masked."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_models["model"] / "vae")
    config = config_from_sources(None, {"pretrained_model_name_or_path": "x", "train_mode": "inpaint",
                                        "inpaint_mask_start": 0, "inpaint_mask_start_and_end": 0,
                                        "inpaint_mask_box": 0, "inpaint_mask_box_over_frames": 0,
                                        "inpaint_mask_all": 1})
    latents = torch.randn(2, 4, 5, 8, 8)
    conditioning = inpaint_latents_for_batch({"latents": latents}, latents, vae, config, generator())
    assert conditioning[:, :1].all()
    fill = masked_frame_latent(vae, 64, 64)
    assert torch.allclose(conditioning[:, 1:], fill[None, :, None].expand(2, -1, 5, -1, -1))


def test_cached_latents_are_masked_without_a_vae_pass_per_step(tiny_models, monkeypatch):
    """The masked frame's latent is encoded once per VAE and size, not at every step of a latent-cache run."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_models["model"] / "vae")
    encodes = []
    encode = vae.encode
    monkeypatch.setattr(vae, "encode", lambda *a, **k: encodes.append(1) or encode(*a, **k))
    config = config_from_sources(None, {"pretrained_model_name_or_path": "x", "train_mode": "inpaint"})
    latents = torch.randn(2, 4, 5, 8, 8)
    first = inpaint_latents_for_batch({"latents": latents}, latents, vae, config, generator())
    for _ in range(3):
        inpaint_latents_for_batch({"latents": latents}, latents, vae, config, generator())
    assert len(encodes) == 1
    assert torch.equal(first, inpaint_latents_for_batch({"latents": latents}, latents, vae, config, generator()))


# ------------------------------------------------------------------------------------------------
# Training


def test_a_reduced_inpaint_stage_lowers_its_loss_trains_the_new_channels_and_writes_sanity_clips(
        tiny_models, dataset, tmp_path):  # noqa: F811
    result = inpaint_run(tiny_models, dataset, tmp_path, max_train_steps=40, precompute=False)
    first, last = fixed_batch_loss_drop(result)
    assert last < first, (first, last)
    transformer = Transformer3DModel.from_pretrained(result.exports["transformer"])
    assert transformer.is_inpaint and transformer.pos_embed.proj.weight[:, 4:].abs().sum() > 0
    image_model = load_file(str(result.exports["pixart_transformer"]))
    assert image_model["pos_embed.proj.weight"].shape[1] == 9  # the image model with the patch embedding trained
    base = load_file(str(tiny_models["model"] / "transformer" / "diffusion_pytorch_model.safetensors"))
    changed = {k for k in base if not torch.equal(image_model[k], base[k]) and not k.startswith("pos_embed.proj.")}
    assert not changed, sorted(changed)[:3]  # motion-module-only: the rest of the image model is frozen
    sanity = sorted(p.name for p in (tmp_path / "sanity_check").glob("*.mp4"))
    assert len(sanity) == 4 and all(any(f"_{kind}_" in name for kind in MASK_TYPES) for name in sanity)


def test_an_inpaint_run_resumes_exactly(tiny_models, dataset, tmp_path):  # noqa: F811
    common = dict(precompute=False, checkpointing_steps=2)
    inpaint_run(tiny_models, dataset, tmp_path / "straight", max_train_steps=4, **common)
    inpaint_run(tiny_models, dataset, tmp_path / "resumed", max_train_steps=2, **common)
    inpaint_run(tiny_models, dataset, tmp_path / "resumed", max_train_steps=4, resume_from_checkpoint="latest",
                **common)
    straight = load_file(str(tmp_path / "straight" / "transformer" / "diffusion_pytorch_model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)


def test_full_training_from_the_latent_cache_and_a_lora_on_the_inpaint_model(
        tiny_models, dataset, tmp_path):  # noqa: F811
    full = inpaint_run(tiny_models, dataset, tmp_path / "full", max_train_steps=3, trainable_modules=["."])
    assert set(full.exports) == {"transformer", "motion_module", "motion_module_folder", "pixart_transformer"}
    checkpoint = full.exports["transformer"] / "diffusion_pytorch_model.safetensors"
    lora = inpaint_run(tiny_models, dataset, tmp_path / "lora", max_train_steps=2, transformer_path=str(checkpoint),
                       lora={"rank": 2, "network_alpha": 2.0})
    assert "lora" in lora.exports and load_file(str(lora.exports["lora"]))
    with pytest.raises(ConfigError, match="a LoRA cannot learn the mask and masked-video input channels"):
        inpaint_run(tiny_models, dataset, tmp_path / "lora_t2v", max_train_steps=2,
                    lora={"rank": 2, "network_alpha": 2.0})


def test_inpaint_validation_renders_image_to_video_samples(tiny_models, dataset, tmp_path):  # noqa: F811
    image = tmp_path / "start.png"
    save_image(torch.rand(3, 64, 64), image)
    inpaint_run(tiny_models, dataset, tmp_path / "run", max_train_steps=1, validation_prompts=["a red square"],
                validation_images=[str(image)], validation_steps=1, validation_inference_steps=2)
    assert (tmp_path / "run" / "sample" / "sample-1-0.mp4").is_file()


@pytest.mark.parametrize("overrides,match", [
    ({"train_mode": "outpaint"}, "train_mode must be one of normal, inpaint"),
    ({"inpaint_mask_start": 0, "inpaint_mask_start_and_end": 0, "inpaint_mask_box": 0,
      "inpaint_mask_box_over_frames": 0}, "weights are all 0"),
    ({"inpaint_mask_box": -1.0}, "inpaint_mask_box must be a finite number >= 0"),
    ({"inpaint_mask_all": -0.5}, "inpaint_mask_all must be a finite number >= 0"),
    ({"inpaint_max_start_frames": 4}, "inpaint_max_start_frames must be below sample_n_frames \\(4\\)"),
    ({"validation_prompts": ["a red square"]}, "one validation_images entry per validation prompt"),
    ({"validation_images": ["missing.png"]}, "validation_images not found: missing.png"),
])
def test_bad_inpaint_settings_are_refused_naming_the_option(
        tiny_models, dataset, tmp_path, overrides, match):  # noqa: F811
    with pytest.raises(ConfigError, match=match):
        config_from_sources(None, settings(tiny_models, dataset, tmp_path, **{**INPAINT, **overrides}))


def test_an_image_model_yaml_is_refused_in_inpaint_mode(tiny_models, dataset, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="inpaint trains a video model"):
        inpaint_run(tiny_models, dataset, tmp_path, trainable_modules=["."], max_train_steps=1,
                    config_path=str(ROOT / "config" / "easyanimate_image_normal_v1.yaml"))


@pytest.mark.slow
def test_two_process_inpaint_training(tiny_models, dataset, tmp_path):  # noqa: F811
    out = tmp_path / "ddp"
    options = settings(tiny_models, dataset, out, max_train_steps=2, checkpointing_steps=2, train_batch_size=1,
                       precompute=False, **{**INPAINT, "train_data_meta": str(dataset / "videos_only.json")})
    flags = [f"--{k}" if v is True else f"--{k}={v}" for k, v in options.items() if v is not False]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "29533", str(ROOT / "train.py"), *flags]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert Transformer3DModel.from_pretrained(out / "transformer").is_inpaint
    assert len(list((out / "sanity_check").glob("*.mp4"))) == 4  # written once, by the main process


def test_names_matching_both_lists_train_at_the_full_rate():
    """``trainable_modules: [attn_temporal, pos_embed]`` with ``low_learning_rate: ["."]`` (the shapes inpaint stage):
    the new input channels and the motion modules at lr, the rest of the model at lr / 10."""
    from easyanimate.training.components import select_trainable

    from .helpers import EXTRAS, TINY

    model = Transformer3DModel(**{**TINY, "in_channels": 9}, **EXTRAS)
    fast, slow = select_trainable(model, ["attn_temporal", "pos_embed"], ["."], lr=1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    assert fast["lr"] == 1e-3 and slow["lr"] == 1e-4
    assert all("attn_temporal" in names[id(p)] or names[id(p)].startswith("pos_embed") for p in fast["params"])
    trained = {names[id(p)] for p in fast["params"] + slow["params"]}
    assert trained == {n for n in names.values() if "." in n}  # every name with a dot (v1's "." pattern)
    assert any(names[id(p)] == "pos_embed.proj.weight" for p in fast["params"])
