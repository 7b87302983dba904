"""How much accelerator memory a generation setting needs, computed before anything is loaded.

Method. Nothing is allocated. Each model (video transformer, T5 text encoder, VAE) is built from its
config on the ``meta`` device (shapes without storage) to count the bytes of its parameters and
buffers in the run's dtype. The activation peak of each stage (encoding the prompts, one transformer
forward, decoding one chunk of frames) comes from running the real forward code on meta tensors
under :class:`LiveTensorBytes`, which adds up the bytes of every tensor an op creates and drops them
when the tensor's last reference dies: the number ``torch.cuda.max_memory_allocated`` reports for
the same code. On a CPU the same computation matched the measured peak resident set of a transformer
sweep within 1-10% (``docs/benchmarks.md``).

The peak of a memory mode (:data:`MEMORY_MODES`) is the largest,
over the three stages, of the weights on the device during the stage plus the stage's activations:

* ``none``: T5 + transformer + VAE stay on the device through every stage;
* ``text_encoder_cpu``: transformer + VAE on the device; T5 and its activations are on the CPU;
* ``model_cpu_offload``: one model at a time: T5 + encoding, transformer + denoising, VAE + decoding;
* ``sequential_cpu_offload``: the largest single layer's weights + that stage's activations.

Counted: weights, activations, and the denoising loop's own tensors (three latent-sized float32
tensors of the guidance batch: latents, model output, scheduler step). Not counted: the CUDA context
and the cuBLAS/cuDNN workspaces (a stated margin, :data:`CUDA_OVERHEAD_BYTES`, is added in
:attr:`MemoryEstimate.total_bytes`), the caching allocator's rounding and fragmentation, scratch memory
kernels allocate internally, ``torch.compile`` buffers, a LoRA while it is merged, and everything on
the CPU side (offloaded weights, the decoded video, which the pipeline returns on the CPU). Attention
is counted as a fused kernel (output and log-sum-exp only, as PyTorch's flash and memory-efficient
kernels); ``sdpa="math"`` counts PyTorch's reference implementation with its full score matrix.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .models import TemporalContext, Transformer3DModel
from .models.motion_module import default_context_overlap

MEMORY_MODES = {
    "none": "everything on the device",
    "text_encoder_cpu": "T5 runs on the CPU; transformer and VAE on the device",
    "model_cpu_offload": "each model moves to the device only while it runs (diffusers model offload)",
    "sequential_cpu_offload": "weights stream to the device layer by layer (slowest, least memory)",
}
"""Where the pipeline's models live during a generation (``--memory-mode``)."""

STAGES = ("text_encoding", "denoising", "decoding")
CUDA_OVERHEAD_BYTES = 2**30  # CUDA context + cuBLAS/cuDNN workspaces: outside max_memory_allocated; assumed
# google/t5-v1_1-xxl encoder, the text encoder of PixArt-XL-2-512x512 (and of EasyAnimate v1).
T5_XXL_CONFIG = MappingProxyType(dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32, tie_word_embeddings=False))
# The SD VAE of PixArt-XL-2-512x512 (sd-vae-ft-ema): 8x down-sampling, 4 latent channels.
SD_VAE_CONFIG = MappingProxyType(dict(
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
    scaling_factor=0.18215))


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
        # Drop the dead first: a new storage may reuse a dead one's address.
        for key in [key for key, (ref, _) in self._live.items() if ref.expired()]:
            del self._live[key]
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata not in inputs and ref.cdata not in self._live:
                    self._live[ref.cdata] = (ref, storage.nbytes())
        self.current_bytes = sum(size for _, size in self._live.values())
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        return out


def _math_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return torch.ops.aten._scaled_dot_product_attention_math(query, key, value, attn_mask, dropout_p, is_causal,
                                                             scale=scale)[0]


@contextmanager
def _attention(sdpa: str) -> Iterator[None]:
    if sdpa not in ("fused", "math"):
        raise ValueError(f"sdpa must be 'fused' or 'math', got {sdpa!r}")
    original = F.scaled_dot_product_attention
    if sdpa == "math":
        F.scaled_dot_product_attention = _math_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def activation_peak(call: Callable[[], Any], *, sdpa: str = "fused") -> int:
    """Peak bytes of the tensors created while ``call()`` runs without gradients (real or meta tensors)."""
    with torch.inference_mode(), _attention(sdpa), LiveTensorBytes() as tracker:
        call()
    return tracker.peak_bytes


def build_meta_model(component: str, config: Mapping[str, Any], dtype: torch.dtype = torch.float32) -> nn.Module:
    """A model built from its config on the meta device, in ``dtype``.

    ``component``: ``transformer`` (:class:`Transformer3DModel`), ``text_encoder`` (T5 encoder) or ``vae``
    (``AutoencoderKL``).
    """
    with torch.device("meta"):
        if component == "transformer":
            model = Transformer3DModel.from_config(dict(config))
        elif component == "text_encoder":
            from transformers import T5Config, T5EncoderModel

            model = T5EncoderModel(T5Config(**config))
        elif component == "vae":
            from diffusers import AutoencoderKL

            model = AutoencoderKL.from_config(dict(config))
        else:
            raise ValueError(f"unknown component {component!r}; valid: transformer, text_encoder, vae")
    # nn.Module.to: ModelMixin.to warns about modules to keep in float32, and these models have none.
    return nn.Module.to(model, dtype).eval()


@dataclass(frozen=True)
class ComponentSize:
    """Parameters and buffers of one model, and the bytes they take in one dtype."""

    parameters: int
    buffers: int
    bytes: int
    largest_leaf_bytes: int  # the largest module holding its own tensors: what sequential offload keeps


def _key(config: Mapping[str, Any]) -> str:
    return json.dumps(dict(config), sort_keys=True, default=str)


@lru_cache(maxsize=64)
def _component_size(component: str, key: str, dtype: torch.dtype) -> ComponentSize:
    model = build_meta_model(component, json.loads(key), dtype)

    def nbytes(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    return ComponentSize(parameters=sum(p.numel() for p in model.parameters()),
                         buffers=sum(b.numel() for b in model.buffers()),
                         bytes=nbytes(itertools.chain(model.parameters(), model.buffers())),
                         largest_leaf_bytes=max(nbytes(itertools.chain(m.parameters(recurse=False),
                                                                       m.buffers(recurse=False)))
                                                for m in model.modules()))


def component_sizes(transformer_config: Mapping[str, Any], dtype: torch.dtype,
                    text_encoder_config: Mapping[str, Any] = T5_XXL_CONFIG,
                    vae_config: Mapping[str, Any] = SD_VAE_CONFIG) -> dict[str, ComponentSize]:
    """Sizes of the transformer, text encoder and VAE in ``dtype`` (defaults: the released T5-XXL and SD VAE)."""
    return {name: _component_size(name, _key(config), dtype) for name, config in
            (("transformer", transformer_config), ("text_encoder", text_encoder_config), ("vae", vae_config))}


@lru_cache(maxsize=256)
def _transformer_activations(key: str, batch: int, frames: int, latent_height: int, latent_width: int,
                             dtype: torch.dtype, context: tuple[int, int] | None, text_tokens: int, sdpa: str) -> int:
    model = build_meta_model("transformer", json.loads(key), dtype)
    temporal = TemporalContext(*context) if context is not None and frames > context[0] else None
    meta = dict(device="meta", dtype=dtype)
    latents = torch.empty(batch, model.config.in_channels, frames, latent_height, latent_width, **meta)
    text = torch.empty(batch, text_tokens, model.config.caption_channels, **meta)
    mask = torch.ones(batch, text_tokens, device="meta")
    steps = torch.empty(batch, device="meta", dtype=torch.long)
    return activation_peak(lambda: model(latents, text, mask, steps, temporal_context=temporal), sdpa=sdpa)


def transformer_activation_bytes(transformer_config: Mapping[str, Any], batch: int, frames: int, latent_height: int,
                                 latent_width: int, dtype: torch.dtype, context_frames: int | None = None,
                                 context_overlap: int | None = None, text_tokens: int = 120,
                                 sdpa: str = "fused") -> int:
    """Activation peak of one transformer forward on latents ``(batch, C, frames, latent_height, latent_width)``.

    ``context_frames``: temporal window (``pipe(..., context_frames=...)``; overlap default a quarter).
    Every block allocates alike, so a config with 2 blocks gives the peak of the full depth.
    """
    context = None
    if context_frames is not None:
        context = (context_frames, default_context_overlap(context_frames) if context_overlap is None
                   else context_overlap)
    return _transformer_activations(_key(transformer_config), batch, frames, latent_height, latent_width, dtype,
                                    context, text_tokens, sdpa)


@lru_cache(maxsize=64)
def _stage_activations(component: str, key: str, shape: tuple[int, ...], dtype: torch.dtype, sdpa: str) -> int:
    model = build_meta_model(component, json.loads(key), dtype)
    if component == "text_encoder":  # token ids; no padding mask: it only changes values, which meta lacks
        ids = torch.zeros(shape, dtype=torch.long, device="meta")
        return activation_peak(lambda: model(ids), sdpa=sdpa)
    latents = torch.empty(shape, device="meta", dtype=dtype)
    return activation_peak(lambda: model.decode(latents), sdpa=sdpa)


@dataclass(frozen=True)
class MemoryEstimate:
    """The computed device memory of one generation setting in one memory mode (bytes).

    ``weights``: each model's weights on the device while its stage runs (0: kept on the CPU);
    ``activations``: each stage's activation peak (``text_encoding``, ``denoising``, ``decoding``);
    ``stages``: device memory at each stage's peak in this mode (weights on the device + activations).
    """

    memory_mode: str
    weights: dict[str, int]
    activations: dict[str, int]
    stages: dict[str, int]
    overhead_bytes: int = CUDA_OVERHEAD_BYTES

    @property
    def peak_bytes(self) -> int:
        """The largest stage: what ``torch.cuda.max_memory_allocated`` would report."""
        return max(self.stages.values())

    @property
    def peak_stage(self) -> str:
        """The stage that sets the peak."""
        return max(self.stages, key=self.stages.get)

    @property
    def total_bytes(self) -> int:
        """The peak plus the CUDA context margin: what the device must have free."""
        return self.peak_bytes + self.overhead_bytes


def estimate_generation_memory(transformer_config: Mapping[str, Any], height: int, width: int, frames: int,
                               dtype: torch.dtype = torch.float16, memory_mode: str = "none",
                               context_frames: int | None = None, context_overlap: int | None = None,
                               guidance: bool = True, batched_guidance: bool = True, decode_chunk_size: int = 8,
                               max_sequence_length: int = 120,
                               text_encoder_config: Mapping[str, Any] = T5_XXL_CONFIG,
                               vae_config: Mapping[str, Any] = SD_VAE_CONFIG, sdpa: str = "fused") -> MemoryEstimate:
    """Compute the device memory of generating ``frames`` frames of ``height x width`` pixels (module docstring).

    Args:
        transformer_config: :class:`Transformer3DModel` config (``pipe.transformer.config`` or its kwargs).
        dtype: weights and activations on the device.
        memory_mode: one of :data:`MEMORY_MODES`.
        context_frames, context_overlap: the temporal window, as ``pipe(...)`` takes it.
        guidance, batched_guidance: classifier-free guidance, as one forward of batch 2 (the pipeline's
            ``batched_guidance``) or two of batch 1.
        decode_chunk_size: frames per VAE call (the pipeline call's ``decode_chunk_size``, default 8).
        text_encoder_config, vae_config: T5 and ``AutoencoderKL`` configs (defaults: the released models).
    """
    if memory_mode not in MEMORY_MODES:
        raise ValueError(f"unknown memory mode {memory_mode!r}; valid: {', '.join(MEMORY_MODES)}")
    sizes = component_sizes(transformer_config, dtype, text_encoder_config, vae_config)
    scale = 2 ** (len(vae_config["block_out_channels"]) - 1)
    batch = 2 if guidance and batched_guidance else 1
    two_blocks = {**transformer_config, "num_layers": min(transformer_config.get("num_layers", 28), 2)}
    denoise = transformer_activation_bytes(two_blocks, batch, frames, height // scale, width // scale, dtype,
                                           context_frames, context_overlap, max_sequence_length, sdpa)
    chunk = (min(decode_chunk_size, frames), vae_config["latent_channels"], height // scale, width // scale)
    activations = {
        "text_encoding": _stage_activations("text_encoder", _key(text_encoder_config),
                                            (2 if guidance else 1, max_sequence_length), dtype, sdpa),
        "denoising": denoise,
        "decoding": _stage_activations("vae", _key(vae_config), chunk, dtype, sdpa),
    }
    channels = transformer_config.get("in_channels", 4)
    loop = 3 * batch * channels * frames * (height // scale) * (width // scale) * 4
    full = {name: size.bytes for name, size in sizes.items()}
    weights = {"none": full, "text_encoder_cpu": {**full, "text_encoder": 0}, "model_cpu_offload": full,
               "sequential_cpu_offload": {name: size.largest_leaf_bytes for name, size in sizes.items()}}[memory_mode]
    t, e, v = weights["transformer"], weights["text_encoder"], weights["vae"]
    text = 0 if memory_mode == "text_encoder_cpu" else activations["text_encoding"]  # else it runs on the CPU
    decode = activations["decoding"]
    if memory_mode in ("none", "text_encoder_cpu"):  # everything on the device stays there
        stages = {"text_encoding": t + e + v + text, "denoising": t + e + v + denoise + loop,
                  "decoding": t + e + v + decode}
    else:  # one model on the device at a time
        stages = {"text_encoding": e + text, "denoising": t + denoise + loop, "decoding": v + decode}
    return MemoryEstimate(memory_mode, weights, activations, stages)


TIERS_GB = (12, 16, 24, 40, 80)
"""GPU memory sizes (GB, 10^9 bytes) that :func:`memory_tiers` sorts settings into."""


def memory_tiers(transformer_config: Mapping[str, Any], sizes: Iterable[int], frames: Iterable[int],
                 dtypes: Iterable[str], windows: Iterable[int | None] = (None,),
                 tiers_gb: Iterable[int] = TIERS_GB) -> list[dict[str, Any]]:
    """Every setting: square ``sizes`` x ``frames`` x ``dtypes`` (names: fp32, fp16, bf16) x memory mode x guidance
    (one batch of 2, or two forwards) x temporal window (None, or shorter than the clip), with its computed memory
    (:func:`estimate_generation_memory`) and the tiers it fits (its total, the CUDA margin included)."""
    from .devices import DTYPES

    rows = []
    for px, count, dtype, mode, guidance, window in itertools.product(
            sizes, frames, dtypes, MEMORY_MODES, ("batched", "sequential"), windows):
        if window is None or window < count:
            e = estimate_generation_memory(transformer_config, px, px, count, DTYPES[dtype], mode,
                                           context_frames=window, batched_guidance=guidance == "batched")
            rows.append({"height": px, "width": px, "frames": count, "dtype": dtype, "memory_mode": mode,
                         "guidance": guidance, "window": window, "peak_bytes": e.peak_bytes,
                         "with_overhead_bytes": e.total_bytes, "activations": e.activations, "stages": e.stages,
                         "fits_gb": [tier for tier in tiers_gb if e.total_bytes <= tier * 10**9]})
    return rows


def largest_fitting(rows: Iterable[Mapping[str, Any]], tier_gb: int, dtype: str,
                    memory_mode: str) -> Mapping[str, Any] | None:
    """The largest video of :func:`memory_tiers` rows that fits ``tier_gb`` in ``dtype`` and ``memory_mode``; among
    equals, the one without a window, then the one with batched guidance (None: nothing fits)."""
    fitting = [r for r in rows if (r["dtype"], r["memory_mode"]) == (dtype, memory_mode) and tier_gb in r["fits_gb"]]
    return max(fitting, default=None, key=lambda r: (r["frames"] * r["height"] * r["width"], r["window"] is None,
                                                     r["guidance"] == "batched"))
