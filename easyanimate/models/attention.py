"""The per-layer blocks of the video transformer (spec section 2.2).

Both blocks are PixArt-alpha blocks (``ada_norm_single``: parameter-free LayerNorms modulated by a
per-sample ``scale_shift_table`` + timestep vector, no norm before cross-attention) working on the
block stream ``(B, F*h*w, C)``, frame-major. They differ in what ``attn1`` sees:

* :class:`TemporalTransformerBlock` (v1 release): ``attn1`` attends within each frame
  ``(B*F, h*w, C)``; then the motion module ``attn_temporal`` mixes frames; then cross-attention.
* :class:`SelfAttentionTemporalTransformerBlock` (long-sequence config): ``attn1`` attends over the
  whole clip ``(B, F*h*w, C)``; no motion module.

Parameter names match diffusers' ``BasicTransformerBlock``, so PixArt checkpoints load unchanged.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from einops import rearrange
from torch import nn

from .motion_module import get_motion_module


class PixArtBlock(nn.Module):
    """A PixArt block whose spatial self-attention runs per frame or over the whole clip."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int,
                 cross_attention_dim: int | None, dropout: float = 0.0, activation_fn: str = "gelu-approximate",
                 attention_bias: bool = True, upcast_attention: bool = False,
                 norm_elementwise_affine: bool = False, norm_eps: float = 1e-6, per_frame_attention: bool = True):
        super().__init__()
        self.per_frame_attention = per_frame_attention
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=norm_elementwise_affine, eps=norm_eps)
        self.attn1 = Attention(dim, heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout,
                               bias=attention_bias, upcast_attention=upcast_attention)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=norm_elementwise_affine, eps=norm_eps)
        self.attn2 = Attention(dim, cross_attention_dim=cross_attention_dim, heads=num_attention_heads,
                               dim_head=attention_head_dim, dropout=dropout, bias=attention_bias,
                               upcast_attention=upcast_attention)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)
        # Frames per chunk for the per-frame/per-token parts (None: all at once). Chunking bounds
        # the activation memory of long clips by the chunk, not the clip length.
        self.frame_chunk: int | None = None

    def temporal(self, x: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
        """Frame mixing between self- and cross-attention; none in the plain block."""
        return x

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None, timestep: torch.Tensor,
                num_frames: int, height: int, width: int) -> torch.Tensor:
        """Run one block.

        Args:
            hidden_states: ``(B, F*h*w, C)`` block stream.
            encoder_hidden_states: ``(B, L, C)`` projected text.
            encoder_attention_mask: additive bias ``(B, 1, L)`` or None.
            timestep: ``(B, 6*C)`` modulation vector from ``adaln_single``.
        """
        batch = hidden_states.shape[0]
        # 1. Modulation terms, one set per sample, shared by all frames.
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + timestep.reshape(batch, 6, -1)
        ).chunk(6, dim=1)
        chunk = self._chunk_tokens(num_frames, height * width)
        tokens_per_frame = height * width
        # 2. Spatial self-attention (per frame, or over the whole clip).
        self_attention = lambda x: self._self_attention(  # noqa: E731
            self.norm1(x) * (1 + scale_msa) + shift_msa, tokens_per_frame)
        hidden_states = _residual_update(hidden_states, self_attention, gate_msa, chunk)
        # 3. Motion module.
        hidden_states = self.temporal(hidden_states, num_frames, height, width)
        # 4. Cross-attention to the text, no norm before it (PixArt).
        cross_attention = lambda x: self.attn2(  # noqa: E731
            x, encoder_hidden_states=encoder_hidden_states, attention_mask=encoder_attention_mask)
        hidden_states = _residual_update(hidden_states, cross_attention, None, chunk)
        # 5. Feed-forward.
        feed_forward = lambda x: self.ff(self.norm2(x) * (1 + scale_mlp) + shift_mlp)  # noqa: E731
        return _residual_update(hidden_states, feed_forward, gate_mlp, chunk)

    def _self_attention(self, normed: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
        """``attn1`` over ``(B, f*s, C)``: within each frame, or over all of it for the long-sequence block."""
        if not self.per_frame_attention:
            return self.attn1(normed)
        batch = normed.shape[0]
        attended = self.attn1(rearrange(normed, "b (f s) c -> (b f) s c", s=tokens_per_frame))
        return rearrange(attended, "(b f) s c -> b (f s) c", b=batch)

    def _chunk_tokens(self, num_frames: int, tokens_per_frame: int) -> int | None:
        if self.frame_chunk is None or num_frames <= self.frame_chunk or not self.per_frame_attention:
            return None
        return self.frame_chunk * tokens_per_frame


def _residual_update(x: torch.Tensor, fn, gate: torch.Tensor | None, chunk: int | None) -> torch.Tensor:
    """``x + gate * fn(x)``, optionally ``chunk`` tokens at a time.

    ``fn`` must work token-wise (or frame-wise on whole frames, which the chunk size respects).
    Without gradients the chunks are added into ``x`` in place, so a long clip costs one stream
    tensor plus one chunk of intermediates.
    """
    gate = 1.0 if gate is None else gate
    if chunk is None or x.shape[1] <= chunk:
        return x + gate * fn(x)
    if torch.is_grad_enabled():
        return x + gate * torch.cat([fn(part) for part in x.split(chunk, dim=1)], dim=1)
    for start in range(0, x.shape[1], chunk):
        part = x[:, start:start + chunk]
        part += gate * fn(part)
    return x


class TemporalTransformerBlock(PixArtBlock):
    """PixArt block with per-frame self-attention and a motion module (``attn_temporal``)."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int,
                 cross_attention_dim: int | None, motion_module_type: str, motion_module_kwargs: dict, **kwargs):
        super().__init__(dim, num_attention_heads, attention_head_dim, cross_attention_dim,
                         per_frame_attention=True, **kwargs)
        self.attn_temporal = get_motion_module(dim, motion_module_type, motion_module_kwargs)

    def temporal(self, x: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
        return self.attn_temporal(x, num_frames, height, width)


class SelfAttentionTemporalTransformerBlock(PixArtBlock):
    """PixArt block whose self-attention spans all frames (long-sequence config)."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int,
                 cross_attention_dim: int | None, **kwargs):
        super().__init__(dim, num_attention_heads, attention_head_dim, cross_attention_dim,
                         per_frame_attention=False, **kwargs)
