"""Fixtures shared by the library's tests (the test tiers and their options: the root ``conftest.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from easyanimate.tiny import write_tiny_model

from .helpers import CHROMIUM, CHROMIUM_ARGS, write_training_dataset


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A ``models/`` root with a tiny PixArt folder, motion module and LoRA (random weights)."""
    root = tmp_path_factory.mktemp("models")
    return {"root": root, **write_tiny_model(root)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The training tests' data (:func:`~tests.helpers.write_training_dataset`), one per module."""
    return write_training_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright (both installed by scripts/setup.sh), one per module."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), f"{CHROMIUM} not found: run scripts/setup.sh (installs Debian's chromium)"
    with sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def pipe(tiny_models):
    """The tiny model loaded as ``predict_t2v.py`` loads models, on the CPU, progress bar off (one per module)."""
    from easyanimate.generation import load_pipeline, select_model

    pipeline = load_pipeline(select_model(tiny_models["root"], model=tiny_models["model"]), device="cpu")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
