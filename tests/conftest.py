"""Test tiers and shared fixtures.

The plain ``pytest`` run is the fast tier: every behaviour at unit level, in about a minute on two
cores. Three markers are opt-in, as in diffusers' test suite:

* ``slow``: training recipes, multi-process runs, killed processes, a served Gradio app (``--run-slow``);
* ``browser``: the page driven in Debian's chromium through Playwright (``--run-browser``);
* ``gpu``: needs a CUDA device (``--run-gpu``).

CI runs ``pytest --run-slow --run-browser`` (see the README).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from easyanimate.tiny import write_tiny_model

OPT_IN = {"slow": "--run-slow", "browser": "--run-browser", "gpu": "--run-gpu"}


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (recipes, processes)")
    parser.addoption("--run-browser", action="store_true", help="also run tests marked browser (needs chromium)")
    parser.addoption("--run-gpu", action="store_true", help="also run tests marked gpu (needs CUDA)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker, option in OPT_IN.items():
            if marker in item.keywords and not config.getoption(option):
                item.add_marker(pytest.mark.skip(reason=f"{marker}: opt in with {option}"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A ``models/`` root with a tiny PixArt folder, motion module and LoRA (random weights)."""
    root = tmp_path_factory.mktemp("models")
    return {"root": root, **write_tiny_model(root)}
