"""Test tiers, for every test folder (``tests/`` and ``examples/shapes/tests/``).

The plain ``pytest`` run is the fast tier: every behaviour at unit level, in about a minute on two
cores. Three markers are opt-in, as in diffusers' test suite:

* ``slow``: training recipes, multi-process runs, killed processes, a served Gradio app (``--run-slow``);
* ``browser``: the page driven in Debian's chromium through Playwright (``--run-browser``);
* ``gpu``: needs a CUDA device (``--run-gpu``).

CI runs ``pytest --run-slow --run-browser`` (see the README). The options live here, in the
repository root: pytest takes ``pytest_addoption`` only from the conftest files it loads at start-up
(those of the folders on the command line and above them), and this one is above every test folder.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import pytest
import torch

OPT_IN = {"slow": "--run-slow", "browser": "--run-browser", "gpu": "--run-gpu"}


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (recipes, processes)")
    parser.addoption("--run-browser", action="store_true", help="also run tests marked browser (needs chromium)")
    parser.addoption("--run-gpu", action="store_true", help="also run tests marked gpu (needs CUDA)")


# glibc's malloc hands big freed blocks back to the system at once (blocks over its mmap threshold, and the top of the
# heap past its trim threshold), so a process that allocates and frees the same tensors every step (a training step,
# a denoising step) faults in fresh zeroed pages every time. These settings keep freed memory mapped for reuse:
# `pytest -n 0 --run-slow tests/test_training.py` went from 350 s to 199 s (page faults 4.8 M to 2.3 M). In the whole
# suite the page faults did not fall measurably (165 M in a CI run before, 152 M and 201 M after), so most of what
# those cost comes from elsewhere. glibc reads the settings when a process starts, so
# they are set for the processes started from here (xdist workers, the commands tests run) and, through mallopt,
# for this one.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": 2**30, "MALLOC_TRIM_THRESHOLD_": 2**31 - 1, "MALLOC_TOP_PAD_": 2**28}
_MALLOPT = {"MALLOC_MMAP_THRESHOLD_": -3, "MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_TOP_PAD_": -2}  # malloc.h M_* keys


def keep_freed_memory() -> None:
    for name, value in KEEP_FREED_MEMORY.items():
        os.environ.setdefault(name, str(value))
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        for name, key in _MALLOPT.items():
            libc.mallopt(ctypes.c_int(key), ctypes.c_int(int(os.environ[name])))
    except (OSError, AttributeError, ValueError):  # not glibc: its own allocator's policy stands
        pass


def pytest_configure(config):
    keep_freed_memory()
    # Under pytest-xdist every worker, and every process a test starts, computes on one thread: two workers then
    # share two cores. With torch's default of one thread per core each, OpenMP threads spin on cores the other
    # worker holds, and a run took three times as long as one worker alone.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker, option in OPT_IN.items():
            if marker in item.keywords and not config.getoption(option):
                item.add_marker(pytest.mark.skip(reason=f"{marker}: opt in with {option}"))
