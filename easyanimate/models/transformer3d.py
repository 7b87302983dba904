"""The EasyAnimate v1 video diffusion transformer.

A PixArt-alpha DiT whose frames are folded into the batch for patching and spatial attention, with
a motion module in every block. Layouts: latent video ``(B, C, F, H, W)`` in and out; token grid
``h = H/p``, ``w = W/p``; block stream ``(B, F*h*w, C)``, frame-major. The state-dict keys equal
the released checkpoints': 603 PixArt keys plus 784 ``attn_temporal`` keys for the v1 config.

An inpaint model (v1's ``inpaint_latents``, the successors' "InP" models) has ``in_channels = 2 * C + 1``
for ``C`` latent channels: the noisy latents ``(B, C, F, H, W)`` are concatenated on the channel axis
with ``inpaint_latents`` ``(B, 1 + C, F, H, W)``, the mask at latent resolution (1 = to generate,
0 = known) followed by the scaled VAE latents of the masked video. Only the patch embedding sees the
extra channels; the output stays ``2 * C`` (noise and variance).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin
from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0
from diffusers.models.embeddings import PatchEmbed, PixArtAlphaTextProjection
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormSingle
from diffusers.utils import BaseOutput
from einops import rearrange
from torch import nn

from ..config import ConfigError, TransformerAdditionalKwargs, MotionModuleKwargs, validate_transformer_kwargs
from .attention import SelfAttentionTemporalTransformerBlock, TemporalTransformerBlock
from .motion_module import TemporalContext, sinusoid_table

# PixArt config keys that must keep these values: the model is only built for PixArt-alpha blocks.
FIXED_PIXART_OPTIONS = {
    "norm_type": "ada_norm_single",
    "num_vector_embeds": None,
    "use_linear_projection": False,
    "only_cross_attention": False,
    "double_self_attention": False,
    "attention_type": "default",
}


@dataclass
class Transformer3DModelOutput(BaseOutput):
    """``sample``: ``(B, out_channels, F, H, W)``."""

    sample: torch.Tensor


class TimePositionalEncoding(nn.Module):
    """Frame-index sinusoid added to every token before the blocks (long-sequence config)."""

    def __init__(self, d_model: int, max_len: int = 4096):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(max_len, d_model), persistent=True)

    def forward(self, tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Add row ``f`` of the table to every token of frame ``f``; ``tokens`` is ``(B, F*h*w, C)``."""
        frames = rearrange(tokens, "b (f s) c -> b f s c", f=num_frames)
        return rearrange(frames + self.pe[:, :num_frames, None].to(tokens.dtype), "b f s c -> b (f s) c")


class Transformer3DModel(ModelMixin, AttentionMixin, ConfigMixin, PeftAdapterMixin):
    """Video DiT: PixArt-alpha blocks with grid motion modules (or full spatio-temporal attention).

    The constructor takes the PixArt ``transformer/config.json`` keys plus the EasyAnimate keys of
    ``transformer_additional_kwargs``. Options that are not built here raise a :class:`ConfigError`.

    It behaves like a diffusers transformer: ``attn_processors`` / ``set_attn_processor`` reach every
    attention, the motion modules' included; ``fuse_qkv_projections``; ``compile_repeated_blocks``
    (the blocks are identical, so one compiled graph serves all); peft adapters through
    ``add_adapter`` / ``load_lora_adapter`` / ``set_adapters``.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["TemporalTransformerBlock", "SelfAttentionTemporalTransformerBlock"]
    _repeated_blocks = ["TemporalTransformerBlock", "SelfAttentionTemporalTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 72,
        in_channels: int = 4,
        out_channels: int | None = 8,
        num_layers: int = 28,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        cross_attention_dim: int | None = 1152,
        attention_bias: bool = True,
        sample_size: int = 64,
        num_vector_embeds: int | None = None,
        patch_size: int = 2,
        activation_fn: str = "gelu-approximate",
        num_embeds_ada_norm: int | None = 1000,
        use_linear_projection: bool = False,
        only_cross_attention: bool = False,
        double_self_attention: bool = False,
        upcast_attention: bool = False,
        norm_type: str = "ada_norm_single",
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-6,
        attention_type: str = "default",
        caption_channels: int | None = 4096,
        interpolation_scale: float | None = None,
        use_additional_conditions: bool | None = None,
        basic_block_type: str = "motionmodule",
        patch_3d: bool = False,
        fake_3d: bool = False,
        time_patch_size: int | None = None,
        motion_module_type: str = "VanillaGrid",
        motion_module_kwargs: dict[str, Any] | None = None,
        time_position_encoding_before_transformer: bool = False,
    ):
        super().__init__()
        _check_options(locals())
        inner_dim = num_attention_heads * attention_head_dim
        self.out_channels = in_channels if out_channels is None else out_channels
        self.gradient_checkpointing = False
        self.use_additional_conditions = (
            sample_size == 128 if use_additional_conditions is None else use_additional_conditions
        )
        self.pos_embed = PatchEmbed(
            height=sample_size, width=sample_size, patch_size=patch_size, in_channels=in_channels,
            embed_dim=inner_dim,
            interpolation_scale=interpolation_scale if interpolation_scale is not None else max(sample_size // 64, 1),
        )
        self.t_pos = TimePositionalEncoding(inner_dim) if time_position_encoding_before_transformer else None
        self.transformer_blocks = nn.ModuleList(
            self._make_block(inner_dim) for _ in range(num_layers)
        )
        self.norm_out = nn.LayerNorm(inner_dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, inner_dim) / inner_dim**0.5)
        self.proj_out = nn.Linear(inner_dim, patch_size * patch_size * self.out_channels)
        self.adaln_single = AdaLayerNormSingle(inner_dim, use_additional_conditions=self.use_additional_conditions)
        self.caption_projection = (
            PixArtAlphaTextProjection(in_features=caption_channels, hidden_size=inner_dim)
            if caption_channels is not None else None
        )

    @property
    def latent_channels(self) -> int:
        """Channels ``C`` of the latent video this model denoises (4 for the SD VAE): half the output channels
        of a model that also predicts the variance (PixArt's ``out_channels = 2 * C``), else the output channels."""
        return _latent_channels(self.config.in_channels, self.out_channels)

    @property
    def inpaint_channels(self) -> int:
        """Channels of ``inpaint_latents`` the model takes beside the noisy latents: ``1 + C`` for an inpaint model
        (mask and masked-video latents), 0 for a text-to-video model."""
        return self.config.in_channels - self.latent_channels

    @property
    def is_inpaint(self) -> bool:
        """True for an inpaint model (``in_channels = 2 * C + 1``)."""
        return self.inpaint_channels > 0

    def _make_block(self, inner_dim: int) -> nn.Module:
        c = self.config
        common = dict(dropout=c.dropout, activation_fn=c.activation_fn, attention_bias=c.attention_bias,
                      upcast_attention=c.upcast_attention, norm_elementwise_affine=c.norm_elementwise_affine,
                      norm_eps=c.norm_eps)
        if c.basic_block_type == "motionmodule":
            return TemporalTransformerBlock(inner_dim, c.num_attention_heads, c.attention_head_dim,
                                            c.cross_attention_dim, c.motion_module_type,
                                            dict(c.motion_module_kwargs), **common)
        return SelfAttentionTemporalTransformerBlock(inner_dim, c.num_attention_heads, c.attention_head_dim,
                                                     c.cross_attention_dim, **common)

    def compile_blocks(self, **compile_kwargs: Any) -> None:
        """``torch.compile`` every transformer block in place: diffusers' ``compile_repeated_blocks``.

        The blocks are identical, so they share one compiled graph: compilation happens on the first
        forward (and again for a new input shape). Inductor fuses the norms, modulation, activations
        and residual adds around the matmuls; outputs match eager up to float rounding.
        """
        self.compile_repeated_blocks(**compile_kwargs)

    def fuse_qkv_projections(self) -> None:
        """Fuse the query, key and value projections of every attention (key and value for cross-attention).

        Adds ``to_qkv`` / ``to_kv`` layers beside the originals and sets ``FusedAttnProcessor2_0``;
        :meth:`unfuse_qkv_projections` restores the processors that were set before.
        """
        self.original_attn_processors = self.attn_processors
        for module in self.modules():
            if isinstance(module, Attention):
                module.fuse_projections(fuse=True)
        self.set_attn_processor(FusedAttnProcessor2_0())

    def unfuse_qkv_projections(self) -> None:
        """Go back to the processors set before :meth:`fuse_qkv_projections`."""
        if getattr(self, "original_attn_processors", None) is not None:
            self.set_attn_processor(self.original_attn_processors)

    @property
    def has_motion_module(self) -> bool:
        """True when every block carries a motion module (``attn_temporal``)."""
        return self.config.basic_block_type == "motionmodule"

    @property
    def spatial_multiple(self) -> int:
        """Latent height and width must be multiples of this: patch size, times ``block_size`` for the grid
        motion module (2 x 2 = 4 latents, 32 pixels, for the released model)."""
        grid = self.has_motion_module and self.config.motion_module_type == "VanillaGrid"
        return self.config.patch_size * (self.config.motion_module_kwargs.get("block_size", 1) if grid else 1)

    def check_latent_shape(self, shape: torch.Size | tuple[int, ...],
                           inpaint_shape: torch.Size | tuple[int, ...] | None = None) -> None:
        """Raise a ValueError naming what is wrong with a latent video shape ``(B, C, F, H, W)`` and, for an
        inpaint model, with the shape of its ``inpaint_latents`` (which must be given to it, and only to it)."""
        if len(shape) != 5:
            raise ValueError(f"expected latent video (B, C, F, H, W), got shape {tuple(shape)}")
        batch, channels, frames, height, width = shape
        if channels != self.latent_channels:
            raise ValueError(f"expected {self.latent_channels} latent channels, got {channels}")
        if self.is_inpaint and inpaint_shape is None:
            raise ValueError(f"this is an inpaint model ({self.config.in_channels} input channels): it needs "
                             f"inpaint_latents (B, {self.inpaint_channels}, F, H, W), the mask and the masked video's "
                             "latents (EasyAnimateInpaintPipeline builds them)")
        if not self.is_inpaint and inpaint_shape is not None:
            raise ValueError(f"this is a text-to-video model ({self.config.in_channels} input channels): it takes no "
                             "inpaint_latents; image-to-video and inpainting need an inpaint model")
        expected = (batch, self.inpaint_channels, frames, height, width)
        if inpaint_shape is not None and tuple(inpaint_shape) != expected:
            raise ValueError(f"inpaint_latents must have shape {expected} (mask + masked-video latents beside latents "
                             f"{tuple(shape)}), got {tuple(inpaint_shape)}")
        m = self.spatial_multiple
        if height % m or width % m:
            raise ValueError(f"latent size {height}x{width} is not a multiple of {m}: this model needs pixel "
                             f"height and width that are multiples of {m * 8} (with the 8x VAE)")

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        timestep: torch.Tensor | float | None = None,
        added_cond_kwargs: dict[str, torch.Tensor | None] | None = None,
        return_dict: bool = True,
        temporal_context: TemporalContext | None = None,
        inpaint_latents: torch.Tensor | None = None,
    ) -> Transformer3DModelOutput | tuple[torch.Tensor]:
        """Predict noise (and the variance interpolation) for a latent video.

        Args:
            hidden_states: ``(B, C, F, H, W)`` noisy latents (``C`` = :attr:`latent_channels`).
            encoder_hidden_states: ``(B, L, caption_channels)`` text-encoder states.
            encoder_attention_mask: ``(B, L)`` with 1 = keep, 0 = padding (or an additive bias ``(B, 1, L)``).
            timestep: ``(B,)`` (or a scalar) diffusion step per sample.
            added_cond_kwargs: PixArt micro-conditions (only for ``sample_size == 128`` models).
            temporal_context: for clips longer than the motion modules should see at once: overlapping
                windows for the motion modules, and per-frame work in chunks (see
                :class:`~easyanimate.models.motion_module.TemporalContext`). None: the whole clip at once.
            inpaint_latents: for an inpaint model only, ``(B, 1 + C, F, H, W)``: the mask (1 = generate, 0 = known)
                and the scaled VAE latents of the masked video (masked pixels -1), concatenated to the input.

        Returns:
            ``(B, out_channels, F, H, W)``.
        """
        self.check_latent_shape(hidden_states.shape, None if inpaint_latents is None else inpaint_latents.shape)
        if temporal_context is not None and not self.has_motion_module:
            raise ValueError("temporal windows need motion modules; this model attends over the whole clip")
        batch, _, num_frames, height, width = hidden_states.shape
        p = self.config.patch_size
        h, w = height // p, width // p
        # 1. Text mask as an additive bias with a query axis: (B, 1, L).
        if encoder_attention_mask is not None and encoder_attention_mask.ndim == 2:
            encoder_attention_mask = (1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0
            encoder_attention_mask = encoder_attention_mask.unsqueeze(1)
        # 2. Patchify every frame (with the inpaint channels) with the 2D patch embedding and its 2D sincos table.
        if inpaint_latents is not None:
            hidden_states = torch.cat([hidden_states, inpaint_latents.to(hidden_states.dtype)], dim=1)
        frames = rearrange(hidden_states, "b c f h w -> (b f) c h w")
        chunk = temporal_context.chunk(num_frames) if temporal_context is not None else None
        if chunk is not None:  # long clip in chunks: bound the transient memory
            parts = frames.split(chunk)
            first = self.pos_embed(parts[0])
            tokens = first.new_empty((frames.shape[0], *first.shape[1:]))
            tokens[: len(first)] = first
            offset = len(first)
            for part in parts[1:]:  # filled chunk by chunk: never all chunks plus the result at once
                tokens[offset:offset + len(part)] = self.pos_embed(part)
                offset += len(part)
        else:
            tokens = self.pos_embed(frames)
        tokens = rearrange(tokens, "(b f) s c -> b (f s) c", b=batch)
        if self.t_pos is not None:
            tokens = self.t_pos(tokens, num_frames)
        # 3. Timestep modulation per sample, and the projected caption.
        timestep = _timestep_batch(timestep, batch, hidden_states.device)
        if added_cond_kwargs is None:
            added_cond_kwargs = {"resolution": None, "aspect_ratio": None}
        modulation, embedded_timestep = self.adaln_single(timestep, added_cond_kwargs, batch_size=batch,
                                                          hidden_dtype=tokens.dtype)
        if self.caption_projection is not None:
            encoder_hidden_states = self.caption_projection(encoder_hidden_states)
        # 4. The blocks.
        for block in self.transformer_blocks:
            args = (tokens, encoder_hidden_states, encoder_attention_mask, modulation, num_frames, h, w,
                    temporal_context)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                tokens = self._gradient_checkpointing_func(block, *args)
            else:
                tokens = block(*args)
        # 5. Output head (in frame chunks for long clips) and un-patchify.
        shift, scale = (self.scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
        head = lambda x: self.proj_out(self.norm_out(x) * (1 + scale) + shift)  # noqa: E731
        if chunk is not None:
            tokens = torch.cat([head(part) for part in tokens.split(chunk * h * w, dim=1)], dim=1)
        else:
            tokens = head(tokens)
        output = rearrange(tokens, "b (f h w) (p q c) -> b c f (h p) (w q)", f=num_frames, h=h, p=p, q=p)
        if not return_dict:
            return (output,)
        return Transformer3DModelOutput(sample=output)

    # Loading (implemented in easyanimate.models.loading, kept here as the public entry point).
    @classmethod
    def from_pretrained_2d(cls, pretrained_model_path: str | Path, subfolder: str | None = "transformer",
                           transformer_additional_kwargs: dict[str, Any] | TransformerAdditionalKwargs | None = None,
                           torch_dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                           transformer_path: str | Path | None = None, motion_module=None,
                           inpaint: bool | None = None) -> "Transformer3DModel":
        """Build the video model from a 2D PixArt diffusers folder, in the original load order.

        The folder's PixArt weights come first, then the optional personalized/full checkpoint
        ``transformer_path``, then the optional ``motion_module`` (a file such as
        ``easyanimate_v1_mm.safetensors`` or an :class:`~easyanimate.models.EasyAnimateMotionModule`);
        without one the motion modules stay fresh (identities). Only the motion-module keys may be missing from the folder's
        weights; any other missing or unexpected key, or a shape mismatch, raises a
        :class:`~easyanimate.models.loading.WeightLoadError`.

        ``inpaint=True`` builds an inpaint model (``2C + 1`` input channels) from a text-to-video folder or
        checkpoint, its mask and masked-video input channels at zero, so that it first computes what the
        checkpoint did; ``inpaint=False`` refuses an inpaint folder; None builds what the folder holds.
        """
        from .loading import build_video_transformer

        model = build_video_transformer(cls, pretrained_model_path, transformer_additional_kwargs,
                                        transformer_path, motion_module, subfolder, inpaint)
        if device is not None or torch_dtype is not None:
            model = model.to(device=device, dtype=torch_dtype)
        return model


def _timestep_batch(timestep: torch.Tensor | float | None, batch: int, device: torch.device) -> torch.Tensor:
    if timestep is None:
        raise ValueError("timestep is required")
    timestep = torch.as_tensor(timestep, device=device)
    if timestep.ndim == 0:
        timestep = timestep.expand(batch)
    if timestep.shape != (batch,):
        raise ValueError(f"timestep must be a scalar or shape ({batch},), got {tuple(timestep.shape)}")
    return timestep


def _latent_channels(in_channels: int, out_channels: int | None) -> int:
    """Latent channels of a model with these input and output channels (see ``Transformer3DModel.latent_channels``)."""
    out = in_channels if out_channels is None else out_channels
    return out if out == in_channels else out // 2


def inpaint_in_channels(latent_channels: int) -> int:
    """Input channels of an inpaint model for ``latent_channels``: noisy latents, mask, masked-video latents."""
    return 2 * latent_channels + 1


def _check_options(options: dict[str, Any]) -> None:
    """Raise a ConfigError for constructor options this implementation does not build."""
    for key, required in FIXED_PIXART_OPTIONS.items():
        if options[key] != required:
            raise ConfigError(f"{key}={options[key]!r} is not supported (PixArt-alpha blocks need {required!r})")
    latent = _latent_channels(options["in_channels"], options["out_channels"])
    if options["in_channels"] not in (latent, inpaint_in_channels(latent)):
        raise ConfigError(f"in_channels={options['in_channels']} with out_channels={options['out_channels']}: a model "
                          f"for {latent} latent channels takes {latent} (text-to-video) or "
                          f"{inpaint_in_channels(latent)} (inpaint: latents, mask, masked-video latents) input channels")
    if options["num_embeds_ada_norm"] is None:
        raise ConfigError("num_embeds_ada_norm must be set for ada_norm_single PixArt models")
    mm_kwargs = options["motion_module_kwargs"]
    extras = TransformerAdditionalKwargs(
        patch_3d=options["patch_3d"], fake_3d=options["fake_3d"], time_patch_size=options["time_patch_size"],
        basic_block_type=options["basic_block_type"],
        time_position_encoding_before_transformer=options["time_position_encoding_before_transformer"],
        motion_module_type=options["motion_module_type"],
        motion_module_kwargs=_motion_module_kwargs(mm_kwargs),
    )
    validate_transformer_kwargs(extras)


def _motion_module_kwargs(kwargs: dict[str, Any] | None) -> MotionModuleKwargs | None:
    if kwargs is None:
        return None
    try:
        return MotionModuleKwargs(**kwargs)
    except TypeError as error:
        valid = ", ".join(MotionModuleKwargs.__dataclass_fields__)
        raise ConfigError(f"motion_module_kwargs: {error}; valid keys: {valid}") from error
