"""What a training run loads, and which of its parameters train.

The frozen parts (tokenizer, T5, VAE) come from the PixArt diffusers folder; the video transformer is
built in the one load order (2D base, personalized checkpoint, motion module). What trains is chosen
by parameter-name patterns (:func:`select_trainable`) or by injecting a LoRA (:func:`add_lora`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from transformers import AutoTokenizer, T5EncoderModel

from ..config import EasyAnimateConfig, load_config
from ..lora import TEXT_ENCODER, TRANSFORMER, lora_target_modules
from ..models import Transformer3DModel
from .config import TrainConfig

DEFAULT_MODEL_CONFIG = Path(__file__).resolve().parents[2] / "config" / "easyanimate_video_motion_module_v1.yaml"
# An image yaml has no transformer extras: the model is then plain PixArt blocks (same 603 keys).
IMAGE_MODEL_KWARGS = {"basic_block_type": "selfattentiontemporal", "time_position_encoding_before_transformer": False}


@dataclass
class Components:
    """The models of one run: frozen tokenizer, T5 and VAE, the transformer that trains, its yaml."""

    tokenizer: Any
    text_encoder: T5EncoderModel
    vae: AutoencoderKL
    transformer: Transformer3DModel
    model_config: EasyAnimateConfig
    image_mode: bool


def load_components(config: TrainConfig, weight_dtype: torch.dtype) -> Components:
    """Frozen tokenizer/T5/VAE in ``weight_dtype``; the transformer in fp32 with its extra weights loaded."""
    root = Path(config.pretrained_model_name_or_path)
    model_config = load_config(config.config_path or DEFAULT_MODEL_CONFIG)
    image_mode = model_config.transformer_additional_kwargs is None
    extras = IMAGE_MODEL_KWARGS if image_mode else model_config.transformer_additional_kwargs
    transformer = Transformer3DModel.from_pretrained_2d(
        root, subfolder="transformer", transformer_additional_kwargs=extras,
        transformer_path=config.transformer_path, motion_module=config.motion_module_path)
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    text_encoder = T5EncoderModel.from_pretrained(root / "text_encoder", dtype=weight_dtype)
    vae = AutoencoderKL.from_pretrained(root / "vae", torch_dtype=weight_dtype)
    for frozen in (text_encoder, vae):
        frozen.requires_grad_(False)
        frozen.eval()
    return Components(tokenizer, text_encoder, vae, transformer, model_config, image_mode)


def select_trainable(model: torch.nn.Module, patterns: list[str], low_lr_patterns: list[str], lr: float) -> list[dict]:
    """Freeze everything but parameters whose name contains a pattern; return optimizer groups."""
    normal, low = [], []
    for name, param in model.named_parameters():
        if any(p in name for p in low_lr_patterns):
            low.append(param)
        elif any(p in name for p in patterns):
            normal.append(param)
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
        names = lora_target_modules(model, component)
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


def choose_trainable(components: Components, config: TrainConfig) -> tuple[list[dict], list[tuple[str, torch.nn.Parameter]]]:
    """Optimizer groups and the named trainable parameters (T5's prefixed ``text_encoder.``)."""
    if config.lora is not None:
        groups = add_lora(components, config)
    else:
        groups = select_trainable(components.transformer, config.trainable_modules,
                                  config.trainable_modules_low_learning_rate, config.learning_rate)
    trainable = [(n, p) for n, p in components.transformer.named_parameters() if p.requires_grad]
    if config.lora is not None and config.lora.train_text_encoder:
        trainable += [(f"text_encoder.{n}", p) for n, p in components.text_encoder.named_parameters() if p.requires_grad]
    return groups, trainable


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters()) - trainable
