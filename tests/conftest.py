"""Fixtures shared by the library's tests (the test tiers and their options: the root ``conftest.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from easyanimate.tiny import write_tiny_model


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A ``models/`` root with a tiny PixArt folder, motion module and LoRA (random weights)."""
    root = tmp_path_factory.mktemp("models")
    return {"root": root, **write_tiny_model(root)}
