"""Shared pytest options (slow and GPU tests are opt-in) and fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from easyanimate.tiny import write_tiny_model


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow (long training recipes)")
    parser.addoption("--run-gpu", action="store_true", help="run tests marked gpu (need CUDA)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(pytest.mark.skip(reason="slow: opt in with --run-slow"))
        if "gpu" in item.keywords and not config.getoption("--run-gpu"):
            item.add_marker(pytest.mark.skip(reason="gpu: opt in with --run-gpu"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A ``models/`` root with a tiny PixArt folder, motion module and LoRA (random weights)."""
    root = tmp_path_factory.mktemp("models")
    return {"root": root, **write_tiny_model(root)}
