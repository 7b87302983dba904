"""EasyAnimate: text-to-video generation with a PixArt-alpha DiT and a grid motion module."""

from .models import EasyAnimateMotionModule, Transformer3DModel
from .pipelines import EasyAnimatePipeline, EasyAnimatePipelineOutput, EasyAnimateV1Pipeline

__all__ = ["EasyAnimateMotionModule", "EasyAnimatePipeline", "EasyAnimatePipelineOutput", "EasyAnimateV1Pipeline",
           "Transformer3DModel"]
