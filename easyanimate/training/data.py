"""The data side of a training run: dataset, epoch order, batches, and the optional latent cache.

Without ``precompute`` every batch is read from the files and encoded (VAE, T5) in the step. With it,
every item is encoded once at start, by one process (:func:`precompute`: epoch-0 crops and caption
choice), and the run trains from the :class:`CachedDataset` in memory, batched by :func:`collate_cached`.

The order of an epoch depends only on (seed, epoch) (:class:`EpochSampler`), so a resumed run replays
the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import gather_object
from diffusers import AutoencoderKL
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from ..data import AspectRatioBatchSampler, VideoImageDataset, collate_clips
from ..text import encode_text
from .components import Components
from .config import TrainConfig

logger = get_logger(__name__)


class EpochSampler(Sampler[int]):
    """A permutation that depends only on (seed, epoch): resuming replays the same order."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def build_dataset(config: TrainConfig, image_mode: bool, size_multiple: int) -> VideoImageDataset:
    """The dataset the config describes; image models train on single frames. ``size_multiple``: the model's
    pixel multiple, which bucket sizes are rounded down to."""
    frames = 1 if image_mode else config.sample_n_frames
    return VideoImageDataset.from_metadata(
        config.train_data_format, config.train_data_meta, config.train_data_dir, config.caption_column,
        sample_size=config.sample_size, sample_stride=config.sample_stride, sample_n_frames=frames,
        image_sample_size=config.image_sample_size, video_repeat=config.video_repeat,
        caption_dropout=config.caption_dropout, min_frames=frames if config.skip_short_videos else None,
        enable_bucket=config.enable_bucket, size_multiple=size_multiple, random_flip=config.random_flip,
        seed=config.seed or 0, validate_all=config.validate_data)


class CachedDataset(Dataset):
    """Precomputed VAE latents and T5 states, one entry per dataset item."""

    def __init__(self, items: list[dict[str, Any]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]

    def bucket_key(self, index: int):
        item = self.items[index]
        return item["data_type"], tuple(item["latents"].shape[-2:])


def collate_cached(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors of cached items; other values become lists."""
    return {key: torch.stack([e[key] for e in examples]) if torch.is_tensor(examples[0][key])
            else [e[key] for e in examples]
            for key in examples[0]}


@torch.no_grad()
def encode_video(vae: AutoencoderKL, pixels: torch.Tensor, mini_batch: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Pixels ``(B, F, 3, H, W)`` in [-1, 1] -> scaled latents ``(B, 4, F, H/8, W/8)``."""
    batch, frames = pixels.shape[:2]
    flat = pixels.flatten(0, 1).to(vae.device, vae.dtype)
    latents = torch.cat([vae.encode(chunk).latent_dist.sample(generator) for chunk in flat.split(mini_batch)])
    latents = latents * vae.config.scaling_factor
    return latents.unflatten(0, (batch, frames)).permute(0, 2, 1, 3, 4).float()


@torch.no_grad()
def precompute(dataset: VideoImageDataset, components: Components, config: TrainConfig, accelerator: Accelerator,
               generator: torch.Generator) -> CachedDataset:
    """Encode every item once (epoch 0 crops and caption choice), each process its share, then share them all.

    Process ``r`` of ``n`` encodes items ``r, r + n, ...`` with its own generator; every process then
    holds the whole cache, in dataset order.
    """
    device = accelerator.device
    components.vae.to(device)
    components.text_encoder.to(device)
    share = range(accelerator.process_index, len(dataset), accelerator.num_processes)
    items = []
    for index in tqdm(share, desc="precomputing latents and text", leave=False,
                      disable=not accelerator.is_local_main_process):
        example = dataset[index]
        latents = encode_video(components.vae, example["pixel_values"][None], config.vae_mini_batch, generator)[0]
        states, mask = encode_text(components.tokenizer, components.text_encoder, [example["text"]],
                                   config.tokenizer_max_length, device)
        items.append((index, {"latents": latents.cpu(), "prompt_embeds": states[0].float().cpu(),
                              "prompt_attention_mask": mask[0].cpu(), "data_type": example["data_type"],
                              "text": example["text"]}))
    logger.info("precompute: this process encoded %d of %d items", len(items), len(dataset), main_process_only=False)
    gathered = gather_object(items) if accelerator.num_processes > 1 else items
    return CachedDataset([item for _, item in sorted(gathered, key=lambda pair: pair[0])])


@dataclass
class TrainingData:
    """The files' dataset (for its skip summary), what the loader reads (it or its cache), and the loader."""

    source: VideoImageDataset
    dataset: Dataset
    loader: DataLoader
    batches_per_epoch: int


def build_training_data(config: TrainConfig, components: Components, accelerator: Accelerator,
                        generator: torch.Generator) -> TrainingData:
    """Dataset (cached when ``precompute``), epoch sampler, batches (by aspect ratio when mixed) and loader."""
    vae_scale = 2 ** (len(components.vae.config.block_out_channels) - 1)
    source = build_dataset(config, components.image_mode, components.transformer.spatial_multiple * vae_scale)
    mixed = len({e.data_type for e in source.entries}) > 1
    if config.precompute:
        if config.lora is not None and config.lora.train_text_encoder:
            raise ValueError("precompute caches T5 states, which a text-encoder LoRA changes; turn one off")
        dataset, collate = precompute(source, components, config, accelerator, generator), collate_cached
    else:
        dataset, collate = source, collate_clips
    sampler = EpochSampler(len(dataset), config.seed or 0)
    batches = make_batch_sampler(dataset, sampler, config.train_batch_size, config.enable_bucket or mixed)
    if len(batches) == 0:
        raise ValueError(f"{len(dataset)} usable items make no full batch of {config.train_batch_size}; "
                         "lower train_batch_size or add data")
    # Its own generator: creating an epoch iterator must not draw from the global RNG.
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=config.dataloader_num_workers,
                        generator=torch.Generator().manual_seed(config.seed or 0), worker_init_fn=ignore_interrupts)
    return TrainingData(source, dataset, loader, len(batches))


def ignore_interrupts(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the training process, which stops after the current step (and still
    needs its batches for that)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_batch_sampler(dataset, sampler: EpochSampler, batch_size: int, grouped: bool) -> Sampler:
    """Full batches only; grouped by (type, size) bucket when items differ in shape."""
    if grouped:
        return AspectRatioBatchSampler(sampler, dataset, batch_size, drop_last=True)
    return BatchSampler(sampler, batch_size, drop_last=True)
