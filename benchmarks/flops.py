"""Matmul FLOPs of a transformer forward and of a whole generation, counted by torch's ``FlopCounterMode`` while
the model runs on the meta device: nothing is allocated or computed, so the released model at 512x512x80 is
counted in about a second, and the count follows the code as it is (no formula to keep in step with it).

Only matrix products count, at 2 FLOPs per multiply-accumulate: linear layers, convolutions and the two products of
every attention (the math SDPA backend runs them as ``bmm``); norms, activations, biases and copies are left out.
Forward + backward is taken as 3x the forward (two products per forward product; a little less in truth, as the
first layers' inputs need no gradient).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from easyanimate.memory import SD_VAE_CONFIG, T5_XXL_CONFIG, build_meta_model


def counted(call, *inputs: Any) -> int:
    """FLOPs of ``call(*inputs)`` (no gradients), attention through the math SDPA backend."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), counter:
        call(*inputs)
    return counter.get_total_flops()


def transformer_flops(config: Mapping[str, Any], frames: int, latent_height: int, latent_width: int,
                      batch: int = 1, text_len: int = 120) -> int:
    """FLOPs of one forward on ``(batch, 4, frames, latent_height, latent_width)`` latents and ``text_len`` text
    tokens; ``config``: the model's constructor keywords (``model.config`` or a dict)."""
    model = build_meta_model("transformer", config)
    meta = dict(device="meta")
    return counted(model, torch.empty(batch, model.config.in_channels, frames, latent_height, latent_width, **meta),
                   torch.empty(batch, text_len, model.config.caption_channels, **meta),
                   torch.ones(batch, text_len, **meta), torch.zeros(batch, dtype=torch.long, **meta))


def generation_flops(transformer_config: Mapping[str, Any], frames: int = 80, size: int = 512, steps: int = 30,
                     guided: bool = True, text_len: int = 120) -> dict[str, int]:
    """FLOPs of one generation: the released T5-XXL once, the transformer per step (guidance as a batch of 2), the
    SD VAE per frame."""
    batch = 2 if guided else 1
    per_step = transformer_flops(transformer_config, frames, size // 8, size // 8, batch, text_len)
    text = counted(build_meta_model("text_encoder", T5_XXL_CONFIG),
                   torch.zeros(batch, text_len, dtype=torch.long, device="meta"))
    per_frame = counted(build_meta_model("vae", SD_VAE_CONFIG).decode,
                        torch.empty(1, 4, size // 8, size // 8, device="meta"))
    return {"text_encoding": text, "transformer_per_step": per_step, "denoising": steps * per_step,
            "decoding_per_frame": per_frame, "decoding": frames * per_frame,
            "total": text + steps * per_step + frames * per_frame}
