"""The models the benchmarks run, at named sizes, with random weights.

* transformer widths: ``tiny`` (2 heads x 32 = 64), ``small`` (8 x 64 = 512), ``full`` (16 x 72 = 1152,
  PixArt-XL, the released v1 width), any number of blocks (28 in the release);
* pipelines: ``tiny`` is the tiny model of :func:`easyanimate.tiny.write_tiny_model`, written to a
  temporary folder and loaded by :func:`easyanimate.generation.load_pipeline` (the real loading
  path); ``small`` is built in code: a 4-block transformer of width 512, a 4-layer T5 of width 512
  and an SD-layout VAE at half the SD channel widths;
* :func:`original_layout`: the motion module as the original v1 code lays it out (grid rearranges
  around every temporal attention), the plain path that the contiguous sequence layout is measured
  against.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

from easyanimate.config import load_config, transformer_kwargs_for_model
from easyanimate.models import Transformer3DModel
from easyanimate.models.motion_module import GRID, TemporalTransformer3DModel
from easyanimate.pipelines import EasyAnimatePipeline

REPO = Path(__file__).resolve().parents[1]
V1_CONFIG = REPO / "config" / "easyanimate_video_motion_module_v1.yaml"
WIDTHS = {"tiny": (2, 32), "small": (8, 64), "full": (16, 72)}  # heads x head dim
CAPTION_CHANNELS = 4096  # T5-XXL width
SMALL_TEXT_DIM = 512
SMALL_VAE_CHANNELS = (64, 128, 256, 256)  # the SD VAE's (128, 256, 512, 512), halved


def build_transformer(width: str, layers: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32, seed: int = 0, caption_channels: int = CAPTION_CHANNELS,
                      sample_size: int = 64) -> Transformer3DModel:
    """The v1 transformer at a named width with random weights; the motion modules are *not* the identity.

    A released motion module starts zero-initialised (the identity); a benchmark of the temporal
    path needs it to do real work, so its output projection gets random weights here.
    """
    if width not in WIDTHS:
        raise ValueError(f"unknown width {width!r}; valid: {', '.join(WIDTHS)}")
    heads, head_dim = WIDTHS[width]
    extras = transformer_kwargs_for_model(load_config(V1_CONFIG).transformer_additional_kwargs)
    extras["motion_module_kwargs"]["zero_initialize"] = False
    torch.manual_seed(seed)
    with torch.device(device):
        model = Transformer3DModel(num_layers=layers, num_attention_heads=heads, attention_head_dim=head_dim,
                                   cross_attention_dim=heads * head_dim, caption_channels=caption_channels,
                                   sample_size=sample_size, **extras)
    return model.eval() if dtype == torch.float32 else model.to(dtype).eval()


def transformer_inputs(model: Transformer3DModel, batch: int, frames: int, height: int, width: int,
                       text_len: int = 120, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """Random latents ``(B, 4, F, H/8, W/8)``, text ``(B, L, caption)``, a mask ``(B, L)`` and steps ``(B,)``.

    The mask pads the last quarter of the text, as short prompts do.
    """
    device, dtype = model.device, model.dtype
    generator = torch.Generator(device="cpu").manual_seed(seed)
    latents = torch.randn(batch, 4, frames, height // 8, width // 8, generator=generator)
    text = torch.randn(batch, text_len, model.config.caption_channels, generator=generator)
    mask = torch.ones(batch, text_len)
    mask[:, text_len - text_len // 4:] = 0
    steps = torch.randint(0, 1000, (batch,), generator=generator)
    return latents.to(device, dtype), text.to(device, dtype), mask.to(device), steps.to(device)


def tiny_pipeline(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                  memory_mode: str = "none") -> EasyAnimatePipeline:
    """The tiny model (random weights), written to a temporary folder and loaded the way users load models."""
    from easyanimate.generation import load_pipeline, select_model
    from easyanimate.tiny import write_tiny_model

    with tempfile.TemporaryDirectory() as root:
        paths = write_tiny_model(root)
        selection = select_model(Path(root), model=paths["model"])
        pipeline = load_pipeline(selection, device=device, dtype=dtype, memory_mode=memory_mode)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def small_pipeline(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   seed: int = 0) -> EasyAnimatePipeline:
    """A small but complete pipeline (random weights): 4 transformer blocks of width 512, a 4-layer T5
    of width 512 and an SD-layout VAE at half width; 128x128 px is its native size."""
    from diffusers import AutoencoderKL
    from transformers import T5Config, T5EncoderModel

    from easyanimate.schedulers import V1_NOISE_SCHEDULER_KWARGS, build_scheduler
    from easyanimate.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=SMALL_TEXT_DIM, d_kv=64, d_ff=1024, num_layers=4, num_heads=8,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, tie_word_embeddings=False,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=SMALL_VAE_CHANNELS, layers_per_block=2, latent_channels=4,
                        norm_num_groups=32, sample_size=128, scaling_factor=0.18215).eval()
    transformer = build_transformer("small", 4, seed=seed + 1, caption_channels=SMALL_TEXT_DIM, sample_size=16)
    pipeline = EasyAnimatePipeline(tokenizer, text_encoder, vae, transformer,
                                   build_scheduler("DPM++", V1_NOISE_SCHEDULER_KWARGS))
    pipeline.to(device, dtype)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


PIPELINES = {"tiny": tiny_pipeline, "small": small_pipeline}
NATIVE_SIZE = {"tiny": 64, "small": 128}


def build_pipeline(name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   memory_mode: str = "none") -> EasyAnimatePipeline:
    """A pipeline from :data:`PIPELINES`; offload memory modes need the tiny pipeline (load_pipeline places it)."""
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; valid: {', '.join(PIPELINES)}")
    if name == "tiny":
        return tiny_pipeline(device, dtype, memory_mode)
    if memory_mode != "none":
        raise ValueError("memory modes are measured with the tiny pipeline (loaded through load_pipeline)")
    return small_pipeline(device, dtype)


def _original_forward_clip(self: TemporalTransformer3DModel, x: torch.Tensor, num_frames: int, height: int,
                           width: int) -> torch.Tensor:
    """The motion module with the original v1 layout: the block stream stays frame-major and every
    temporal attention rearranges its input into grid sequences and its output back."""
    residual = x
    frames = rearrange(x, "b (f s) c -> (b f) c s", f=num_frames)
    tokens = self.proj_in(rearrange(self.norm(frames), "n c s -> n s c"))  # (B*F, h*w, C)
    to_grid = "(b f) (hh p ww q) c -> (b hh ww) (f p q) c"
    from_grid = "(b hh ww) (f p q) c -> (b f) (hh p ww q) c"
    sizes = dict(f=num_frames, hh=height // GRID, ww=width // GRID, p=GRID, q=GRID)
    if not self.grid:
        to_grid, from_grid, sizes = "(b f) s c -> (b s) f c", "(b s) f c -> (b f) s c", dict(f=num_frames)
    repeat = GRID * GRID if self.grid else 1
    for block in self.transformer_blocks:
        for attention, norm in zip(block.attention_blocks, block.norms):
            sequences = rearrange(norm(tokens), to_grid, **sizes)
            if attention.pos_encoder is not None:
                sequences = sequences + attention.pos_encoder(num_frames, repeat).to(sequences.dtype)
            q, k, v = (rearrange(proj(sequences), "n s (h d) -> n h s d", h=attention.heads)
                       for proj in (attention.to_q, attention.to_k, attention.to_v))
            out = rearrange(F.scaled_dot_product_attention(q, k, v), "n h s d -> n s (h d)")
            tokens = tokens + rearrange(attention.to_out[0](out), from_grid, **sizes)
        tokens = tokens + block.ff(block.ff_norm(tokens))
    return residual + self.proj_out(rearrange(tokens, "(b f) s c -> b (f s) c", f=num_frames))


@contextmanager
def original_layout() -> Iterator[None]:
    """Run every motion module with the original per-attention rearranges while the block is active."""
    fast = TemporalTransformer3DModel._forward_clip
    TemporalTransformer3DModel._forward_clip = _original_forward_clip
    try:
        yield
    finally:
        TemporalTransformer3DModel._forward_clip = fast
