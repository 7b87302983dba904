"""Checkpoints: what a ``checkpoint-<step>`` folder holds, and how it is written, read, published and pruned.

A checkpoint folder holds

* accelerate's state: optimizer, learning-rate schedule, the global random generators (``save_state``);
* the trained weights once: the diffusers folder ``transformer/``, or for a LoRA run the adapter tensors
  ``lora_state.safetensors`` (what resuming reads) and ``lora.safetensors`` (kohya, usable as is);
* ``transformer_ema/`` (EMA weights and step count) when EMA is on;
* ``noise_generator_<rank>.safetensors``: each process's generator for noise, timesteps and VAE sampling;
* ``train_config.yaml``, the resolved config;
* ``step.json``, written last: a folder without it was not completely written.

A checkpoint is written into a hidden temporary folder and renamed to ``checkpoint-<step>`` only when
complete, so a crash while saving never leaves a broken latest checkpoint: the previous one stays
the latest, and the temporary folder is removed at the next start. A disk that fills up while saving
ends the run with a :class:`DiskFullError` that names the folder and the space a checkpoint needs.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from ..files import write_safetensors
from .components import Components
from .config import TrainConfig
from .export import export_lora

logger = get_logger(__name__)

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TEMPORARY_PREFIX = ".incomplete-"
COMPLETE_MARKER = "step.json"  # written last into a checkpoint folder


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, path), oldest first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := CHECKPOINT.match(p.name))]
    return sorted(found)


def resolve_checkpoint(output_dir: Path, name: str) -> Path | None:
    """``latest`` -> the newest complete checkpoint (None when there is none yet); else a checkpoint folder by
    path or name, which must exist."""
    if name == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(name)
    if not path.is_dir():
        path = output_dir / name
    if not path.is_dir() or not CHECKPOINT.match(path.name):
        raise FileNotFoundError(f"checkpoint {name!r} not found (expected 'latest' or a checkpoint-<step> folder)")
    return path


def step_of(checkpoint: Path) -> int:
    return int(CHECKPOINT.match(checkpoint.name).group(1))


def remove_incomplete(output_dir: Path) -> None:
    """Delete temporary folders left by a save that did not finish."""
    if output_dir.is_dir():
        for path in output_dir.glob(f"{TEMPORARY_PREFIX}*"):
            logger.warning("removing incomplete checkpoint %s (a save was interrupted)", path)
            shutil.rmtree(path, ignore_errors=True)


def temporary_folder(output_dir: Path, step: int) -> Path:
    """The hidden folder a checkpoint is written into before :func:`publish` renames it."""
    return output_dir / f"{TEMPORARY_PREFIX}checkpoint-{step}"


def publish(output_dir: Path, step: int) -> Path:
    """Rename the complete temporary folder to ``checkpoint-<step>`` (atomic on one filesystem)."""
    final = output_dir / f"checkpoint-{step}"
    if not (temporary_folder(output_dir, step) / COMPLETE_MARKER).is_file():
        raise RuntimeError(f"checkpoint-{step} was not completely written; not publishing it")
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary_folder(output_dir, step), final)
    return final


def prune(output_dir: Path, limit: int | None) -> None:
    """Keep only the newest ``limit`` checkpoints."""
    if limit is None:
        return
    found = list_checkpoints(output_dir)
    for _, path in found[: max(len(found) - limit, 0)]:
        logger.info("removing old checkpoint %s (checkpoints_total_limit=%d)", path, limit)
        shutil.rmtree(path)


# --------------------------------------------------------------------------------------------
# Contents


class CheckpointIO:
    """Writes and reads what goes into a checkpoint folder besides accelerate's own state.

    The transformer is stored once, as a diffusers folder ``transformer/`` (or, for LoRA, as the
    adapter weights only); accelerate's own copy of the weights is suppressed through its hooks.
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
        """Write every part into ``folder`` (all processes), ``step.json`` last."""
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
        (folder / COMPLETE_MARKER).write_text(json.dumps({"global_step": step}))

    def read(self, folder: Path) -> None:
        """Restore every part from ``folder`` (all processes)."""
        self.accelerator.load_state(str(folder))
        rank = self.accelerator.process_index
        self.generator.set_state(load_file(str(folder / f"noise_generator_{rank}.safetensors"))["state"])
        if self.ema is not None:
            state = load_file(str(folder / "transformer_ema" / "ema.safetensors"))
            for (name, _), shadow in zip(self.trainable, self.ema.shadow_params):
                shadow.data.copy_(state[name].to(shadow.device))
            meta = json.loads((folder / "transformer_ema" / "ema_state.json").read_text())
            self.ema.optimization_step = meta["optimization_step"]


def save_checkpoint(accelerator: Accelerator, io: CheckpointIO, output_dir: Path, step: int, limit: int | None) -> None:
    """Write ``checkpoint-<step>`` through a temporary folder, publish it, prune old ones.

    A disk that fills up while writing raises a :class:`DiskFullError` naming the folder and the space a
    checkpoint needs; the temporary folder is removed and the previous checkpoint stays the latest.
    """
    accelerator.wait_for_everyone()
    tmp = temporary_folder(output_dir, step)
    if accelerator.is_main_process:
        tmp.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    try:
        io.write(tmp, step)
    except Exception as error:  # torch.save reports a full disk as a RuntimeError, safetensors as its own error
        raise_if_disk_full(error, output_dir, step, io)
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish(output_dir, step)
        prune(output_dir, limit)
        logger.info("saved checkpoint-%d", step)
    accelerator.wait_for_everyone()


class DiskFullError(OSError):
    """A checkpoint did not fit on the disk of the output folder."""


def raise_if_disk_full(error: Exception, output_dir: Path, step: int, io: CheckpointIO) -> None:
    """After a failed write: remove the partial folder; if the disk is (or was) full, say so in one line."""
    shutil.rmtree(temporary_folder(output_dir, step), ignore_errors=True)
    free, needed = shutil.disk_usage(output_dir).free, checkpoint_size(output_dir, io)
    if getattr(error, "errno", None) != errno.ENOSPC and free >= needed:
        return
    found = list_checkpoints(output_dir)
    latest = f"{found[-1][1].name} is still the latest" if found else "no checkpoint was saved yet"
    raise DiskFullError(errno.ENOSPC, f"no space left for checkpoint-{step} in {output_dir}: {_size(free)} free, a "
                        f"checkpoint needs about {_size(needed)}; {latest}") from error


def checkpoint_size(output_dir: Path, io: CheckpointIO) -> int:
    """Bytes of the newest checkpoint, or an estimate (weights, two Adam moments, EMA) before the first."""
    found = list_checkpoints(output_dir)
    if found:
        return sum(path.stat().st_size for path in found[-1][1].rglob("*") if path.is_file())
    trainable = sum(p.numel() * 4 for _, p in io.trainable)
    weights = trainable if io.config.lora is not None else sum(
        p.numel() * 4 for p in io.accelerator.unwrap_model(io.components.transformer).parameters())
    return weights + 2 * trainable + (trainable if io.ema is not None else 0)


def _size(count: float) -> str:
    if count < 1024:
        return f"{count:.0f} bytes"
    for unit in ("KB", "MB", "GB"):
        count /= 1024
        if count < 1024 or unit == "GB":
            break
    return f"{count:.1f} {unit}"
