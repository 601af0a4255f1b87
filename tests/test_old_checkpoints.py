"""Weights files written by bicsnet 0.1.0 before its restructure still load, and compute what they computed.

``tests/data/checkpoints_v0_1/`` holds three tiny checkpoints (BiCSNet-48 RetinaNet,
BiCSNet-lite0 RetinaNet, BiCSNet-48 segmentation) saved by that version with
randomised BatchNorm statistics, and ``reference.json`` the sums of their
outputs on a seeded input, computed by that version.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bicsnet.models import load_checkpoint_model

DATA = Path(__file__).parent / "data" / "checkpoints_v0_1"
REFERENCE = json.loads((DATA / "reference.json").read_text())


@pytest.mark.parametrize("key", sorted(REFERENCE))
def test_old_checkpoint_loads_and_gives_the_same_outputs(key: str) -> None:
    model, meta = load_checkpoint_model(DATA / f"{key}.safetensors")  # strict: every key and shape must match
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if hasattr(model, "head") and hasattr(model, "transform"):  # a detector: its network on normalised input
            out = model.head(list(model.backbone(model.transform.normalize(x)).values()))
        else:
            out = {"logits": model(x)}
    got = {k: float(v.double().sum()) for k, v in out.items()}
    assert got.keys() == REFERENCE[key].keys()
    for k, want in REFERENCE[key].items():
        assert got[k] == pytest.approx(want, rel=1e-5, abs=1e-4), k
