"""Diffusion pipelines.

``EasyAnimateV1Pipeline`` (text-to-video) and ``EasyAnimateV1InpaintPipeline`` (image-to-video, inpainting,
extension) are registered under those names in the ``diffusers`` namespace, so
``diffusers.DiffusionPipeline.from_pretrained`` builds them from a folder saved by this package (whose
``model_index.json`` names one) once :mod:`easyanimate` has been imported.
"""

import diffusers

from .pipeline_easyanimate import EasyAnimatePipeline, EasyAnimatePipelineOutput, EasyAnimateV1Pipeline
from .pipeline_easyanimate_inpaint import EasyAnimateInpaintPipeline, EasyAnimateV1InpaintPipeline

for _pipeline in (EasyAnimateV1Pipeline, EasyAnimateV1InpaintPipeline):
    setattr(diffusers, _pipeline.__name__, _pipeline)

__all__ = ["EasyAnimateInpaintPipeline", "EasyAnimatePipeline", "EasyAnimatePipelineOutput",
           "EasyAnimateV1InpaintPipeline", "EasyAnimateV1Pipeline"]
