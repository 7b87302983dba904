"""Image-to-video, video inpainting and video extension with an inpaint model (v1's ``EasyAnimateInpaintPipeline``).

The model (:class:`~easyanimate.models.Transformer3DModel` with ``in_channels = 2C + 1``) denoises the latent
video ``(B, C, F, h, w)`` beside ``inpaint_latents`` ``(B, 1 + C, F, h, w)``: the mask at latent resolution
(1 = generate, 0 = known) and the VAE latents of the known video with the masked pixels set to -1
(:mod:`easyanimate.inpaint`). Every mode is a known video and a mask:

* image-to-video: frame 0 is ``image``, the rest is generated; ``end_image`` also fixes the last frame;
* video inpainting: ``video`` with ``mask_video`` (white / 1 = generate, per frame or one image for all frames)
  or a ``box`` ``(left, top, right, bottom)`` in pixels of the generated video, in every frame;
* video extension: a ``video`` of k frames and no mask: they are the known start of the ``video_length`` frames.

Images and videos of another size than the generation size are resized to cover it and centre-cropped, with
a logged message saying so. The rest of a call (text, guidance, samplers, temporal windows, callbacks,
output types) is :class:`~easyanimate.pipelines.EasyAnimateV1Pipeline`'s, whose steps this class reuses.
Clips longer than ``context_frames`` are made with ``long_video="windows"`` (the temporal windows of the
text-to-video pipeline, all frames denoised together) or ``"extension"`` (chunk by chunk, each chunk starting
from the last ``context_overlap`` frames made so far).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..inpaint import latent_mask, mask_pixels
from ..models.transformer3d import Transformer3DModel
from .pipeline_easyanimate import EasyAnimatePipelineOutput, EasyAnimateV1Pipeline, pixels_as_output

logger = logging.getLogger(__name__)

LONG_VIDEO_MODES = ("windows", "extension")
"""How clips longer than ``context_frames`` are made: all frames in overlapping temporal windows, or chunk by
chunk by repeated extension."""

ImageInput = Image.Image | np.ndarray | torch.Tensor
"""A PIL image, ``(H, W, 3)`` uint8 or float in [0, 1], or a tensor ``(3, H, W)`` in [0, 1]."""
VideoInput = Sequence[Image.Image] | np.ndarray | torch.Tensor
"""PIL frames, ``(F, H, W, 3)`` uint8 or float in [0, 1], or a tensor ``(3, F, H, W)`` in [0, 1] (the pipeline's
own ``videos[i]``)."""


class EasyAnimateV1InpaintPipeline(EasyAnimateV1Pipeline):
    """Image-to-video, video inpainting and extension with an inpaint transformer (EasyAnimate v1's 9 channels).

    Also importable as ``EasyAnimateInpaintPipeline``, the original's name; diffusers has its own class of that
    name for the unrelated EasyAnimate V5.1, so saved folders name this one ``EasyAnimateV1InpaintPipeline``.
    A text-to-video transformer is refused with a message; the text-to-video pipeline refuses an inpaint one.
    """

    @classmethod
    def check_transformer(cls, transformer: Transformer3DModel | None) -> None:
        """Raise a ValueError when ``transformer`` is a text-to-video model (no mask and masked-video inputs)."""
        if transformer is not None and not getattr(transformer, "is_inpaint", False):
            raise ValueError(f"this transformer is a text-to-video model ({transformer.config.in_channels} input "
                             "channels): image-to-video, inpainting and extension need an inpaint model (2C + 1 input "
                             "channels: latents, mask, masked-video latents; train one with --train_mode inpaint). "
                             "For text-to-video use EasyAnimateV1Pipeline (predict_t2v.py)")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: ImageInput | list[ImageInput] | None = None,
        end_image: ImageInput | list[ImageInput] | None = None,
        video: VideoInput | list[VideoInput] | None = None,
        mask_video: VideoInput | ImageInput | None = None,
        box: tuple[int, int, int, int] | None = None,
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
        long_video: str = "windows",
        keep_known: bool = True,
        decode_chunk_size: int = 8,
        num_frames: int | None = None,
    ) -> EasyAnimatePipelineOutput | tuple:
        """Generate videos that keep the given content.

        Args:
            prompt: text or list of texts (what the generated part shows).
            image: the first frame (image-to-video), or one per prompt.
            end_image: the last frame (with ``image``), or one per prompt.
            video: the video to inpaint (with ``mask_video`` or ``box``; ``video_length`` defaults to its frame
                count), or, without a mask, the known first frames of a longer video (extension), or one per prompt.
            mask_video: same size as ``video``; white / values > 0.5 are generated. One frame (or an image) is
                used for every frame.
            box: ``(left, top, right, bottom)`` pixels of the generated video, generated in every frame of ``video``.
            video_length: frames F (default 16; ``num_frames`` is the same).
            context_frames, context_overlap: for videos longer than ``context_frames``: temporal windows of that
                many frames sharing ``context_overlap`` (``long_video="windows"``), or chunks of that many frames
                each starting from the last ``context_overlap`` frames made so far (``"extension"``).
            keep_known: after every step put the known latents back (noised to the next step; clean at the end),
                so the known frames and pixels come out as the VAE's reconstruction of what was given, as
                diffusers' inpainting pipelines do for models without mask channels; False leaves them to the
                model (which sees them in its mask and masked-video channels either way).
            The other arguments are :meth:`EasyAnimateV1Pipeline.__call__`'s; ``latents`` are not taken with
            ``"extension"``, whose chunks each draw their noise.

        Returns:
            :class:`~easyanimate.pipelines.EasyAnimatePipelineOutput` (see ``output_type``).
        """
        height = self.default_size() if height is None else height
        width = self.default_size() if width is None else width
        prompts = (len(prompt) if isinstance(prompt, list) else
                   prompt_embeds.shape[0] if prompt_embeds is not None else 1)
        known, mask = self.prepare_known_video(image, end_image, video, mask_video, box, video_length, num_frames,
                                               height, width, prompts)
        if long_video not in LONG_VIDEO_MODES:
            raise ValueError(f"long_video must be one of {LONG_VIDEO_MODES}, got {long_video!r}")
        arguments = dict(
            prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
            timesteps=timesteps, guidance_scale=guidance_scale, num_images_per_prompt=num_images_per_prompt,
            height=height, width=width, eta=eta, generator=generator, prompt_embeds=prompt_embeds,
            prompt_attention_mask=prompt_attention_mask, negative_prompt_embeds=negative_prompt_embeds,
            negative_prompt_attention_mask=negative_prompt_attention_mask, callback=callback,
            callback_steps=callback_steps, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, clean_caption=clean_caption,
            max_sequence_length=max_sequence_length, decode_chunk_size=decode_chunk_size, keep_known=keep_known)
        frames = known.shape[1]
        if long_video == "extension" and context_frames is not None and frames > context_frames:
            if latents is not None:
                raise ValueError("latents cannot be given with long_video='extension': each chunk draws its own noise")
            return self._generate_by_extension(known, mask, context_frames, context_overlap, output_type, return_dict,
                                               arguments)
        return self._generate(**arguments, video_length=frames, latents=latents, output_type=output_type,
                              return_dict=return_dict, context_frames=context_frames, context_overlap=context_overlap,
                              conditioning=functools.partial(self.prepare_inpaint_latents, known, mask))

    # ------------------------------------------------------------------------------------------
    # The known video and its mask

    def prepare_known_video(self, image, end_image, video, mask_video, box, video_length: int | None,
                            num_frames: int | None, height: int, width: int, prompts: int,
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """The known video ``(B0, F, 3, H, W)`` in [-1, 1] and its mask ``(B0, F, 1, H, W)`` (1 = generate), at the
        generation size; ``B0`` is 1 (shared by every prompt) or the number of prompts. Raises a ValueError that
        says what is wrong with the inputs."""
        if (image is None) == (video is None):
            raise ValueError("give an image (image-to-video, optionally with end_image) or a video (inpainting with "
                             "mask_video or box; without a mask, the known start of a longer video): exactly one")
        if video is None and (mask_video is not None or box is not None):
            raise ValueError("mask_video and box go with a video; for image-to-video give image (and end_image)")
        if image is None and end_image is not None:
            raise ValueError("end_image goes with image (first-and-last-frame generation)")
        if mask_video is not None and box is not None:
            raise ValueError("give mask_video or box, not both")
        if image is not None:
            frames = self.resolve_video_length(video_length, num_frames)
            return self._image_inputs(image, end_image, frames, height, width, prompts)
        return self._video_inputs(video, mask_video, box, video_length, num_frames, height, width, prompts)

    def _image_inputs(self, image, end_image, frames: int, height: int, width: int, prompts: int):
        starts = _per_prompt(image, prompts, "image", _as_image)
        ends = _per_prompt(end_image, prompts, "end_image", _as_image) if end_image is not None else None
        if ends is not None and frames < 2:
            raise ValueError(f"an end image needs at least 2 frames, got video_length={frames}")
        count = max(len(starts), len(ends) if ends is not None else 1)
        known = torch.zeros(count, frames, 3, height, width)
        mask = torch.ones(count, frames, 1, height, width)
        for i in range(count):
            known[i, 0] = fit_frames(starts[min(i, len(starts) - 1)][None], height, width, "image")[0]
            mask[i, 0] = 0
            if ends is not None:
                known[i, -1] = fit_frames(ends[min(i, len(ends) - 1)][None], height, width, "end image")[0]
                mask[i, -1] = 0
        return known * 2 - 1, mask

    def _video_inputs(self, video, mask_video, box, video_length: int | None, num_frames: int | None, height: int,
                      width: int, prompts: int):
        clips = _per_prompt(video, prompts, "video", _as_video)
        given = clips[0].shape[0]
        if any(clip.shape[0] != given for clip in clips):
            raise ValueError(f"the videos have different frame counts: {[clip.shape[0] for clip in clips]}")
        inpainting = mask_video is not None or box is not None
        frames = self.resolve_video_length(video_length, num_frames, default=given)
        if inpainting and frames != given:
            raise ValueError(f"the video to inpaint has {given} frames; video_length is {frames}")
        if not inpainting and frames <= given:
            raise ValueError(f"a video without mask_video or box is the known start of a longer video (extension): "
                             f"video_length must exceed its {given} frames, got {frames}")
        known = torch.zeros(len(clips), frames, 3, height, width)
        mask = torch.ones(len(clips), frames, 1, height, width)
        for i, clip in enumerate(clips):
            known[i, :given] = fit_frames(clip, height, width, "video")
        if mask_video is not None:
            frame_size = tuple(clips[0].shape[-2:])
            mask[:] = self._mask_frames(mask_video, given, frame_size, height, width)
        elif box is not None:
            mask[:] = 0
            rows, cols = _box_slices(box, height, width)
            mask[:, :, :, rows, cols] = 1
        else:
            mask[:, :given] = 0
        return known * 2 - 1, mask

    @staticmethod
    def _mask_frames(mask_video, frames: int, frame_size: tuple[int, int], height: int, width: int) -> torch.Tensor:
        """The mask ``(F, 1, H, W)`` in {0, 1} at the generation size, from one mask frame or one per video frame."""
        masks = _as_mask(mask_video)
        if tuple(masks.shape[-2:]) != frame_size:
            raise ValueError(f"the mask is {masks.shape[-1]}x{masks.shape[-2]} pixels, the video {frame_size[1]}x"
                             f"{frame_size[0]}: give a mask of the video's size")
        if masks.shape[0] not in (1, frames):
            raise ValueError(f"the mask has {masks.shape[0]} frames, the video {frames}: give one mask frame for all "
                             "frames, or one per frame")
        fitted = fit_frames(masks, height, width, "mask", mode="area")
        return (fitted > 0).float().expand(frames, -1, -1, -1)  # a pixel partly masked is generated

    def prepare_inpaint_latents(self, known: torch.Tensor, mask: torch.Tensor, batch: int,
                                device: torch.device) -> torch.Tensor:
        """``inpaint_latents`` ``(batch, 1 + C, F, h, w)`` from the known video ``(B0, F, 3, H, W)`` in [-1, 1] and its
        mask ``(B0, F, 1, H, W)``: the latent-resolution mask and the VAE latents (posterior mean, scaled) of the
        masked video. ``B0`` (1, or one per prompt) is repeated to ``batch`` (prompts x videos per prompt)."""
        masked = mask_pixels(known, mask).flatten(0, 1).to(device, self.vae.dtype)
        encoded = torch.cat([self.vae.encode(chunk).latent_dist.mode() for chunk in masked.split(8)])
        encoded = encoded.unflatten(0, (known.shape[0], -1)).transpose(1, 2) * self.vae.config.scaling_factor
        conditioning = torch.cat([latent_mask(mask, self.vae_scale_factor).to(device, encoded.dtype), encoded], dim=1)
        if batch % conditioning.shape[0]:
            raise ValueError(f"{conditioning.shape[0]} known videos for {batch} videos to generate")
        return conditioning.repeat_interleave(batch // conditioning.shape[0], dim=0)

    # ------------------------------------------------------------------------------------------
    # Long videos by repeated extension

    def _generate_by_extension(self, known: torch.Tensor, mask: torch.Tensor, chunk_frames: int,
                               overlap: int | None, output_type: str, return_dict: bool,
                               arguments: dict[str, Any]) -> EasyAnimatePipelineOutput | tuple:
        """Chunks of ``chunk_frames`` frames, each starting from the last ``overlap`` frames made so far (known, as
        a ``start`` mask in training), the first from the given content; the video is the chunks put end to end,
        the shared frames once. The last chunk is shorter when the frames do not divide evenly."""
        overlap = chunk_frames // 4 if overlap is None else overlap
        if not 1 <= overlap < chunk_frames:
            raise ValueError(f"extension needs 1 <= context_overlap < context_frames, got {overlap} and {chunk_frames}")
        if output_type == "latent":
            raise ValueError("output_type='latent' is not available with long_video='extension': each chunk starts "
                             "from decoded frames")
        frames = known.shape[1]
        made = None  # (B, 3, frames so far, H, W) in [0, 1]
        start = 0
        while True:
            stop = min(start + chunk_frames, frames)
            part_known, part_mask = known[:, start:stop].clone(), mask[:, start:stop].clone()
            if made is not None:
                shared = made[:, :, start:].transpose(1, 2) * 2 - 1  # (B, overlap, 3, H, W)
                if part_known.shape[0] != shared.shape[0]:
                    part_known, part_mask = (t.expand(shared.shape[0], *t.shape[1:]).clone()
                                             for t in (part_known, part_mask))
                part_known[:, :shared.shape[1]], part_mask[:, :shared.shape[1]] = shared, 0
            chunk = self._generate(**arguments, video_length=stop - start, latents=None, output_type="pt",
                                   return_dict=True, context_frames=None, context_overlap=None,
                                   conditioning=functools.partial(self.prepare_inpaint_latents, part_known, part_mask),
                                   ).videos
            made = chunk if made is None else torch.cat([made, chunk[:, :, made.shape[2] - start:]], dim=2)
            if stop == frames or self.interrupt:
                break
            start = stop - overlap
        videos = pixels_as_output(made, output_type)
        return EasyAnimatePipelineOutput(videos=videos) if return_dict else (videos,)


EasyAnimateInpaintPipeline = EasyAnimateV1InpaintPipeline
"""The original v1 name of :class:`EasyAnimateV1InpaintPipeline` (the same class)."""


# ----------------------------------------------------------------------------------------------
# Inputs of any kind and size


def fit_frames(frames: torch.Tensor, height: int, width: int, what: str, mode: str = "bilinear") -> torch.Tensor:
    """Frames ``(N, C, h, w)`` resized to cover ``height x width`` and centre-cropped to it; a size change is logged."""
    in_height, in_width = frames.shape[-2:]
    if (in_height, in_width) == (height, width):
        return frames
    scale = max(height / in_height, width / in_width)
    size = (max(height, round(in_height * scale)), max(width, round(in_width * scale)))
    resized = F.interpolate(frames.float(), size=size, mode=mode, **({"antialias": True} if mode == "bilinear" else {}))
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    logger.warning("the %s is %dx%d pixels: resized to %dx%d and centre-cropped to %dx%d, the size of the video to "
                   "generate", what, in_width, in_height, size[1], size[0], width, height)
    return resized[..., top:top + height, left:left + width].clamp(0, 1)


def _as_image(image: ImageInput) -> torch.Tensor:
    """``(3, H, W)`` float in [0, 1] from a PIL image, an ``(H, W, 3)`` array or a ``(3, H, W)`` tensor."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"an image array must be (H, W, 3), got shape {image.shape}")
        scale = 255 if image.dtype == np.uint8 else 1
        image = torch.from_numpy(image.astype(np.float32) / scale).permute(2, 0, 1)
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"an image must be a PIL image, an (H, W, 3) array or a (3, H, W) tensor in [0, 1], got "
                         f"{type(image).__name__} {tuple(getattr(image, 'shape', ()))}")
    return _unit_range(image.float(), "image")


def _as_video(video: VideoInput) -> torch.Tensor:
    """``(F, 3, H, W)`` float in [0, 1] from PIL frames, an ``(F, H, W, 3)`` array or a ``(3, F, H, W)`` tensor."""
    if isinstance(video, (list, tuple)) and video and all(isinstance(frame, Image.Image) for frame in video):
        return torch.stack([_as_image(frame) for frame in video])
    if isinstance(video, np.ndarray):
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"a video array must be (F, H, W, 3), got shape {video.shape}")
        return torch.stack([_as_image(frame) for frame in video])
    if not isinstance(video, torch.Tensor) or video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"a video must be PIL frames, an (F, H, W, 3) array or a (3, F, H, W) tensor in [0, 1], got "
                         f"{type(video).__name__} {tuple(getattr(video, 'shape', ()))}")
    return _unit_range(video.float(), "video").transpose(0, 1)


def _as_mask(mask: VideoInput | ImageInput) -> torch.Tensor:
    """``(F, 1, H, W)`` float in [0, 1] from PIL images (any mode), arrays ``(H, W)``, ``(F, H, W)``,
    ``(F, H, W, 3)`` or tensors ``(H, W)``, ``(F, H, W)``, ``(1, F, H, W)``; colour masks count by their brightest
    channel."""
    if isinstance(mask, Image.Image):
        mask = [mask]
    if isinstance(mask, (list, tuple)) and mask and all(isinstance(m, Image.Image) for m in mask):
        mask = np.stack([np.asarray(m.convert("L")) for m in mask])
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask.astype(np.float32) / 255 if mask.dtype == np.uint8 else mask.astype(np.float32))
        if mask.ndim in (3, 4) and mask.shape[-1] == 3:
            mask = mask.amax(dim=-1)
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3, 4) or (mask.ndim == 4 and mask.shape[0] != 1):
        raise ValueError(f"a mask must be PIL images, an array (H, W) / (F, H, W) or a tensor (H, W) / (F, H, W) / "
                         f"(1, F, H, W), got {type(mask).__name__} {tuple(getattr(mask, 'shape', ()))}")
    mask = mask.reshape(-1, *mask.shape[-2:])[:, None]
    return _unit_range(mask.float(), "mask")


def _unit_range(values: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(values).all() or values.min() < -1e-3 or values.max() > 1 + 1e-3:
        raise ValueError(f"the {what} must hold values in [0, 1] (or uint8 0..255), got "
                         f"[{float(values.min()):.3f}, {float(values.max()):.3f}]")
    return values.clamp(0, 1)


def _per_prompt(values, prompts: int, what: str, convert) -> list[torch.Tensor]:
    """One input shared by every prompt, or a list (or a batch tensor) of one per prompt; a list of PIL images given
    as a video is that video's frames."""
    video = what == "video"
    if isinstance(values, torch.Tensor) and values.ndim == (5 if video else 4):
        items = list(values)
    elif isinstance(values, list) and not (video and values and all(isinstance(v, Image.Image) for v in values)):
        items = values
    else:
        items = [values]
    if len(items) not in (1, prompts):
        raise ValueError(f"{len(items)} {what}s for {prompts} prompts: give one for all, or one per prompt")
    return [convert(item) for item in items]


def _box_slices(box: tuple[int, int, int, int], height: int, width: int) -> tuple[slice, slice]:
    left, top, right, bottom = (int(v) for v in box)
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise ValueError(f"box (left, top, right, bottom) = {tuple(box)} must lie inside the {width}x{height} video "
                         "to generate, with left < right and top < bottom")
    return slice(top, bottom), slice(left, right)


