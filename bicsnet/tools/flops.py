"""FLOPs (multiply-adds) and parameter counts, and the paper's figures beside ours.

Counting convention (``../shared/reference/targets.md``): the paper's "FLOPs"
are multiply-adds; :class:`torch.utils.flop_counter.FlopCounterMode` counts two
per multiply-add, so its total is halved. We count the backbone plus the task
head on a 1x3xHxW input and leave out pre-processing, anchor decoding and NMS.
Counting runs on the ``meta`` device: shapes only, no arithmetic, so even
BiCSNet-140 at 1280 counts in about a second.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..models import create_model, default_input_size, list_models
from ..tasks import get_task

__all__ = ["PaperRow", "PAPER_ROWS", "count_macs", "count_params", "model_macs", "paper_comparison"]


@dataclass(frozen=True)
class PaperRow:
    """One row of a table in the paper: model, task, input, classes, FLOPs (B), params (M)."""

    table: str
    model: str
    task: str
    input_size: int
    num_classes: int
    flops_b: float
    params_m: float | None


# fmt: off
PAPER_ROWS: tuple[PaperRow, ...] = (
    PaperRow("II",  "bicsnet_48s", "detection", 640, 80, 33.6, None),
    PaperRow("II",  "bicsnet_48",  "detection", 640, 80, 84.8, 32.0),   # params: Table IV
    PaperRow("II",  "bicsnet_48l", "detection", 896, 80, 166.3, None),
    PaperRow("II",  "bicsnet_94",  "detection", 1024, 80, 293.8, None),
    PaperRow("II",  "bicsnet_140", "detection", 1280, 80, 520.1, None),
    PaperRow("III", "bicsnet_48s", "instance", 640, 80, 58.3, None),
    PaperRow("III", "bicsnet_48",  "instance", 640, 80, 193.9, None),
    PaperRow("III", "bicsnet_94",  "instance", 1024, 80, 313.7, None),
    PaperRow("III", "bicsnet_140", "instance", 1280, 80, 506.2, None),
    PaperRow("IX",  "csnet_48",    "detection", 640, 80, 85.9, None),
    PaperRow("V",   "bicsnet_48",  "segmentation", 512, 21, 33.0, 41.0),  # input size not given
    PaperRow("V",   "bicsnet_94",  "segmentation", 512, 21, 82.0, 63.0),
    PaperRow("VI",  "bicsnet_48",  "classification", 224, 1000, 3.4, 22.5),
    PaperRow("VI",  "bicsnet_94",  "classification", 224, 1000, 6.6, 41.2),
    PaperRow("VI",  "bicsnet_140", "classification", 224, 1000, 8.7, 57.5),
    PaperRow("VI",  "bicsnet_48",  "classification", 224, 8142, 3.5, 24.0),
    PaperRow("VI",  "bicsnet_94",  "classification", 224, 8142, 6.6, 43.1),
    PaperRow("VI",  "bicsnet_140", "classification", 224, 8142, 8.7, 59.3),
    PaperRow("VII", "bicsnet_lite0", "detection", 0, 80, 0.18, 1.11),
    PaperRow("VII", "bicsnet_lite1", "detection", 0, 80, 0.53, 1.31),
    PaperRow("VII", "bicsnet_lite2", "detection", 0, 80, 1.01, 2.99),
    PaperRow("VII", "bicsnet_lite3", "detection", 0, 80, 2.50, 3.69),
)
# fmt: on


def count_macs(fn: Callable[[], object]) -> float:
    """Multiply-adds (in units, not billions) performed by calling ``fn()``."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared tensors once)."""
    return sum(p.numel() for p in model.parameters())


def model_macs(model: nn.Module, task: str, img_size: int | tuple[int, int]) -> float:
    """Multiply-adds of ``model`` (built on any device) for one image, on the meta device."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    model = model.eval()
    with torch.device("meta"):
        x = torch.empty(1, 3, h, w)
    with torch.no_grad():
        return count_macs(lambda: get_task(task).network(model, x))


def build_meta(name: str, task: str, num_classes: int | None = None, **overrides: object) -> nn.Module:
    """Build a registered model with meta tensors (instant, no memory)."""
    with torch.device("meta"):
        return create_model(name, task, num_classes, **overrides)


def paper_comparison(rows: tuple[PaperRow, ...] = PAPER_ROWS) -> list[dict[str, object]]:
    """For every paper row whose model is registered: paper vs ours, in B and M, and % difference."""
    known = set(list_models())
    out: list[dict[str, object]] = []
    for r in rows:
        if r.model not in known:
            continue
        size = r.input_size or default_input_size(r.model)
        kw = {"img_size": size} if get_task(r.task).uses_img_size else {}
        model = build_meta(r.model, r.task, r.num_classes, **kw)
        macs = model_macs(model, r.task, size) / 1e9
        params = count_params(model) / 1e6
        out.append(
            {
                "table": r.table,
                "model": r.model,
                "task": r.task,
                "input": size,
                "classes": r.num_classes,
                "paper_flops_b": r.flops_b,
                "ours_flops_b": round(macs, 2),
                "flops_diff_pct": round(100 * (macs / r.flops_b - 1), 1),
                "paper_params_m": r.params_m,
                "ours_params_m": round(params, 2),
                "params_diff_pct": None if r.params_m is None else round(100 * (params / r.params_m - 1), 1),
            }
        )
    return out
