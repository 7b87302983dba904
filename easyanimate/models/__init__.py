"""The video diffusion transformer and its loaders."""

from .loading import (
    LoadReport,
    MotionModuleSpec,
    WeightLoadError,
    load_motion_module,
    load_transformer_checkpoint,
    read_state_dict,
    save_motion_module,
)
from .motion_adapter import EasyAnimateMotionModule
from .motion_module import TemporalContext, VanillaTemporalModule, get_motion_module
from .transformer3d import Transformer3DModel, Transformer3DModelOutput

__all__ = [
    "EasyAnimateMotionModule",
    "LoadReport",
    "MotionModuleSpec",
    "TemporalContext",
    "Transformer3DModel",
    "Transformer3DModelOutput",
    "VanillaTemporalModule",
    "WeightLoadError",
    "get_motion_module",
    "load_motion_module",
    "load_transformer_checkpoint",
    "read_state_dict",
    "save_motion_module",
]
