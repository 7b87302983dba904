"""Training configuration: one typed object, from a yaml file and/or the original command-line flags.

What to train is configuration, not a separate script (as in nanoGPT / AnimateDiff):

* motion module on videos: ``trainable_modules: ["attn_temporal"]`` with the video yaml;
* the whole image model on images: the image yaml (no motion modules) with ``trainable_modules: ["."]``;
* LoRA: a ``lora:`` section (``train_lora.py`` sets one); the base stays frozen.

Flag names are the original trainers' (``--train_data_dir``, ``--sample_n_frames``, ...). A yaml given
with ``--train_config`` is read first and flags override it. Unknown keys and wrong types are errors.
The resolved config is written to ``<output_dir>/train_config.yaml`` and into every checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import ConfigError
from .diffusion import NORMAL_LOG_CDFS


@dataclass
class LoraSettings:
    """LoRA training (kohya-format export). Defaults: the original rank 128, alpha 64, motion module left out."""

    rank: int = 128
    network_alpha: float = 64.0
    train_text_encoder: bool = False
    text_encoder_lr_ratio: float = 0.5
    motion_module: bool = False
    """also adapt the motion modules' linears (v1's add_lora_in_attn_temporal; off, as in every v1 script)."""


@dataclass
class TrainConfig:
    """Every training option; field docs double as ``--help`` text."""

    pretrained_model_name_or_path: str = ""
    """PixArt diffusers folder (transformer, vae, text_encoder, tokenizer)."""
    config_path: str | None = None
    """model yaml (default: config/easyanimate_video_motion_module_v1.yaml)."""
    transformer_path: str | None = None
    """full or personalized transformer checkpoint loaded over the base before training."""
    motion_module_path: str | None = None
    """motion-module file loaded before training (e.g. to train a LoRA on a video model)."""

    train_data_format: str = "normal"
    """webvid (csv), normal (json list) or diffusers (imagefolder with metadata.jsonl)."""
    train_data_dir: str | None = None
    """folder the metadata's file paths are relative to."""
    train_data_meta: str | None = None
    """metadata file (csv / json); for the diffusers format, optional."""
    caption_column: str = "text"
    """caption column of the metadata."""
    sample_size: int = 256
    """square clip size in pixels (multiple of 32), or the bucket base size."""
    image_sample_size: int | None = None
    """size of image items (default: sample_size)."""
    sample_stride: int = 4
    """frame step when sampling a clip."""
    sample_n_frames: int = 16
    """frames per video clip."""
    video_repeat: int = 0
    """extra copies of every video in an epoch (image + video mixing)."""
    caption_dropout: float = 0.0
    """probability of training a sample with an empty caption."""
    skip_short_videos: bool = False
    """skip videos shorter than the clip instead of repeating frames."""
    enable_bucket: bool = False
    """aspect-ratio buckets instead of square center crops."""
    random_flip: bool = False
    """mirror clips horizontally at random."""
    precompute: bool = False
    """encode every item once (VAE latents, T5 states) and train from memory: for small datasets."""
    validate_data: bool = False
    """probe every file at start (exact skip counts)."""

    output_dir: str = "output_dir"
    """where checkpoints, samples, logs and exports go."""
    seed: int | None = None
    """seed for weights of new layers, data order, noise and timesteps."""
    train_batch_size: int = 16
    """clips per process per step."""
    vae_mini_batch: int = 32
    """frames encoded by the VAE at once."""
    num_train_epochs: int = 100
    """epochs (max_train_steps wins when set)."""
    max_train_steps: int | None = None
    """optimizer steps in total."""
    gradient_accumulation_steps: int = 1
    """batches per optimizer step."""
    gradient_checkpointing: bool = False
    """recompute block activations in the backward pass."""
    learning_rate: float = 1e-4
    """peak learning rate."""
    scale_lr: bool = False
    """scale lr by sqrt(accumulation x batch x processes / 256)."""
    lr_scheduler: str = "constant"
    """diffusers schedule: constant, constant_with_warmup, linear, cosine, ..."""
    lr_warmup_steps: int = 500
    """warm-up steps."""
    use_8bit_adam: bool = False
    """bitsandbytes AdamW8bit (needs bitsandbytes)."""
    allow_tf32: bool = False
    """TF32 matmuls on Ampere+ GPUs."""
    use_ema: bool = False
    """keep an exponential moving average of the trained weights; it is what gets exported."""
    ema_decay: float = 0.9999
    """EMA decay (effective decay min(decay, (1+s)/(10+s)))."""
    dataloader_num_workers: int = 0
    """data loading processes."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.01
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    """gradient clipping norm."""
    mixed_precision: str = "no"
    """no, fp16 or bf16."""
    report_to: str = "tensorboard"
    """tracker: tensorboard or none."""
    logging_dir: str = "logs"
    """tracker folder inside output_dir."""
    checkpointing_steps: int = 500
    """save a checkpoint every N optimizer steps."""
    checkpoints_total_limit: int | None = None
    """keep at most N checkpoints."""
    resume_from_checkpoint: str | None = None
    """a checkpoint folder or "latest"."""
    enable_xformers_memory_efficient_attention: bool = False
    """xformers attention (needs xformers)."""
    validation_prompts: list[str] = field(default_factory=list)
    """prompts rendered every validation_steps."""
    validation_steps: int = 2000
    """validate every N optimizer steps (and at the end)."""
    validation_sampler: str = "DPM++"
    validation_inference_steps: int = 20
    validation_guidance_scale: float = 4.5
    validation_frames: int | None = None
    """frames of validation videos (default: sample_n_frames)."""
    snr_loss: bool = False
    """x0 target for t <= 249 (the original's option)."""
    normal_cdf: str = "tanh"
    """normal CDF in the t = 0 loss term: tanh (v1's approximation, as the released weights) or exact."""
    train_sampling_steps: int = 1000
    """diffusion steps of the training process, 2..1000; fewer than 1000 respace the 1000-step process as v1
    (evenly spaced kept steps, betas from their cumulative alphas, the model fed the original steps)."""
    min_train_timestep: int = 0
    """train on timesteps drawn uniformly from [min_train_timestep, train_sampling_steps) only (0: all). For a
    motion module on a frozen image model: at low noise each frame is denoised from itself, and only the
    noisier steps, where the frames' layout is decided, carry a signal for the motion."""
    max_train_timestep: int | None = None
    """train on timesteps below this only (None: train_sampling_steps). With min_train_timestep it picks a
    band, e.g. to fine-tune a motion module on the low-noise steps a first stage left out."""
    tokenizer_max_length: int = 120
    """T5 tokens (at most the tokenizer's ``model_max_length``)."""
    trainable_modules: list[str] = field(default_factory=lambda: ["attn_temporal"])
    """parameter-name substrings to train ("." = everything)."""
    trainable_modules_low_learning_rate: list[str] = field(default_factory=list)
    """substrings trained at lr/10."""
    lora: LoraSettings | None = None
    """LoRA training instead of full weights."""

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.structured(self))


def config_from_sources(train_config: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Merge defaults <- yaml file <- overrides, validating keys and types."""
    try:
        merged = OmegaConf.structured(TrainConfig)
        if train_config is not None:
            merged = OmegaConf.merge(merged, OmegaConf.load(train_config))
        merged = OmegaConf.merge(merged, OmegaConf.create(overrides))
        config = OmegaConf.to_object(merged)
    except (OmegaConfBaseException, OSError) as error:
        raise ConfigError(f"invalid training config: {error}") from error
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Refuse settings that cannot work, naming the option."""
    if not config.pretrained_model_name_or_path:
        raise ConfigError("pretrained_model_name_or_path is required (a PixArt diffusers folder)")
    if config.mixed_precision not in ("no", "fp16", "bf16"):
        raise ConfigError(f"mixed_precision must be no, fp16 or bf16, got {config.mixed_precision!r}")
    if config.sample_size % 32:
        raise ConfigError(f"sample_size must be a multiple of 32 (the motion module's 2x2 grid), got {config.sample_size}")
    if config.train_batch_size < 1 or config.gradient_accumulation_steps < 1 or config.sample_n_frames < 1:
        raise ConfigError("train_batch_size, gradient_accumulation_steps and sample_n_frames must be >= 1")
    if config.max_train_steps is None and config.num_train_epochs < 1:
        raise ConfigError("set max_train_steps or num_train_epochs >= 1")
    if not 2 <= config.train_sampling_steps <= 1000:
        raise ConfigError(f"train_sampling_steps must be in [2, 1000], got {config.train_sampling_steps}")
    if not 0 <= config.min_train_timestep < config.train_sampling_steps:
        raise ConfigError(f"min_train_timestep must be in [0, train_sampling_steps = {config.train_sampling_steps}), "
                          f"got {config.min_train_timestep}")
    if config.max_train_timestep is not None and not (
            config.min_train_timestep < config.max_train_timestep <= config.train_sampling_steps):
        raise ConfigError(f"max_train_timestep must be in (min_train_timestep = {config.min_train_timestep}, "
                          f"train_sampling_steps = {config.train_sampling_steps}] or unset, got {config.max_train_timestep}")
    if config.normal_cdf not in NORMAL_LOG_CDFS:
        raise ConfigError(f"normal_cdf must be one of {', '.join(NORMAL_LOG_CDFS)}, got {config.normal_cdf!r}")
    if config.lora is None and not config.trainable_modules:
        raise ConfigError("nothing to train: give trainable_modules (e.g. attn_temporal) or a lora section")


def _flag_type(annotation: Any) -> tuple[Any, dict[str, Any]]:
    """argparse settings for a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _flag_type(args[0])
    if origin is list:
        return str, {"nargs": "+"}
    if annotation is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    return annotation, {}


def build_parser(description: str) -> argparse.ArgumentParser:
    """Flags for every field (alphabetised), each defaulting to "not given" so yaml values survive."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--train_config", help="training yaml read before the flags")
    hints = typing.get_type_hints(TrainConfig)
    docs = _field_docs()
    for f in sorted(dataclasses.fields(TrainConfig), key=lambda f: f.name):
        if f.name == "lora":
            continue
        kind, extra = _flag_type(hints[f.name])
        if kind is not None:
            extra["type"] = kind
        parser.add_argument(f"--{f.name}", default=argparse.SUPPRESS, help=docs.get(f.name, ""), **extra)
    return parser


def _field_docs() -> dict[str, str]:
    """Field docstrings (the string literal after each field) for --help."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(TrainConfig))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            docs[node.target.id] = str(following.value.value)
    return docs


def parse_config(argv: list[str] | None, description: str, lora: bool = False) -> TrainConfig:
    """Parse flags (and ``--train_config``) into a validated :class:`TrainConfig`."""
    parser = build_parser(description)
    if lora:
        parser.add_argument("--rank", type=int, default=argparse.SUPPRESS, help="LoRA rank (128)")
        parser.add_argument("--network_alpha", type=float, default=argparse.SUPPRESS, help="LoRA alpha (64)")
        parser.add_argument("--train_text_encoder", action="store_true", default=argparse.SUPPRESS,
                            help="also train a LoRA on the T5 encoder")
        parser.add_argument("--lora_motion_module", action="store_true", default=argparse.SUPPRESS,
                            help="also put LoRA into the motion modules (default: left out, as in v1)")
    values = vars(parser.parse_args(argv))
    train_config = values.pop("train_config", None)
    if lora:
        section = {k: values.pop(k) for k in ("rank", "network_alpha", "train_text_encoder") if k in values}
        if "lora_motion_module" in values:
            section["motion_module"] = values.pop("lora_motion_module")
        values["lora"] = section
    return config_from_sources(train_config, values)
