"""Analytic matmul FLOPs of one forward pass of :class:`~easyanimate.models.Transformer3DModel`.

Only matrix products are counted, at 2 FLOPs per multiply-accumulate (a ``(m, k) @ (k, n)`` product
is ``2*m*n*k``): linear layers, the patch-embedding convolution and the two products inside every
attention (``Q K^T`` and ``softmax(.) V``). Norms, activations, softmax, biases, residual adds and
layout copies are elementwise and left out; for this model they are well under 1% of the matmul
work, and :class:`torch.utils.flop_counter.FlopCounterMode` leaves them out too.

Symbols: ``B`` batch, ``F`` frames, latent ``H x W``, patch ``p``, token grid ``h = H/p``,
``w = W/p``, ``N = B*F*h*w`` video tokens, ``C`` model width (heads x head dim), ``L`` text tokens,
``C_txt`` caption (text-encoder) width, ``C_x`` cross-attention key width, ``C_t`` motion-module
attention width (``heads * (C // heads // temporal_attention_dim_div)``, = C in the release),
``S`` temporal sequence length (``n^2 F`` for the "VanillaGrid" module with ``block_size`` n, ``4F`` in the
release; ``F`` for "Vanilla").

Multiply-accumulates (MACs) of each part; FLOPs are twice these:

* ``patch_embed``: ``N * C * in_channels * p^2`` (a stride-p convolution on every frame);
* ``timestep_embedder``: ``B * (256*C + C^2 + 6*C^2)`` (sinusoid -> MLP -> the six modulations);
* ``caption_projection``: ``B * L * (C_txt*C + C^2)``;
* per block, times ``num_layers``:

  * ``self_attn_proj``: ``4 * N * C^2`` (q, k, v, out);
  * ``self_attn_scores``: ``2 * (tokens per sequence)^2 * C`` per sequence: ``B*F`` sequences of
    ``h*w`` tokens for the motion-module block (per-frame attention), ``B`` sequences of ``F*h*w``
    tokens for the "selfattentiontemporal" block (whole-clip attention);
  * ``cross_attn_proj``: ``2 * N * C^2`` (q, out on the video tokens);
  * ``cross_attn_text_kv``: ``2 * B * L * C_x * C`` (k, v on the text tokens);
  * ``cross_attn_scores``: ``2 * N * L * C``;
  * ``ffn``: ``2 * N * C * 4C`` (GELU-tanh feed-forward);
  * motion module only (``R`` = transformer blocks x attentions per block, 1 x 2 in the release):

    * ``motion_proj``: ``2 * N * C^2`` (proj_in, proj_out);
    * ``motion_attn_proj``: ``R * 4 * N * C * C_t`` (q, k, v, out);
    * ``motion_attn_scores``: ``R * (N/S) * 2 * S^2 * C_t`` (``N/S`` sequences of ``S`` tokens);
    * ``motion_ffn``: ``num_transformer_block * (N*C*8C + N*4C*C)`` (GEGLU, then down-projection);

* ``output_proj``: ``N * C * p^2 * out_channels``.

Doubling ``F`` doubles every per-token part, keeps the timestep, caption and text k/v parts, and
multiplies the temporal (and whole-clip) attention scores by 4. The count is for the whole clip in
one temporal window (no ``Transformer3DModel.set_temporal_context``). One training step (forward + backward) costs
about ``3x`` the forward: the backward pass computes two products per forward product (gradient
with respect to the input and to the weight); the input-side gradients of the first layers
(patch embedding, caption projection) are skipped when the inputs need no gradient, so the true
ratio is a little under 3.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import MotionModuleKwargs

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
        """Estimated FLOPs of forward + backward: 3x the forward (see the module docstring)."""
        return 3 * self.total

    @property
    def per_block(self) -> dict[str, int]:
        """FLOPs of one transformer block, by part."""
        return {k: v // self.num_layers for k, v in self.parts.items() if k in BLOCK_PARTS}


def transformer_flops(config: Mapping[str, Any], frames: int, latent_height: int, latent_width: int,
                      batch: int = 1, text_len: int = 120) -> FlopCount:
    """Count the matmul FLOPs of one :class:`Transformer3DModel` forward (formulas: module docstring).

    Args:
        config: the model's constructor keywords (``model.config`` or a dict); missing keys take the
            constructor defaults, which are the PixArt-XL-2-512x512 values.
        frames: latent frames ``F``.
        latent_height, latent_width: latent ``H`` and ``W`` (pixels / 8).
        batch: ``B``.
        text_len: text tokens ``L`` (120 for the released T5 setup).
    """
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
    # a "VanillaGrid" sequence holds an n x n token neighbourhood per frame, n = block_size (2 when released)
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
    from .models.transformer3d import Transformer3DModel

    defaults = {name: parameter.default
                for name, parameter in inspect.signature(Transformer3DModel.__init__).parameters.items()
                if parameter.default is not inspect.Parameter.empty}
    resolved = {**defaults, **{k: v for k, v in config.items() if k in defaults}}
    mm = resolved["motion_module_kwargs"]
    if resolved["basic_block_type"] == "motionmodule":
        if mm is None:
            raise ValueError("basic_block_type 'motionmodule' needs motion_module_kwargs")
        resolved["motion_module_kwargs"] = mm if isinstance(mm, MotionModuleKwargs) else MotionModuleKwargs(**mm)
    return resolved
