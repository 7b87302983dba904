"""Validation samples during training: the prompts rendered with the weights being trained.

Samples go to ``output_dir/sample/sample-<step>-<i>.mp4`` (``.png`` for image models), drawn with a
fixed seed so samples of different steps are comparable. With EMA, the EMA weights are rendered.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel

from ..models import Transformer3DModel
from ..pipelines import EasyAnimatePipeline
from ..schedulers import build_scheduler
from ..video_io import save_image, save_video
from .components import Components
from .config import TrainConfig

logger = logging.getLogger(__name__)


@torch.no_grad()
def render_samples(components: Components, transformer: Transformer3DModel, config: TrainConfig, step: int,
                   device: torch.device) -> list[Path]:
    """Render the validation prompts with the model yaml's scheduler; returns the files written."""
    pipeline = EasyAnimatePipeline(components.tokenizer, components.text_encoder, components.vae, transformer,
                                   build_scheduler(config.validation_sampler, components.model_config.scheduler_kwargs()))
    pipeline.set_progress_bar_config(disable=True)
    frames = 1 if components.image_mode else (config.validation_frames or config.sample_n_frames)
    written = []
    was_training = transformer.training
    transformer.eval()
    for i, prompt in enumerate(config.validation_prompts):
        generator = torch.Generator(device=device).manual_seed(config.seed or 0)
        video = pipeline(prompt, negative_prompt="bad detailed", video_length=frames, height=config.sample_size,
                         width=config.sample_size, num_inference_steps=config.validation_inference_steps,
                         guidance_scale=config.validation_guidance_scale, generator=generator).videos[0]
        path = Path(config.output_dir) / "sample" / f"sample-{step}-{i}.{'png' if frames == 1 else 'mp4'}"
        if frames == 1:
            save_image(video[:, 0], path)
        else:
            save_video(video, path, fps=8)
        written.append(path)
    transformer.train(was_training)
    return written


def run_validation(accelerator: Accelerator, components: Components, transformer, ema: EMAModel | None,
                   trainable: list[tuple[str, torch.nn.Parameter]], config: TrainConfig, step: int) -> None:
    """Render samples on the main process (EMA weights swapped in); a failure is logged, never fatal."""
    if not accelerator.is_main_process:
        return
    params = [p for _, p in trainable]
    model = accelerator.unwrap_model(transformer)
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        for path in render_samples(components, model, config, step, accelerator.device):
            logger.info("validation sample %s", path)
    except Exception:  # a failed preview must not end a long run, but it is reported in full
        logger.exception("validation at step %d failed", step)
    finally:
        if ema is not None:
            ema.restore(params)
