"""The one training loop behind ``train.py`` and ``train_lora.py``.

Reads top to bottom: set up accelerate, load the frozen parts and the model, choose what trains
(name patterns or a LoRA), build the data, then loop: encode -> noise -> predict -> improved-DDPM loss
-> step; checkpoint, validate, and finally export (transformer folder, motion module with the
original key names, PixArt checkpoint, or kohya LoRA). Runs on one CPU or GPU, or many processes
through ``accelerate launch``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler
from tqdm.auto import tqdm
from transformers import AutoTokenizer, T5EncoderModel

from ..config import EasyAnimateConfig, load_config
from ..data import AspectRatioBatchSampler, VideoImageDataset, collate_clips
from ..lora import TEXT_ENCODER, TRANSFORMER, lora_target_modules, peft_state_dict_to_kohya, save_kohya_lora
from ..devices import MIXED_PRECISION_DTYPES
from ..files import write_safetensors, write_text
from ..models import Transformer3DModel, save_motion_module
from ..models.loading import is_motion_key
from ..pipelines import EasyAnimatePipeline
from ..schedulers import build_scheduler
from ..text import encode_text
from ..video_io import save_image, save_video
from . import checkpoints
from .config import TrainConfig
from .diffusion import ImprovedDDPM

logger = logging.getLogger(__name__)

DEFAULT_MODEL_CONFIG = Path(__file__).resolve().parents[2] / "config" / "easyanimate_video_motion_module_v1.yaml"
# An image yaml has no transformer extras: the model is then plain PixArt blocks (same 603 keys).
IMAGE_MODEL_KWARGS = {"basic_block_type": "selfattentiontemporal", "time_position_encoding_before_transformer": False}


@dataclass
class TrainResult:
    """What a run did: steps, per-step losses (main process), files exported, skipped data."""

    global_step: int
    losses: list[float] = field(default_factory=list)
    exports: dict[str, Path] = field(default_factory=dict)
    data_summary: dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# Models


@dataclass
class Components:
    tokenizer: Any
    text_encoder: T5EncoderModel
    vae: AutoencoderKL
    transformer: Transformer3DModel
    model_config: EasyAnimateConfig
    image_mode: bool


def load_components(config: TrainConfig, weight_dtype: torch.dtype) -> Components:
    """Frozen tokenizer/T5/VAE in ``weight_dtype``; the transformer in fp32 with its extra weights loaded."""
    root = Path(config.pretrained_model_name_or_path)
    model_config = load_config(config.config_path or DEFAULT_MODEL_CONFIG)
    image_mode = model_config.transformer_additional_kwargs is None
    extras = IMAGE_MODEL_KWARGS if image_mode else model_config.transformer_additional_kwargs
    transformer = Transformer3DModel.from_pretrained_2d(
        root, subfolder="transformer", transformer_additional_kwargs=extras,
        transformer_path=config.transformer_path, motion_module=config.motion_module_path)
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    text_encoder = T5EncoderModel.from_pretrained(root / "text_encoder", dtype=weight_dtype)
    vae = AutoencoderKL.from_pretrained(root / "vae", torch_dtype=weight_dtype)
    for frozen in (text_encoder, vae):
        frozen.requires_grad_(False)
        frozen.eval()
    return Components(tokenizer, text_encoder, vae, transformer, model_config, image_mode)


def select_trainable(model: torch.nn.Module, patterns: list[str], low_lr_patterns: list[str], lr: float) -> list[dict]:
    """Freeze everything but parameters whose name contains a pattern; return optimizer groups."""
    normal, low = [], []
    for name, param in model.named_parameters():
        if any(p in name for p in low_lr_patterns):
            low.append(param)
        elif any(p in name for p in patterns):
            normal.append(param)
        param.requires_grad_(False)
    for param in normal + low:
        param.requires_grad_(True)
    if not normal and not low:
        raise ValueError(f"no parameter name contains any of {patterns + low_lr_patterns}; nothing would train "
                         "(use e.g. attn_temporal for the motion module, or . for everything)")
    groups = [{"params": normal, "lr": lr}]
    if low:
        groups.append({"params": low, "lr": lr / 10})
    return groups


def add_lora(components: Components, config: TrainConfig) -> list[dict]:
    """Inject peft LoRA layers into the transformer (and T5); return optimizer groups."""
    from peft import LoraConfig, inject_adapter_in_model

    settings = config.lora
    components.transformer.requires_grad_(False)
    groups = []
    targets = [(components.transformer, TRANSFORMER, config.learning_rate)]
    if settings.train_text_encoder:
        targets.append((components.text_encoder, TEXT_ENCODER, config.learning_rate * settings.text_encoder_lr_ratio))
    for model, component, lr in targets:
        names = lora_target_modules(model, component, motion_module=settings.motion_module)
        pattern = "^(" + "|".join(n.replace(".", r"\.") for n in names) + ")$"  # exact names, never suffixes
        lora_config = LoraConfig(r=settings.rank, lora_alpha=settings.network_alpha, target_modules=pattern,
                                 init_lora_weights=True)
        inject_adapter_in_model(lora_config, model)
        params = [p for n, p in model.named_parameters() if "lora_" in n]
        for param in params:
            param.data = param.data.float()
            param.requires_grad_(True)
        groups.append({"params": params, "lr": lr})
    return groups


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters()) - trainable


# ------------------------------------------------------------------------------------------------
# Data


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
    """``size_multiple``: the model's pixel multiple, which bucket sizes are rounded down to."""
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
    return {key: torch.stack([e[key] for e in examples]) if torch.is_tensor(examples[0][key]) else [e[key] for e in examples]
            for key in examples[0]}


def make_batch_sampler(dataset, sampler: EpochSampler, batch_size: int, grouped: bool) -> Sampler:
    if grouped:
        return AspectRatioBatchSampler(sampler, dataset, batch_size, drop_last=True)
    return BatchSampler(sampler, batch_size, drop_last=True)


# ------------------------------------------------------------------------------------------------
# Encoding


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
def precompute(dataset: VideoImageDataset, components: Components, config: TrainConfig,
               device: torch.device, generator: torch.Generator) -> CachedDataset:
    """Encode every item once (epoch 0 crops and caption choice)."""
    items = []
    components.vae.to(device)
    components.text_encoder.to(device)
    for index in tqdm(range(len(dataset)), desc="precomputing latents and text", leave=False):
        example = dataset[index]
        latents = encode_video(components.vae, example["pixel_values"][None], config.vae_mini_batch, generator)[0]
        states, mask = encode_text(components.tokenizer, components.text_encoder, [example["text"]],
                                   config.tokenizer_max_length, device)
        items.append({"latents": latents.cpu(), "prompt_embeds": states[0].float().cpu(),
                      "prompt_attention_mask": mask[0].cpu(), "data_type": example["data_type"], "text": example["text"]})
    return CachedDataset(items)


# ------------------------------------------------------------------------------------------------
# Checkpoint contents


class CheckpointIO:
    """What goes into ``checkpoint-<step>/`` besides accelerate's optimizer/scheduler/RNG state.

    The transformer is stored once, as a diffusers folder ``transformer/`` (or, for LoRA, as the
    adapter weights only); accelerate's own copy of the weights is suppressed through its hooks.
    EMA weights go to ``transformer_ema/``.
    """

    def __init__(self, accelerator: Accelerator, components: Components, config: TrainConfig,
                 ema: EMAModel | None, trainable: list[tuple[str, torch.nn.Parameter]], generator: torch.Generator):
        self.accelerator, self.components, self.config, self.ema, self.trainable = (
            accelerator, components, config, ema, trainable)
        self.generator = generator
        accelerator.register_save_state_pre_hook(self._save_models)
        accelerator.register_load_state_pre_hook(self._load_models)

    def _save_models(self, models, weights, folder) -> None:
        folder = Path(folder)
        if self.accelerator.is_main_process:
            if self.config.lora is None:
                self.accelerator.unwrap_model(self.components.transformer).save_pretrained(folder / "transformer")
            else:
                write_safetensors(folder / "lora_state.safetensors", self._lora_state())
                export_lora(self.components, self.config, folder / "lora.safetensors")
        weights.clear()

    def _load_models(self, models, folder) -> None:
        folder = Path(folder)
        if self.config.lora is None:
            state = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
            self.accelerator.unwrap_model(self.components.transformer).load_state_dict(state)
        else:
            state = load_file(str(folder / "lora_state.safetensors"))
            params = dict(self.trainable)
            for name, tensor in state.items():
                params[name].data.copy_(tensor)
        models.clear()

    def _lora_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().cpu().contiguous() for name, p in self.trainable}

    def write(self, folder: Path, step: int) -> None:
        self.accelerator.save_state(str(folder))
        rank = self.accelerator.process_index
        save_file({"state": self.generator.get_state()}, str(folder / f"noise_generator_{rank}.safetensors"))
        if not self.accelerator.is_main_process:
            return
        if self.ema is not None:
            ema_state = {name: shadow.detach().cpu().contiguous()
                         for (name, _), shadow in zip(self.trainable, self.ema.shadow_params)}
            write_safetensors(folder / "transformer_ema" / "ema.safetensors", ema_state)
            (folder / "transformer_ema" / "ema_state.json").write_text(
                json.dumps({"optimization_step": self.ema.optimization_step, "decay": self.ema.decay}))
        (folder / "train_config.yaml").write_text(self.config.to_yaml())
        (folder / checkpoints.COMPLETE_MARKER).write_text(json.dumps({"global_step": step}))

    def read(self, folder: Path) -> None:
        self.accelerator.load_state(str(folder))
        rank = self.accelerator.process_index
        self.generator.set_state(load_file(str(folder / f"noise_generator_{rank}.safetensors"))["state"])
        if self.ema is not None:
            state = load_file(str(folder / "transformer_ema" / "ema.safetensors"))
            for (name, _), shadow in zip(self.trainable, self.ema.shadow_params):
                shadow.data.copy_(state[name].to(shadow.device))
            meta = json.loads((folder / "transformer_ema" / "ema_state.json").read_text())
            self.ema.optimization_step = meta["optimization_step"]


def export_lora(components: Components, config: TrainConfig, path: Path) -> Path:
    """Write the trained LoRA in the original kohya format (transformer, and T5 when trained)."""
    from peft import get_peft_model_state_dict

    tensors = peft_state_dict_to_kohya(get_peft_model_state_dict(components.transformer), TRANSFORMER,
                                       alpha=config.lora.network_alpha)
    if config.lora.train_text_encoder:
        tensors.update(peft_state_dict_to_kohya(get_peft_model_state_dict(components.text_encoder), TEXT_ENCODER,
                                                alpha=config.lora.network_alpha))
    save_kohya_lora(path, tensors, metadata={"rank": str(config.lora.rank), "network_alpha": str(config.lora.network_alpha)})
    return path


# ------------------------------------------------------------------------------------------------
# Validation


@torch.no_grad()
def validate(components: Components, transformer: Transformer3DModel, config: TrainConfig, step: int,
             device: torch.device) -> list[Path]:
    """Render the validation prompts with the model yaml's scheduler; returns the files written."""
    pipeline = EasyAnimatePipeline(components.tokenizer, components.text_encoder, components.vae, transformer,
                                   build_scheduler(config.validation_sampler, components.model_config.scheduler_kwargs()))
    pipeline.set_progress_bar_config(disable=True)
    frames = 1 if components.image_mode else (config.validation_frames or config.sample_n_frames)
    written = []
    was_training = transformer.training
    transformer.eval()
    for i, prompt in enumerate(config.validation_prompts):
        generator = torch.Generator(device=device).manual_seed(config.seed or 0)
        video = pipeline(prompt, negative_prompt="bad detailed", video_length=frames, height=config.sample_size,
                         width=config.sample_size, num_inference_steps=config.validation_inference_steps,
                         guidance_scale=config.validation_guidance_scale, generator=generator).videos[0]
        path = Path(config.output_dir) / "sample" / f"sample-{step}-{i}.{'png' if frames == 1 else 'mp4'}"
        if frames == 1:
            save_image(video[:, 0], path)
        else:
            save_video(video, path, fps=8)
        written.append(path)
    transformer.train(was_training)
    return written


# ------------------------------------------------------------------------------------------------
# The loop


def train(config: TrainConfig) -> TrainResult:
    """Train as configured; see the module docstring."""
    output_dir = Path(config.output_dir)
    tracker = None if config.report_to == "none" else config.report_to
    # Launched as several processes on a machine without GPUs: data parallel on CPU over gloo.
    cpu_only = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(
        cpu=cpu_only, gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=tracker,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / config.logging_dir)))
    if config.seed is not None:
        set_seed(config.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text(output_dir / "train_config.yaml", config.to_yaml())
        checkpoints.remove_incomplete(output_dir)
    if config.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    weight_dtype = MIXED_PRECISION_DTYPES[config.mixed_precision]
    device = accelerator.device

    # 1. Models and what trains.
    components = load_components(config, weight_dtype)
    transformer = components.transformer
    if config.lora is not None:
        groups = add_lora(components, config)
    else:
        groups = select_trainable(transformer, config.trainable_modules, config.trainable_modules_low_learning_rate,
                                  config.learning_rate)
    trainable = [(n, p) for n, p in transformer.named_parameters() if p.requires_grad]
    if config.lora is not None and config.lora.train_text_encoder:
        trainable += [(f"text_encoder.{n}", p) for n, p in components.text_encoder.named_parameters() if p.requires_grad]
    n_train, n_frozen = count_parameters(transformer)
    accelerator.print(f"transformer: {n_train:,} trainable parameters in {len(trainable)} tensors, {n_frozen:,} frozen")
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    if config.enable_xformers_memory_efficient_attention:
        transformer.enable_xformers_memory_efficient_attention()  # raises if xformers is not installed
    transformer.train()

    # 2. Data. Noise, timesteps and VAE sampling draw from one generator per process, saved in checkpoints.
    noise_generator = torch.Generator(device).manual_seed((config.seed or 0) * 1000 + accelerator.process_index)
    pixel_multiple = transformer.spatial_multiple * 2 ** (len(components.vae.config.block_out_channels) - 1)
    raw = build_dataset(config, components.image_mode, pixel_multiple)
    mixed = len({e.data_type for e in raw.entries}) > 1
    if config.precompute:
        if config.lora is not None and config.lora.train_text_encoder:
            raise ValueError("precompute caches T5 states, which a text-encoder LoRA changes; turn one off")
        dataset = precompute(raw, components, config, device, noise_generator)
        collate = collate_cached
    else:
        dataset, collate = raw, collate_clips
    sampler = EpochSampler(len(dataset), config.seed or 0)
    batch_sampler = make_batch_sampler(dataset, sampler, config.train_batch_size, config.enable_bucket or mixed)
    # Its own generator: creating an epoch iterator must not draw from the global RNG.
    dataloader = DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate,
                            num_workers=config.dataloader_num_workers,
                            generator=torch.Generator().manual_seed(config.seed or 0))
    if len(batch_sampler) == 0:
        raise ValueError(f"{len(dataset)} usable items make no full batch of {config.train_batch_size}; "
                         "lower train_batch_size or add data")

    # 3. Optimizer, schedule, EMA.
    lr_scale = math.sqrt(config.gradient_accumulation_steps * config.train_batch_size * accelerator.num_processes / 256)
    for group in groups:
        group["lr"] *= lr_scale if config.scale_lr else 1.0
    optimizer = make_optimizer(config, groups)
    steps_per_epoch = math.ceil(len(batch_sampler) / accelerator.num_processes / config.gradient_accumulation_steps)
    max_steps = config.max_train_steps or config.num_train_epochs * steps_per_epoch
    lr_schedule = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
                                num_training_steps=max_steps * accelerator.num_processes)
    ema = EMAModel([p for _, p in trainable], decay=config.ema_decay) if config.use_ema else None
    models = [transformer] + ([components.text_encoder] if config.lora and config.lora.train_text_encoder else [])
    prepared = accelerator.prepare(*models, optimizer, dataloader, lr_schedule)
    transformer, optimizer, dataloader, lr_schedule = prepared[0], prepared[-3], prepared[-2], prepared[-1]
    if ema is not None:
        ema.to(device)
    components.vae.to(device)
    components.text_encoder.to(device)
    io = CheckpointIO(accelerator, components, config, ema, trainable, noise_generator)
    diffusion = ImprovedDDPM(num_timesteps=config.train_sampling_steps, snr_loss=config.snr_loss,
                             normal_cdf=config.normal_cdf)

    # 4. Resume.
    global_step = 0
    if config.resume_from_checkpoint:
        folder = checkpoints.resolve_checkpoint(output_dir, config.resume_from_checkpoint)
        io.read(folder)
        global_step = checkpoints.step_of(folder)
        accelerator.print(f"resumed from {folder} at step {global_step}")
    if tracker is not None:
        accelerator.init_trackers("easyanimate", config={k: v for k, v in vars(config).items()
                                                         if isinstance(v, (int, float, str, bool))})

    # 5. Loop.
    result = TrainResult(global_step)
    progress = tqdm(total=max_steps, initial=global_step, desc="training", disable=not accelerator.is_main_process)
    first_epoch, skip = divmod(global_step, steps_per_epoch)
    batches_per_epoch = len(dataloader)
    last_saved, saving = global_step, False
    try:
        for epoch in range(first_epoch, math.ceil(max_steps / steps_per_epoch) + 1):
            if global_step >= max_steps:
                break
            # accelerate's loader sets the sampler's (and dataset's) epoch from its own iteration count
            # at every new iterator; set that count, so a resumed run replays the same order.
            dataloader.set_epoch(epoch)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)  # accelerate skips this when it shards the batch sampler
            skip_batches = skip * config.gradient_accumulation_steps if epoch == first_epoch else 0
            for batch_index, batch in enumerate(dataloader):
                if batch_index < skip_batches:
                    continue
                with accelerator.accumulate(transformer):
                    loss = training_step(batch, components, transformer, diffusion, config, device, weight_dtype,
                                         noise_generator)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_([p for _, p in trainable], config.max_grad_norm)
                    optimizer.step()
                    lr_schedule.step()
                    optimizer.zero_grad(set_to_none=True)
                if not accelerator.sync_gradients:
                    continue
                if ema is not None:
                    ema.step([p for _, p in trainable])
                global_step += 1
                step_loss = accelerator.gather(loss.detach()[None]).mean().item()
                result.losses.append(step_loss)
                progress.update(1)
                progress.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr_schedule.get_last_lr()[0]:.2e}")
                accelerator.log({"loss": step_loss, "lr": lr_schedule.get_last_lr()[0]}, step=global_step)
                if global_step % config.checkpointing_steps == 0:
                    saving = True
                    save_checkpoint(accelerator, io, output_dir, global_step, config.checkpoints_total_limit)
                    saving, last_saved = False, global_step
                if config.validation_prompts and global_step % config.validation_steps == 0:
                    run_validation(accelerator, components, transformer, ema, trainable, config, global_step)
                if global_step >= max_steps:
                    break
            if batches_per_epoch == 0:
                break
    except KeyboardInterrupt:
        # Interrupted between steps: keep the work done so far. Interrupted while saving: the
        # half-written folder is never published, and the previous checkpoint stays the latest.
        if global_step > last_saved and not saving:
            accelerator.print(f"interrupted: saving checkpoint-{global_step} before exiting")
            save_checkpoint(accelerator, io, output_dir, global_step, config.checkpoints_total_limit)
        raise
    progress.close()

    # 6. Final validation and exports.
    result.global_step = global_step
    if config.validation_prompts and global_step % config.validation_steps:
        run_validation(accelerator, components, transformer, ema, trainable, config, global_step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to([p for _, p in trainable])
        result.exports = export(components, accelerator.unwrap_model(transformer), config, trainable)
        result.data_summary = raw.summary()
        report_data(raw.summary())
    accelerator.end_training()
    return result


def training_step(batch: dict[str, Any], components: Components, transformer, diffusion: ImprovedDDPM,
                  config: TrainConfig, device: torch.device, weight_dtype: torch.dtype,
                  generator: torch.Generator) -> torch.Tensor:
    """Loss of one batch: encode (unless cached), noise at random t, predict, improved-DDPM loss."""
    if "latents" in batch:
        latents = batch["latents"].to(device)
        states, mask = batch["prompt_embeds"].to(device, weight_dtype), batch["prompt_attention_mask"].to(device)
    else:
        latents = encode_video(components.vae, batch["pixel_values"], config.vae_mini_batch, generator).to(device)
        with torch.set_grad_enabled(config.lora is not None and config.lora.train_text_encoder):
            states, mask = encode_text(components.tokenizer, components.text_encoder, batch["text"],
                                       config.tokenizer_max_length, device)
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    t = diffusion.sample_timesteps(latents.shape[0], generator=generator, device=device,
                                   low=config.min_train_timestep, high=config.max_train_timestep)
    noisy = diffusion.q_sample(latents, t, noise)
    output = transformer(noisy, states, mask, diffusion.model_timesteps(t), return_dict=False)[0]
    return diffusion.training_losses(output.float(), latents, noisy, t, noise)["loss"].mean()


def make_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    kwargs = dict(betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.adam_weight_decay,
                  eps=config.adam_epsilon)
    if config.use_8bit_adam:
        try:
            import bitsandbytes
        except ImportError as error:
            raise ImportError("use_8bit_adam needs bitsandbytes (pip install -r requirements-gpu.txt)") from error
        return bitsandbytes.optim.AdamW8bit(groups, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def save_checkpoint(accelerator: Accelerator, io: CheckpointIO, output_dir: Path, step: int, limit: int | None) -> None:
    """Write ``checkpoint-<step>`` through a temporary folder; prune old ones."""
    accelerator.wait_for_everyone()
    tmp = checkpoints.temporary_folder(output_dir, step)
    if accelerator.is_main_process:
        tmp.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    io.write(tmp, step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        checkpoints.publish(output_dir, step)
        checkpoints.prune(output_dir, limit)
        logger.info("saved checkpoint-%d", step)
    accelerator.wait_for_everyone()


def run_validation(accelerator: Accelerator, components: Components, transformer, ema: EMAModel | None,
                   trainable, config: TrainConfig, step: int) -> None:
    if not accelerator.is_main_process:
        return
    params = [p for _, p in trainable]
    model = accelerator.unwrap_model(transformer)
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        for path in validate(components, model, config, step, accelerator.device):
            logger.info("validation sample %s", path)
    except Exception:  # a failed preview must not end a long run, but it is reported in full
        logger.exception("validation at step %d failed", step)
    finally:
        if ema is not None:
            ema.restore(params)


def export(components: Components, transformer: Transformer3DModel, config: TrainConfig,
           trainable: list[tuple[str, torch.nn.Parameter]]) -> dict[str, Path]:
    """Final artefacts in ``output_dir``: LoRA file, or transformer folder + motion module / PixArt checkpoint."""
    output_dir = Path(config.output_dir)
    exports = {}
    if config.lora is not None:
        exports["lora"] = export_lora(components, config, output_dir / "lora.safetensors")
        return exports
    transformer.save_pretrained(output_dir / "transformer")
    exports["transformer"] = output_dir / "transformer"
    if any(is_motion_key(name) for name, _ in trainable):
        save_motion_module(transformer, output_dir / "motion_module.safetensors")
        exports["motion_module"] = output_dir / "motion_module.safetensors"
    # The image model on its own (PixArt keys, no motion modules) whenever any of it trained: the t2i
    # stage, or a video stage that trained more than the motion modules (e.g. cross-attention beside them).
    if any(not is_motion_key(name) for name, _ in trainable):
        state = {k: v.detach().cpu().contiguous() for k, v in transformer.state_dict().items()
                 if not is_motion_key(k)}
        write_safetensors(output_dir / "pixart_transformer.safetensors", state)
        exports["pixart_transformer"] = output_dir / "pixart_transformer.safetensors"
    for name, path in exports.items():
        logger.info("exported %s: %s", name, path)
    return exports


def report_data(summary: dict[str, int]) -> None:
    skipped = {k: v for k, v in summary.items() if k not in ("listed", "usable") and v}
    text = f"data: {summary.get('usable', 0)} of {summary.get('listed', 0)} items usable"
    if skipped:
        text += "; skipped " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items())
    logger.warning(text) if skipped else logger.info(text)
    print(text)
