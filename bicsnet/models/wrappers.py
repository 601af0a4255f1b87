"""Model wrappers for counting, timing and export: the network alone, and RetinaNet without NMS.

Which wrapper a task exports is in the task table (``TaskSpec.export``); the
network-only call each wraps is ``TaskSpec.network``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["NetworkOnly", "DetectionExportModule"]


class NetworkOnly(nn.Module):
    """A model's network-only call as a module with a tuple of tensors out.

    ``network(model, x)`` is the task's ``TaskSpec.network`` (backbone + head,
    what FLOPs count). A backbone's ordered dict gives its levels in order; a
    detection head's dict gives ``bbox_regression``, ``cls_logits`` (sorted by key).
    """

    def __init__(self, model: nn.Module, network: Callable[[nn.Module, Tensor], Any]) -> None:
        super().__init__()
        self.model = model
        self.network = network

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.network(self.model, x)
        if isinstance(out, OrderedDict):  # pyramid levels, finest first
            return tuple(out.values())
        if isinstance(out, dict):  # a detection head's outputs, in a fixed order
            return tuple(out[k] for k in sorted(out))
        if isinstance(out, (tuple, list)):
            return tuple(out)
        return (out,)


def _anchors_for(feature: Tensor, stride: int, cell: Tensor) -> Tensor:
    """torchvision's ``AnchorGenerator.grid_anchors`` for one level, shape-symbolic."""
    h, w = feature.shape[-2:]
    shifts_x = torch.arange(w, device=feature.device, dtype=torch.int32).to(cell.dtype) * stride
    shifts_y = torch.arange(h, device=feature.device, dtype=torch.int32).to(cell.dtype) * stride
    sy, sx = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    sx, sy = sx.reshape(-1), sy.reshape(-1)
    shifts = torch.stack((sx, sy, sx, sy), dim=1)
    return (shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4)


class DetectionExportModule(nn.Module):
    """RetinaNet without NMS: pre-processed images -> (boxes, scores) for every anchor.

    Anchors are computed from the feature shapes inside the graph (same
    formula as torchvision's ``AnchorGenerator``; with inputs padded to 128
    the stride of level ``l`` is exactly ``2^l``), and decoded with the
    model's own ``BoxCoder``. Boxes are not clipped: clipping needs each
    image's size before padding, which :func:`postprocess_detections` has.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not (hasattr(model, "backbone") and hasattr(model, "head") and hasattr(model, "anchor_generator")):
            raise ConfigError("detection export needs a RetinaNet-style model (backbone, head, anchor_generator)")
        self.backbone = model.backbone
        self.head = model.head
        self.box_coder = model.box_coder
        strides = getattr(model.backbone, "strides", None)
        if not strides:
            raise ConfigError("detection export needs a backbone that declares its strides")
        self.strides = [int(s) for s in strides.values()]
        cells = model.anchor_generator.cell_anchors
        if not cells:
            cells = model.anchor_generator.generate_anchors(model.anchor_generator.sizes, model.anchor_generator.aspect_ratios)
        for i, c in enumerate(cells):
            self.register_buffer(f"cell_anchors_{i}", c.detach().clone().float(), persistent=False)
        self.num_levels = len(self.strides)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        feats = list(self.backbone(images).values())
        out = self.head(feats)
        anchors = torch.cat(
            [_anchors_for(f, s, getattr(self, f"cell_anchors_{i}")) for i, (f, s) in enumerate(zip(feats, self.strides))]
        )
        reg = out["bbox_regression"]
        b = reg.shape[0]
        boxes = self.box_coder.decode_single(reg.reshape(-1, 4), anchors.repeat(b, 1)).reshape(b, -1, 4)
        return boxes, torch.sigmoid(out["cls_logits"])


