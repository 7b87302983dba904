"""Checkpoint folders: atomic writes, finding the latest, pruning.

A checkpoint is written into a hidden temporary folder and renamed to ``checkpoint-<step>`` only when
complete, so a crash while saving never leaves a broken latest checkpoint: the previous one stays
the latest, and the temporary folder is removed at the next start.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TEMPORARY_PREFIX = ".incomplete-"
COMPLETE_MARKER = "step.json"  # written last into a checkpoint folder


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, path), oldest first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := CHECKPOINT.match(p.name))]
    return sorted(found)


def resolve_checkpoint(output_dir: Path, name: str) -> Path:
    """``latest`` -> the newest complete checkpoint; else a checkpoint folder by path or name."""
    if name == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(f"no checkpoint-<step> folder in {output_dir} to resume from")
        return found[-1][1]
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
