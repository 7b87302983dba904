"""Assemble a shapes demo model: the untrained base folder before training, the released layout after.

    python -m examples.shapes.build init --vae output_dir/shapes/vae --output output_dir/shapes/base
    python -m examples.shapes.build release --base output_dir/shapes/base \
        --transformer output_dir/shapes/t2i/pixart_transformer.safetensors \
        --motion_module output_dir/shapes/t2v/motion_module.safetensors \
        --lora output_dir/shapes/lora/lora.safetensors --models_dir models

``init`` writes a PixArt-alpha diffusers folder that train.py starts from: the tiny tokenizer, a frozen
randomly initialised tiny T5, the trained toy VAE, a randomly initialised PixArt transformer sized by
``configs/model.yaml`` and the PixArt scheduler.

``release`` writes the released layout under ``--models_dir``:

* ``Diffusion_Transformer/EasyAnimate-Shapes-Demo/``: the base folder with the trained image
  transformer (the t2i stage's), plus ``easyanimate_config.yaml`` (the video yaml), ``easyanimate_defaults.yaml`` (size,
  frames, sampler ... that predict_t2v.py and app.py then use) and ``shapes_world.yaml`` (the world it
  was trained on, with its held-out combinations, which ``examples.shapes.evaluate`` reads);
* ``Motion_Module/easyanimate_shapes_mm.safetensors`` (without the position tables, which the loader computes);
* ``Personalized_Model/easyanimate_shapes_dark_lora.safetensors`` (kohya format).

``release --variant long`` writes the long-clip demo model (trained on ``configs/world_long.yaml``) under
the names ``EasyAnimate-Shapes-Long``, ``easyanimate_shapes_long_mm.safetensors`` and
``easyanimate_shapes_long_dark_lora.safetensors``; its defaults generate 64 frames in 16-frame windows.

``release --inpaint_transformer ... --inpaint_motion_module ...`` (the inpaint stage's
``pixart_transformer.safetensors`` and ``motion_module.safetensors``) also writes the inpaint demo model beside
the model it was trained from (the recipe: the long-clip one): ``Diffusion_Transformer/EasyAnimate-Shapes-Inpaint/``
(the base folder with the 9-channel image model, its defaults and the same world) and
``Motion_Module/easyanimate_shapes_inpaint_mm.safetensors``; predict_i2v.py and the UI's image-to-video tab use it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch
from diffusers import AutoencoderKL, PixArtAlphaPipeline, PixArtTransformer2DModel
from omegaconf import OmegaConf

from easyanimate.config import load_config
from easyanimate.generation import (
    CONFIG_FILE,
    DEFAULTS_FILE,
    DEMO_INPAINT_MODEL,
    DEMO_LORA,
    DEMO_MODEL,
    DEMO_MOTION_MODULE,
    ModelDefaults,
    build_transformer,
    select_model,
)
from easyanimate.lora import LoraMerger
from easyanimate.models import load_transformer_checkpoint, read_state_dict, save_motion_module
from easyanimate.tiny import (
    build_pixart_scheduler,
    build_tiny_text_encoder,
    build_tiny_tokenizer,
    tiny_transformer_config,
)

from . import CONFIGS
from .world import WORLDS, load_world, save_world


class ReleaseNames(NamedTuple):
    """Where a shapes model is released: model folder, motion module and dark-background style LoRA,
    relative to the models folder."""

    model: str
    motion_module: str
    lora: str | None


RELEASES = {
    # the default model, the fallback when the released weights are absent (the library's DEMO_* names)
    "demo": ReleaseNames(DEMO_MODEL, DEMO_MOTION_MODULE, DEMO_LORA),
    # trained on a world whose shapes wrap around the frame (configs/world_long.yaml), so its motion holds
    # for any number of frames; its defaults generate 64 frames in 16-frame windows
    "long": ReleaseNames("Diffusion_Transformer/EasyAnimate-Shapes-Long",
                         "Motion_Module/easyanimate_shapes_long_mm.safetensors",
                         "Personalized_Model/easyanimate_shapes_long_dark_lora.safetensors"),
}
"""The released names of each shapes demo model, by ``--variant``."""
INPAINT_RELEASE = ReleaseNames(DEMO_INPAINT_MODEL, "Motion_Module/easyanimate_shapes_inpaint_mm.safetensors", None)
"""The inpaint demo model (image-to-video, first and last frame, inpainting, extension), released with the model it
was trained from (``--variant long`` in the recipe); the library's default for predict_i2v.py
(``DEMO_INPAINT_MODEL``)."""
WORLD_FILE = "shapes_world.yaml"
TEXT_TOKENS = 24


def transformer_config(model_config: str | Path) -> dict:
    """The PixArt ``transformer/config.json`` of the toy model; cross-attention width = inner width."""
    sizes = OmegaConf.to_container(OmegaConf.load(model_config)["transformer"])
    config = {**tiny_transformer_config(), **sizes}
    config["cross_attention_dim"] = config["num_attention_heads"] * config["attention_head_dim"]
    return config


@torch.no_grad()
def pixart_initialise(transformer: PixArtTransformer2DModel) -> None:
    """PixArt-alpha's initialisation (as DiT's): Xavier-uniform linear layers with zero biases, the patch
    embedding treated as a linear layer, N(0, 0.02) timestep and caption MLPs, and zero cross-attention
    output projections and output head, so every block starts close to the identity."""
    for module in transformer.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    patch = transformer.pos_embed.proj.weight
    torch.nn.init.xavier_uniform_(patch.view(patch.shape[0], -1))
    timestep = transformer.adaln_single.emb.timestep_embedder
    caption = transformer.caption_projection
    for layer in (timestep.linear_1, timestep.linear_2, transformer.adaln_single.linear, caption.linear_1,
                  caption.linear_2):
        torch.nn.init.normal_(layer.weight, std=0.02)
    for layer in [block.attn2.to_out[0] for block in transformer.transformer_blocks] + [transformer.proj_out]:
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)


def init(args: argparse.Namespace) -> None:
    model_config = OmegaConf.load(args.model_config)
    tokenizer = build_tiny_tokenizer()
    tokenizer.model_max_length = TEXT_TOKENS  # captions are short: training and sampling pad to this, not to 120
    torch.manual_seed(args.seed)
    transformer = PixArtTransformer2DModel.from_config(transformer_config(args.model_config))
    pixart_initialise(transformer)
    pipe = PixArtAlphaPipeline(
        tokenizer=tokenizer, text_encoder=build_tiny_text_encoder(len(tokenizer), seed=model_config.text_encoder_seed),
        vae=AutoencoderKL.from_pretrained(args.vae), scheduler=build_pixart_scheduler(), transformer=transformer)
    pipe.save_pretrained(args.output)
    print(f"wrote {args.output}")


def swap_in(staging: Path, models: Path, names: tuple[str, ...]) -> None:
    """Move ``staging / name`` to ``models / name`` for every name, the previous files aside into
    ``staging``; if a move fails, the ones already made are undone, so the previous release is back."""
    done: list[tuple[Path, Path | None]] = []  # (target, where its previous version went)
    try:
        for name in names:
            target = models / name
            target.parent.mkdir(parents=True, exist_ok=True)
            previous = None
            if target.exists():
                previous = staging / f"previous-{target.name}"
                target.rename(previous)
            done.append((target, previous))
            (staging / name).rename(target)
    except BaseException:
        for target, previous in reversed(done):
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            if previous is not None:
                previous.rename(target)
        raise


def _forget_build_paths(folder: Path) -> None:
    """Drop ``_name_or_path`` from the json configs under ``folder``: diffusers records there the folder a
    component was loaded from, here the build's output folder, which means nothing where the model ships."""
    for path in folder.rglob("*.json"):
        config = json.loads(path.read_text())
        if isinstance(config, dict) and config.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def stage_model(args: argparse.Namespace, staging: Path, names: ReleaseNames, transformer: Path, motion_module: Path,
                world: Path, defaults: ModelDefaults, in_channels: int | None = None) -> None:
    """Write one model folder (the base with the trained image model, its yaml, world and defaults) and its motion
    module into ``staging`` under their released names; ``in_channels`` 9 for the inpaint model's image model."""
    pipe = PixArtAlphaPipeline.from_pretrained(args.base)
    if in_channels is not None:
        pipe.transformer = PixArtTransformer2DModel.from_config({**pipe.transformer.config, "in_channels": in_channels})
    load_transformer_checkpoint(pipe.transformer, transformer)  # names any missing, foreign or mis-shaped key
    folder = staging / names.model
    pipe.save_pretrained(folder)
    _forget_build_paths(folder)
    load_config(args.video_config)  # refuse an invalid yaml before shipping it
    shutil.copyfile(args.video_config, folder / CONFIG_FILE)
    save_world(load_world(world), folder / WORLD_FILE)
    OmegaConf.save(OmegaConf.structured(defaults), folder / DEFAULTS_FILE)
    save_motion_module(read_state_dict(motion_module), staging / names.motion_module, include_position_tables=False)


def release(args: argparse.Namespace) -> None:
    """Write the released files into a staging folder under ``--models_dir`` first, and move them into place
    only once all are written and load: a failure (a mismatched checkpoint, a full disk) leaves the previous
    release as it was."""
    models = Path(args.models_dir)
    models.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".shapes-release-", dir=models))
    names = RELEASES[args.variant]
    inpaint = args.inpaint_transformer is not None
    released = [*names] + ([INPAINT_RELEASE.model, INPAINT_RELEASE.motion_module] if inpaint else [])
    world = args.world or WORLDS[args.variant]  # the inpaint model learned on the same clips
    try:
        defaults = ModelDefaults(config=CONFIG_FILE, motion_module=names.motion_module, lora=None, lora_weight=1.0,
                                 height=64, width=64, frames=16, fps=8, steps=args.steps,
                                 guidance_scale=args.guidance_scale, sampler="DPM++", seed=43,
                                 prompt="a blue square moving up", negative_prompt="")
        if args.variant == "long":  # 64 frames in the 16-frame windows its motion module was trained on
            defaults = dataclasses.replace(defaults, frames=64, context_frames=16, context_overlap=4)
        stage_model(args, staging, names, args.transformer, args.motion_module, world, defaults)
        (staging / names.lora).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.lora, staging / names.lora)
        if inpaint:
            # 16 frames from an image; longer ones are asked for, and made by extension: on the shipped model's
            # evaluation (seed 0, 64 frames) its later chunks moved the prompted way in 98% of clips and kept the
            # colour in 98%, against 85% and 95% of clips in temporal windows, at seams as smooth (1.03 against 1.04)
            inpaint_defaults = dataclasses.replace(
                defaults, motion_module=INPAINT_RELEASE.motion_module, guidance_scale=args.inpaint_guidance_scale,
                prompt="a red circle moving left", frames=16, context_frames=None, context_overlap=None,
                long_video="extension")
            stage_model(args, staging, INPAINT_RELEASE, args.inpaint_transformer, args.inpaint_motion_module,
                        world, inpaint_defaults, in_channels=9)

        # the staged release must load the way predict_t2v.py / predict_i2v.py load it
        selection = select_model(staging, staging / names.model)
        LoraMerger(build_transformer(selection)).merge(staging / names.lora, multiplier=1.0, transformer_only=True)
        if inpaint and not build_transformer(select_model(staging, inpaint=True)).is_inpaint:
            raise ValueError(f"{args.inpaint_transformer} did not give an inpaint model")
        for path in staging.rglob("*"):  # safetensors writes owner-only files; these are to be shared
            path.chmod(0o755 if path.is_dir() else 0o644)
        swap_in(staging, models, tuple(released))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    written = [models / name for name in released]
    size = sum(p.stat().st_size for path in written for p in ([path] if path.is_file() else path.rglob("*")))
    print(f"wrote {', '.join(map(str, written))} ({size / 2**20:.1f} MiB in all)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    first = commands.add_parser("init", help="the untrained base folder")
    first.add_argument("--model_config", default=str(CONFIGS / "model.yaml"), help="architecture yaml")
    first.add_argument("--output", required=True, help="folder to write")
    first.add_argument("--seed", type=int, default=0, help="initial transformer weights")
    first.add_argument("--vae", required=True, help="trained VAE folder (examples.shapes.vae)")
    last = commands.add_parser("release", help="the released layout under --models_dir")
    last.add_argument("--base", required=True, help="the base folder written by init")
    last.add_argument("--guidance_scale", type=float, default=2.0, help="default guidance of the demo")
    last.add_argument("--inpaint_guidance_scale", type=float, default=4.0,
                      help="default guidance of the inpaint model (4.0: chosen on evaluation seed 1 among 3, 4, "
                           "5 for the model before the 16000-step t2i stage, and kept)")
    last.add_argument("--inpaint_motion_module", help="the inpaint stage's motion_module.safetensors")
    last.add_argument("--inpaint_transformer", help="the inpaint stage's pixart_transformer.safetensors: also release "
                                                    "the inpaint model (with --inpaint_motion_module)")
    last.add_argument("--lora", required=True, help="style LoRA (train_lora.py's lora.safetensors)")
    last.add_argument("--models_dir", default="models", help="root of the released layout")
    last.add_argument("--motion_module", required=True, help="train.py's motion_module.safetensors (t2v)")
    last.add_argument("--steps", type=int, default=20, help="default sampling steps of the demo")
    last.add_argument("--transformer", required=True, help="train.py's pixart_transformer.safetensors (t2i)")
    last.add_argument("--video_config", default=str(CONFIGS / "easyanimate_shapes_video.yaml"),
                      help="video model yaml")
    last.add_argument("--variant", choices=sorted(RELEASES), default="demo",
                      help="which demo model: 'demo' (16-frame clips, the default model) or 'long' (wrapping world, "
                           "64 frames in 16-frame windows by default); sets the released names")
    last.add_argument("--world", help="world yaml the model was trained on (default: the variant's, "
                                      "configs/world.yaml or world_long.yaml)")
    args = parser.parse_args(argv)
    if args.command == "release" and (args.inpaint_transformer is None) != (args.inpaint_motion_module is None):
        parser.error("--inpaint_transformer and --inpaint_motion_module go together")
    init(args) if args.command == "init" else release(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
