"""What a training run loads, and which of its parameters train.

The frozen parts (tokenizer, T5, VAE) come from the PixArt diffusers folder; the video transformer is
built in the one load order (2D base, personalized checkpoint, motion module) from the model yaml:
``--config_path``, else the model folder's own (``easyanimate_config.yaml``, as generation uses it),
else the v1 yaml. :func:`check_model_fits` checks, before any weight is read, that the yaml fits the
folder's transformer and the motion module to be loaded. What trains is chosen by parameter-name
patterns (:func:`select_trainable`) or by injecting a LoRA (:func:`add_lora`).

With ``train_mode: inpaint`` the transformer is an inpaint model: built from a text-to-video folder or
checkpoint, its mask and masked-video input channels start at zero (equal to the text-to-video model), and the
patch embedding (:data:`INPAINT_TRAINABLE`) trains whatever the patterns say, since nothing else could learn to
read those channels. A LoRA cannot train them (the patch embedding is not one of its layers), so a LoRA in
inpaint mode needs a base that is already an inpaint model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.logging import get_logger
from diffusers import AutoencoderKL
from safetensors import SafetensorError, safe_open
from transformers import AutoTokenizer, T5EncoderModel

from ..config import ConfigError, EasyAnimateConfig, load_config
from ..generation import CONFIG_FILE, read_model_defaults
from ..lora import TEXT_ENCODER, TRANSFORMER, lora_target_modules
from ..models import MotionModuleSpec, Transformer3DModel
from ..models.loading import check_motion_module_spec
from .config import TrainConfig

logger = get_logger(__name__)

DEFAULT_MODEL_CONFIG = Path(__file__).resolve().parents[2] / "config" / "easyanimate_video_motion_module_v1.yaml"
# An image yaml has no transformer extras: the model is then plain PixArt blocks (same 603 keys).
IMAGE_MODEL_KWARGS = {"basic_block_type": "selfattentiontemporal", "time_position_encoding_before_transformer": False}
INPAINT_TRAINABLE = "pos_embed.proj"
"""The layer that reads an inpaint model's mask and masked-video channels: it always trains in inpaint mode."""


@dataclass
class ModelYaml:
    """The model yaml a run uses, where it comes from, and what it says."""

    path: Path
    source: str  # "--config_path", "the model folder's own" or "the v1 default"
    config: EasyAnimateConfig


def model_yaml(config: TrainConfig) -> ModelYaml:
    """``--config_path``, else the model folder's own yaml, else the v1 yaml."""
    own = own_model_yaml(Path(config.pretrained_model_name_or_path))
    if config.config_path:
        path, source = Path(config.config_path), "--config_path"
    elif own is not None:
        path, source = own, "the model folder's own"
    else:
        path, source = DEFAULT_MODEL_CONFIG, "the v1 default"
    return ModelYaml(path, source, load_config(path))


def own_model_yaml(model_dir: Path) -> Path | None:
    """The yaml a model folder carries: the one its ``easyanimate_defaults.yaml`` names, else
    ``easyanimate_config.yaml``."""
    if not model_dir.is_dir():
        return None
    named = read_model_defaults(model_dir).config
    path = model_dir / (named or CONFIG_FILE)
    return path if path.is_file() else None


def check_model_fits(config: TrainConfig, yaml: ModelYaml) -> None:
    """Refuse, before any weight is read, a yaml whose motion modules cannot be built on the folder's transformer,
    and a motion-module file built with other settings; warn when ``--config_path`` overrides the folder's own."""
    extras = yaml.config.transformer_additional_kwargs
    if extras is None or extras.basic_block_type != "motionmodule":
        return
    width = transformer_width(Path(config.pretrained_model_name_or_path))
    if width is None:
        return  # not a PixArt folder: the loader says so
    mm = extras.motion_module_kwargs
    if width % (mm.num_attention_heads * mm.temporal_attention_dim_div) or width % 32:
        raise ConfigError(f"{yaml.path} does not fit {config.pretrained_model_name_or_path}: its "
                          f"{mm.num_attention_heads} motion-module heads (x temporal_attention_dim_div "
                          f"{mm.temporal_attention_dim_div}) must divide the transformer's width {width}, and 32 "
                          "GroupNorm groups must too")
    spec = MotionModuleSpec.of_settings(extras.motion_module_type, mm, width)
    if yaml.source == "--config_path":
        warn_if_not_the_folders_own(config, yaml, spec, width)
    if config.motion_module_path:
        check_motion_module_spec(config.motion_module_path, spec, f"{yaml.path}")
        check_position_table(Path(config.motion_module_path), spec, yaml.path)


def transformer_width(model_dir: Path) -> int | None:
    """``num_attention_heads * attention_head_dim`` of the folder's ``transformer/config.json``."""
    path = model_dir / "transformer" / "config.json"
    try:
        settings = json.loads(path.read_text())
        return int(settings["num_attention_heads"]) * int(settings["attention_head_dim"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def warn_if_not_the_folders_own(config: TrainConfig, yaml: ModelYaml, spec: MotionModuleSpec, width: int) -> None:
    own = own_model_yaml(Path(config.pretrained_model_name_or_path))
    extras = load_config(own).transformer_additional_kwargs if own is not None else None
    if extras is None or extras.motion_module_kwargs is None:
        return
    folder_spec = MotionModuleSpec.of_settings(extras.motion_module_type, extras.motion_module_kwargs, width)
    if spec.mismatch(folder_spec):
        logger.warning("--config_path %s builds motion modules with %s; the model folder's own %s has %s: the "
                       "motion module trained now loads with --config %s only", yaml.path, spec.describe(), own.name,
                       folder_spec.describe(), yaml.path)


def check_position_table(path: Path, spec: MotionModuleSpec, yaml_path: Path) -> None:
    """A motion-module file with position tables of another length than the yaml's (visible in its header)."""
    try:
        with safe_open(str(path), "pt") as file:
            lengths = {file.get_slice(k).get_shape()[1] for k in file.keys() if k.endswith(".pos_encoder.pe")}
    except (SafetensorError, OSError, IndexError):
        return  # not a readable safetensors file: the loader says what it is
    if lengths and lengths != {spec.position_table_length}:
        raise ConfigError(f"{path} has {max(lengths)}-frame position tables; {yaml_path} builds "
                          f"{spec.position_table_length}-frame ones: use the model yaml it was trained with "
                          "(--config_path)")


@dataclass
class Components:
    """The models of one run: frozen tokenizer, T5 and VAE, the transformer that trains, its yaml."""

    tokenizer: Any
    text_encoder: T5EncoderModel
    vae: AutoencoderKL
    transformer: Transformer3DModel
    model_config: EasyAnimateConfig
    image_mode: bool


def load_components(config: TrainConfig, model_config: EasyAnimateConfig, weight_dtype: torch.dtype) -> Components:
    """Frozen tokenizer/T5/VAE in ``weight_dtype``; the transformer in fp32 with its extra weights loaded."""
    root = Path(config.pretrained_model_name_or_path)
    image_mode = model_config.transformer_additional_kwargs is None
    inpaint = config.train_mode == "inpaint"
    if inpaint and image_mode:
        raise ConfigError("train_mode inpaint trains a video model: give a video model yaml (--config_path), not an "
                          "image one")
    extras = IMAGE_MODEL_KWARGS if image_mode else model_config.transformer_additional_kwargs
    transformer = Transformer3DModel.from_pretrained_2d(
        root, subfolder="transformer", transformer_additional_kwargs=extras,
        transformer_path=config.transformer_path, motion_module=config.motion_module_path,
        inpaint=True if inpaint else None)
    if inpaint and config.lora is not None and not (transformer.pos_embed.proj.weight[:, transformer.latent_channels:]
                                                     .abs().sum() > 0):
        raise ConfigError("a LoRA cannot learn the mask and masked-video input channels that a text-to-video base "
                          "gains at zero in inpaint mode: train the inpaint model first (train.py --train_mode "
                          "inpaint), then the LoRA on it")
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    text_encoder = T5EncoderModel.from_pretrained(root / "text_encoder", dtype=weight_dtype)
    vae = AutoencoderKL.from_pretrained(root / "vae", torch_dtype=weight_dtype)
    for frozen in (text_encoder, vae):
        frozen.requires_grad_(False)
        frozen.eval()
    return Components(tokenizer, text_encoder, vae, transformer, model_config, image_mode)


def select_trainable(model: torch.nn.Module, patterns: list[str], low_lr_patterns: list[str], lr: float) -> list[dict]:
    """Freeze everything but parameters whose name contains a pattern; return optimizer groups.

    A name that contains a pattern of both lists trains at the full rate, as in the original trainers (which
    looked at ``trainable_modules`` first): ``patterns: [attn_temporal, pos_embed]`` with ``low_lr_patterns:
    ["."]`` trains those at ``lr`` and the rest of the model at ``lr / 10``.
    """
    normal, low = [], []
    for name, param in model.named_parameters():
        if any(p in name for p in patterns):
            normal.append(param)
        elif any(p in name for p in low_lr_patterns):
            low.append(param)
        param.requires_grad_(False)
    for param in normal + low:
        param.requires_grad_(True)
    if not normal and not low:
        raise ValueError(f"no parameter name contains any of {patterns + low_lr_patterns}; nothing would train "
                         "(use e.g. attn_temporal for the motion module, or . for everything)")
    groups = [{"params": normal, "lr": lr}]
    if low:
        groups.append({"params": low, "lr": lr / 10})
    return groups


def add_lora(components: Components, config: TrainConfig) -> list[dict]:
    """Inject peft LoRA layers into the transformer (and T5); return optimizer groups."""
    from peft import LoraConfig, inject_adapter_in_model

    settings = config.lora
    components.transformer.requires_grad_(False)
    groups = []
    targets = [(components.transformer, TRANSFORMER, config.learning_rate)]
    if settings.train_text_encoder:
        targets.append((components.text_encoder, TEXT_ENCODER, config.learning_rate * settings.text_encoder_lr_ratio))
    for model, component, lr in targets:
        names = lora_target_modules(model, component, motion_module=settings.motion_module)
        pattern = "^(" + "|".join(n.replace(".", r"\.") for n in names) + ")$"  # exact names, never suffixes
        lora_config = LoraConfig(r=settings.rank, lora_alpha=settings.network_alpha, target_modules=pattern,
                                 init_lora_weights=True)
        inject_adapter_in_model(lora_config, model)
        params = [p for n, p in model.named_parameters() if "lora_" in n]
        for param in params:
            param.data = param.data.float()
            param.requires_grad_(True)
        groups.append({"params": params, "lr": lr})
    return groups


def choose_trainable(components: Components, config: TrainConfig) -> tuple[list[dict],
                                                                           list[tuple[str, torch.nn.Parameter]]]:
    """Optimizer groups and the named trainable parameters (T5's prefixed ``text_encoder.``)."""
    if config.lora is not None:
        groups = add_lora(components, config)
    else:
        patterns = config.trainable_modules + ([INPAINT_TRAINABLE] if config.train_mode == "inpaint" else [])
        groups = select_trainable(components.transformer, patterns, config.trainable_modules_low_learning_rate,
                                  config.learning_rate)
    trainable = [(n, p) for n, p in components.transformer.named_parameters() if p.requires_grad]
    if config.lora is not None and config.lora.train_text_encoder:
        trainable += [(f"text_encoder.{n}", p) for n,
                      p in components.text_encoder.named_parameters() if p.requires_grad]
    return groups, trainable
