"""The one training loop behind ``train.py`` and ``train_lora.py``.

:func:`train` reads as its table of contents: check the settings against this machine and the model
folder, claim the output folder, set up (accelerate, models, what trains, data, optimizer), resume,
print the start header (and, for an inpaint run, the sanity-check clips), run the epochs (encode -> noise
-> [inpaint: mask] -> predict -> improved-DDPM loss -> step; checkpoint, validate; Ctrl-C ends a run at a
step boundary), finish (final validation, exports). What the steps use lives beside this module: loading
and what trains in ``components``, data and the latent cache in ``data``, checkpoint folders in
``checkpoints``, the output folder's lock in ``output_dir``, stopping in ``interrupts``, samples in
``validation``, final files in ``export``, the inpaint masks in ``inpaint``. Runs on one CPU or GPU, or
many processes through ``accelerate launch``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import (
    InitProcessGroupKwargs,
    ProjectConfiguration,
    broadcast_object_list,
    parse_flag_from_env,
    set_seed,
)
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..config import ConfigError
from ..devices import MIXED_PRECISION_DTYPES
from ..files import write_text
from ..text import encode_text
from . import checkpoints
from .checkpoints import CheckpointIO, save_checkpoint
from .components import (
    INPAINT_TRAINABLE,
    Components,
    ModelYaml,
    check_model_fits,
    choose_trainable,
    load_components,
    model_yaml,
    select_trainable,
)
from .config import TrainConfig, check_environment
from .data import TrainingData, build_training_data, encode_video
from .diffusion import ImprovedDDPM
from .export import export
from .inpaint import inpaint_latents_for_batch, write_sanity_check
from .interrupts import StepBoundary, StopRequest
from .output_dir import OutputDirError, check_reuse
from .output_dir import locked as output_dir_lock
from .validation import run_validation

__all__ = ["TrainResult", "select_trainable", "train", "training_step"]

logger = get_logger(__name__)


@dataclass
class TrainResult:
    """What a run did: steps, per-step losses (main process), files exported, skipped data."""

    global_step: int
    losses: list[float] = field(default_factory=list)
    exports: dict[str, Path] = field(default_factory=dict)
    data_summary: dict[str, int] = field(default_factory=dict)


@dataclass
class Run:
    """Everything one run holds; the steps of :func:`train` read and advance it."""

    config: TrainConfig
    accelerator: Accelerator
    components: Components
    transformer: Any  # as prepared by accelerate (wrapped for data parallel)
    trainable: list[tuple[str, torch.nn.Parameter]]
    data: TrainingData
    optimizer: torch.optim.Optimizer
    lr_schedule: Any
    ema: EMAModel | None
    io: CheckpointIO
    diffusion: ImprovedDDPM
    noise_generator: torch.Generator
    weight_dtype: torch.dtype
    steps_per_epoch: int
    max_steps: int
    global_step: int = 0
    last_saved: int = 0
    saving: bool = False  # inside save_checkpoint
    updating: bool = False  # from the optimizer step to the step count: weights and RNG state disagree
    stop: StopRequest = field(default_factory=StopRequest)
    stop_agreed: bool = False  # every process saw a stop request at this step boundary
    boundary: StepBoundary | None = None
    result: TrainResult = field(default_factory=lambda: TrainResult(0))
    progress: Any = None

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def done(self) -> bool:
        return self.global_step >= self.max_steps


def train(config: TrainConfig) -> TrainResult:
    """Train as configured: check, claim the output folder, set up, resume, run the epochs, finish."""
    check_environment(config)
    accelerator = make_accelerator(config)
    yaml = model_yaml(config)
    check_model_fits(config, yaml)
    with claimed_output_dir(accelerator, config):
        checkpoint = checkpoint_to_resume(config)
        run = set_up(config, accelerator, yaml)
        resume(run, checkpoint)
        logger.info("%s", start_header(run, yaml))
        if config.train_mode == "inpaint" and run.global_step == 0 and accelerator.is_main_process:
            for path in write_sanity_check(run.data.source, config, run.components.vae):
                logger.info("sanity check: %s", path)
        run_epochs(run)
        return finish(run)


# ------------------------------------------------------------------------------------------------
# Setup


def make_accelerator(config: TrainConfig) -> Accelerator:
    """accelerate for this run; several processes on a machine without GPUs run data parallel on CPU (gloo).

    ``mixed_precision`` None leaves the choice to the launcher (``accelerate launch --mixed_precision``
    or its config file), as accelerate's own examples do.
    """
    output_dir = Path(config.output_dir)
    # Several processes on a machine without GPUs: data parallel on the CPU over gloo, unless DeepSpeed (which
    # brings its own CPU accelerator) is asked for.
    several_on_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    deepspeed = parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")
    # accelerate only starts DeepSpeed's process group for a known backend; on a machine without GPUs it knows
    # none unless told gloo, and each process would then train alone.
    handlers = [InitProcessGroupKwargs(backend="gloo")] if several_on_cpu and deepspeed else []
    accelerator = Accelerator(
        kwargs_handlers=handlers, cpu=several_on_cpu and not deepspeed,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir),
                                            logging_dir=str(output_dir / config.logging_dir)))
    if accelerator.state.deepspeed_plugin is not None:
        # The loader batches through a batch sampler (buckets, resumable order), so DeepSpeed cannot read the
        # batch size off it: say it.
        settings = accelerator.state.deepspeed_plugin.deepspeed_config
        settings["train_micro_batch_size_per_gpu"] = config.train_batch_size
        settings["train_batch_size"] = (config.train_batch_size * config.gradient_accumulation_steps
                                        * accelerator.num_processes)
    if config.seed is not None:
        set_seed(config.seed)
    if config.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    return accelerator


@contextmanager
def claimed_output_dir(accelerator: Accelerator, config: TrainConfig) -> Iterator[None]:
    """The main process locks the output folder, refuses to start over a previous run unless told, writes the
    resolved config and removes half-written checkpoints; every process learns of a refusal."""
    output_dir = Path(config.output_dir)
    with ExitStack() as stack:
        refusal = None
        if accelerator.is_main_process:
            try:
                stack.enter_context(output_dir_lock(output_dir))
                check_reuse(output_dir, resume=bool(config.resume_from_checkpoint),
                            overwrite=config.overwrite_output_dir)
            except OutputDirError as error:
                refusal = str(error)
        if accelerator.num_processes > 1:
            refusal = broadcast_object_list([refusal])[0]
        if refusal is not None:
            raise OutputDirError(refusal)
        if accelerator.is_main_process:
            write_text(output_dir / "train_config.yaml", config.to_yaml())
            checkpoints.remove_incomplete(output_dir)
        yield


def checkpoint_to_resume(config: TrainConfig) -> Path | None:
    """The checkpoint ``resume_from_checkpoint`` names, found before anything is loaded; None: start fresh."""
    if not config.resume_from_checkpoint:
        return None
    folder = checkpoints.resolve_checkpoint(Path(config.output_dir), config.resume_from_checkpoint)
    if folder is None:
        logger.warning("resume_from_checkpoint=latest: no checkpoint in %s yet, starting from step 0",
                       config.output_dir)
    return folder


def set_up(config: TrainConfig, accelerator: Accelerator, yaml: ModelYaml) -> Run:
    """Models and what trains, data, optimizer and schedule, EMA; all prepared by accelerate."""
    weight_dtype = weight_dtype_of(accelerator)
    components = load_components(config, yaml.config, weight_dtype)
    groups, trainable = choose_trainable(components, config)
    prepare_transformer(components.transformer, config)
    # Noise, timesteps and VAE sampling draw from one generator per process, saved in checkpoints.
    seed = (config.seed or 0) * 1000 + accelerator.process_index
    noise_generator = torch.Generator(accelerator.device).manual_seed(seed)
    data = build_training_data(config, components, accelerator, noise_generator)
    steps_per_epoch = math.ceil(data.batches_per_epoch / accelerator.num_processes / config.gradient_accumulation_steps)
    max_steps = config.max_train_steps or config.num_train_epochs * steps_per_epoch
    optimizer, lr_schedule = make_optimizer_and_schedule(config, groups, accelerator.num_processes, max_steps)
    ema = EMAModel([p for _, p in trainable], decay=config.ema_decay) if config.use_ema else None
    models = [components.transformer]
    if config.lora is not None and config.lora.train_text_encoder:
        models.append(components.text_encoder)
    prepared = accelerator.prepare(*models, optimizer, data.loader, lr_schedule)
    transformer, optimizer, data.loader, lr_schedule = prepared[0], prepared[-3], prepared[-2], prepared[-1]
    if ema is not None:
        ema.to(accelerator.device)
    components.vae.to(accelerator.device)
    components.text_encoder.to(accelerator.device)
    io = CheckpointIO(accelerator, components, config, ema, trainable, noise_generator)
    diffusion = ImprovedDDPM(num_timesteps=config.train_sampling_steps, snr_loss=config.snr_loss,
                             normal_cdf=config.normal_cdf)
    return Run(config, accelerator, components, transformer, trainable, data, optimizer, lr_schedule, ema, io,
               diffusion, noise_generator, weight_dtype, steps_per_epoch, max_steps)


def weight_dtype_of(accelerator: Accelerator) -> torch.dtype:
    """The dtype the frozen models are kept in under the run's mixed precision."""
    if accelerator.mixed_precision not in MIXED_PRECISION_DTYPES:
        raise ConfigError(f"mixed_precision {accelerator.mixed_precision!r} (from the launcher) is not supported; "
                          f"use one of {', '.join(MIXED_PRECISION_DTYPES)}")
    return MIXED_PRECISION_DTYPES[accelerator.mixed_precision]


def prepare_transformer(transformer: torch.nn.Module, config: TrainConfig) -> None:
    """Memory options, then training mode."""
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    if config.enable_xformers_memory_efficient_attention:
        transformer.enable_xformers_memory_efficient_attention()  # raises if xformers is not installed
    if config.compile is not None:
        # Each block is compiled in place (diffusers' compile_repeated_blocks), so parameter names, checkpoints
        # and exports stay those of the eager model.
        transformer.compile_blocks(backend=config.compile)
    transformer.train()


def make_optimizer_and_schedule(config: TrainConfig, groups: list[dict], num_processes: int, max_steps: int):
    """AdamW (8-bit with bitsandbytes if asked) over the groups, and the diffusers learning-rate schedule."""
    lr_scale = math.sqrt(config.gradient_accumulation_steps * config.train_batch_size * num_processes / 256)
    for group in groups:
        group["lr"] *= lr_scale if config.scale_lr else 1.0
    optimizer = make_optimizer(config, groups)
    lr_schedule = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps * num_processes,
                                num_training_steps=max_steps * num_processes)
    return optimizer, lr_schedule


def make_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    kwargs = dict(betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.adam_weight_decay,
                  eps=config.adam_epsilon)
    if config.use_8bit_adam:
        try:
            import bitsandbytes
        except ImportError as error:
            raise ImportError("use_8bit_adam needs bitsandbytes (pip install -r requirements-gpu.txt)") from error
        return bitsandbytes.optim.AdamW8bit(groups, **kwargs)
    # The fused kernel updates each parameter in one pass where the default (foreach) makes about ten over the
    # optimizer state: for a full-width motion module (29M parameters) the optimizer step alone took a quarter of
    # the time on a busy 2-core CPU, with the same parameters to float rounding. In a whole training step the gain
    # is within run-to-run noise on a quiet CPU (benchmarks: the `train-target` scenario); it is larger where memory
    # bandwidth is shared.
    return torch.optim.AdamW(groups, fused=True, **kwargs)


# ------------------------------------------------------------------------------------------------
# Resume


def resume(run: Run, checkpoint: Path | None) -> None:
    """Continue from ``checkpoint`` if given; start the trackers and the progress bar."""
    if checkpoint is not None:
        run.io.read(checkpoint)
        run.global_step = run.last_saved = checkpoints.step_of(checkpoint)
        run.accelerator.print(f"resumed from {checkpoint} at step {run.global_step}")
    if run.config.report_to != "none":
        run.accelerator.init_trackers("easyanimate", config={k: v for k, v in vars(run.config).items()
                                                             if isinstance(v, (int, float, str, bool))})
    run.result = TrainResult(run.global_step)
    run.progress = tqdm(total=run.max_steps, initial=run.global_step, desc="training",
                        disable=not run.accelerator.is_main_process)


# ------------------------------------------------------------------------------------------------
# Start header


def start_header(run: Run, yaml: ModelYaml) -> str:
    """What the run will do, as diffusers' training examples print it: data, steps, batch, what trains, where."""
    config, accelerator = run.config, run.accelerator
    per_step = config.train_batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    precision = "--mixed_precision" if config.mixed_precision else "the launcher's"
    lines = [
        "***** training *****",
        f"examples: {len(run.data.dataset)} ({run.data.source.summary().get('listed', 0)} listed)",
        f"epochs: {math.ceil(run.max_steps / run.steps_per_epoch)}, {run.steps_per_epoch} optimizer steps each",
        f"total optimizer steps: {run.max_steps}" + (f", from step {run.global_step}" if run.global_step else ""),
        f"batch: {config.train_batch_size} per device x {accelerator.num_processes} process(es) x "
        f"{config.gradient_accumulation_steps} accumulation step(s) = {per_step} per optimizer step",
        f"trains: {describe_trainable(run)}",
        f"mixed precision: {accelerator.mixed_precision} ({precision})",
        f"model yaml: {yaml.path} ({yaml.source})",
        f"output: {run.output_dir.resolve()}",
    ]
    return "\n  ".join(lines)


def describe_trainable(run: Run) -> str:
    """Parameter counts, and the name patterns or the LoRA settings that chose them."""
    trained = sum(p.numel() for _, p in run.trainable)
    total = sum(p.numel() for p in run.components.transformer.parameters())
    lora = run.config.lora
    if lora is not None:
        on = "the transformer and T5" if lora.train_text_encoder else "the transformer"
        return f"a LoRA of rank {lora.rank}, alpha {lora.network_alpha:g} on {on}: {trained:,} parameters"
    low = run.config.trainable_modules_low_learning_rate
    patterns = run.config.trainable_modules + ([INPAINT_TRAINABLE] if run.config.train_mode == "inpaint" else [])
    return (f"{trained:,} of {total:,} transformer parameters in {len(run.trainable)} tensors, names containing "
            f"{' or '.join(patterns)}" + (f" (at lr/10: {' or '.join(low)})" if low else ""))


# ------------------------------------------------------------------------------------------------
# Epochs


def run_epochs(run: Run) -> None:
    """Epochs until ``max_steps``. Ctrl-C ends the run after the current step; whatever stops it, the state after
    the last completed step is saved before the interrupt goes on."""
    run.stop.announce = run.accelerator.is_main_process
    run.boundary = StepBoundary.capture(run.noise_generator, run.accelerator)
    with run.stop.installed():
        try:
            run_all_epochs(run)
        except BaseException as error:
            save_on_interrupt(run, error)
            raise
    run.progress.close()


def run_all_epochs(run: Run) -> None:
    first_epoch = run.global_step // run.steps_per_epoch
    for epoch in range(first_epoch, math.ceil(run.max_steps / run.steps_per_epoch) + 1):
        if run.done:
            return
        run_epoch(run, epoch, skip=run.global_step % run.steps_per_epoch if epoch == first_epoch else 0)


def run_epoch(run: Run, epoch: int, skip: int) -> None:
    """One epoch's optimizer steps, after ``skip`` steps a resumed run already made."""
    for batch in epoch_batches(run, epoch, skip * run.config.gradient_accumulation_steps):
        loss = accumulate(run, batch)
        if loss is None:
            continue
        end_step(run, loss)
        if run.done:
            return


def epoch_batches(run: Run, epoch: int, skip_batches: int) -> Iterator[dict[str, Any]]:
    """The batches of ``epoch`` in its seeded order, without the first ``skip_batches``."""
    # accelerate's loader sets the sampler's (and dataset's) epoch from its own iteration count at every
    # new iterator; set that count, so a resumed run replays the same order.
    run.data.loader.set_epoch(epoch)
    if hasattr(run.data.dataset, "set_epoch"):
        run.data.dataset.set_epoch(epoch)  # accelerate skips this when it shards the batch sampler
    for index, batch in enumerate(run.data.loader):
        if index >= skip_batches:
            yield batch


def accumulate(run: Run, batch: dict[str, Any]) -> torch.Tensor | None:
    """Forward and backward one batch, and the optimizer step when gradients sync: then its loss, else None."""
    accelerator = run.accelerator
    with accelerator.accumulate(run.transformer):
        loss = training_step(batch, run.components, run.transformer, run.diffusion, run.config, run.device,
                             run.weight_dtype, run.noise_generator)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_([p for _, p in run.trainable], run.config.max_grad_norm)
            run.updating = True
        run.optimizer.step()
        run.lr_schedule.step()
        run.optimizer.zero_grad(set_to_none=True)
    return loss if accelerator.sync_gradients else None


def end_step(run: Run, loss: torch.Tensor) -> None:
    """After an optimizer step: EMA, count and log it, stop if asked, checkpoint and validate when due."""
    if run.ema is not None:
        run.ema.step([p for _, p in run.trainable])
    run.global_step += 1
    run.boundary = StepBoundary.capture(run.noise_generator, run.accelerator)
    run.updating = False
    # One collective for the loss and the stop request, so that every process stops at the same step.
    stop = torch.tensor([float(run.stop.requested)], device=loss.device)
    gathered = run.accelerator.gather(torch.cat([loss.detach().float().reshape(1), stop])[None])
    log_step(run, gathered[:, 0].mean().item())
    if gathered[:, 1].any():
        run.stop_agreed = True
        raise KeyboardInterrupt(f"stopped after step {run.global_step}")
    if run.global_step % run.config.checkpointing_steps == 0:
        save(run)
    if run.config.validation_prompts and run.global_step % run.config.validation_steps == 0:
        validate(run)


def log_step(run: Run, loss: float) -> None:
    lr = run.lr_schedule.get_last_lr()[0]
    run.result.losses.append(loss)
    run.progress.update(1)
    run.progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
    run.accelerator.log({"loss": loss, "lr": lr}, step=run.global_step)


def save(run: Run) -> None:
    run.saving = True
    save_checkpoint(run.accelerator, run.io, run.output_dir, run.global_step, run.config.checkpoints_total_limit)
    run.saving, run.last_saved = False, run.global_step


def save_on_interrupt(run: Run, error: BaseException) -> None:
    """Save the state after the last completed step when a stop (Ctrl-C, or an error after a stop request) ends
    the run, unless it is already saved, or cannot be: interrupted while saving (the half-written folder is never
    published), inside the weight update, or on one process of several without the others' agreement."""
    if not (isinstance(error, KeyboardInterrupt) or run.stop.requested) or run.saving:
        return
    latest = f"checkpoint-{run.last_saved} stays the latest" if run.last_saved else "no checkpoint was saved"
    if run.global_step == run.last_saved:
        run.accelerator.print(f"stopped at step {run.global_step}: {latest}")
    elif run.updating or (run.accelerator.num_processes > 1 and not run.stop_agreed):
        run.accelerator.print(f"interrupted inside step {run.global_step + 1}: not saved, {latest}")
    else:
        run.boundary.restore(run.noise_generator, run.accelerator)  # undo what the unfinished step drew
        run.accelerator.print(f"interrupted: saving checkpoint-{run.global_step} (the state after step "
                              f"{run.global_step}) before exiting")
        save(run)


def validate(run: Run) -> None:
    run_validation(run.accelerator, run.components, run.transformer, run.ema, run.trainable, run.config,
                   run.global_step)


def training_step(batch: dict[str, Any], components: Components, transformer, diffusion: ImprovedDDPM,
                  config: TrainConfig, device: torch.device, weight_dtype: torch.dtype,
                  generator: torch.Generator) -> torch.Tensor:
    """Loss of one batch: encode (unless cached), noise at random t, (inpaint: mask the clip), predict,
    improved-DDPM loss."""
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
    inpaint = (inpaint_latents_for_batch(batch, latents, components.vae, config, generator)
               if config.train_mode == "inpaint" else None)
    output = transformer(noisy, states, mask, diffusion.model_timesteps(t), return_dict=False,
                         inpaint_latents=inpaint)[0]
    return diffusion.training_losses(output.float(), latents, noisy, t, noise)["loss"].mean()


# ------------------------------------------------------------------------------------------------
# Finish


def finish(run: Run) -> TrainResult:
    """Final validation (unless the last step had one), EMA weights in, exports, data report."""
    result, accelerator = run.result, run.accelerator
    result.global_step = run.global_step
    if run.config.validation_prompts and run.global_step % run.config.validation_steps:
        validate(run)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if run.ema is not None:
            run.ema.copy_to([p for _, p in run.trainable])
        result.exports = export(run.components, accelerator.unwrap_model(run.transformer), run.config, run.trainable)
        for name, path in result.exports.items():
            logger.info("exported %s: %s", name, path)
        result.data_summary = run.data.source.summary()
        report_data(result.data_summary)
    accelerator.end_training()
    return result


def report_data(summary: dict[str, int]) -> None:
    skipped = {k: v for k, v in summary.items() if k not in ("listed", "usable") and v}
    text = f"data: {summary.get('usable', 0)} of {summary.get('listed', 0)} items usable"
    if skipped:
        text += "; skipped " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items())
    logger.warning(text) if skipped else logger.info(text)
    print(text)
