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

import os

import pytest
import torch

OPT_IN = {"slow": "--run-slow", "browser": "--run-browser", "gpu": "--run-gpu"}


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (recipes, processes)")
    parser.addoption("--run-browser", action="store_true", help="also run tests marked browser (needs chromium)")
    parser.addoption("--run-gpu", action="store_true", help="also run tests marked gpu (needs CUDA)")


def pytest_configure(config):
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
