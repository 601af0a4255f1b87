"""FLOPs and parameter counts of every registered model and task stay as recorded.

``tests/data/model_table.json`` was written from the package before its
restructure; a change here means a model now computes something else.
Counting runs on the meta device (shapes only).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bicsnet
from bicsnet.tools.flops import count_params, model_macs

TABLE = json.loads((Path(__file__).parent / "data" / "model_table.json").read_text())
SIZE = TABLE["img_size"]


def test_table_covers_every_registered_model_and_task() -> None:
    registered = {f"{n}/{t}" for n in bicsnet.list_models() for t in bicsnet.get_entry(n).tasks}
    assert registered == set(TABLE["rows"])


@pytest.mark.parametrize("name", bicsnet.list_models())
def test_macs_and_params_unchanged(name: str) -> None:
    for task in bicsnet.get_entry(name).tasks:
        spec = bicsnet.get_task(task)
        with torch.device("meta"):
            model = bicsnet.create_model(name, task, spec.default_classes, **({"img_size": SIZE} if spec.uses_img_size else {}))
        want = TABLE["rows"][f"{name}/{task}"]
        got = {"macs": int(model_macs(model, task, SIZE)), "params": count_params(model)}
        assert got == want, f"{name}/{task}"
