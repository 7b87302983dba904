"""Text-to-video pipeline: T5 text encoding, guided denoising of latent video, chunked VAE decoding.

Latent video is ``(B, 4, F, H/8, W/8)`` throughout. Differences from the original v1 pipeline that
users can rely on: ``check_inputs`` is called (the original had one but never called it);
``output_type`` means what it means in diffusers (``"pt"``, ``"np"``, ``"pil"``, ``"latent"``; the
original returned decoded video whatever it was asked); the VAE scaling factor comes from the VAE
config (the original hard-coded 0.18215); decoding runs in chunks of frames so memory stays bounded.

The call's defaults are the original pipeline's (20 steps, guidance 4.5, empty negative prompt, the
model's sample size): they deliberately differ from the generation defaults of the scripts and the
UI (:class:`easyanimate.generation.GenerationRequest`: 30 steps, guidance 6.0, the v1 negative
prompt, 80 frames), which a model folder can override.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, PNDMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from einops import rearrange
from PIL import Image
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..config import MODEL_CONFIG_FILE, MODEL_DEFAULTS_FILE, V1_VIDEO_CONFIG, load_config
from ..models.loading import load_transformer_checkpoint
from ..models.motion_module import TemporalContext, default_context_overlap
from ..models.transformer3d import Transformer3DModel
from ..text import encode_text, sequence_length

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pt", "np", "pil", "latent")
IMAGE_TRANSFORMERS = ("PixArtTransformer2DModel", "Transformer2DModel")
"""Transformer classes of a PixArt-alpha diffusers folder (the released layout), which load as the video model."""
MAX_FRAMES = 4096  # length of the motion module's position table


@dataclass
class EasyAnimatePipelineOutput(BaseOutput):
    """``videos``: ``(B, 3, F, H, W)`` in [0, 1] for "pt" (the original's layout), ``(B, F, H, W, 3)``
    for "np", a list of lists of PIL images for "pil", or the final latents ``(B, 4, F, h, w)`` for "latent".

    ``frames`` is the same videos frame by frame, as diffusers' video pipelines return them, whatever
    the output type: ``(B, F, H, W, 3)`` float in [0, 1] (numpy) for "pt" and "np", the PIL lists for
    "pil". ``diffusers.utils.export_to_video(output.frames[0], path)`` (which needs imageio) and
    ``easyanimate.video_io.save_video(output.frames[0], path)`` (PyAV) both take it.
    """

    videos: torch.Tensor | np.ndarray | list[list[Image.Image]]

    @property
    def frames(self) -> np.ndarray | list[list[Image.Image]] | torch.Tensor:
        if isinstance(self.videos, torch.Tensor) and self.videos.ndim == 5 and self.videos.shape[1] == 3:
            return rearrange(self.videos, "b c f h w -> b f h w c").numpy()
        return self.videos


class EasyAnimateV1Pipeline(DiffusionPipeline):
    """Text-to-video generation with :class:`~easyanimate.models.Transformer3DModel` (EasyAnimate v1).

    ``tokenizer`` and ``text_encoder`` are optional when ``prompt_embeds`` are given. Also importable as
    ``EasyAnimatePipeline``, the original's name; saved folders name ``EasyAnimateV1Pipeline``, because
    diffusers has its own ``EasyAnimatePipeline`` for the unrelated EasyAnimate V5.1 (another text
    encoder, VAE and sampler), which cannot load v1 weights. Importing :mod:`easyanimate` makes
    ``diffusers.DiffusionPipeline.from_pretrained`` resolve ``EasyAnimateV1Pipeline`` to this class.
    """

    _optional_components = ["tokenizer", "text_encoder"]
    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(self, tokenizer: PreTrainedTokenizerBase | None, text_encoder: PreTrainedModel | None,
                 vae: AutoencoderKL, transformer: Transformer3DModel, scheduler: SchedulerMixin):
        super().__init__()
        self.check_transformer(transformer)
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                              scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        # Guidance in one forward of batch 2B (faster on a GPU) or two of batch B (half the activations).
        self.batched_guidance = True

    @classmethod
    def check_transformer(cls, transformer: Transformer3DModel | None) -> None:
        """Raise a ValueError when ``transformer`` is an inpaint model: it needs :class:`EasyAnimateInpaintPipeline`."""
        if transformer is not None and getattr(transformer, "is_inpaint", False):
            raise ValueError(f"this transformer is an inpaint model ({transformer.config.in_channels} input channels: "
                             "latents, mask and masked-video latents): use EasyAnimateInpaintPipeline (predict_i2v.py) "
                             "for image-to-video, inpainting and extension")

    # ------------------------------------------------------------------------------------------
    # Loading

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, motion_module=None,
                        transformer_path: str | Path | None = None, model_config: str | Path | None = None,
                        **kwargs) -> EasyAnimateV1Pipeline:
        """Load from a PixArt-alpha folder (the released layout), a shipped demo folder or a saved folder.

        A folder whose ``transformer/`` is the 2D PixArt transformer (``model_index.json`` says
        ``PixArtAlphaPipeline``) gets the video transformer built from it with the folder's model yaml
        (``easyanimate_config.yaml``), else ``model_config``, else the released v1 yaml. ``motion_module``
        (a file such as ``easyanimate_v1_mm.safetensors`` or an :class:`~easyanimate.models.EasyAnimateMotionModule`)
        and ``transformer_path`` (a personalized checkpoint) load in the original order; without a
        motion module, a folder whose ``easyanimate_defaults.yaml`` names one next to it (the shipped
        demo models) gets that one. Other keyword arguments are diffusers' (``torch_dtype``, components...).
        """
        if "transformer" in kwargs:
            if motion_module is not None or transformer_path is not None:
                raise ValueError("give motion_module / transformer_path, or a ready transformer, not both")
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        folder = Path(pretrained_model_name_or_path)
        if not folder.is_dir():
            folder = Path(cls.download(str(pretrained_model_name_or_path),
                                       **{k: kwargs[k] for k in ("cache_dir", "revision", "token") if k in kwargs}))
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        kwargs["transformer"] = _load_video_transformer(folder, motion_module, transformer_path, model_config, dtype)
        return super().from_pretrained(folder, **kwargs)

    # ------------------------------------------------------------------------------------------
    # LoRA as switchable adapters (merging with an exact unmerge: easyanimate.lora.LoraMerger)

    def load_lora_weights(self, source: str | Path, adapter_name: str = "default", weight: float = 1.0) -> None:
        """Attach a LoRA as the peft adapter ``adapter_name`` at ``weight``, without changing the base weights.

        ``source`` is a kohya file (the original format, as released and as trained here) or a peft
        adapter folder (``adapter_config.json``; or ``transformer/`` and ``text_encoder/`` folders).
        """
        from ..adapters import attach_lora, read_lora

        models = {"transformer": self.transformer, "text_encoder": self.text_encoder}
        for component, (state, config) in read_lora(source, models).items():
            attach_lora(models[component], state, config, adapter_name, weight)

    def set_adapters(self, adapter_names: str | list[str], adapter_weights: float | list[float] | None = None) -> None:
        """Use only the named adapters, at the given weights (default 1.0); the others are switched off."""
        from ..adapters import set_lora_weight

        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        weights = adapter_weights if isinstance(adapter_weights, list) else [
            1.0 if adapter_weights is None else adapter_weights] * len(names)
        if len(weights) != len(names):
            raise ValueError(f"{len(weights)} weights for {len(names)} adapters")
        for model in (self.transformer, self.text_encoder):
            if model is None:
                continue
            for name in self.adapter_names():
                set_lora_weight(model, name, weights[names.index(name)] if name in names else 0.0)

    def adapter_names(self) -> list[str]:
        """Names of the LoRA adapters attached to the transformer or the text encoder."""
        names: dict[str, None] = {}
        for model in (self.transformer, self.text_encoder):
            for module in (model.modules() if model is not None else ()):
                names.update(dict.fromkeys(getattr(module, "lora_A", {}) or {}))
        return list(names)

    # ------------------------------------------------------------------------------------------
    # Inputs

    @property
    def _execution_device(self) -> torch.device:
        """Where inputs and latents go: the offload hooks' device when they are installed, else the transformer's.

        diffusers' own property falls back to the first component's device, which is the text
        encoder's: wrong when the text encoder is kept on the CPU and the transformer on a GPU.
        """
        if any(hasattr(component, "_hf_hook") for component in self.components.values()):
            return super()._execution_device
        return self.transformer.device

    @property
    def pixel_multiple(self) -> int:
        """Height and width in pixels must be multiples of this (32 for the grid motion module)."""
        return self.transformer.spatial_multiple * self.vae_scale_factor

    def default_size(self) -> int:
        return self.transformer.config.sample_size * self.vae_scale_factor

    def check_inputs(self, *, prompt, height: int, width: int, video_length: int, num_inference_steps: int,
                     guidance_scale: float, negative_prompt, prompt_embeds, negative_prompt_embeds,
                     prompt_attention_mask, negative_prompt_attention_mask, output_type: str,
                     num_images_per_prompt: int, latents: torch.Tensor | None, timesteps,
                     callback_on_step_end_tensor_inputs: list[str] | None = None,
                     generator: torch.Generator | list[torch.Generator] | None = None) -> None:
        """Raise a ValueError that says what is wrong and what would be right."""
        unknown = sorted(set(callback_on_step_end_tensor_inputs or []) - set(self._callback_tensor_inputs))
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} are not tensors of this pipeline; "
                             f"valid: {self._callback_tensor_inputs}")
        m = self.pixel_multiple
        if not (isinstance(height, int) and isinstance(width,
                                                       int)) or height <= 0 or width <= 0 or height % m or width % m:
            raise ValueError(f"height and width must be positive multiples of {m} pixels for this model, "
                             f"got {height}x{width} (e.g. {max(m, height // m * m)}x{max(m, width // m * m)})")
        if not isinstance(video_length, int) or not 1 <= video_length <= MAX_FRAMES:
            raise ValueError(f"video_length must be an integer from 1 to {MAX_FRAMES}, got {video_length!r}")
        if timesteps is None and (not isinstance(num_inference_steps, int) or num_inference_steps < 1):
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        if (timesteps is None and isinstance(self.scheduler, PNDMScheduler) and not self.scheduler.config.skip_prk_steps
                and num_inference_steps < 4):
            raise ValueError(f"num_inference_steps={num_inference_steps}: PNDM with its Runge-Kutta warm-up "
                             "needs at least 4 steps")
        if not isinstance(guidance_scale, (int, float)) or not np.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0 (1 or less disables guidance), "
                             f"got {guidance_scale!r}")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("give exactly one of prompt and prompt_embeds")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ValueError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
        if prompt is not None and self.text_encoder is None:
            raise ValueError("this pipeline has no text encoder: pass prompt_embeds and prompt_attention_mask")
        if prompt_embeds is not None and prompt_attention_mask is None:
            raise ValueError("prompt_embeds need prompt_attention_mask")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("give at most one of negative_prompt and negative_prompt_embeds")
        if negative_prompt_embeds is not None:
            if negative_prompt_attention_mask is None:
                raise ValueError("negative_prompt_embeds need negative_prompt_attention_mask")
            if prompt_embeds is not None and prompt_embeds.shape != negative_prompt_embeds.shape:
                raise ValueError(f"prompt_embeds {tuple(prompt_embeds.shape)} and negative_prompt_embeds "
                                 f"{tuple(negative_prompt_embeds.shape)} must have the same shape")
        if prompt_embeds is not None:
            expected = self.transformer.config.caption_channels
            if prompt_embeds.ndim != 3 or prompt_embeds.shape[-1] != expected:
                raise ValueError(f"prompt_embeds must be (B, L, {expected}), got {tuple(prompt_embeds.shape)}")
            if prompt_attention_mask.shape != prompt_embeds.shape[:2]:
                raise ValueError(f"prompt_attention_mask must be {tuple(prompt_embeds.shape[:2])}, "
                                 f"got {tuple(prompt_attention_mask.shape)}")
        batch = (len(prompt) if isinstance(prompt, list) else 1) if prompt is not None else prompt_embeds.shape[0]
        if isinstance(generator, list) and len(generator) != batch * num_images_per_prompt:
            raise ValueError(f"{len(generator)} generators for {batch * num_images_per_prompt} videos "
                             f"({batch} prompts x num_images_per_prompt {num_images_per_prompt}): give one per video")
        if latents is not None:
            expected = (batch * num_images_per_prompt, self.transformer.latent_channels, video_length,
                        height // self.vae_scale_factor, width // self.vae_scale_factor)
            if tuple(latents.shape) != expected:
                raise ValueError(f"latents must have shape {expected}, got {tuple(latents.shape)}")

    # ------------------------------------------------------------------------------------------
    # Steps

    def encode_prompt(self, prompt: str | list[str] | None, do_classifier_free_guidance: bool = True,
                      negative_prompt: str | list[str] | None = "", num_images_per_prompt: int = 1,
                      device: torch.device | None = None, prompt_embeds: torch.Tensor | None = None,
                      negative_prompt_embeds: torch.Tensor | None = None,
                      prompt_attention_mask: torch.Tensor | None = None,
                      negative_prompt_attention_mask: torch.Tensor | None = None,
                      clean_caption: bool = True, max_sequence_length: int | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """T5 states ``(B*n, L, D)`` and masks ``(B*n, L)`` for the prompt and (with guidance) the negative."""
        device = device or self._execution_device
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds, prompt_attention_mask = self._encode_text(prompts, clean_caption, max_sequence_length,
                                                                     device, warn_if_truncated=True)
        batch = prompt_embeds.shape[0]
        negative = None, None
        if do_classifier_free_guidance:
            if negative_prompt_embeds is None:
                negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * batch
                if len(negatives) != batch:
                    raise ValueError(f"{len(negatives)} negative prompts for {batch} prompts")
                negative_prompt_embeds, negative_prompt_attention_mask = self._encode_text(
                    negatives, clean_caption, prompt_embeds.shape[1], device)
            negative = (_repeat(negative_prompt_embeds.to(device), num_images_per_prompt),
                        _repeat(negative_prompt_attention_mask.to(device), num_images_per_prompt))
        positive = (_repeat(prompt_embeds.to(device), num_images_per_prompt),
                    _repeat(prompt_attention_mask.to(device), num_images_per_prompt))
        return positive[0], positive[1], negative[0], negative[1]

    @torch.no_grad()
    def _encode_text(self, prompts: list[str], clean: bool, max_length: int | None, device: torch.device,
                     warn_if_truncated: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        states, mask = encode_text(self.tokenizer, self.text_encoder, prompts, max_length, device, clean=clean,
                                   warn_if_truncated=warn_if_truncated)
        return states.to(self.text_encoder.dtype), mask

    def default_max_sequence_length(self) -> int:
        """T5 tokens a prompt is encoded into: 120, or the tokenizer's ``model_max_length`` if smaller."""
        return sequence_length(self.tokenizer)

    def prepare_latents(self, batch_size: int, num_channels: int, video_length: int, height: int, width: int,
                        dtype: torch.dtype, device: torch.device, generator: torch.Generator | list | None,
                        latents: torch.Tensor | None = None) -> torch.Tensor:
        """Initial noise ``(B, C, F, H/8, W/8)`` times the scheduler's ``init_noise_sigma``.

        The noise is drawn in float32 and then cast, so that a seed gives the same noise in every dtype: torch 2.11
        draws another sequence for fp16 and bf16 than for float32 (torch 2.13 on a CPU draws float32 and rounds).
        """
        shape = (batch_size, num_channels, video_length, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32).to(dtype)
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    @staticmethod
    def reschedule_noise(latents: torch.Tensor, context_frames: int, context_overlap: int,
                         generator: torch.Generator | list | None) -> torch.Tensor:
        """FreeNoise-style initial noise for clips longer than the window, ``(B, C, F, h, w)``.

        The first window keeps its noise; every later chunk of ``stride = frames - overlap``
        frames repeats the noise one window earlier in a shuffled order, so each window starts from
        the same kind of noise the model saw in training while frames stay distinct.
        """
        frames = latents.shape[2]
        stride = context_frames - context_overlap
        generator = generator[0] if isinstance(generator, list) else generator
        device = generator.device if generator is not None else torch.device("cpu")
        out = latents.clone()
        for start in range(context_frames, frames, stride):
            length = min(stride, frames - start)
            order = torch.randperm(length, generator=generator, device=device).to(latents.device)
            out[:, :, start:start + length] = out[:, :, start - context_frames:start - context_frames + length][:, :,
                                                                                                                order]
        return out

    def decode_latents(self, latents: torch.Tensor, chunk_size: int = 8) -> torch.Tensor:
        """Latents ``(B, 4, F, h, w)`` -> video ``(B, 3, F, H, W)`` float32 in [0, 1], ``chunk_size`` frames a call."""
        batch = latents.shape[0]
        frames = rearrange(latents, "b c f h w -> (b f) c h w") / self.vae.config.scaling_factor
        frames = frames.to(self.vae.dtype)
        decoded = [self.vae.decode(chunk).sample.float().cpu() for chunk in frames.split(chunk_size)]
        video = rearrange(torch.cat(decoded), "(b f) c h w -> b c f h w", b=batch)
        return (video / 2 + 0.5).clamp(0, 1)

    def prepare_extra_step_kwargs(self, generator, eta: float) -> dict[str, Any]:
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        extra = {}
        if "eta" in accepted:
            extra["eta"] = eta
        if "generator" in accepted:
            extra["generator"] = generator
        return extra

    def _set_timesteps(self, num_inference_steps: int, timesteps: list[int] | None, device) -> torch.Tensor:
        if timesteps is not None:
            if "timesteps" not in inspect.signature(self.scheduler.set_timesteps).parameters:
                raise ValueError(f"{type(self.scheduler).__name__} does not accept custom timesteps; "
                                 "use num_inference_steps")
            self.scheduler.set_timesteps(timesteps=timesteps, device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        return self.scheduler.timesteps

    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor, prompt_embeds: torch.Tensor,
                      prompt_attention_mask: torch.Tensor, guidance_scale: float,
                      negative_prompt_embeds: torch.Tensor | None,
                      negative_prompt_attention_mask: torch.Tensor | None,
                      temporal_context: TemporalContext | None = None,
                      inpaint_latents: torch.Tensor | None = None) -> torch.Tensor:
        """Guided epsilon ``(B, 4, F, h, w)``: guidance on the whole output, then the epsilon half.

        With guidance, the unconditional and conditional predictions come from one forward of the
        doubled batch (``batched_guidance``, the default) or from two forwards of the batch, which
        halves the activation memory of a step for the same arithmetic. An inpaint model's
        ``inpaint_latents`` ``(B, 5, F, h, w)`` go to both predictions: guidance moves the video towards the
        prompt, never away from the known content.
        """
        def forward(x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, copies: int = 1) -> torch.Tensor:
            known = None if inpaint_latents is None else torch.cat([inpaint_latents] * copies)
            return self._transformer_output(x, t, text, mask, temporal_context, known)

        if negative_prompt_embeds is None:
            output = forward(latents, prompt_embeds, prompt_attention_mask)
        else:
            if self.batched_guidance:
                uncond, cond = forward(torch.cat([latents, latents]),
                                       torch.cat([negative_prompt_embeds, prompt_embeds]),
                                       torch.cat([negative_prompt_attention_mask, prompt_attention_mask]), 2).chunk(2)
            else:
                uncond = forward(latents, negative_prompt_embeds, negative_prompt_attention_mask)
                cond = forward(latents, prompt_embeds, prompt_attention_mask)
            output = uncond + guidance_scale * (cond - uncond)
        if self.transformer.config.out_channels // 2 == latents.shape[1]:
            output = output[:, : latents.shape[1]]  # learned sigma: keep epsilon
        return output.to(latents.dtype)

    def _transformer_output(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                            mask: torch.Tensor, temporal_context: TemporalContext | None,
                            inpaint_latents: torch.Tensor | None = None) -> torch.Tensor:
        """The transformer's raw output ``(B, out_channels, F, h, w)`` for scheduler latents at step ``t``."""
        model_input = self.scheduler.scale_model_input(latents, t)
        timestep = t.expand(model_input.shape[0]) if torch.is_tensor(t) else torch.full((model_input.shape[0],), t)
        if inpaint_latents is not None:
            inpaint_latents = inpaint_latents.to(self.transformer.dtype)
        return self.transformer(model_input.to(self.transformer.dtype), text.to(self.transformer.dtype), mask,
                                timestep.to(model_input.device), return_dict=False,
                                temporal_context=temporal_context, inpaint_latents=inpaint_latents)[0]

    # ------------------------------------------------------------------------------------------
    # Generation

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        video_length: int | None = None,
        negative_prompt: str | list[str] | None = "",
        num_inference_steps: int = 20,
        timesteps: list[int] | None = None,
        guidance_scale: float = 4.5,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        output_type: str = "pt",
        return_dict: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        clean_caption: bool = True,
        max_sequence_length: int | None = None,
        context_frames: int | None = None,
        context_overlap: int | None = None,
        decode_chunk_size: int = 8,
        num_frames: int | None = None,
    ) -> EasyAnimatePipelineOutput | tuple:
        """Generate videos from text.

        Args:
            prompt: text or list of texts.
            video_length: frames F (default 16; 1 gives an image). ``num_frames`` is the same, under the
                name diffusers' video pipelines use; giving both with different values is an error.
            height, width: pixels, multiples of :attr:`pixel_multiple` (default: the model's sample size).
            guidance_scale: classifier-free guidance weight; <= 1 disables guidance.
            latents: optional initial noise ``(B, 4, F, H/8, W/8)`` (scaled by ``init_noise_sigma`` here).
            callback: legacy ``callback(step, t, latents)`` every ``callback_steps`` steps.
            callback_on_step_end: diffusers-style ``f(pipe, step, t, tensors) -> dict``; the tensors named in
                ``callback_on_step_end_tensor_inputs`` (default ``["latents"]``) are passed, and any of
                ``latents``, ``prompt_embeds``, ``negative_prompt_embeds`` it returns replace the current
                ones. Setting ``pipe._interrupt = True`` in it skips the remaining steps.
            context_frames: longest clip the motion modules see at once; longer videos are denoised with
                overlapping temporal windows (default overlap ``context_frames // 4``) and FreeNoise
                noise rescheduling. None (or a window at least as long as the video) is plain generation.
            decode_chunk_size: frames the VAE decodes at once (fewer: less memory, same video).

        Returns:
            :class:`EasyAnimatePipelineOutput` with ``videos`` (see ``output_type``).
        """
        return self._generate(
            prompt=prompt, video_length=self.resolve_video_length(video_length, num_frames),
            negative_prompt=negative_prompt, num_inference_steps=num_inference_steps, timesteps=timesteps,
            guidance_scale=guidance_scale, num_images_per_prompt=num_images_per_prompt, height=height, width=width,
            eta=eta, generator=generator, latents=latents, prompt_embeds=prompt_embeds,
            prompt_attention_mask=prompt_attention_mask, negative_prompt_embeds=negative_prompt_embeds,
            negative_prompt_attention_mask=negative_prompt_attention_mask, output_type=output_type,
            return_dict=return_dict, callback=callback, callback_steps=callback_steps,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, clean_caption=clean_caption,
            max_sequence_length=max_sequence_length, context_frames=context_frames, context_overlap=context_overlap,
            decode_chunk_size=decode_chunk_size)

    @staticmethod
    def resolve_video_length(video_length: int | None, num_frames: int | None, default: int = 16) -> int:
        """``video_length`` or its diffusers name ``num_frames`` (they must agree when both are given), else
        ``default``."""
        if num_frames is not None and video_length is not None and num_frames != video_length:
            raise ValueError(f"num_frames={num_frames} and video_length={video_length} disagree: give one of them")
        return next((n for n in (video_length, num_frames) if n is not None), default)

    def _generate(self, *, prompt, video_length: int, negative_prompt, num_inference_steps: int, timesteps,
                  guidance_scale: float, num_images_per_prompt: int, height: int | None, width: int | None, eta: float,
                  generator, latents, prompt_embeds, prompt_attention_mask, negative_prompt_embeds,
                  negative_prompt_attention_mask, output_type: str, return_dict: bool, callback, callback_steps: int,
                  callback_on_step_end, callback_on_step_end_tensor_inputs, clean_caption: bool,
                  max_sequence_length: int | None, context_frames: int | None, context_overlap: int | None,
                  decode_chunk_size: int,
                  conditioning: Callable[[int, torch.device], torch.Tensor] | None = None, keep_known: bool = False,
                  ) -> EasyAnimatePipelineOutput | tuple:
        """The steps of a call, shared by the text-to-video and the inpaint pipeline: check, encode the text,
        prepare the noise, denoise, decode. ``conditioning(batch, device)`` gives an inpaint model's
        ``inpaint_latents`` ``(batch, 5, F, h, w)`` once the batch (prompts x videos per prompt) is known;
        ``keep_known`` puts their known part back after every step."""
        height = self.default_size() if height is None else height
        width = self.default_size() if width is None else width
        if negative_prompt_embeds is not None and negative_prompt == "":
            negative_prompt = None
        self.check_inputs(
            prompt=prompt, height=height, width=width, video_length=video_length,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            prompt_attention_mask=prompt_attention_mask, negative_prompt_attention_mask=negative_prompt_attention_mask,
            output_type=output_type, num_images_per_prompt=num_images_per_prompt, latents=latents, timesteps=timesteps,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, generator=generator)
        if not isinstance(decode_chunk_size, int) or decode_chunk_size < 1:
            raise ValueError(f"decode_chunk_size must be a positive integer, got {decode_chunk_size!r}")
        temporal_context = None
        if context_frames is not None:
            if context_overlap is None:
                context_overlap = default_context_overlap(context_frames)
            if context_frames < 1 or not 0 <= context_overlap < context_frames:
                raise ValueError(f"context_frames must be >= 1 and 0 <= context_overlap < context_frames, "
                                 f"got {context_frames} and {context_overlap}")
            if video_length > context_frames:
                temporal_context = TemporalContext(context_frames, context_overlap)
        device = self._execution_device
        self._guidance_scale = guidance_scale
        self._interrupt = False
        guided = self.do_classifier_free_guidance

        # 1. Text.
        (prompt_embeds, prompt_attention_mask, negative_prompt_embeds,
         negative_prompt_attention_mask) = self.encode_prompt(
            prompt, guided, negative_prompt, num_images_per_prompt, device, prompt_embeds, negative_prompt_embeds,
            prompt_attention_mask, negative_prompt_attention_mask, clean_caption, max_sequence_length)

        # 2. Timesteps and noise.
        timesteps = self._set_timesteps(num_inference_steps, timesteps, device)
        self._num_timesteps = len(timesteps)
        given_latents = latents is not None
        latents = self.prepare_latents(prompt_embeds.shape[0], self.transformer.latent_channels, video_length,
                                       height, width, prompt_embeds.dtype, device, generator, latents)
        if temporal_context is not None and not given_latents:
            latents = self.reschedule_noise(latents, context_frames, context_overlap, generator)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        inpaint_latents = conditioning(prompt_embeds.shape[0], device) if conditioning is not None else None

        # 3. Denoising loop (with temporal windows for long clips).
        tensors = {"latents": latents, "prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds}
        latents = self._denoise(tensors, timesteps, prompt_attention_mask, negative_prompt_attention_mask,
                                extra_step_kwargs, callback, callback_steps, callback_on_step_end,
                                callback_on_step_end_tensor_inputs or ["latents"], temporal_context, inpaint_latents,
                                keep_known)

        # 4. Decode.
        videos = self._postprocess(latents, output_type, decode_chunk_size)
        self.maybe_free_model_hooks()
        return EasyAnimatePipelineOutput(videos=videos) if return_dict else (videos,)

    def _denoise(self, tensors: dict[str, torch.Tensor | None], timesteps, prompt_attention_mask,
                 negative_prompt_attention_mask, extra_step_kwargs, callback, callback_steps, callback_on_step_end,
                 tensor_names: list[str], temporal_context: TemporalContext | None,
                 inpaint_latents: torch.Tensor | None = None, keep_known: bool = False) -> torch.Tensor:
        """The denoising loop over ``tensors`` (latents and the text states a step callback may replace); with
        ``keep_known``, the known part of an inpaint model's latents is put back after every step
        (:meth:`keep_known_latents`)."""
        keep_known = keep_known and inpaint_latents is not None
        initial_noise = tensors["latents"] / self.scheduler.init_noise_sigma if keep_known else None
        if keep_known:
            tensors["latents"] = self.keep_known_latents(tensors["latents"], inpaint_latents, initial_noise,
                                                         timesteps[:1])
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                latents = tensors["latents"]
                noise = self.predict_noise(latents, t, tensors["prompt_embeds"], prompt_attention_mask,
                                           self.guidance_scale, tensors["negative_prompt_embeds"],
                                           negative_prompt_attention_mask, temporal_context, inpaint_latents)
                tensors["latents"] = self.scheduler.step(noise, t, latents, **extra_step_kwargs, return_dict=False)[0]
                if keep_known:
                    following = timesteps[i + 1:i + 2]
                    tensors["latents"] = self.keep_known_latents(tensors["latents"], inpaint_latents, initial_noise,
                                                                 following if len(following) else None)
                if callback_on_step_end is not None:
                    updated = callback_on_step_end(self, i, t, {name: tensors[name] for name in tensor_names}) or {}
                    tensors.update({name: value for name, value in updated.items() if name in tensors})
                if callback is not None and i % callback_steps == 0:
                    callback(i, t, tensors["latents"])
                progress.update()
        return tensors["latents"]

    def keep_known_latents(self, latents: torch.Tensor, inpaint_latents: torch.Tensor, noise: torch.Tensor,
                           timestep: torch.Tensor | None) -> torch.Tensor:
        """``latents`` ``(B, C, F, h, w)`` with the known part (``inpaint_latents``' mask 0) replaced by the known
        latents noised to ``timestep`` with the call's initial ``noise`` (clean after the last step, ``timestep``
        None), as diffusers' inpainting pipelines blend for models without mask channels. The known frames then
        come out as the VAE's reconstruction of the given content, whatever the model predicts there."""
        mask, known = inpaint_latents[:, :1].to(latents.dtype), inpaint_latents[:, 1:].to(latents.dtype)
        if timestep is not None:
            known = self.scheduler.add_noise(known, noise.to(latents.dtype), timestep.reshape(1))
        return latents * mask + known * (1 - mask)

    # diffusers' pipeline properties, valid during and after a call.
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Guidance runs when ``guidance_scale > 1``, as in the original."""
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` (e.g. from a step callback) to skip the remaining steps."""
        return getattr(self, "_interrupt", False)

    def _postprocess(self, latents: torch.Tensor, output_type: str, decode_chunk_size: int):
        if output_type == "latent":
            return latents
        return pixels_as_output(self.decode_latents(latents, decode_chunk_size), output_type)


def pixels_as_output(video: torch.Tensor, output_type: str) -> torch.Tensor | np.ndarray | list[list[Image.Image]]:
    """A decoded video ``(B, 3, F, H, W)`` in [0, 1] as the output type asks: itself ("pt"), ``(B, F, H, W, 3)``
    ("np") or lists of PIL frames ("pil")."""
    if output_type == "pt":
        return video
    array = rearrange(video, "b c f h w -> b f h w c").numpy()
    if output_type == "np":
        return array
    return [[Image.fromarray(np.round(frame * 255).astype(np.uint8)) for frame in clip] for clip in array]


def _load_video_transformer(folder: Path, motion_module, transformer_path: str | Path | None,
                            model_config: str | Path | None, dtype: torch.dtype | None) -> Transformer3DModel:
    """The video transformer of a model folder, whatever layout it is in (see ``from_pretrained``)."""
    index = folder / "model_index.json"
    library, class_name = json.loads(index.read_text()).get("transformer", [None, None]) if index.is_file() else (
        None, None)
    if motion_module is None:
        motion_module = _default_motion_module(folder)
    if class_name in IMAGE_TRANSFORMERS:
        own = folder / MODEL_CONFIG_FILE
        config = model_config or (own if own.is_file() else V1_VIDEO_CONFIG)
        return Transformer3DModel.from_pretrained_2d(
            folder, transformer_additional_kwargs=load_config(config).transformer_additional_kwargs,
            transformer_path=transformer_path, motion_module=motion_module, torch_dtype=dtype)
    if class_name == Transformer3DModel.__name__:
        transformer = Transformer3DModel.from_pretrained(folder, subfolder="transformer")
        if transformer_path is not None:
            load_transformer_checkpoint(transformer, transformer_path)
        if hasattr(motion_module, "apply_to"):
            motion_module.apply_to(transformer)
        elif motion_module is not None:
            from ..models.loading import load_motion_module

            load_motion_module(transformer, motion_module)
        return transformer.to(dtype) if dtype is not None else transformer
    raise ValueError(
        f"{folder}: its model_index.json names a {library}.{class_name} transformer; EasyAnimate v1 loads a "
        "PixArt-alpha folder (PixArtTransformer2DModel) or one saved by this package (Transformer3DModel). "
        "Folders of diffusers' own EasyAnimatePipeline (EasyAnimate V5.1) are another model and do not load here.")


def _default_motion_module(folder: Path) -> Path | None:
    """The motion module a model folder's defaults name (relative to the models folder two levels up), if present."""
    defaults = folder / MODEL_DEFAULTS_FILE
    if not defaults.is_file():
        return None
    from omegaconf import OmegaConf

    name = OmegaConf.load(defaults).get("motion_module")
    path = folder.parent.parent / name if name else None
    if path is not None and path.is_file():
        logger.info("using the motion module %s named by %s", path, defaults)
        return path
    return None


def _repeat(tensor: torch.Tensor, times: int) -> torch.Tensor:
    return tensor.repeat_interleave(times, dim=0) if times > 1 else tensor


EasyAnimatePipeline = EasyAnimateV1Pipeline
"""The original v1 name of :class:`EasyAnimateV1Pipeline` (the same class)."""
