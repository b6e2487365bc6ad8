"""Shared fixtures: the real data folder (``FCNSEG_DATA``, default ``../shared/data``) and tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FCNSEG_DATA", REPO.parent / "shared" / "data")).resolve()

# Tiny channel multiplier for registry-wide tests: the paper's layer graph with 1/32 of the channels.
TINY = 1 / 32


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"real data folder {DATA} not found: set FCNSEG_DATA to ../shared/data")
    return DATA


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
