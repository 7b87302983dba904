"""Diffusion pipelines.

``EasyAnimateV1Pipeline`` is registered under that name in the ``diffusers`` namespace, so
``diffusers.DiffusionPipeline.from_pretrained`` builds it from a folder saved by this package (whose
``model_index.json`` names it) once :mod:`easyanimate` has been imported.
"""

import diffusers

from .pipeline_easyanimate import EasyAnimatePipeline, EasyAnimatePipelineOutput, EasyAnimateV1Pipeline

setattr(diffusers, EasyAnimateV1Pipeline.__name__, EasyAnimateV1Pipeline)

__all__ = ["EasyAnimatePipeline", "EasyAnimatePipelineOutput", "EasyAnimateV1Pipeline"]
