"""Files that appear whole or not at all, and numbered outputs that never replace one another.

Every file this package writes for a user (videos, images, sidecars, weights, configs) goes through
:func:`atomic_write`: it is written under a hidden temporary name in the destination folder and moved
into place with ``os.replace`` once complete. An interrupted write leaves at most a hidden
``.<name>.<pid>-<tag>.tmp`` file, which :func:`remove_stale_temporaries` deletes once its process is gone.

Outputs numbered ``00000001``, ``00000002``, ... follow one rule (:class:`NumberedOutput`): the next number
is one past the highest number in the folder, published or claimed, and it is *claimed* by creating a
hidden ``.<number>.claim`` file with exclusive creation. Two processes writing into one folder therefore
never pick the same number, and a published file is never replaced.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

_TEMPORARY = re.compile(r"^\..+\.(\d+)-[0-9a-f]+\.tmp$")
_CLAIM = re.compile(r"^\.(\d{8})\.claim$")
_NUMBERED = re.compile(r"^(\d{8})(\..+)?$")


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Run ``write(temporary)`` and move the result to ``path``; on any failure remove the temporary file.

    The temporary file sits in the destination folder (created if missing), so the final
    ``os.replace`` is a rename on one filesystem: readers see the old file or the whole new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_name(path)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                      metadata: Mapping[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` through :func:`atomic_write` (tensors are made contiguous on the CPU)."""
    state = {key: tensor.detach().contiguous().cpu() for key, tensor in tensors.items()}
    return atomic_write(path, lambda temporary: save_file(state, str(temporary),
                                                          metadata=dict(metadata) if metadata else None))


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete hidden temporary files and claims in ``folder`` whose writing process no longer runs.

    Only this machine's processes can be checked; a claim written on another host is kept.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if (match := _TEMPORARY.match(entry.name)) and not process_alive(int(match.group(1))):
            entry.unlink(missing_ok=True)
            removed.append(entry)
        elif _CLAIM.match(entry.name) and _claim_is_stale(entry):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _claim_is_stale(claim: Path) -> bool:
    try:
        owner = json.loads(claim.read_text())
    except (OSError, ValueError):
        return False  # being written right now, or not ours: leave it
    return owner.get("host") == socket.gethostname() and not process_alive(int(owner.get("pid", 0)))


def _numbers_in(folder: Path) -> Iterable[int]:
    for entry in folder.iterdir():
        match = _NUMBERED.match(entry.name) or _CLAIM.match(entry.name)
        if match:
            yield int(match.group(1))


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while a few renames run, so Ctrl-C cannot split a set of files."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class NumberedOutput:
    """A claimed output number ``NNNNNNNN`` in ``folder``; its files are published together.

    Example::

        with NumberedOutput.claim(folder) as output:
            output.add(".mp4", lambda tmp: save_video(video, tmp))
            output.add(".json", lambda tmp: tmp.write_text(record))
        # both files now exist as 00000007.mp4 and 00000007.json, or neither does

    Files are written under temporary names as they are added and renamed into place on a clean exit
    of the ``with`` block (signals held during the renames). On an error nothing is published, the
    temporary files are removed and the claim is released.
    """

    def __init__(self, folder: Path, number: int, claim: Path):
        self.folder, self.number, self._claim = folder, number, claim
        self._pending: list[tuple[Path, Path]] = []

    @property
    def stem(self) -> str:
        return f"{self.number:08d}"

    def path(self, suffix: str) -> Path:
        """Where the file with ``suffix`` (e.g. ``".mp4"``) will be published."""
        return self.folder / f"{self.stem}{suffix}"

    @classmethod
    def claim(cls, folder: str | os.PathLike) -> NumberedOutput:
        """Claim the next free number in ``folder`` (created if missing)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
        number = max(_numbers_in(folder), default=0) + 1
        owner = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        while True:
            claim = folder / f".{number:08d}.claim"
            try:
                descriptor = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                number += 1
                continue
            with os.fdopen(descriptor, "w") as handle:
                handle.write(owner)
            if any(_NUMBERED.match(p.name) for p in folder.glob(f"{number:08d}*")):
                claim.unlink()  # published by a writer that did not claim: never replace it
                number += 1
                continue
            return cls(folder, number, claim)

    def add(self, suffix: str, write: Callable[[Path], None]) -> Path:
        """Write one file now under a temporary name; it is published when the block ends."""
        final = self.path(suffix)
        temporary = _temporary_name(final)
        try:
            write(temporary)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        self._pending.append((temporary, final))
        return final

    def __enter__(self) -> NumberedOutput:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        try:
            if error_type is None:
                with _signals_deferred():
                    for temporary, final in self._pending:
                        os.replace(temporary, final)
                    self._pending.clear()
        finally:
            for temporary, _ in self._pending:
                temporary.unlink(missing_ok=True)
            self._claim.unlink(missing_ok=True)
