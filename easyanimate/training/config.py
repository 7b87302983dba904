"""Training configuration: one typed object, from a yaml file and/or the original command-line flags.

What to train is configuration, not a separate script (as in nanoGPT / AnimateDiff):

* motion module on videos: ``trainable_modules: ["attn_temporal"]`` with the video yaml;
* the whole image model on images: the image yaml (no motion modules) with ``trainable_modules: ["."]``;
* LoRA: a ``lora:`` section (``train_lora.py`` sets one); the base stays frozen;
* an inpaint model (image-to-video, inpainting, extension): ``train_mode: inpaint`` with any of the above, the
  mask types (v1's four, and ``all``) drawn with the ``inpaint_mask_*`` probabilities (:mod:`easyanimate.inpaint`).

Flag names are the original trainers' (``--train_data_dir``, ``--sample_n_frames``, ...). A yaml given
with ``--train_config`` is read first and flags override it. Unknown keys and wrong types are errors.
The resolved config is written to ``<output_dir>/train_config.yaml`` and into every checkpoint. The
production recipes are such yamls (``config/train/*.yaml``).

Every value is checked against its valid range when the config is built (:func:`validate`), and what
depends on the machine or the launcher (an installed tracker, DeepSpeed) when training starts
(:func:`check_environment`): both before any model is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import ConfigError
from ..devices import MIXED_PRECISION_DTYPES
from .diffusion import NORMAL_LOG_CDFS

TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "comet_ml": "comet-ml", "aim": "aim",
                    "mlflow": "mlflow", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab",
                    "trackio": "trackio"}
"""accelerate's tracker names (``--report_to``) and the pip package each needs."""


def option(default: Any, text: str) -> Any:
    """A field whose metadata holds its ``--help`` text; a list default is copied for each instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": text})
    return field(default=default, metadata={"help": text})


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
    """Every training option; each field's ``help`` metadata is its ``--help`` text."""

    pretrained_model_name_or_path: str = option("",
        "PixArt diffusers folder (transformer, vae, text_encoder, tokenizer).")
    config_path: str | None = option(None,
        "model yaml (default: the model folder's own easyanimate_config.yaml, else "
        "config/easyanimate_video_motion_module_v1.yaml).")
    transformer_path: str | None = option(None,
        "full or personalized transformer checkpoint loaded over the base before training.")
    motion_module_path: str | None = option(None,
        "motion-module file loaded before training (e.g. to train a LoRA on a video model).")
    train_data_format: str = option("normal",
        "webvid (csv), normal (json list) or diffusers (imagefolder with metadata.jsonl).")
    train_data_dir: str | None = option(None, "folder the metadata's file paths are relative to.")
    train_data_meta: str | None = option(None, "metadata file (csv / json); for the diffusers format, optional.")
    caption_column: str | None = option(None, "caption column of the metadata (default: the format's own: name for "
                                        "webvid, text for normal and diffusers).")
    sample_size: int = option(256, "square clip size in pixels (multiple of 32), or the bucket base size.")
    image_sample_size: int | None = option(None, "size of image items (default: sample_size).")
    sample_stride: int = option(4, "frame step when sampling a clip.")
    sample_n_frames: int = option(16, "frames per video clip.")
    video_repeat: int = option(0, "extra copies of every video in an epoch (image + video mixing).")
    caption_dropout: float = option(0.0, "probability of training a sample with an empty caption.")
    skip_short_videos: bool = option(False, "skip videos shorter than the clip instead of repeating frames.")
    enable_bucket: bool = option(False, "aspect-ratio buckets instead of square center crops.")
    random_flip: bool = option(False, "mirror clips horizontally at random.")
    precompute: bool = option(False,
        "encode every item once (VAE latents, T5 states) and train from memory: for small datasets.")
    validate_data: bool = option(False, "probe every file at start (exact skip counts).")
    output_dir: str = option("output_dir", "where checkpoints, samples, logs and exports go.")
    overwrite_output_dir: bool = option(False,
        "start a new run in an output_dir that holds a previous one (its checkpoints are removed); without it, "
        "such a folder is only resumed.")
    seed: int | None = option(None, "seed for weights of new layers, data order, noise and timesteps.")
    train_batch_size: int = option(16, "clips per process per step.")
    vae_mini_batch: int = option(32, "frames encoded by the VAE at once.")
    num_train_epochs: int = option(100, "epochs (max_train_steps wins when set).")
    max_train_steps: int | None = option(None, "optimizer steps in total.")
    gradient_accumulation_steps: int = option(1, "batches per optimizer step.")
    gradient_checkpointing: bool = option(False, "recompute block activations in the backward pass.")
    compile: str | None = option(None,
        "torch.compile the transformer blocks with this backend (e.g. inductor; on a CPU it needs a C++ compiler): "
        "the first step compiles, later steps run faster (docs/benchmarks.md, train-target).")
    learning_rate: float = option(1e-4, "peak learning rate.")
    scale_lr: bool = option(False, "scale lr by sqrt(accumulation x batch x processes / 256).")
    lr_scheduler: str = option("constant", "diffusers schedule: constant, constant_with_warmup, linear, cosine, ...")
    lr_warmup_steps: int = option(500, "warm-up steps.")
    use_8bit_adam: bool = option(False, "bitsandbytes AdamW8bit (needs bitsandbytes).")
    allow_tf32: bool = option(False, "TF32 matmuls on Ampere+ GPUs.")
    use_ema: bool = option(False,
        "keep an exponential moving average of the trained weights; it is what gets exported.")
    ema_decay: float = option(0.9999, "EMA decay (effective decay min(decay, (1+s)/(10+s))).")
    dataloader_num_workers: int = option(0, "data loading processes.")
    adam_beta1: float = option(0.9, "AdamW beta1.")
    adam_beta2: float = option(0.999, "AdamW beta2.")
    adam_weight_decay: float = option(0.01, "AdamW weight decay.")
    adam_epsilon: float = option(1e-8, "AdamW epsilon.")
    max_grad_norm: float = option(1.0, "gradient clipping norm.")
    mixed_precision: str | None = option(None,
        "no, fp16 or bf16; unset: what the launcher says (accelerate launch --mixed_precision, or its config "
        "file), else no.")
    report_to: str = option("tensorboard",
        "tracker: tensorboard, wandb, comet_ml, aim, mlflow, clearml, dvclive, swanlab, trackio, all (every "
        "installed one) or none.")
    logging_dir: str = option("logs", "tracker folder inside output_dir.")
    checkpointing_steps: int = option(500, "save a checkpoint every N optimizer steps.")
    checkpoints_total_limit: int | None = option(None, "keep at most N checkpoints.")
    resume_from_checkpoint: str | None = option(None, 'a checkpoint folder or "latest".')
    enable_xformers_memory_efficient_attention: bool = option(False, "xformers attention (needs xformers).")
    validation_prompts: list[str] = option([], "prompts rendered every validation_steps.")
    validation_images: list[str] = option([],
        "train_mode inpaint: one image per validation prompt, the first frame of its image-to-video sample.")
    validation_steps: int = option(2000, "validate every N optimizer steps (and at the end).")
    validation_sampler: str = option("DPM++", "sampler of the validation samples.")
    validation_inference_steps: int = option(20, "denoising steps of the validation samples.")
    validation_guidance_scale: float = option(4.5, "guidance scale of the validation samples.")
    validation_frames: int | None = option(None, "frames of validation videos (default: sample_n_frames).")
    snr_loss: bool = option(False, "x0 target for t <= 249 (the original's option).")
    normal_cdf: str = option("tanh", "normal CDF in the t = 0 loss term: tanh (v1's approximation, as the released "
                             "weights) or exact.")
    train_sampling_steps: int = option(
        1000, "diffusion steps of the training process, 2..1000; fewer than 1000 respace the 1000-step process "
        "as v1 (evenly spaced kept steps, betas from their cumulative alphas, the model fed the original steps).")
    min_train_timestep: int = option(0,
        "train on timesteps drawn uniformly from [min_train_timestep, train_sampling_steps) only (0: all). For a "
        "motion module on a frozen image model: at low noise each frame is denoised from itself, and only the "
        "noisier steps, where the frames' layout is decided, carry a signal for the motion.")
    max_train_timestep: int | None = option(None,
        "train on timesteps below this only (None: train_sampling_steps). With min_train_timestep it picks a "
        "band, e.g. to fine-tune a motion module on the low-noise steps a first stage left out.")
    tokenizer_max_length: int = option(120, "T5 tokens (at most the tokenizer's ``model_max_length``).")
    train_mode: str = option("normal",
        "normal (text-to-video) or inpaint: the model also gets a random mask and the masked clip's latents, "
        "and a text-to-video model gains those input channels at zero (its patch embedding then always trains).")
    inpaint_mask_start: float = option(0.25,
        "inpaint: weight of the mask that keeps the first frame(s) and generates the rest (image-to-video).")
    inpaint_mask_start_and_end: float = option(0.25,
        "inpaint: weight of the mask that keeps the first and the last frame (first-and-last-frame generation).")
    inpaint_mask_box: float = option(0.25, "inpaint: weight of a random box generated in every frame (inpainting).")
    inpaint_mask_box_over_frames: float = option(0.25,
        "inpaint: weight of a random box generated over a random range of frames.")
    inpaint_mask_all: float = option(0.0,
        "inpaint: weight of the mask that generates every frame (text-to-video, nothing known: only the prompt "
        "says what happens; not a v1 type).")
    inpaint_max_start_frames: int = option(1,
        "inpaint: the start mask keeps the first 1..N frames, N drawn uniformly (1, v1's: image-to-video only; "
        "more: also extension from the last frames of a clip).")
    trainable_modules: list[str] = option(["attn_temporal"],
        'parameter-name substrings to train ("." = everything).')
    trainable_modules_low_learning_rate: list[str] = option([],
        "substrings trained at lr/10 (a name that also contains one of trainable_modules trains at lr).")
    lora: LoraSettings | None = option(None, "LoRA training instead of full weights.")

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


# The valid range of each numeric option: whole numbers from a lowest value (optional ones may be unset),
# real numbers in an interval. Checked at start, before anything is loaded.
WHOLE_AT_LEAST = {
    "train_batch_size": 1, "gradient_accumulation_steps": 1, "sample_n_frames": 1, "sample_stride": 1,
    "vae_mini_batch": 1, "num_train_epochs": 1, "checkpointing_steps": 1, "validation_steps": 1,
    "validation_inference_steps": 1, "tokenizer_max_length": 1, "train_sampling_steps": 2,
    "lr_warmup_steps": 0, "video_repeat": 0, "dataloader_num_workers": 0, "inpaint_max_start_frames": 1,
}
OPTIONAL_WHOLE_AT_LEAST = {"max_train_steps": 1, "checkpoints_total_limit": 1, "validation_frames": 1,
                           "image_sample_size": 1}
# name: (low, high, low included, high included)
REAL_RANGES = {
    "learning_rate": (0.0, math.inf, False, False), "max_grad_norm": (0.0, math.inf, False, False),
    "adam_epsilon": (0.0, math.inf, False, False), "adam_weight_decay": (0.0, math.inf, True, False),
    "adam_beta1": (0.0, 1.0, True, False), "adam_beta2": (0.0, 1.0, True, False), "ema_decay": (0.0, 1.0, True, True),
    "caption_dropout": (0.0, 1.0, True, True), "validation_guidance_scale": (0.0, math.inf, True, False),
    "inpaint_mask_start": (0.0, math.inf, True, False), "inpaint_mask_start_and_end": (0.0, math.inf, True, False),
    "inpaint_mask_box": (0.0, math.inf, True, False), "inpaint_mask_box_over_frames": (0.0, math.inf, True, False),
    "inpaint_mask_all": (0.0, math.inf, True, False),
}
TRAIN_MODES = ("normal", "inpaint")
LORA_REAL_RANGES = {"network_alpha": (0.0, math.inf, False, False),
                    "text_encoder_lr_ratio": (0.0, math.inf, False, False)}
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
MAX_SEED = 2**32 - 1  # numpy's seed range (accelerate's set_seed seeds numpy too)


def validate(config: TrainConfig) -> None:
    """Refuse settings that cannot work, naming the option and its valid range."""
    if not config.pretrained_model_name_or_path:
        raise ConfigError("pretrained_model_name_or_path is required (a PixArt diffusers folder)")
    _check_ranges(config)
    _check_names(config)
    if config.train_sampling_steps > 1000:
        raise ConfigError(f"train_sampling_steps must be in [2, 1000], got {config.train_sampling_steps}")
    if config.normal_cdf not in NORMAL_LOG_CDFS:
        raise ConfigError(f"normal_cdf must be one of {', '.join(NORMAL_LOG_CDFS)}, got {config.normal_cdf!r}")
    if config.sample_size % 32:
        raise ConfigError(f"sample_size must be a multiple of 32 (the motion module's 2x2 grid), "
                          f"got {config.sample_size}")
    if not 0 <= config.min_train_timestep < config.train_sampling_steps:
        raise ConfigError(f"min_train_timestep must be in [0, train_sampling_steps = {config.train_sampling_steps}), "
                          f"got {config.min_train_timestep}")
    if config.max_train_timestep is not None and not (
            config.min_train_timestep < config.max_train_timestep <= config.train_sampling_steps):
        raise ConfigError(f"max_train_timestep must be in (min_train_timestep = {config.min_train_timestep}, "
                          f"train_sampling_steps = {config.train_sampling_steps}] or unset, "
                          f"got {config.max_train_timestep}")
    if config.lora is None and not config.trainable_modules:
        raise ConfigError("nothing to train: give trainable_modules (e.g. attn_temporal) or a lora section")
    if config.train_mode == "inpaint":
        if config.inpaint_mask_start + config.inpaint_mask_start_and_end + config.inpaint_mask_box \
                + config.inpaint_mask_box_over_frames + config.inpaint_mask_all <= 0:
            raise ConfigError("train_mode inpaint: the inpaint_mask_* weights are all 0; give at least one a weight")
        if config.inpaint_max_start_frames >= config.sample_n_frames:
            raise ConfigError(f"inpaint_max_start_frames must be below sample_n_frames ({config.sample_n_frames}): "
                              f"a start mask must leave a frame to generate, got {config.inpaint_max_start_frames}")
        missing = [path for path in config.validation_images if not Path(path).is_file()]
        if missing:
            raise ConfigError(f"validation_images not found: {', '.join(missing)}")
        if config.validation_prompts and len(config.validation_images) != len(config.validation_prompts):
            raise ConfigError(f"train_mode inpaint renders image-to-video samples: give one validation_images entry "
                              f"per validation prompt ({len(config.validation_prompts)}), got "
                              f"{len(config.validation_images)}")


def mask_settings(config: TrainConfig):
    """The mix of inpaint mask types a config asks for (:class:`easyanimate.inpaint.MaskSettings`)."""
    from ..inpaint import MaskSettings

    return MaskSettings(config.inpaint_mask_start, config.inpaint_mask_start_and_end, config.inpaint_mask_box,
                        config.inpaint_mask_box_over_frames, config.inpaint_max_start_frames, config.inpaint_mask_all)


def _check_ranges(config: TrainConfig) -> None:
    for name, low in WHOLE_AT_LEAST.items():
        _check_whole(name, getattr(config, name), low)
    for name, low in OPTIONAL_WHOLE_AT_LEAST.items():
        if getattr(config, name) is not None:
            _check_whole(name, getattr(config, name), low, " or unset")
    for name, bounds in REAL_RANGES.items():
        _check_real(name, getattr(config, name), *bounds)
    if config.seed is not None and not 0 <= config.seed <= MAX_SEED:
        raise ConfigError(f"seed must be a whole number from 0 to {MAX_SEED}, or unset; got {config.seed}")
    if config.lora is not None:
        _check_whole("rank", config.lora.rank, 1)
        for name, bounds in LORA_REAL_RANGES.items():
            _check_real(name, getattr(config.lora, name), *bounds)


def _check_whole(name: str, value: int, low: int, unset: str = "") -> None:
    if value < low:
        raise ConfigError(f"{name} must be a whole number >= {low}{unset}, got {value}")


def _check_real(name: str, value: float, low: float, high: float, low_in: bool, high_in: bool) -> None:
    inside = (low <= value if low_in else low < value) and (value <= high if high_in else value < high)
    if not (math.isfinite(value) and inside):
        if math.isinf(high):
            allowed = f"a finite number {'>=' if low_in else '>'} {low:g}"
        else:
            allowed = f"a number in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
        raise ConfigError(f"{name} must be {allowed}, got {value}")


def _check_names(config: TrainConfig) -> None:
    from ..data import DATA_FORMATS
    from ..schedulers import SAMPLER_NAMES

    for name, value, valid in (("mixed_precision", config.mixed_precision, [None, *MIXED_PRECISION_DTYPES]),
                               ("report_to", config.report_to, ["none", "all", *TRACKER_PACKAGES]),
                               ("lr_scheduler", config.lr_scheduler, LR_SCHEDULERS),
                               ("train_data_format", config.train_data_format, list(DATA_FORMATS)),
                               ("train_mode", config.train_mode, TRAIN_MODES),
                               ("validation_sampler", config.validation_sampler, SAMPLER_NAMES)):
        if value not in valid:
            names = ", ".join("unset (the launcher's)" if v is None else str(v) for v in valid)
            raise ConfigError(f"{name} must be one of {names}; got {value!r}")
    if config.compile is not None:
        from torch._dynamo import list_backends

        if config.compile not in list_backends(exclude_tags=()):
            raise ConfigError(f"compile must be a torch.compile backend such as {', '.join(list_backends())}; "
                              f"got {config.compile!r}")


def check_environment(config: TrainConfig) -> None:
    """Refuse, before anything is loaded, what this machine or the launcher cannot run."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import parse_flag_from_env

    installed = {str(tracker) for tracker in get_available_trackers()}
    if config.report_to in TRACKER_PACKAGES and config.report_to not in installed:
        package = TRACKER_PACKAGES[config.report_to]
        raise ConfigError(f"report_to={config.report_to} needs the {package} package, which is not installed: "
                          f"pip install {package} (or --report_to none)")
    if config.lora is not None and config.lora.train_text_encoder and parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        raise ConfigError("train_text_encoder: under DeepSpeed accelerate prepares one model, and a text-encoder LoRA "
                          "needs two (transformer and T5); train the transformer LoRA alone (--no-train_text_encoder) "
                          "or launch without DeepSpeed (plain data parallel)")


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
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error (also EASYANIMATE_DEBUG=1)")
    hints = typing.get_type_hints(TrainConfig)
    for f in sorted(dataclasses.fields(TrainConfig), key=lambda f: f.name):
        if f.name == "lora":
            continue
        kind, extra = _flag_type(hints[f.name])
        if kind is not None:
            extra["type"] = kind
        parser.add_argument(f"--{f.name}", default=argparse.SUPPRESS, help=f.metadata["help"], **extra)
    return parser


def parse_config(argv: list[str] | None, description: str, lora: bool = False) -> TrainConfig:
    """Parse flags (and ``--train_config``) into a validated :class:`TrainConfig`."""
    parser = build_parser(description)
    if lora:
        parser.add_argument("--rank", type=int, default=argparse.SUPPRESS, help="LoRA rank (128)")
        parser.add_argument("--network_alpha", type=float, default=argparse.SUPPRESS, help="LoRA alpha (64)")
        parser.add_argument("--train_text_encoder", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                            help="also train a LoRA on the T5 encoder (not under DeepSpeed)")
        parser.add_argument("--lora_motion_module", action="store_true", default=argparse.SUPPRESS,
                            help="also put LoRA into the motion modules (default: left out, as in v1)")
    values = vars(parser.parse_args(argv))
    train_config = values.pop("train_config", None)
    values.pop("debug", None)
    if lora:
        section = {k: values.pop(k) for k in ("rank", "network_alpha", "train_text_encoder") if k in values}
        if "lora_motion_module" in values:
            section["motion_module"] = values.pop("lora_motion_module")
        values["lora"] = section
    return config_from_sources(train_config, values)
