"""Model configuration: the original yaml files read into typed, validated objects.

The v1 model yamls ship inside the package (``easyanimate/configs/``, so an installed wheel has them);
``config/`` in a checkout links to them under the original names. They keep the original keys. They are merged into
OmegaConf *structured* configs built from the dataclasses below, so an unknown key or a value of
the wrong type is an error that names the key, instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"
V1_VIDEO_CONFIG = PACKAGED_CONFIGS / "easyanimate_video_motion_module_v1.yaml"
"""The released video model: PixArt-alpha blocks, each with a 2x2-grid motion module."""
V1_IMAGE_CONFIG = PACKAGED_CONFIGS / "easyanimate_image_normal_v1.yaml"
"""The image (2D) model: plain PixArt-alpha blocks."""

MODEL_CONFIG_FILE = "easyanimate_config.yaml"
"""A model folder's own model yaml (the shipped demo models carry one)."""
MODEL_DEFAULTS_FILE = "easyanimate_defaults.yaml"
"""A model folder's generation defaults and the motion module / LoRA that go with it."""

BLOCK_TYPES = ("motionmodule", "selfattentiontemporal")
MOTION_MODULE_TYPES = ("VanillaGrid", "Vanilla")


class ConfigError(ValueError):
    """A configuration file or value that the model cannot take."""


@dataclass
class MotionModuleKwargs:
    """Options of one motion module (``motion_module_kwargs`` in the yaml).

    Defaults are those of the original ``VanillaTemporalModule``; the released config overrides
    heads 8, one transformer block, two temporal self-attentions, position encoding on, block size 2.
    """

    num_attention_heads: int = 8
    num_transformer_block: int = 2
    attention_block_types: list[str] = field(default_factory=lambda: ["Temporal_Self", "Temporal_Self"])
    cross_frame_attention_mode: str | None = None
    temporal_position_encoding: bool = False
    temporal_position_encoding_max_len: int = 4096
    temporal_attention_dim_div: int = 1
    zero_initialize: bool = True
    block_size: int = 1


@dataclass
class TransformerAdditionalKwargs:
    """The EasyAnimate keys merged over the PixArt ``transformer/config.json``."""

    patch_3d: bool = False
    fake_3d: bool = False
    time_patch_size: int | None = None
    basic_block_type: str = "motionmodule"
    time_position_encoding_before_transformer: bool = False
    motion_module_type: str = "VanillaGrid"
    motion_module_kwargs: MotionModuleKwargs | None = None


@dataclass
class NoiseSchedulerKwargs:
    """Keyword arguments every sampler is built from (``noise_scheduler_kwargs``)."""

    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    steps_offset: int = 1


@dataclass
class VaeKwargs:
    """VAE switch; v1 uses the 2D SD VAE of the PixArt folder (``enable_magvit: false``)."""

    enable_magvit: bool = False


@dataclass
class EasyAnimateConfig:
    """A whole model yaml: ``config/easyanimate_*_v1.yaml``.

    ``transformer_additional_kwargs`` is None for image (2D) configs.
    """

    transformer_additional_kwargs: TransformerAdditionalKwargs | None = None
    noise_scheduler_kwargs: NoiseSchedulerKwargs = field(default_factory=NoiseSchedulerKwargs)
    vae_kwargs: VaeKwargs = field(default_factory=VaeKwargs)

    def scheduler_kwargs(self) -> dict[str, Any]:
        """``noise_scheduler_kwargs`` as the keyword arguments every sampler is built from."""
        return dataclasses.asdict(self.noise_scheduler_kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict, as written back to yaml next to samples and checkpoints."""
        return dataclasses.asdict(self)


def load_config(path: str | Path) -> EasyAnimateConfig:
    """Read a model yaml into an :class:`EasyAnimateConfig`, rejecting unknown keys and bad types."""
    path = resolve_config_path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (expected a yaml such as "
                          "config/easyanimate_video_motion_module_v1.yaml)")
    try:
        loaded = OmegaConf.load(path)
        merged = OmegaConf.merge(OmegaConf.structured(EasyAnimateConfig), loaded)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(f"invalid config {path}: {error}") from error
    if config.transformer_additional_kwargs is not None:
        validate_transformer_kwargs(config.transformer_additional_kwargs)
    if config.vae_kwargs.enable_magvit:
        raise ConfigError(f"{path}: vae_kwargs.enable_magvit=true selects the experimental MagViT VAE, "
                          "which has no released v1 weights and is not built here; use false")
    return config


def resolve_config_path(path: str | Path) -> Path:
    """``path``, or the packaged yaml of the same name when ``path`` is ``config/<a packaged name>`` that
    does not exist from here (another working directory, or an installed package without a checkout)."""
    path = Path(path)
    packaged = PACKAGED_CONFIGS / path.name
    if not path.is_file() and path.parent.name == "config" and packaged.is_file():
        return packaged
    return path


def validate_transformer_kwargs(kwargs: TransformerAdditionalKwargs) -> None:
    """Refuse options that the original accepted but this implementation does not build."""
    if kwargs.patch_3d or kwargs.fake_3d:
        raise ConfigError("patch_3d / fake_3d (3D patch embedding) are not supported: no released v1 "
                          "weights use them; set both to false")
    if kwargs.basic_block_type not in BLOCK_TYPES:
        raise ConfigError(f"basic_block_type={kwargs.basic_block_type!r} is not supported; "
                          f"valid: {', '.join(BLOCK_TYPES)}")
    if kwargs.basic_block_type != "motionmodule":
        return
    if kwargs.motion_module_type not in MOTION_MODULE_TYPES:
        raise ConfigError(f"motion_module_type={kwargs.motion_module_type!r} is not supported; "
                          f"valid: {', '.join(MOTION_MODULE_TYPES)}")
    mm = kwargs.motion_module_kwargs
    if mm is None:
        raise ConfigError("basic_block_type 'motionmodule' needs motion_module_kwargs")
    if any(t != "Temporal_Self" for t in mm.attention_block_types):
        raise ConfigError(f"attention_block_types={mm.attention_block_types}: only 'Temporal_Self' is supported")
    if mm.cross_frame_attention_mode is not None:
        raise ConfigError("cross_frame_attention_mode is not supported; leave it null")
    if mm.block_size < 1 or mm.num_transformer_block < 1 or mm.num_attention_heads < 1:
        raise ConfigError("motion_module_kwargs: block_size, num_transformer_block and "
                          "num_attention_heads must be >= 1")


def transformer_kwargs_for_model(kwargs: TransformerAdditionalKwargs | None) -> dict[str, Any]:
    """The keyword arguments :class:`Transformer3DModel` takes on top of a PixArt config."""
    if kwargs is None:
        raise ConfigError("this config has no transformer_additional_kwargs: it is an image (2D) config; "
                          "use config/easyanimate_video_motion_module_v1.yaml for video")
    result = dataclasses.asdict(kwargs)
    if result["basic_block_type"] != "motionmodule":
        result["motion_module_kwargs"] = None
    return result
