"""Stopping a run with Ctrl-C so that its last checkpoint resumes exactly like an uninterrupted run.

A step changes several things in turn: it draws noise and timesteps (the noise generator), accumulates
gradients, then updates the weights, optimizer, schedule and EMA. A checkpoint is exact only when it holds
all of them as they were at one step boundary. So:

* :class:`StopRequest` turns the first Ctrl-C (SIGINT) into a request that the loop honours at the end of
  the current step; a second Ctrl-C stops at once;
* :class:`StepBoundary` remembers the random state at the last step boundary, so that a stop that does come
  in the middle of a step (a second Ctrl-C, a ``KeyboardInterrupt`` raised by code) can still be saved as
  the state after the last completed step, provided the weights were not yet being updated.
"""

from __future__ import annotations

import random
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator


class StopRequest:
    """Ctrl-C asks the run to stop after the step it is in; a second Ctrl-C interrupts at once."""

    def __init__(self, announce: bool = True):
        self.requested = False
        self.announce = announce

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handle SIGINT this way for the duration of the block (only the main thread can)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            print("\nCtrl-C: finishing this step, then saving a checkpoint (Ctrl-C again to stop at once)",
                  file=sys.stderr, flush=True)


@dataclass
class StepBoundary:
    """The random state a step starts from: the noise generator, the global generators, accelerate's micro-batch
    count (it decides which micro-batch syncs gradients). What a checkpoint saved after a step holds."""

    noise: torch.Tensor
    torch_cpu: torch.Tensor
    cuda: list[torch.Tensor]
    numpy: Any
    python: Any
    micro_batches: int

    @classmethod
    def capture(cls, generator: torch.Generator, accelerator: Accelerator) -> StepBoundary:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return cls(generator.get_state(), torch.get_rng_state(), cuda, np.random.get_state(), random.getstate(),
                   accelerator.step)

    def restore(self, generator: torch.Generator, accelerator: Accelerator) -> None:
        generator.set_state(self.noise)
        torch.set_rng_state(self.torch_cpu)
        if self.cuda:
            torch.cuda.set_rng_state_all(self.cuda)
        np.random.set_state(self.numpy)
        random.setstate(self.python)
        accelerator.step = self.micro_batches
