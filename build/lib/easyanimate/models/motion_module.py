"""The temporal motion module inserted into every PixArt block (EasyAnimate v1).

Token layouts (C = model width, h x w = token grid of one frame, F = frames):

* block stream: ``(B, F*h*w, C)``, frame-major, then row, then column;
* per frame: ``(B*F, h*w, C)``;
* temporal sequences, "Vanilla": ``(B*h*w, F, C)``, one sequence per token position;
* temporal sequences, "VanillaGrid": ``(B*(h/n)*(w/n), n*n*F, C)`` with n = ``block_size``, one sequence per
  n x n token neighbourhood, elements ordered (frame, row offset, column offset). The released config has
  n = 2; n = 1 gives the per-token sequences of "Vanilla".

The whole temporal block runs in the sequence layout (LayerNorm, attention and feed-forward are
per token except the attention itself), so the grid reshape happens once on the way in and once on
the way out. The frame-index sinusoid is added to the normalised input of each attention only,
never to the residual stream. Module and parameter names match the released
``easyanimate_v1_mm.safetensors`` keys.

The temporal attentions are diffusers ``Attention`` modules (the same ``to_q``/``to_k``/``to_v``/``to_out.0``
parameters the released file names), so attention processors set on the transformer (SDPA, xformers,
fused projections, a custom processor) apply to them as to the spatial attentions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from einops import rearrange
from torch import nn

GRID = 2
"""``block_size`` of the released VanillaGrid config: 2x2 token neighbourhoods, 32x32 pixels with patch 2 and
the 8x VAE. Other block sizes n group n x n tokens (16n pixels)."""


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """Classic transformer position table, ``(1, length, dim)`` float32.

    ``pe[0, pos, 2i] = sin(pos * 10000**(-2i/dim))`` and ``pe[0, pos, 2i+1] = cos(...)``.
    """
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(1, length, dim)
    table[0, :, 0::2] = torch.sin(position * frequency)
    table[0, :, 1::2] = torch.cos(position * frequency)
    return table


class PositionalEncoding(nn.Module):
    """Frame-index sinusoid; its table ``pe`` is a persistent buffer, as in the released files."""

    def __init__(self, d_model: int, max_len: int = 4096):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(max_len, d_model), persistent=True)

    def forward(self, num_frames: int, repeat: int = 1) -> torch.Tensor:
        """Return the table for frames ``0..num_frames-1``, each row repeated ``repeat`` times.

        Shape ``(1, num_frames*repeat, d_model)``; ``repeat`` is n*n for n x n grid sequences.
        """
        if num_frames > self.pe.shape[1]:
            raise ValueError(f"{num_frames} frames exceed the motion module's position table "
                             f"({self.pe.shape[1]} frames)")
        table = self.pe[:, :num_frames]
        return table.repeat_interleave(repeat, dim=1) if repeat > 1 else table


class VersatileAttention(Attention):
    """Temporal self-attention over one sequence axis, with the frame-index position signal.

    ``to_q/to_k/to_v`` have no bias, ``to_out.0`` has one (released key layout). The position table is
    added to the input here; the attention itself is whatever processor is set (SDPA by default).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, position_encoding: bool, max_len: int):
        super().__init__(query_dim=dim, heads=heads, dim_head=head_dim, bias=False, out_bias=True)
        self.pos_encoder = PositionalEncoding(dim, max_len) if position_encoding else None

    def forward(self, x: torch.Tensor, num_frames: int, tokens_per_frame: int) -> torch.Tensor:
        """Attend along the sequence axis of ``x`` ``(N, num_frames*tokens_per_frame, C)``."""
        if self.pos_encoder is not None:
            x = x + self.pos_encoder(num_frames, tokens_per_frame).to(x.dtype)
        return super().forward(x)


class TemporalBlock(nn.Module):
    """Pre-norm temporal attentions then a GEGLU feed-forward, all with residuals.

    Registered as ``transformer_blocks.{k}`` with ``attention_blocks``, ``norms``, ``ff``, ``ff_norm``.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, num_attentions: int,
                 position_encoding: bool, max_len: int):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            VersatileAttention(dim, heads, head_dim, position_encoding, max_len) for _ in range(num_attentions)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_attentions))
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, num_frames: int, tokens_per_frame: int) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = x + attention(norm(x), num_frames, tokens_per_frame)
        return x + self.ff(self.ff_norm(x))


class TemporalTransformer3DModel(nn.Module):
    """GroupNorm -> proj_in -> temporal blocks -> proj_out, with a residual around all of it.

    With ``grid`` the temporal sequences hold ``block_size x block_size`` token neighbourhoods; without it,
    one token position (``block_size`` is then unused, as in v1).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, num_layers: int, num_attentions: int,
                 position_encoding: bool, max_len: int, grid: bool, norm_num_groups: int = 32, block_size: int = 1):
        super().__init__()
        if dim % norm_num_groups:
            raise ValueError(f"motion module width {dim} is not divisible by its {norm_num_groups} GroupNorm groups")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.grid = grid
        self.block_size = block_size if grid else 1
        self.norm = nn.GroupNorm(norm_num_groups, dim, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList(
            TemporalBlock(dim, heads, head_dim, num_attentions, position_encoding, max_len) for _ in range(num_layers)
        )
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, num_frames: int, height: int, width: int,
                context: TemporalContext | None = None) -> torch.Tensor:
        """Update the block stream ``x`` ``(B, F*h*w, C)``; returns the same shape.

        With a ``context`` shorter than the clip, frames are processed in overlapping windows (frame
        positions restart at 0 in each window) and the windows' outputs are blended per frame with
        :func:`window_weights` (FreeNoise-style attention fusion). In that case, without gradients,
        the result is written into ``x`` itself and ``x`` is returned: the caller must not use the
        input afterwards (the transformer blocks never do).
        """
        if context is None or num_frames <= context.frames:
            return self._forward_clip(x, num_frames, height, width)
        return self._forward_windows(x, num_frames, height, width, context)

    def _forward_windows(self, x: torch.Tensor, num_frames: int, height: int, width: int,
                         context: TemporalContext) -> torch.Tensor:
        """Blend the windows' outputs per frame, writing frames out as soon as no later window needs them.

        Windows run in frame order. Once window k is done, the frames before window k+1 starts are
        covered by no later window, so their blended result is final. Pending sums live in a
        window-sized buffer. Without gradients the final frames overwrite the input in place, so
        memory is one window, not the clip; with gradients they go into a new tensor.
        """
        frames = rearrange(x, "b (f s) c -> b f s c", f=num_frames)
        out = frames if not torch.is_grad_enabled() else torch.empty_like(frames)
        weights = window_weights(context.frames).to(frames)
        total = context.coverage(num_frames).to(frames)
        starts = context.window_starts(num_frames)
        pending = torch.zeros_like(frames[:, :context.frames])  # sums for frames [starts[k], starts[k] + W)
        for k, start in enumerate(starts):
            window = frames[:, start:start + context.frames]
            updated = self._forward_clip(rearrange(window, "b f s c -> b (f s) c"), context.frames, height, width)
            pending = pending + weights[:, None, None] * updated.view_as(window)
            done = (starts[k + 1] if k + 1 < len(starts) else num_frames) - start
            out[:, start:start + done] = pending[:, :done] / total[start:start + done, None, None]
            pending = torch.cat([pending[:, done:], torch.zeros_like(pending[:, :done])], dim=1)
        return rearrange(out, "b f s c -> b (f s) c")

    def _forward_clip(self, x: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
        residual = x
        # 1. GroupNorm over each frame image: (B*F, C, h*w) view of the per-frame tokens.
        frames = rearrange(x, "b (f s) c -> (b f) c s", f=num_frames)
        tokens = self.proj_in(rearrange(self.norm(frames), "n c s -> n s c"))
        # 2. One temporal sequence per position (or per n x n neighbourhood), frame-major.
        sequences = self._to_sequences(tokens, num_frames, height, width)
        for block in self.transformer_blocks:
            sequences = block(sequences, num_frames, self.block_size**2)
        # 3. Back to the block stream, project, add the residual.
        tokens = self._from_sequences(sequences, num_frames, height, width)
        return residual + self.proj_out(tokens)

    def _to_sequences(self, tokens: torch.Tensor, f: int, h: int, w: int) -> torch.Tensor:
        if self.grid:
            n = self.block_size
            return rearrange(tokens, "(b f) (hh p ww q) c -> (b hh ww) (f p q) c", f=f, hh=h // n, p=n, q=n)
        return rearrange(tokens, "(b f) s c -> (b s) f c", f=f)

    def _from_sequences(self, sequences: torch.Tensor, f: int, h: int, w: int) -> torch.Tensor:
        if self.grid:
            n = self.block_size
            return rearrange(sequences, "(b hh ww) (f p q) c -> b (f hh p ww q) c", f=f, hh=h // n, ww=w // n, p=n, q=n)
        return rearrange(sequences, "(b s) f c -> b (f s) c", s=h * w)


def default_context_overlap(context_frames: int) -> int:
    """Overlap of consecutive temporal windows when none is given: a quarter of the window."""
    return context_frames // 4


@dataclass(frozen=True)
class TemporalContext:
    """How a long clip is processed: passed to ``Transformer3DModel.forward(temporal_context=...)``.

    ``frames``: the motion modules see at most this many frames at once; longer clips run in windows
    whose consecutive members share ``overlap`` frames and whose outputs are blended per frame.
    ``chunk_frames``: the per-frame work (patch embedding, spatial and cross-attention, feed-forward,
    output head) runs this many frames at a time when the clip is longer (default: ``frames``), so
    activation memory follows the window rather than the clip. Chunking never changes the result.
    """

    frames: int
    overlap: int = 0
    chunk_frames: int | None = None

    def __post_init__(self):
        if self.frames < 1 or not 0 <= self.overlap < self.frames:
            raise ValueError(f"temporal context needs frames >= 1 and 0 <= overlap < frames, "
                             f"got frames={self.frames}, overlap={self.overlap}")
        if self.chunk_frames is not None and self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {self.chunk_frames}")

    def chunk(self, num_frames: int) -> int | None:
        """Frames per chunk of per-frame work for a clip of ``num_frames``; None: all at once."""
        chunk = self.chunk_frames or self.frames
        return chunk if num_frames > chunk else None

    def coverage(self, num_frames: int) -> torch.Tensor:
        """Sum of the blending weights each frame receives over all windows, ``(num_frames,)``."""
        total = torch.zeros(num_frames)
        for start in self.window_starts(num_frames):
            total[start:start + self.frames] += window_weights(self.frames)
        return total

    def window_starts(self, num_frames: int) -> list[int]:
        """First frame of each window; the last window ends exactly at ``num_frames``."""
        if num_frames <= self.frames:
            return [0]
        stride = self.frames - self.overlap
        starts = list(range(0, num_frames - self.frames + 1, stride))
        if starts[-1] + self.frames < num_frames:
            starts.append(num_frames - self.frames)
        return starts


def window_weights(length: int) -> torch.Tensor:
    """Blending weights of the frames of one window, ``(length,)``: a triangle peaking in the middle.

    Frames near a window's edge saw the least temporal context, so overlapping windows hand over
    gradually instead of switching at a seam.
    """
    position = torch.arange(length, dtype=torch.float32)
    return torch.minimum(position + 1, length - position)


class VanillaTemporalModule(nn.Module):
    """One motion module (``attn_temporal``): a :class:`TemporalTransformer3DModel`.

    With ``zero_initialize`` the output projection starts at zero, so a fresh module is the
    identity and the video model equals the image model frame by frame. With ``grid`` the temporal
    attention sees ``block_size x block_size`` token neighbourhoods (v1's "VanillaGrid"; 2 in the released
    config, 1 is the per-token "Vanilla" module); without, ``block_size`` is unused.
    """

    def __init__(self, in_channels: int, num_attention_heads: int = 8, num_transformer_block: int = 2,
                 attention_block_types: list[str] | tuple[str, ...] = ("Temporal_Self", "Temporal_Self"),
                 cross_frame_attention_mode: str | None = None, temporal_position_encoding: bool = False,
                 temporal_position_encoding_max_len: int = 4096, temporal_attention_dim_div: int = 1,
                 zero_initialize: bool = True, block_size: int = 1, grid: bool = False):
        super().__init__()
        if cross_frame_attention_mode is not None:
            raise ValueError("cross_frame_attention_mode is not supported")
        head_dim = in_channels // num_attention_heads // temporal_attention_dim_div
        self.grid = grid
        self.temporal_transformer = TemporalTransformer3DModel(
            in_channels, num_attention_heads, head_dim, num_transformer_block, len(attention_block_types),
            temporal_position_encoding, temporal_position_encoding_max_len, grid, block_size=block_size,
        )
        self.block_size = self.temporal_transformer.block_size
        if zero_initialize:
            nn.init.zeros_(self.temporal_transformer.proj_out.weight)
            nn.init.zeros_(self.temporal_transformer.proj_out.bias)

    def forward(self, x: torch.Tensor, num_frames: int, height: int, width: int,
                context: TemporalContext | None = None) -> torch.Tensor:
        """``x`` ``(B, F*h*w, C)`` -> same shape; h and w must be multiples of ``block_size`` for the grid (see
        :meth:`TemporalTransformer3DModel.forward` for ``context``)."""
        n = self.block_size
        if height % n or width % n:
            raise ValueError(f"the grid motion module groups {n}x{n} tokens, got a {height}x{width} token grid; "
                             f"pixel height and width must be multiples of {16 * n} (patch 2, 8x VAE)")
        return self.temporal_transformer(x, num_frames, height, width, context)


def get_motion_module(in_channels: int, motion_module_type: str, motion_module_kwargs: dict) -> VanillaTemporalModule:
    """Build the motion module named in the config (table: "Vanilla", "VanillaGrid")."""
    grid_by_type = {"Vanilla": False, "VanillaGrid": True}
    if motion_module_type not in grid_by_type:
        raise ValueError(f"unknown motion_module_type {motion_module_type!r}; valid: {', '.join(grid_by_type)}")
    return VanillaTemporalModule(in_channels, grid=grid_by_type[motion_module_type], **motion_module_kwargs)
