"""Shared test settings: small, deterministic, CPU."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

#: Backbone overrides that make every registered model tiny for tests.
TINY = {"width_mult": 0.125, "endpoint_channels": 16}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
