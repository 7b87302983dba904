"""Matmul FLOPs of a transformer forward and of a whole generation, counted by torch's ``FlopCounterMode`` while
the model runs on the meta device: nothing is allocated or computed, so the released model at 512x512x80 is
counted in about a second, and the count follows the code as it is (no formula to keep in step with it).

Only matrix products count, at 2 FLOPs per multiply-accumulate: linear layers, convolutions and the two products of
every attention (the math SDPA backend runs them as ``bmm``); norms, activations, biases and copies are left out.
A training step is counted the same way, forward and backward (:func:`training_flops`): the backward takes the
gradient of each product's input back to the first trainable layer, and the weight gradient only of trainable
layers, so training the motion modules alone costs about 2.5 forwards, the whole model about 3.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


def _meta_transformer(config: Mapping[str, Any], frames: int, latent_height: int, latent_width: int, batch: int,
                      text_len: int) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    model = build_meta_model("transformer", config)
    meta = dict(device="meta")
    return model, (torch.empty(batch, model.config.in_channels, frames, latent_height, latent_width, **meta),
                   torch.empty(batch, text_len, model.config.caption_channels, **meta),
                   torch.ones(batch, text_len, **meta), torch.zeros(batch, dtype=torch.long, **meta))


def transformer_flops(config: Mapping[str, Any], frames: int, latent_height: int, latent_width: int,
                      batch: int = 1, text_len: int = 120) -> int:
    """FLOPs of one forward on ``(batch, 4, frames, latent_height, latent_width)`` latents and ``text_len`` text
    tokens; ``config``: the model's constructor keywords (``model.config`` or a dict)."""
    model, inputs = _meta_transformer(config, frames, latent_height, latent_width, batch, text_len)
    return counted(model, *inputs)


def training_flops(config: Mapping[str, Any], frames: int, latent_height: int, latent_width: int,
                   trainable: Callable[[str], bool], batch: int = 1, text_len: int = 120) -> int:
    """FLOPs of one training step's forward and backward (a mean-square loss; the optimiser's update has no
    products), on the inputs of :func:`transformer_flops`, with gradients for the parameters whose names
    ``trainable`` accepts. When it accepts none (a LoRA: its adapters are not in ``config``'s model, and their
    rank-r products are left out), the gradient goes back to the latents: every block's input gradients, no
    weight gradient."""
    model, inputs = _meta_transformer(config, frames, latent_height, latent_width, batch, text_len)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(trainable(name))
    inputs[0].requires_grad_(not any(p.requires_grad for p in model.parameters()))
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        model.train()(*inputs).sample.square().mean().backward()
    return counter.get_total_flops()


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
