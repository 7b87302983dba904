"""T5 text encoding: one implementation for the pipeline and the trainer.

Prompts are tokenized with padding to a fixed length (PixArt-alpha's 120 tokens, or fewer where the
tokenizer says its model takes fewer), truncated, with the end-of-sequence token; the encoder's last
hidden states ``(B, L, D)`` and the attention mask ``(B, L)`` (1 = token, 0 = padding) go to the
transformer's cross-attention. The pipeline lower-cases and strips prompts (``clean=True``), as the
original did when its optional caption-cleaning libraries were absent; training reads captions raw.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

MAX_SEQUENCE_LENGTH = 120
"""T5 tokens PixArt-alpha (and EasyAnimate v1) encode a prompt into."""


def clean_prompt(text: str) -> str:
    """Lower-case and strip."""
    return text.lower().strip()


def sequence_length(tokenizer, requested: int | None = None) -> int:
    """``requested`` (default 120), capped at the tokenizer's ``model_max_length``.

    The shapes demo model's tokenizer says 24: its captions are short, and padding costs compute.
    """
    return min(requested or MAX_SEQUENCE_LENGTH, tokenizer.model_max_length)


def input_device(module: torch.nn.Module, execution_device: torch.device) -> torch.device:
    """Where inputs of ``module`` must be put.

    Under accelerate's offload hooks (``enable_model_cpu_offload`` / ``enable_sequential_cpu_offload``)
    the parameters sit on the CPU or on ``meta`` and the hooks move inputs to ``execution_device``;
    otherwise inputs go where the parameters are (the text encoder may be kept on the CPU).
    """
    if hasattr(module, "_hf_hook"):
        return execution_device
    return next(module.parameters()).device


def encode_text(tokenizer, text_encoder: torch.nn.Module, texts: list[str], max_length: int | None,
                execution_device: torch.device, clean: bool = False,
                warn_if_truncated: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 states ``(B, L, D)`` and mask ``(B, L)``, both on ``execution_device``.

    Gradients flow when they are enabled (a text-encoder LoRA in training); callers that only
    generate run it under ``torch.no_grad()``. With ``warn_if_truncated`` a prompt longer than ``L``
    tokens is reported, since its end is not seen by the model.
    """
    if clean:
        texts = [clean_prompt(text) for text in texts]
    length = sequence_length(tokenizer, max_length)
    tokens = tokenizer(texts, padding="max_length", max_length=length, truncation=True, add_special_tokens=True,
                       return_tensors="pt")
    if warn_if_truncated:
        for text in texts:
            full = len(tokenizer(text, add_special_tokens=True).input_ids)
            if full > length:
                logger.warning("the prompt is %d tokens long; this model reads the first %d, the rest is ignored: "
                               "%r", full, length, text)
    device = input_device(text_encoder, execution_device)
    mask = tokens.attention_mask.to(device)
    states = text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
    return states.to(execution_device), mask.to(execution_device)
