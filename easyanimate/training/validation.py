"""Validation samples during training: the prompts rendered with the weights being trained.

Samples go to ``output_dir/sample/sample-<step>-<i>.mp4`` (``.png`` for image models) and to the run's
trackers (``--report_to``), drawn with a fixed seed so samples of different steps are comparable. With
EMA, the EMA weights are rendered. An inpaint run renders image-to-video samples: prompt ``i`` starts from
``validation_images[i]``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from diffusers.training_utils import EMAModel

from ..models import Transformer3DModel
from ..pipelines import EasyAnimateInpaintPipeline, EasyAnimatePipeline
from ..schedulers import build_scheduler
from ..video_io import read_image, save_image, save_video
from .components import Components
from .config import TrainConfig

logger = get_logger(__name__)

SAMPLE_FPS = 8


@torch.no_grad()
def render_samples(components: Components, transformer: Transformer3DModel, config: TrainConfig,
                   device: torch.device) -> list[torch.Tensor]:
    """The validation prompts rendered with the model yaml's scheduler: one ``(3, F, H, W)`` video in [0, 1] each."""
    inpaint = config.train_mode == "inpaint"
    pipeline = (EasyAnimateInpaintPipeline if inpaint else EasyAnimatePipeline)(
        components.tokenizer, components.text_encoder, components.vae, transformer,
        build_scheduler(config.validation_sampler, components.model_config.scheduler_kwargs()))
    pipeline.set_progress_bar_config(disable=True)
    frames = 1 if components.image_mode else (config.validation_frames or config.sample_n_frames)
    videos = []
    was_training = transformer.training
    transformer.eval()
    for i, prompt in enumerate(config.validation_prompts):
        generator = torch.Generator(device=device).manual_seed(config.seed or 0)
        known = {"image": read_image(config.validation_images[i])} if inpaint else {}
        videos.append(pipeline(prompt, negative_prompt="bad detailed", video_length=frames, height=config.sample_size,
                               width=config.sample_size, num_inference_steps=config.validation_inference_steps,
                               guidance_scale=config.validation_guidance_scale, generator=generator,
                               **known).videos[0])
    transformer.train(was_training)
    return videos


def write_samples(videos: list[torch.Tensor], output_dir: Path, step: int) -> list[Path]:
    """``sample/sample-<step>-<i>.mp4`` (``.png`` for one frame)."""
    written = []
    for i, video in enumerate(videos):
        path = output_dir / "sample" / f"sample-{step}-{i}.{'png' if video.shape[1] == 1 else 'mp4'}"
        if video.shape[1] == 1:
            save_image(video[:, 0], path)
        else:
            save_video(video, path, fps=SAMPLE_FPS)
        written.append(path)
    return written


def log_samples(accelerator: Accelerator, videos: list[torch.Tensor], prompts: list[str], step: int) -> None:
    """Send the samples to the run's trackers: tensorboard as image grids (one tile per frame), wandb as videos."""
    for tracker in accelerator.trackers:
        if tracker.name not in ("tensorboard", "wandb"):
            logger.info("validation samples are not sent to %s; they are in %s/sample", tracker.name,
                        accelerator.project_dir)
            continue
        for i, (video, prompt) in enumerate(zip(videos, prompts)):
            frames = (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()  # (F, H, W, 3)
            log_sample(tracker, f"validation/{i}", frames, prompt, step)


def log_sample(tracker, key: str, frames, prompt: str, step: int) -> None:
    """One sample ``(F, H, W, 3)`` uint8 to a tensorboard or wandb tracker."""
    if tracker.name == "tensorboard":
        tracker.log_images({key: frames}, step=step, dataformats="NHWC")
        return
    import wandb

    media = wandb.Image(frames[0], caption=prompt) if len(frames) == 1 else wandb.Video(
        frames.transpose(0, 3, 1, 2), fps=SAMPLE_FPS, caption=prompt)
    tracker.log({key: media}, step=step)


def run_validation(accelerator: Accelerator, components: Components, transformer, ema: EMAModel | None,
                   trainable: list[tuple[str, torch.nn.Parameter]], config: TrainConfig, step: int) -> None:
    """Render, write and log samples on the main process (EMA weights swapped in); a failure is logged, never fatal."""
    if not accelerator.is_main_process:
        return
    params = [p for _, p in trainable]
    model = accelerator.unwrap_model(transformer)
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        videos = render_samples(components, model, config, accelerator.device)
        for path in write_samples(videos, Path(config.output_dir), step):
            logger.info("validation sample %s", path)
        log_samples(accelerator, videos, config.validation_prompts, step)
    except Exception:  # a failed preview must not end a long run, but it is reported in full
        logger.exception("validation at step %d failed", step)
    finally:
        if ema is not None:
            ema.restore(params)
