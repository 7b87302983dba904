"""EasyAnimate: text-to-video generation with a PixArt-alpha DiT and a grid motion module."""

from .models import EasyAnimateMotionModule, Transformer3DModel
from .pipelines import (
    EasyAnimateInpaintPipeline,
    EasyAnimatePipeline,
    EasyAnimatePipelineOutput,
    EasyAnimateV1InpaintPipeline,
    EasyAnimateV1Pipeline,
)

__all__ = ["EasyAnimateInpaintPipeline", "EasyAnimateMotionModule", "EasyAnimatePipeline", "EasyAnimatePipelineOutput",
           "EasyAnimateV1InpaintPipeline", "EasyAnimateV1Pipeline", "Transformer3DModel"]
