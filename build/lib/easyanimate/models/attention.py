"""The per-layer blocks of the video transformer.

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

from .motion_module import TemporalContext, get_motion_module


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

    def temporal(self, x: torch.Tensor, num_frames: int, height: int, width: int,
                 context: TemporalContext | None) -> torch.Tensor:
        """Frame mixing between self- and cross-attention; none in the plain block."""
        return x

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None, timestep: torch.Tensor,
                num_frames: int, height: int, width: int,
                temporal_context: TemporalContext | None = None) -> torch.Tensor:
        """Run one block.

        Args:
            hidden_states: ``(B, F*h*w, C)`` block stream. Without gradients and with a
                ``temporal_context`` that chunks or windows the clip, it is updated in place and must
                not be used by the caller afterwards (see :func:`residual_update`).
            encoder_hidden_states: ``(B, L, C)`` projected text.
            encoder_attention_mask: additive bias ``(B, 1, L)`` or None.
            timestep: ``(B, 6*C)`` modulation vector from ``adaln_single``.
            temporal_context: windows for the motion module and chunks for the per-frame work.
        """
        batch = hidden_states.shape[0]
        # 1. Modulation terms, one set per sample, shared by all frames.
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + timestep.reshape(batch, 6, -1)
        ).chunk(6, dim=1)
        tokens_per_frame = height * width
        chunk = self._chunk_tokens(num_frames, tokens_per_frame, temporal_context)
        # 2. Spatial self-attention (per frame, or over the whole clip).
        self_attention = lambda x: self._self_attention(  # noqa: E731
            self.norm1(x) * (1 + scale_msa) + shift_msa, tokens_per_frame)
        hidden_states = residual_update(hidden_states, self_attention, gate_msa, chunk)
        # 3. Motion module.
        hidden_states = self.temporal(hidden_states, num_frames, height, width, temporal_context)
        # 4. Cross-attention to the text, no norm before it (PixArt).
        cross_attention = lambda x: self.attn2(  # noqa: E731
            x, encoder_hidden_states=encoder_hidden_states, attention_mask=encoder_attention_mask)
        hidden_states = residual_update(hidden_states, cross_attention, None, chunk)
        # 5. Feed-forward.
        feed_forward = lambda x: self.ff(self.norm2(x) * (1 + scale_mlp) + shift_mlp)  # noqa: E731
        return residual_update(hidden_states, feed_forward, gate_mlp, chunk)

    def _self_attention(self, normed: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
        """``attn1`` over ``(B, f*s, C)``: within each frame, or over all of it for the long-sequence block."""
        if not self.per_frame_attention:
            return self.attn1(normed)
        batch = normed.shape[0]
        attended = self.attn1(rearrange(normed, "b (f s) c -> (b f) s c", s=tokens_per_frame))
        return rearrange(attended, "(b f) s c -> b (f s) c", b=batch)

    def _chunk_tokens(self, num_frames: int, tokens_per_frame: int, context: TemporalContext | None) -> int | None:
        """Tokens per chunk of per-frame work (whole frames), or None for one pass.

        The long-sequence block attends over the whole clip in ``attn1``, so it is never chunked.
        """
        chunk = context.chunk(num_frames) if context is not None else None
        if chunk is None or not self.per_frame_attention:
            return None
        return chunk * tokens_per_frame


def residual_update(x: torch.Tensor, fn, gate: torch.Tensor | float | None, chunk: int | None) -> torch.Tensor:
    """``x + gate * fn(x)``, optionally ``chunk`` tokens (along dim 1) at a time.

    ``fn`` must work token-wise, or frame-wise on whole frames, which the caller's chunk size respects.
    With chunks and without gradients, each chunk's result is written back into ``x`` and ``x`` is
    returned, so a long clip costs one stream tensor plus one chunk of intermediates; the caller must
    not use the input afterwards. With gradients the results go into a new tensor.
    """
    gate = 1.0 if gate is None else gate
    if chunk is None or x.shape[1] <= chunk:
        return x + gate * fn(x)
    out = x if not torch.is_grad_enabled() else torch.empty_like(x)
    for start in range(0, x.shape[1], chunk):
        part = x[:, start:start + chunk]
        out[:, start:start + chunk] = part + gate * fn(part)
    return out


class TemporalTransformerBlock(PixArtBlock):
    """PixArt block with per-frame self-attention and a motion module (``attn_temporal``)."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int,
                 cross_attention_dim: int | None, motion_module_type: str, motion_module_kwargs: dict, **kwargs):
        super().__init__(dim, num_attention_heads, attention_head_dim, cross_attention_dim,
                         per_frame_attention=True, **kwargs)
        self.attn_temporal = get_motion_module(dim, motion_module_type, motion_module_kwargs)

    def temporal(self, x: torch.Tensor, num_frames: int, height: int, width: int,
                 context: TemporalContext | None) -> torch.Tensor:
        return self.attn_temporal(x, num_frames, height, width, context)


class SelfAttentionTemporalTransformerBlock(PixArtBlock):
    """PixArt block whose self-attention spans all frames (long-sequence config)."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int,
                 cross_attention_dim: int | None, **kwargs):
        super().__init__(dim, num_attention_heads, attention_head_dim, cross_attention_dim,
                         per_frame_attention=False, **kwargs)
