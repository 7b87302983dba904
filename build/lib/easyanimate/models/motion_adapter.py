"""The motion modules of every block as one configured model (what AnimateDiff calls a motion adapter).

:class:`EasyAnimateMotionModule` is a diffusers ``ModelMixin`` + ``ConfigMixin``: its config carries what
the model yaml says about the motion modules (type, heads, temporal blocks, position-table length,
grid block size) plus the width and the number of blocks, so a saved folder loads without a yaml::

    motion = EasyAnimateMotionModule.from_single_file("models/Motion_Module/easyanimate_v1_mm.safetensors")
    motion.save_pretrained("my_motion_module")            # config.json + diffusion_pytorch_model.safetensors
    motion = EasyAnimateMotionModule.from_pretrained("my_motion_module")
    transformer = Transformer3DModel.from_pretrained_2d(pixart_folder, motion_module=motion)

Its state-dict keys are those of the released ``easyanimate_v1_mm.safetensors``
(``transformer_blocks.{i}.attn_temporal.temporal_transformer...``), so the original file is a single-file
checkpoint of it as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..config import V1_VIDEO_CONFIG, MotionModuleKwargs, load_config
from .loading import COMPUTED_BUFFERS, WeightLoadError, compare_keys, describe_state_dict, is_motion_key, read_state_dict
from .motion_module import get_motion_module

_ATTENTION_KEY = "transformer_blocks.0.attn_temporal.temporal_transformer.proj_in.weight"
_TABLE_KEY = "transformer_blocks.0.attn_temporal.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"


class _Block(nn.Module):
    """Holds one block's motion module under the name the released keys use (``attn_temporal``)."""

    def __init__(self, attn_temporal: nn.Module):
        super().__init__()
        self.attn_temporal = attn_temporal


class EasyAnimateMotionModule(ModelMixin, ConfigMixin):
    """The ``attn_temporal`` modules of all ``num_layers`` blocks of a video transformer of width ``in_channels``.

    The remaining arguments are the yaml's ``motion_module_type`` and ``motion_module_kwargs``; the
    defaults are those of the released v1 model (width 1152, 28 blocks, 8 heads, one temporal block of
    two attentions, a 4096-frame position table, 2x2 grids).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1152,
        num_layers: int = 28,
        motion_module_type: str = "VanillaGrid",
        num_attention_heads: int = 8,
        num_transformer_block: int = 1,
        attention_block_types: tuple[str, ...] = ("Temporal_Self", "Temporal_Self"),
        temporal_position_encoding: bool = True,
        temporal_position_encoding_max_len: int = 4096,
        temporal_attention_dim_div: int = 1,
        block_size: int = 2,
    ):
        super().__init__()
        kwargs = self.motion_module_kwargs()
        self.transformer_blocks = nn.ModuleList(
            _Block(get_motion_module(in_channels, motion_module_type, kwargs)) for _ in range(num_layers))

    def motion_module_kwargs(self) -> dict[str, Any]:
        """The config as the yaml's ``motion_module_kwargs``."""
        c = self.config
        return dict(num_attention_heads=c.num_attention_heads, num_transformer_block=c.num_transformer_block,
                    attention_block_types=list(c.attention_block_types),
                    temporal_position_encoding=c.temporal_position_encoding,
                    temporal_position_encoding_max_len=c.temporal_position_encoding_max_len,
                    temporal_attention_dim_div=c.temporal_attention_dim_div, block_size=c.block_size)

    # ------------------------------------------------------------------------------------------
    # Building

    @classmethod
    def config_for(cls, transformer) -> dict[str, Any]:
        """The config of the motion modules a video transformer was built with."""
        c = transformer.config
        if not transformer.has_motion_module:
            raise ValueError("this transformer has no motion modules (basic_block_type is not 'motionmodule')")
        settings = dict(in_channels=c.num_attention_heads * c.attention_head_dim, num_layers=c.num_layers,
                        motion_module_type=c.motion_module_type, **dict(c.motion_module_kwargs))
        return {k: v for k, v in settings.items() if k in cls._get_init_keys(cls)}

    @classmethod
    def from_transformer(cls, transformer) -> EasyAnimateMotionModule:
        """A copy of the motion modules of a video transformer (e.g. after training them)."""
        module = cls(**cls.config_for(transformer))
        state = {k: v for k, v in transformer.state_dict().items() if is_motion_key(k)}
        module.load_state_dict(state)
        return module.to(transformer.dtype)

    @classmethod
    def from_single_file(cls, path: str | Path, config: str | Path | dict[str, Any] | None = None,
                         torch_dtype: torch.dtype | None = None) -> EasyAnimateMotionModule:
        """Load an original motion-module file such as ``easyanimate_v1_mm.safetensors``.

        The width, block count and position-table length are read from the file's shapes; the rest
        (heads, temporal blocks, grid) cannot be, and comes from ``config``: a model yaml, a dict of
        ``motion_module_kwargs`` (plus ``motion_module_type``), or by default the released v1 yaml.
        A file that is not a motion module, or whose shapes do not fit that config, is refused
        with a message naming the keys.
        """
        state = read_state_dict(path)
        if not state or not all(is_motion_key(k) for k in state):
            raise WeightLoadError(f"{path} is not a motion-module file: it looks like {describe_state_dict(state)}; "
                                  "expected only '...attn_temporal...' keys")
        settings = _config_settings(config)
        if _ATTENTION_KEY not in state:
            raise WeightLoadError(f"{path}: no {_ATTENTION_KEY!r}; expected the keys of easyanimate_v1_mm.safetensors")
        settings["in_channels"] = int(state[_ATTENTION_KEY].shape[0])
        settings["num_layers"] = 1 + max(int(k.split(".")[1]) for k in state)
        if _TABLE_KEY in state:
            settings["temporal_position_encoding_max_len"] = int(state[_TABLE_KEY].shape[1])
        module = cls(**settings)
        comparison = compare_keys(module, state)
        missing = [k for k in comparison.missing if not COMPUTED_BUFFERS.search(k)]
        if missing or comparison.unexpected or comparison.mismatched:
            raise WeightLoadError(
                f"{path} does not fit a motion module of {settings}: {len(missing)} missing keys "
                f"(e.g. {missing[:3]}), {len(comparison.unexpected)} unexpected (e.g. {comparison.unexpected[:3]}), "
                f"{len(comparison.mismatched)} shape mismatches (e.g. {comparison.mismatched[:3]}); "
                "pass the model yaml it was trained with as config=")
        module.load_state_dict(state, strict=False)
        return module.to(torch_dtype) if torch_dtype is not None else module

    # ------------------------------------------------------------------------------------------
    # Applying

    def check_fits(self, transformer) -> None:
        """Raise a :class:`WeightLoadError` naming every setting in which the transformer differs."""
        wanted = self.config_for(transformer)
        ours = dict(self.config)
        different = {k: (ours.get(k), v) for k, v in wanted.items()
                     if (list(ours.get(k)) if isinstance(v, (list, tuple)) else ours.get(k))
                     != (list(v) if isinstance(v, (list, tuple)) else v)}
        if different:
            listed = "; ".join(f"{k}: motion module {a!r}, transformer {b!r}" for k, (a, b) in different.items())
            raise WeightLoadError(f"this motion module was built for another model: {listed}")

    def apply_to(self, transformer) -> None:
        """Copy these motion modules into a video transformer whose config they fit."""
        self.check_fits(transformer)
        state = {k: v.to(transformer.dtype) for k, v in self.state_dict().items()}
        missing, unexpected = transformer.load_state_dict(state, strict=False)
        if unexpected or any(is_motion_key(k) for k in missing):
            raise WeightLoadError(f"motion-module keys do not match the transformer: unexpected {unexpected[:3]}")


def _config_settings(config: str | Path | dict[str, Any] | None) -> dict[str, Any]:
    """Motion-module settings from a model yaml path, a dict, or the released v1 yaml."""
    if isinstance(config, dict):
        known = {f for f in MotionModuleKwargs.__dataclass_fields__} | {"motion_module_type"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown motion-module settings {unknown}; valid: {sorted(known)}")
        settings = dict(config)
    else:
        extras = load_config(config or V1_VIDEO_CONFIG).transformer_additional_kwargs
        if extras is None or extras.motion_module_kwargs is None:
            raise ValueError(f"{config} has no motion_module_kwargs: it is not a video model yaml")
        settings = {**vars(extras.motion_module_kwargs), "motion_module_type": extras.motion_module_type}
    settings.pop("cross_frame_attention_mode", None)
    settings.pop("zero_initialize", None)
    return settings
