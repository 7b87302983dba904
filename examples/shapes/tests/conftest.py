"""Fixtures shared by the shapes demo's tests (the test tiers' options are the root ``conftest.py``'s)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's root folder: the recipe script and ``train.py`` run from there."""
    return Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def shipped_models(repo_root) -> Path:
    """The repository's ``models/`` folder, where the shapes demo models ship (tests only read it)."""
    return repo_root / "models"
