"""The recipe's inpaint stage at reduced size: it starts from the t2i and t2v stages' outputs with the new input
channels at zero, lowers the inpaint loss on a fixed batch of the long-clip world's clips, and is released beside the
long-clip model as the model predict_i2v.py and the UI's image-to-video tab use by default. (The reduced recipe is
the demo variant's; the long variant runs the same stages, t2v longer, on world_long.yaml.)

About a minute on 2 cores, after the reduced recipe of ``test_recipe.py`` (shared fixture).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from easyanimate.config import load_config
from easyanimate.generation import (
    DEMO_INPAINT_MODEL,
    GenerationRequest,
    KnownContent,
    generate,
    load_pipeline,
    select_model,
)
from easyanimate.models import Transformer3DModel
from easyanimate.training.config import parse_config
from easyanimate.training.diffusion import ImprovedDDPM
from easyanimate.training.inpaint import inpaint_latents_for_batch
from easyanimate.training.trainer import train
from easyanimate.video_io import save_image
from examples.shapes import CONFIGS, build, make_dataset
from examples.shapes.tests.test_recipe import fixed_batch, recipe  # noqa: F401 (the reduced recipe's fixture)
from examples.shapes.world import WORLDS, load_world

VIDEO_YAML = CONFIGS / "easyanimate_shapes_video.yaml"


@pytest.fixture(scope="module")
def inpaint_stage(recipe, tmp_path_factory):  # noqa: F811
    """The inpaint stage as train_shapes.sh runs it, reduced: clips of world_long.yaml (one per combination) and 150
    steps of batch 2 of 8 frames from the reduced recipe's t2i and t2v outputs."""
    _, out = recipe
    root = tmp_path_factory.mktemp("inpaint_stage")
    data = root / "data"
    assert make_dataset.main(["--output-dir", str(data), "--clips-per-combination", "1",
                              "--style-clips-per-combination", "0", "--seed", "3",
                              "--world", str(WORLDS["long"])]) == 0
    config = parse_config(["--train_config", str(CONFIGS / "inpaint.yaml"), "--pretrained_model_name_or_path",
                           str(out / "base"), "--train_data_dir", str(data), "--train_data_meta",
                           str(data / "train.json"), "--seed", "3", "--checkpointing_steps", "100000",
                           "--transformer_path", str(out / "t2i" / "pixart_transformer.safetensors"),
                           "--motion_module_path", str(out / "t2v" / "motion_module.safetensors"),
                           "--output_dir", str(root / "inpaint"), "--max_train_steps", "150", "--train_batch_size", "2",
                           "--sample_n_frames", "8"], "inpaint stage")
    train(config)
    return out, data, root / "inpaint", config


def inpaint_loss(transformer: Transformer3DModel, base, metadata, config) -> float:
    """The improved-DDPM loss on a fixed batch of 8-frame clips with fixed masks (the stage's mix), noise and steps."""
    from diffusers import AutoencoderKL

    latents, states, mask, draws = fixed_batch(base, metadata, 8)
    vae = AutoencoderKL.from_pretrained(base / "vae")
    conditioning = inpaint_latents_for_batch({"latents": latents}, latents, vae, config,
                                             torch.Generator().manual_seed(0))
    diffusion = ImprovedDDPM(num_timesteps=1000)
    losses = []
    with torch.no_grad():
        for t, noise in draws:
            noisy = diffusion.q_sample(latents, t, noise)
            output = transformer.eval()(noisy, states, mask, t, return_dict=False, inpaint_latents=conditioning)[0]
            losses.append(diffusion.training_losses(output.float(), latents, noisy, t, noise)["loss"].mean().item())
    return float(np.mean(losses))


@pytest.mark.slow
def test_the_inpaint_stage_starts_from_the_demo_weights_and_lowers_the_inpaint_loss(inpaint_stage):
    out, data, stage, config = inpaint_stage
    extras = load_config(VIDEO_YAML).transformer_additional_kwargs
    start = Transformer3DModel.from_pretrained_2d(out / "base", transformer_additional_kwargs=extras,
                                                  transformer_path=out / "t2i" / "pixart_transformer.safetensors",
                                                  motion_module=out / "t2v" / "motion_module.safetensors", inpaint=True)
    assert not start.pos_embed.proj.weight[:, 4:].any()  # the demo model, the new channels at zero
    trained = Transformer3DModel.from_pretrained(stage / "transformer")
    before = inpaint_loss(start, out / "base", data / "train.json", config)
    after = inpaint_loss(trained, out / "base", data / "train.json", config)
    print(f"inpaint fixed-batch loss {before:.4f} -> {after:.4f}")
    assert after < 0.9 * before, (before, after)
    assert len(list((stage / "sanity_check").glob("*.mp4"))) == 4


@pytest.mark.slow
def test_the_inpaint_model_is_released_beside_the_long_model_and_is_predict_i2v_s_default(inpaint_stage, tmp_path):
    out, _, stage, _ = inpaint_stage
    models = tmp_path / "models"
    assert build.main(["release", "--base", str(out / "base"), "--models_dir", str(models),
                       "--transformer", str(out / "t2i" / "pixart_transformer.safetensors"),
                       "--motion_module", str(out / "t2v" / "motion_module.safetensors"),
                       "--lora", str(out / "lora" / "lora.safetensors"), "--variant", "long",
                       "--inpaint_transformer", str(stage / "pixart_transformer.safetensors"),
                       "--inpaint_motion_module", str(stage / "motion_module.safetensors")]) == 0
    selection = select_model(models, inpaint=True)
    assert selection.model == models / DEMO_INPAINT_MODEL
    assert selection.motion_module == models / build.INPAINT_RELEASE.motion_module
    assert (models / build.RELEASES["long"].model).is_dir()
    assert load_world(selection.model / build.WORLD_FILE) == load_world(WORLDS["long"])  # the world it learned
    assert (selection.defaults.frames, selection.defaults.context_frames) == (16, None)  # 16 frames from an image
    assert selection.defaults.long_video == "extension"  # longer ones by extension: the card's measurements
    pipeline = load_pipeline(selection, device="cpu")
    pipeline.set_progress_bar_config(disable=True)
    image = tmp_path / "start.png"
    save_image(np.full((64, 64, 3), 200, np.uint8), image)
    video = generate(pipeline, GenerationRequest(prompt="a red circle moving left", steps=2, height=64, width=64,
                                                 frames=4), seed=0, known=KnownContent(image=image))
    assert video.shape == (3, 4, 64, 64) and torch.isfinite(video).all()
