"""Diffusion pipelines."""

from .pipeline_easyanimate import EasyAnimatePipeline, EasyAnimatePipelineOutput

__all__ = ["EasyAnimatePipeline", "EasyAnimatePipelineOutput"]
