"""One run per output folder: a lock while a training runs, and no silent reuse of a finished run's folder.

``output_dir/.lock`` holds the main process's pid and host, and is created with exclusive creation, so of
two trainings started into one folder only one gets it; the other is refused and told who holds it. A
lock whose process is gone (same host, pid not running) is stale: a killed run does not leave the folder
stuck, the next run takes it over and says so. A folder that holds a previous run (its
``train_config.yaml``, checkpoints or exports) is reused only to resume it (``--resume_from_checkpoint``)
or when ``--overwrite_output_dir`` says so; overwriting removes the previous run's checkpoints, so that
``latest`` can never mean a checkpoint of another run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from accelerate.logging import get_logger

from ..files import process_alive
from . import checkpoints

logger = get_logger(__name__)

LOCK_FILE = ".lock"
RUN_FILES = ("train_config.yaml", "transformer", "motion_module.safetensors", "pixart_transformer.safetensors",
             "lora.safetensors")
"""What a previous run leaves besides its checkpoints."""


class OutputDirError(ValueError):
    """The output folder belongs to another run (live, or finished and not to be resumed)."""


@contextmanager
def locked(output_dir: Path) -> Iterator[None]:
    """Hold ``output_dir/.lock`` for the duration of the block (this process's pid and host)."""
    lock = output_dir / LOCK_FILE
    output_dir.mkdir(parents=True, exist_ok=True)
    if not _create(lock):
        _take_over_if_stale(lock)
    try:
        yield
    finally:
        if _owner(lock).get("pid") == os.getpid():
            lock.unlink(missing_ok=True)


def _create(lock: Path) -> bool:
    try:
        descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as file:
        json.dump({"pid": os.getpid(), "host": socket.gethostname()}, file)
    return True


def _owner(lock: Path) -> dict:
    try:
        owner = json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}  # gone, or being written right now
    return owner if isinstance(owner, dict) else {}


def _take_over_if_stale(lock: Path) -> None:
    owner = _owner(lock)
    pid, host = owner.get("pid"), owner.get("host")
    stale = host == socket.gethostname() and isinstance(pid, int) and pid > 0 and not process_alive(pid)
    if stale:
        logger.warning("%s was left by a training (pid %d) that no longer runs; taking it over", lock, pid)
        lock.unlink(missing_ok=True)
        if _create(lock):
            return
        owner = _owner(lock)  # another run took it over first
        pid, host = owner.get("pid"), owner.get("host")
    holder = f"pid {pid} on {host}" if pid else "a process that is writing it right now"
    raise OutputDirError(f"output_dir {lock.parent} is in use by another training ({holder}): choose another "
                         f"--output_dir, or wait for it to end (if it is gone, delete {lock})")


def check_reuse(output_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over a previous one unless resuming it or told to overwrite it."""
    found = [name for name in RUN_FILES if (output_dir / name).exists()]
    found += [path.name for _, path in checkpoints.list_checkpoints(output_dir)]
    if not found or resume:
        return
    if not overwrite:
        raise OutputDirError(f"output_dir {output_dir} holds a previous run ({', '.join(found[:4])}): resume it with "
                             "--resume_from_checkpoint latest, start over with --overwrite_output_dir, or choose "
                             "another --output_dir")
    old = checkpoints.list_checkpoints(output_dir)
    logger.warning("--overwrite_output_dir: starting over in %s%s", output_dir,
                   f"; removing the previous run's {len(old)} checkpoints" if old else "")
    for _, path in old:
        shutil.rmtree(path)
