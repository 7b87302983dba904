"""Analytic matmul FLOPs of one :class:`~easyanimate.models.Transformer3DModel` forward, and of a whole generation.

Only matrix products count, at 2 FLOPs per multiply-accumulate (MAC): linear layers, the patch-embedding convolution
and the two products of every attention; norms, activations, biases, residual adds and copies are left out, as
``FlopCounterMode`` leaves them out (``tests/test_benchmarks.py`` checks that both counts agree exactly). The MACs of
each part are written out below (``tokens`` = batch x frames x token grid); all are linear in the frame count but
the temporal (and whole-clip) attention scores, quadratic: a "VanillaGrid" sequence is an n x n token
neighbourhood (n = block_size, 2 in the release) across all frames. The count is for one temporal window.
Forward + backward is counted as 3x the forward (two products per forward product; a little less in truth, as
the first layers' inputs need no gradient).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from easyanimate.config import MotionModuleKwargs
from easyanimate.memory import SD_VAE_CONFIG, T5_XXL_CONFIG, build_meta_model

TIMESTEP_CHANNELS = 256  # width of the sinusoidal timestep features (diffusers PixArt embedder)

BLOCK_PARTS = ("self_attn_proj", "self_attn_scores", "cross_attn_proj", "cross_attn_text_kv", "cross_attn_scores",
               "ffn", "motion_proj", "motion_attn_proj", "motion_attn_scores", "motion_ffn")
GLOBAL_PARTS = ("patch_embed", "timestep_embedder", "caption_projection", "output_proj")


@dataclass(frozen=True)
class FlopCount:
    """Matmul FLOPs of one forward pass, by part (block parts summed over all layers)."""

    parts: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    num_layers: int = 0

    @property
    def total(self) -> int:
        """FLOPs of one forward pass."""
        return sum(self.parts.values())

    @property
    def forward_backward(self) -> int:
        """Estimated FLOPs of forward + backward: 3x the forward."""
        return 3 * self.total

    @property
    def per_block(self) -> dict[str, int]:
        """FLOPs of one transformer block, by part."""
        return {k: v // self.num_layers for k, v in self.parts.items() if k in BLOCK_PARTS}


def transformer_flops(config: Mapping[str, Any], frames: int, latent_height: int, latent_width: int,
                      batch: int = 1, text_len: int = 120) -> FlopCount:
    """Matmul FLOPs of one forward on ``(batch, C, frames, latent_height, latent_width)`` latents and ``text_len``
    text tokens; ``config``: constructor keywords (``model.config`` or a dict; missing: the PixArt-XL defaults)."""
    c = _resolved_config(config)
    p = c["patch_size"]
    if latent_height % p or latent_width % p:
        raise ValueError(f"latent size {latent_height}x{latent_width} is not a multiple of the patch size {p}")
    h, w = latent_height // p, latent_width // p
    width = c["num_attention_heads"] * c["attention_head_dim"]
    tokens = batch * frames * h * w
    out_channels = c["in_channels"] if c["out_channels"] is None else c["out_channels"]
    cross_dim = width if c["cross_attention_dim"] is None else c["cross_attention_dim"]

    macs = {
        "patch_embed": tokens * width * c["in_channels"] * p * p,
        "timestep_embedder": batch * _timestep_embedder_macs(width, c["sample_size"], c["use_additional_conditions"]),
        "caption_projection": (batch * text_len * (c["caption_channels"] * width + width * width)
                               if c["caption_channels"] is not None else 0),
        "output_proj": tokens * width * p * p * out_channels,
    }
    per_block = _block_macs(c, width, cross_dim, batch, frames, h, w, text_len)
    macs.update({name: c["num_layers"] * value for name, value in per_block.items()})
    return FlopCount(parts={name: 2 * value for name, value in macs.items()}, tokens=tokens,
                     num_layers=c["num_layers"])


def _block_macs(c: dict[str, Any], width: int, cross_dim: int, batch: int, frames: int, h: int, w: int,
                text_len: int) -> dict[str, int]:
    """MACs of one transformer block, by part."""
    tokens = batch * frames * h * w
    per_frame = c["basic_block_type"] == "motionmodule"
    attn_sequences, attn_length = (batch * frames, h * w) if per_frame else (batch, frames * h * w)
    macs = {
        "self_attn_proj": 4 * tokens * width * width,
        "self_attn_scores": attn_sequences * 2 * attn_length**2 * width,
        "cross_attn_proj": 2 * tokens * width * width,
        "cross_attn_text_kv": 2 * batch * text_len * cross_dim * width,
        "cross_attn_scores": 2 * tokens * text_len * width,
        "ffn": 2 * tokens * width * 4 * width,
    }
    if per_frame:
        macs.update(_motion_module_macs(c, width, frames, h, w, tokens))
    return macs


def _motion_module_macs(c: dict[str, Any], width: int, frames: int, h: int, w: int, tokens: int) -> dict[str, int]:
    """MACs of one motion module (``attn_temporal``), by part."""
    mm = c["motion_module_kwargs"]
    # a "VanillaGrid" sequence holds an n x n token neighbourhood across the frames, n = block_size (2 released)
    n = mm.block_size if c["motion_module_type"] == "VanillaGrid" else 1
    if h % n or w % n:
        raise ValueError(f"the grid motion module groups {n}x{n} tokens, got a {h}x{w} token grid")
    temporal_width = mm.num_attention_heads * (width // mm.num_attention_heads // mm.temporal_attention_dim_div)
    attentions = mm.num_transformer_block * len(mm.attention_block_types)
    length = n * n * frames
    return {
        "motion_proj": 2 * tokens * width * width,
        "motion_attn_proj": attentions * 4 * tokens * width * temporal_width,
        "motion_attn_scores": attentions * (tokens // length) * 2 * length**2 * temporal_width,
        "motion_ffn": mm.num_transformer_block * (tokens * width * 8 * width + tokens * 4 * width * width),
    }


def _timestep_embedder_macs(width: int, sample_size: int, use_additional_conditions: bool | None) -> int:
    """MACs of ``adaln_single`` for one sample (plus the 1024px models' size embedders)."""
    macs = TIMESTEP_CHANNELS * width + width * width + width * 6 * width
    if (sample_size == 128) if use_additional_conditions is None else use_additional_conditions:
        size_width = width // 3
        # resolution (2 values) and aspect ratio (1 value) each go through a sinusoid -> 2-layer MLP
        macs += 3 * (TIMESTEP_CHANNELS * size_width + size_width * size_width)
    return macs


def _resolved_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The model config with constructor defaults filled in and typed motion-module options."""
    from easyanimate.models import Transformer3DModel

    defaults = {name: p.default for name, p in inspect.signature(Transformer3DModel.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    resolved = {**defaults, **{k: v for k, v in config.items() if k in defaults}}
    mm = resolved["motion_module_kwargs"]
    if resolved["basic_block_type"] == "motionmodule":
        if mm is None:
            raise ValueError("basic_block_type 'motionmodule' needs motion_module_kwargs")
        resolved["motion_module_kwargs"] = mm if isinstance(mm, MotionModuleKwargs) else MotionModuleKwargs(**mm)
    return resolved


def generation_flops(transformer_config: Mapping[str, Any], frames: int = 80, size: int = 512, steps: int = 30,
                     guided: bool = True, text_len: int = 120) -> dict[str, int]:
    """FLOPs of one generation: the transformer per step (analytic, guidance as a batch of 2), the released T5-XXL
    once and the SD VAE per frame (counted by ``FlopCounterMode`` on meta tensors)."""
    from torch.utils.flop_counter import FlopCounterMode

    batch, counters = 2 if guided else 1, [FlopCounterMode(display=False) for _ in range(2)]
    per_step = transformer_flops(transformer_config, frames, size // 8, size // 8, batch, text_len).total
    encoder, vae = build_meta_model("text_encoder", T5_XXL_CONFIG), build_meta_model("vae", SD_VAE_CONFIG)
    with torch.inference_mode():
        with counters[0]:
            encoder(torch.zeros(batch, text_len, dtype=torch.long, device="meta"))
        with counters[1]:
            vae.decode(torch.empty(1, 4, size // 8, size // 8, device="meta"))
    text, per_frame = (counter.get_total_flops() for counter in counters)
    return {"text_encoding": text, "transformer_per_step": per_step, "denoising": steps * per_step,
            "decoding_per_frame": per_frame, "decoding": frames * per_frame,
            "total": text + steps * per_step + frames * per_frame}
