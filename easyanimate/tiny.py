"""Tiny but real components, built in code, offline and seeded: for tests and the tiny demo model.

Each builder returns the same class the full model uses (a T5 tokenizer and encoder, a diffusers
``AutoencoderKL``, a DPM-Solver scheduler, a PixArt transformer config), at a size that runs in
milliseconds on a CPU. Nothing is downloaded. Weights depend only on ``seed``: building twice with the
same seed gives identical tensors, and the global torch RNG is left untouched.

Sizes: text embeddings ``(B, 120, 32)``; pixels ``(B, 3, H, W)`` -> latents ``(B, 4, H/8, W/8)``;
transformer inner dim 32 = 2 heads x 16, divisible by the 32 GroupNorm groups of the motion module.
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import T5Config, T5EncoderModel, T5Tokenizer

from easyanimate.schedulers import V1_NOISE_SCHEDULER_KWARGS, build_scheduler

TINY_TEXT_DIM = 32
"""``d_model`` of the tiny T5 encoder, hence the transformer's ``caption_channels``."""

TINY_WORDS: tuple[str, ...] = (
    # colours, shapes, directions and the synthetic-clip caption phrase
    "red", "green", "blue", "yellow", "white", "black", "orange", "purple", "pink", "grey",
    "circle", "square", "triangle", "ball", "box", "shape", "shapes",
    "moving", "moves", "move", "left", "right", "up", "down", "to", "the", "from",
    "on", "a", "an", "dark", "background", "light", "bright",
    # common prompt words, including those of the v1 default prompts
    "and", "of", "in", "with", "is", "at", "over", "through", "by", "slowly", "quickly", "small", "large",
    "big", "video", "photo", "image", "scene", "camera", "view", "close", "wide", "shot",
    "snowy", "snow", "forest", "road", "tree", "trees", "sky", "sun", "sunset", "night", "day", "sea",
    "water", "mountain", "mountains", "city", "street", "car", "flower", "flowers", "grass", "cloud",
    "clouds", "girl", "boy", "man", "woman", "person", "dog", "cat", "bird", "face", "hair", "eyes",
    "bangs", "1girl", "walking", "running", "flying", "beautiful", "masterpiece", "best", "quality",
    "high", "detailed", "strange", "motion", "trajectory", "poor", "composition", "deformed", "worst",
    "normal", "low", "resolution", "duplicate", "ugly", "bad",
)
"""Whole-word pieces of the tiny tokenizer's default vocabulary."""

_CHARACTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,.!?-'\"():;/&+"
_WORD_SCORE, _SPACE_SCORE, _CHARACTER_SCORE = -5.0, -8.0, -10.0


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run the block with the CPU torch RNG seeded, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_tiny_tokenizer(vocab_words: list[str] | None = None) -> T5Tokenizer:
    """Build a T5 (SentencePiece-Unigram style) tokenizer from a fixed word list, without any download.

    Ids follow T5: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, then the word-start marker ``▁``, one
    ``▁word`` piece per word and single characters, so an unlisted word is spelled out letter by letter
    (unlisted characters become ``<unk>``). No sentinel ``<extra_id_*>`` tokens. The vocabulary is
    defined by the word list alone, so every build tokenizes identically.

    Args:
        vocab_words: whole words to give their own piece; defaults to ``TINY_WORDS``.

    Raises:
        ValueError: a word is empty or contains whitespace.
    """
    words = TINY_WORDS if vocab_words is None else tuple(vocab_words)
    bad = [word for word in words if not word or any(c.isspace() for c in word)]
    if bad:
        raise ValueError(f"Vocabulary words must be non-empty and without whitespace: {bad}")
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", _SPACE_SCORE)]
    pieces += [(f"▁{word}", _WORD_SCORE) for word in dict.fromkeys(words)]
    pieces += [(character, _CHARACTER_SCORE) for character in _CHARACTERS]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def build_tiny_text_encoder(vocab_size: int, d_model: int = TINY_TEXT_DIM, seed: int = 0) -> T5EncoderModel:
    """Build a 2-layer T5 v1.1-style encoder (gated-GELU feed-forward, so ``wi_0``/``wi_1`` exist).

    Args:
        vocab_size: number of token ids, ``len(tokenizer)``.
        d_model: hidden size of the output embeddings ``(B, L, d_model)``.
        seed: weight initialisation seed.

    Returns:
        The encoder in eval mode.
    """
    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        layer_norm_epsilon=1e-6,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    with _seeded(seed):
        model = T5EncoderModel(config)
    return model.eval()


def build_tiny_vae(seed: int = 0) -> AutoencoderKL:
    """Build an SD-style ``AutoencoderKL``: 4 latent channels, 8x spatial downsampling, scaling 0.18215.

    ``(B, 3, H, W)`` pixels in [-1, 1] encode to ``(B, 4, H/8, W/8)`` latents (four blocks, three
    downsamplings), as the 2D SD VAE of v1 does.

    Args:
        seed: weight initialisation seed.

    Returns:
        The VAE in eval mode.
    """
    with _seeded(seed):
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16),
            layers_per_block=1,
            act_fn="silu",
            latent_channels=4,
            norm_num_groups=8,
            sample_size=64,
            scaling_factor=0.18215,
        )
    return vae.eval()


def build_pixart_scheduler() -> SchedulerMixin:
    """Build the scheduler a PixArt folder ships in ``scheduler/``: DPM-Solver++ (order 2) on linear betas.

    The original trainers sampled their validation videos with this one, not with the yaml's sampler.
    """
    return build_scheduler(
        "DPM++", {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear", "steps_offset": 0}
    )


def tiny_transformer_config(
    caption_channels: int = TINY_TEXT_DIM,
    num_layers: int = 2,
    sample_size: int = 8,
) -> dict[str, Any]:
    """Return a PixArt-alpha ``transformer/config.json`` dict (the released folder's keys) at tiny size.

    Inner dim = 2 heads x 16 = 32, so the cross-attention dim (PixArt projects captions to the inner
    dim) is 32 too, and the motion module's ``GroupNorm(32, inner dim)`` is valid. ``sample_size`` 8 is
    the latent size of a 64 px image; being != 128 it disables the resolution micro-conditioning.

    Args:
        caption_channels: hidden size of the text encoder.
        num_layers: number of transformer blocks.
        sample_size: latent height and width the position embedding is built for.
    """
    num_attention_heads, attention_head_dim = 2, 16
    return {
        "_class_name": "Transformer2DModel",
        "num_attention_heads": num_attention_heads,
        "attention_head_dim": attention_head_dim,
        "in_channels": 4,
        "out_channels": 8,
        "num_layers": num_layers,
        "dropout": 0.0,
        "norm_num_groups": 32,
        "cross_attention_dim": num_attention_heads * attention_head_dim,
        "attention_bias": True,
        "sample_size": sample_size,
        "num_vector_embeds": None,
        "patch_size": 2,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": 1000,
        "use_linear_projection": False,
        "only_cross_attention": False,
        "double_self_attention": False,
        "upcast_attention": False,
        "norm_type": "ada_norm_single",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
        "attention_type": "default",
        "caption_channels": caption_channels,
    }


V1_MOTION_MODULE_KWARGS: Mapping[str, Any] = MappingProxyType(
    {
        "num_attention_heads": 8,
        "num_transformer_block": 1,
        "attention_block_types": ("Temporal_Self", "Temporal_Self"),
        "temporal_position_encoding": True,
        "temporal_position_encoding_max_len": 4096,
        "temporal_attention_dim_div": 1,
        "block_size": 2,
    }
)
"""``motion_module_kwargs`` of ``config/easyanimate_video_motion_module_v1.yaml``."""


def tiny_motion_module_kwargs(num_attention_heads: int = 2) -> dict[str, Any]:
    """Return the v1 yaml's ``motion_module_kwargs`` with fewer heads (head dim 32 / 2 = 16).

    ``attention_block_types`` is returned as a list, as yaml loads it.
    """
    kwargs = dict(V1_MOTION_MODULE_KWARGS, num_attention_heads=num_attention_heads)
    kwargs["attention_block_types"] = list(kwargs["attention_block_types"])
    return kwargs


def write_tiny_model(models_root: str | Path, name: str = "tiny-easyanimate", seed: int = 0,
                     num_layers: int = 2, sample_size: int = 8, inpaint: bool = False) -> dict[str, Path]:
    """Write a tiny model in the released layout under ``models_root``; returns the paths written.

    ``inpaint`` writes an inpaint model: its transformer takes 9 input channels (latents, mask, masked-video
    latents), all with random weights.

    * ``Diffusion_Transformer/<name>/``: a PixArt-alpha diffusers folder (tokenizer, T5, VAE,
      2D transformer, scheduler, model_index.json) plus ``easyanimate_config.yaml`` (the v1 yaml
      with 2 motion-module heads) and ``easyanimate_defaults.yaml`` (its generation defaults);
    * ``Motion_Module/<name>_mm.safetensors``: a motion module with random non-zero weights,
      original key names;
    * ``Personalized_Model/<name>_lora.safetensors``: a kohya-format LoRA over the transformer and T5.

    The weights are random: the outputs are noise, but every code path of the real model runs.
    """
    from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel
    from omegaconf import OmegaConf

    from .lora import TEXT_ENCODER, TRANSFORMER, kohya_module_name, lora_target_modules, save_kohya_lora
    from .models import Transformer3DModel, save_motion_module

    root = Path(models_root)
    folder = root / "Diffusion_Transformer" / name
    tokenizer = build_tiny_tokenizer()
    text_encoder = build_tiny_text_encoder(len(tokenizer), seed=seed)
    with _seeded(seed):
        # from_config: the legacy PixArt keys (num_vector_embeds, ...) are kept in config.json as released.
        config = tiny_transformer_config(num_layers=num_layers, sample_size=sample_size)
        transformer = PixArtTransformer2DModel.from_config({**config, "in_channels": 9} if inpaint else config)
    pipe = PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=build_tiny_vae(seed),
                               transformer=transformer, scheduler=build_pixart_scheduler())
    pipe.save_pretrained(folder)

    model_config = {
        "transformer_additional_kwargs": {
            "patch_3d": False, "fake_3d": False, "basic_block_type": "motionmodule",
            "time_position_encoding_before_transformer": False, "motion_module_type": "VanillaGrid",
            "motion_module_kwargs": {**tiny_motion_module_kwargs(), "temporal_position_encoding_max_len": 256},
        },
        "noise_scheduler_kwargs": dict(V1_NOISE_SCHEDULER_KWARGS),
        "vae_kwargs": {"enable_magvit": False},
    }
    OmegaConf.save(OmegaConf.create(model_config), folder / "easyanimate_config.yaml")
    paths = {"model": folder, "config": folder / "easyanimate_config.yaml",
             "motion_module": root / "Motion_Module" / f"{name}_mm.safetensors",
             "lora": root / "Personalized_Model" / f"{name}_lora.safetensors"}

    video_model = Transformer3DModel.from_pretrained_2d(
        folder, transformer_additional_kwargs=model_config["transformer_additional_kwargs"])
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for key, tensor in video_model.state_dict().items():
            if ".attn_temporal." in key and not key.endswith(".pe"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
    save_motion_module(video_model, paths["motion_module"])

    lora = {}
    for component, model in ((TRANSFORMER, video_model), (TEXT_ENCODER, text_encoder)):
        for path in lora_target_modules(model, component)[::3]:
            layer = model.get_submodule(path)
            kohya = kohya_module_name(path, component)
            lora[f"{kohya}.lora_down.weight"] = torch.randn(4, layer.in_features, generator=generator) * 0.1
            lora[f"{kohya}.lora_up.weight"] = torch.randn(layer.out_features, 4, generator=generator) * 0.1
            lora[f"{kohya}.alpha"] = torch.tensor(2.0)
    save_kohya_lora(paths["lora"], lora)

    defaults = {"config": "easyanimate_config.yaml", "motion_module": f"Motion_Module/{name}_mm.safetensors",
                "height": sample_size * 8, "width": sample_size * 8, "frames": 8, "fps": 8, "steps": 5,
                "guidance_scale": 6.0, "sampler": "DPM++", "prompt": "a red circle moving left",
                "negative_prompt": ""}
    OmegaConf.save(OmegaConf.create(defaults), folder / "easyanimate_defaults.yaml")
    return paths
