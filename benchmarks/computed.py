"""Computed, not measured: GPU memory and FLOPs of the released model's generation.

Memory is weights plus the peak of live activations. Nothing here allocates real memory. The
released components are built on the ``meta`` device (shapes without storage) to count their
parameters and buffers, and the activation peaks come from running the real forward code on meta
tensors under :class:`LiveTensorBytes`, which adds up the bytes of every tensor an op creates and
drops them when the last reference dies. That is the number ``torch.cuda.max_memory_allocated``
reports for the same code, up to the caching allocator's rounding and the workspaces kernels
allocate internally (cuBLAS, cuDNN); the CUDA context itself is outside both and is added as a
stated margin (:data:`CUDA_OVERHEAD_BYTES`). On the CPU the same computation matched the measured
peak resident set of the transformer sweep within 2% in six of seven cases and within 10% in the
smallest (``docs/benchmarks.md``).

Attention runs as a fused kernel on meta tensors (output and log-sum-exp only, as PyTorch's
flash and memory-efficient kernels on a GPU); ``sdpa="math"`` swaps in PyTorch's reference
implementation, which materialises the ``(sequences, heads, S, S)`` scores and probabilities.

A generation's peak per memory mode (weights resident on the GPU plus the largest stage):

* ``none``: T5 + transformer + VAE resident; + max(text, denoising, decoding activations);
* ``text_encoder_cpu``: transformer + VAE resident (T5 on the CPU); + max(denoising, decoding);
* ``model_cpu_offload``: one model at a time: max(T5 + text, transformer + denoising, VAE + decoding);
* ``sequential_cpu_offload``: one layer's weights at a time: max over the three stages of the
  largest leaf module's weights + that stage's activations.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from easyanimate.config import load_config, transformer_kwargs_for_model
from easyanimate.models.motion_module import TemporalContext
from easyanimate.generation import MEMORY_MODES
from easyanimate.models import Transformer3DModel

from .common import GIB

REPO = Path(__file__).resolve().parents[1]
V1_CONFIG = REPO / "config" / "easyanimate_video_motion_module_v1.yaml"
TIERS_GB = (12, 16, 24, 40, 80)
CUDA_OVERHEAD_BYTES = GIB  # CUDA context + cuBLAS/cuDNN workspaces: not in max_memory_allocated; assumed
VAE_DECODE_CHUNK = 8  # EasyAnimatePipeline.vae_decode_chunk_size
TEXT_TOKENS = 120

# google/t5-v1_1-xxl encoder, the text encoder of PixArt-XL-2-512x512 (and of EasyAnimate v1).
T5_XXL_CONFIG = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                     feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, tie_word_embeddings=False)
# The SD VAE of PixArt-XL-2-512x512 (sd-vae-ft-ema): 8x down-sampling, 4 latent channels.
SD_VAE_CONFIG = dict(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                     block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                     sample_size=512, scaling_factor=0.18215)


class LiveTensorBytes(TorchDispatchMode):
    """Track the bytes of tensors created by ops inside the mode; ``peak_bytes`` is their high-water mark.

    A storage counts from the op that creates it until its last tensor dies. Views and in-place
    results share an input's storage and add nothing; tensors made before the mode (weights,
    inputs) are not counted. Works on real tensors and on ``meta`` tensors alike.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current_bytes = 0
        self.peak_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {StorageWeakRef(t.untyped_storage()).cdata for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        self._drop_dead()  # before adding: a new storage may reuse a dead one's address
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata not in inputs and ref.cdata not in self._live:
                    self._live[ref.cdata] = (ref, storage.nbytes())
        self.current_bytes = sum(size for _, size in self._live.values())
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        return out

    def _drop_dead(self) -> None:
        for key in [key for key, (ref, _) in self._live.items() if ref.expired()]:
            del self._live[key]


def _math_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return torch.ops.aten._scaled_dot_product_attention_math(query, key, value, attn_mask, dropout_p, is_causal,
                                                             scale=scale)[0]


@contextmanager
def attention_implementation(sdpa: str) -> Iterator[None]:
    """``fused``: whatever ``F.scaled_dot_product_attention`` does (a fused kernel on meta tensors);
    ``math``: PyTorch's reference implementation, with the full score matrix."""
    if sdpa not in ("fused", "math"):
        raise ValueError(f"sdpa must be 'fused' or 'math', got {sdpa!r}")
    original = F.scaled_dot_product_attention
    if sdpa == "math":
        F.scaled_dot_product_attention = _math_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def activation_peak(module_call, *, sdpa: str = "fused") -> int:
    """Peak bytes of live tensors created while ``module_call()`` runs without gradients."""
    with torch.inference_mode(), attention_implementation(sdpa), LiveTensorBytes() as tracker:
        module_call()
    return tracker.peak_bytes


# ------------------------------------------------------------------------------------------------
# The released components, on the meta device

def v1_transformer(num_layers: int = 28, dtype: torch.dtype = torch.float32, device: str = "meta",
                   config_path: Path = V1_CONFIG) -> Transformer3DModel:
    """The released v1 video transformer (PixArt-XL-2 + grid motion modules) with random or no weights."""
    extras = transformer_kwargs_for_model(load_config(config_path).transformer_additional_kwargs)
    with torch.device(device):
        model = Transformer3DModel(num_layers=num_layers, **extras)
    return model.to(dtype) if dtype != torch.float32 else model


def t5_xxl_encoder(dtype: torch.dtype = torch.float32, device: str = "meta") -> nn.Module:
    """The T5 v1.1 XXL encoder (4.76B parameters)."""
    from transformers import T5Config, T5EncoderModel

    with torch.device(device):
        model = T5EncoderModel(T5Config(**T5_XXL_CONFIG))
    return model.to(dtype).eval()


def sd_vae(dtype: torch.dtype = torch.float32, device: str = "meta") -> nn.Module:
    """The SD ``AutoencoderKL`` of PixArt-XL-2-512x512 (84M parameters)."""
    from diffusers import AutoencoderKL

    with torch.device(device):
        model = AutoencoderKL(**SD_VAE_CONFIG)
    return model.to(dtype).eval()


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (what ``.to(device)`` moves)."""
    return sum(t.numel() * t.element_size() for t in itertools.chain(module.parameters(), module.buffers()))


def largest_leaf_bytes(module: nn.Module) -> int:
    """Bytes of the largest module holding its own parameters: what sequential offload keeps on the GPU."""
    return max(sum(t.numel() * t.element_size() for t in itertools.chain(m.parameters(recurse=False),
                                                                         m.buffers(recurse=False)))
               for m in module.modules())


@dataclass(frozen=True)
class ComponentSizes:
    """Parameter counts and resident bytes of the three models, in one dtype."""

    dtype: str
    transformer_params: int
    transformer_buffers: int
    transformer_bytes: int
    transformer_largest_leaf_bytes: int
    text_encoder_params: int
    text_encoder_bytes: int
    text_encoder_largest_leaf_bytes: int
    vae_params: int
    vae_bytes: int
    vae_largest_leaf_bytes: int


def component_sizes(dtype: torch.dtype) -> ComponentSizes:
    """Count the released models' parameters on the meta device."""
    transformer, text_encoder, vae = v1_transformer(dtype=dtype), t5_xxl_encoder(dtype), sd_vae(dtype)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return ComponentSizes(
        dtype=str(dtype).removeprefix("torch."),
        transformer_params=count(transformer), transformer_buffers=sum(b.numel() for b in transformer.buffers()),
        transformer_bytes=tensor_bytes(transformer), transformer_largest_leaf_bytes=largest_leaf_bytes(transformer),
        text_encoder_params=count(text_encoder), text_encoder_bytes=tensor_bytes(text_encoder),
        text_encoder_largest_leaf_bytes=largest_leaf_bytes(text_encoder),
        vae_params=count(vae), vae_bytes=tensor_bytes(vae), vae_largest_leaf_bytes=largest_leaf_bytes(vae),
    )


# ------------------------------------------------------------------------------------------------
# Activation peaks of the three stages

def denoising_peak(frames: int, height: int, width: int, dtype: torch.dtype, batch: int = 2,
                   window: int | None = None, sdpa: str = "fused", num_layers: int = 2) -> int:
    """Activation peak of one transformer forward at ``height x width`` pixels.

    ``batch`` is 2 for guidance in one batched forward, 1 for two forwards (or no guidance).
    ``window``: temporal window in frames (``TemporalContext(window, window // 4)``).
    Every block allocates the same, so two blocks give the peak of 28 (``tests/test_flops.py``).
    """
    model = v1_transformer(num_layers=num_layers, dtype=dtype)
    context = TemporalContext(window, window // 4) if window is not None and frames > window else None
    latents = torch.empty(batch, 4, frames, height // 8, width // 8, device="meta", dtype=dtype)
    text = torch.empty(batch, TEXT_TOKENS, model.config.caption_channels, device="meta", dtype=dtype)
    mask = torch.ones(batch, TEXT_TOKENS, device="meta")
    steps = torch.empty(batch, device="meta", dtype=torch.long)
    return activation_peak(lambda: model(latents, text, mask, steps, temporal_context=context), sdpa=sdpa)


def decoding_peak(frames_per_chunk: int, height: int, width: int, dtype: torch.dtype, sdpa: str = "fused") -> int:
    """Activation peak of decoding ``frames_per_chunk`` frames with the SD VAE in one call.

    The pipeline's own copy of the decoded video (float32, on the CPU) is not GPU memory.
    """
    vae = sd_vae(dtype)
    latents = torch.empty(frames_per_chunk, 4, height // 8, width // 8, device="meta", dtype=dtype)
    return activation_peak(lambda: vae.decode(latents), sdpa=sdpa)


def text_peak(batch: int, dtype: torch.dtype) -> int:
    """Activation peak of encoding ``batch`` prompts of 120 tokens with T5-XXL.

    Without a padding mask: the mask only changes values, and building it reads tensor values,
    which meta tensors do not have.
    """
    encoder = t5_xxl_encoder(dtype)
    ids = torch.zeros(batch, TEXT_TOKENS, dtype=torch.long, device="meta")
    return activation_peak(lambda: encoder(ids))


# ------------------------------------------------------------------------------------------------
# Settings and tiers


@dataclass(frozen=True)
class Setting:
    """One generation setting: size, dtype, memory mode, guidance batching, temporal window."""

    height: int
    width: int
    frames: int
    dtype: str = "bf16"
    memory_mode: str = "text_encoder_cpu"
    guidance: str = "batched"  # "batched": one forward of batch 2; "sequential": two of batch 1
    window: int | None = None
    sdpa: str = "fused"


def generation_peak(setting: Setting, sizes: ComponentSizes, cache: dict | None = None) -> dict[str, Any]:
    """The computed GPU peak of one generation with ``setting``, with its parts (bytes)."""
    from .common import DTYPES

    cache = {} if cache is None else cache
    dtype = DTYPES[setting.dtype]
    batch = 2 if setting.guidance == "batched" else 1

    def cached(key, fn):
        if key not in cache:
            cache[key] = fn()
        return cache[key]

    denoise = cached(("denoise", setting.frames, setting.height, setting.width, setting.dtype, batch, setting.window,
                      setting.sdpa),
                     lambda: denoising_peak(setting.frames, setting.height, setting.width, dtype, batch,
                                            setting.window, setting.sdpa))
    chunk = min(VAE_DECODE_CHUNK, setting.frames)
    decode = cached(("decode", chunk, setting.height, setting.width, setting.dtype, setting.sdpa),
                    lambda: decoding_peak(chunk, setting.height, setting.width, dtype, setting.sdpa))
    text = cached(("text", setting.dtype), lambda: text_peak(2, dtype))
    latents = 3 * batch * 4 * setting.frames * (setting.height // 8) * (setting.width // 8) * 4  # latents, noise, step
    t, e, v = sizes.transformer_bytes, sizes.text_encoder_bytes, sizes.vae_bytes
    mode = setting.memory_mode
    if mode == "none":
        peak = t + e + v + max(text, denoise + latents, decode)
    elif mode == "text_encoder_cpu":
        peak = t + v + max(denoise + latents, decode)
    elif mode == "model_cpu_offload":
        peak = max(e + text, t + denoise + latents, v + decode)
    elif mode == "sequential_cpu_offload":
        peak = max(sizes.text_encoder_largest_leaf_bytes + text,
                   sizes.transformer_largest_leaf_bytes + denoise + latents, sizes.vae_largest_leaf_bytes + decode)
    else:
        raise ValueError(f"unknown memory mode {mode!r}; valid: {', '.join(MEMORY_MODES)}")
    return {**asdict(setting), "peak_bytes": peak, "with_overhead_bytes": peak + CUDA_OVERHEAD_BYTES,
            "denoise_activation_bytes": denoise, "decode_activation_bytes": decode, "text_activation_bytes": text,
            "fits_gb": [tier for tier in TIERS_GB if peak + CUDA_OVERHEAD_BYTES <= tier * 10**9]}


def default_settings() -> Iterable[Setting]:
    """The grid of the tiers table: 256/512 px x 16/48/80 frames x bf16/fp32 x modes x guidance x windows."""
    for (size, frames, dtype, mode, guidance) in itertools.product(
            (256, 512), (16, 48, 80), ("bf16", "fp32"), MEMORY_MODES, ("batched", "sequential")):
        yield Setting(size, size, frames, dtype, mode, guidance)
        if frames > 16:
            yield Setting(size, size, frames, dtype, mode, guidance, window=16)


def tier_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per tier, dtype and memory mode: the largest setting that fits (ties: no window, then batched guidance)."""
    summary = []
    for tier in TIERS_GB:
        for dtype in sorted({r["dtype"] for r in rows}):
            for mode in MEMORY_MODES:
                fitting = [r for r in rows if r["dtype"] == dtype and r["memory_mode"] == mode and tier in r["fits_gb"]]
                if not fitting:
                    summary.append({"tier_gb": tier, "dtype": dtype, "memory_mode": mode, "largest": None})
                    continue
                # largest video first; then whole-clip attention (windows change the result and add
                # overlap work), then guidance in one batched forward (fewer, larger kernels)
                best = max(fitting, key=lambda r: (r["frames"] * r["height"] * r["width"], r["window"] is None,
                                                   r["guidance"] == "batched"))
                summary.append({"tier_gb": tier, "dtype": dtype, "memory_mode": mode, "largest": best})
    return summary


# ------------------------------------------------------------------------------------------------
# FLOPs of a whole generation at full size

def counted_flops(module_call) -> int:
    """Matmul/convolution FLOPs of ``module_call()`` on meta tensors, by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module_call()
    return counter.get_total_flops()


def generation_flops(frames: int = 80, size: int = 512, steps: int = 30, guided: bool = True) -> dict[str, int]:
    """FLOPs of one released-model generation: T5-XXL once, the transformer per step, the VAE per frame.

    Transformer: :func:`easyanimate.flops.transformer_flops` (analytic). T5 and VAE: counted by
    FlopCounterMode on meta tensors (matmuls and convolutions, as the analytic count).
    """
    from easyanimate.flops import transformer_flops

    batch = 2 if guided else 1
    model = v1_transformer(num_layers=28)
    per_step = transformer_flops(model.config, frames, size // 8, size // 8, batch).total
    encoder = t5_xxl_encoder()
    ids = torch.zeros(batch, TEXT_TOKENS, dtype=torch.long, device="meta")
    text = counted_flops(lambda: encoder(ids))
    vae = sd_vae()
    latent = torch.empty(1, 4, size // 8, size // 8, device="meta")
    per_frame = counted_flops(lambda: vae.decode(latent))
    return {"text_encoding": text, "transformer_per_step": per_step, "denoising": steps * per_step,
            "decoding_per_frame": per_frame, "decoding": frames * per_frame,
            "total": text + steps * per_step + frames * per_frame}
