"""EasyAnimate: text-to-video generation with a PixArt-alpha DiT and a grid motion module."""

from .models import Transformer3DModel
from .pipelines import EasyAnimatePipeline, EasyAnimatePipelineOutput

__all__ = ["EasyAnimatePipeline", "EasyAnimatePipelineOutput", "Transformer3DModel"]
