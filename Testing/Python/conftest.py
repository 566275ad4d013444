"""Shared test setup: one torch thread (CI has 2 cores), paths to the fixture copy and the repository."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "Testing" / "Data" / "medsyn_official_tiny"


def pytest_configure(config):  # noqa: D103 - pytest hook
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
