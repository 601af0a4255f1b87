"""Shared test settings: small, deterministic, CPU."""
from __future__ import annotations

import os

import pytest
import torch

from bicsnet.models.bicsnet import BICSNET_TINY

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

#: Backbone overrides that make a BiCSNet-family model tiny for tests (the family's own).
TINY = dict(BICSNET_TINY)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def paper_rows() -> list[dict]:
    """``bicsnet.tools.flops.paper_comparison()``, computed once per session (~20 s: every paper model
    at its full size). ``test_models.py`` checks the numbers, ``test_cli.py`` how ``info --paper`` shows them."""
    from bicsnet.tools.flops import paper_comparison

    return paper_comparison()
