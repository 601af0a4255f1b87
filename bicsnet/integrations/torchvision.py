"""BiCSNet as the backbone of torchvision's detectors, with their default arguments.

torchvision's ``FasterRCNN``, ``MaskRCNN``, ``KeypointRCNN``, ``RetinaNet`` and
``FCOS`` (``torchvision.models.detection``) read a backbone's ``out_channels``
(one width for every map) and the ordered dict of maps it returns. With their
default arguments they need **five** maps (each default anchor generator has
five sizes: 32..512 for the R-CNNs and RetinaNet, 8..128, "equal to strides",
for FCOS: P3..P7 at strides 8..128), and the R-CNNs' default RoI poolers,
``MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"])``, look the first four
up **by name**. RetinaNet and FCOS take the maps in order, whatever their names.

BiCSNet's backbone already returns five levels of one width (SpineNet's 1x1
conv + norm + act endpoints), but names them ``p3``..``p7``: bicsnet's own
detectors, heads, ONNX output names and ``output_shape()`` use those names, so
they stay. Handed to ``FasterRCNN`` as is, the default RoI pooler finds none of
its maps and stops with an ``IndexError`` inside torchvision. :func:`torchvision_backbone`
is the bridge.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..models import create_model

__all__ = ["TorchvisionBackbone", "torchvision_backbone"]


class TorchvisionBackbone(nn.Module):
    """A bicsnet pyramid backbone whose maps are named ``"0"``, ``"1"``, ... for torchvision's detectors.

    What it adds over the bare backbone (``bicsnet.create_model(name)``): the
    names (``p3``..``p7`` become ``"0"``..``"4"``, so the R-CNNs' default RoI
    poolers on ``"0"``..``"3"`` read P3..P6), and the choice of levels. No
    layers: every level is already ``out_channels`` wide (the backbone's own
    1x1 endpoints set the width), so no projection or FPN is needed.

    Attributes:
        body: the bicsnet backbone (load bicsnet backbone weights into it).
        out_channels: channels of every map (torchvision reads it).
        levels: the pyramid levels returned, finest first (map ``"i"`` is level ``levels[i]``).
        strides: stride of each returned map in pixels, by name.
        size_divisibility: the padding that puts the coarsest map at its exact
            stride (pass it to a detector as ``size_divisible=...``; torchvision's
            default 32 works too, with the coarsest anchors' strides rounded).

    Shapes: ``forward`` takes ``(N, 3, H, W)`` images standardised with ImageNet's
    mean and std (torchvision's detectors' transform does it) and returns an
    ordered dict ``{"0": (N, out_channels, ceil(H / 2^l0), ceil(W / 2^l0)), ...}``.
    """

    def __init__(self, body: nn.Module, levels: Sequence[int] | None = None) -> None:
        super().__init__()
        body_levels = list(getattr(body, "levels", []))
        if not body_levels or not hasattr(body, "out_channels"):
            raise ConfigError(f"{type(body).__name__} is not a pyramid backbone (no levels / out_channels)")
        levels = list(body_levels if levels is None else levels)
        bad = [lvl for lvl in levels if lvl not in body_levels]
        if not levels or bad or len(set(levels)) != len(levels) or levels != sorted(levels):
            raise ConfigError(
                f"levels {tuple(levels)}: need distinct levels of the backbone ({', '.join(map(str, body_levels))}), finest first"
            )
        self.body = body
        self.out_channels: int = int(body.out_channels)
        self.levels = levels
        by_level = dict(zip(body_levels, body.out_features))
        self._take = [by_level[lvl] for lvl in levels]
        self.strides = {str(i): 2**lvl for i, lvl in enumerate(levels)}
        self.size_divisibility = 2 ** max(levels)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body(x)
        return OrderedDict((str(i), feats[name]) for i, name in enumerate(self._take))


def torchvision_backbone(
    name: str, *, levels: Sequence[int] | None = None, out_channels: int | None = None, **overrides: Any
) -> TorchvisionBackbone:
    """A registered model's backbone that torchvision's detectors take with their defaults.

    ``FasterRCNN(torchvision_backbone("bicsnet_48"), num_classes=3)``, and
    likewise ``MaskRCNN``, ``KeypointRCNN``, ``RetinaNet`` and ``FCOS``, work with
    their default anchor generators and RoI poolers: the five maps P3..P7
    (strides 8..128) come out named ``"0"``..``"4"`` (see :class:`TorchvisionBackbone`).
    P3..P7 are exactly what torchvision's RetinaNet and FCOS defaults are made
    for; the R-CNNs' default anchors (32..512) sit there at 4x the stride instead
    of 8x on their usual P2..P6 (BiCSNet has no P2 output).

    Args:
        name: a registered model with a ``backbone`` task (``bicsnet.list_models(task="backbone")``).
        levels: pyramid levels to return, finest first; default all (P3..P7). Any other
            count than five needs an anchor generator of that many sizes.
        out_channels: channels of every map, set through the backbone's own 1x1
            endpoints (its ``endpoint_channels`` option); default the model's
            (Table I: 256, 128 for BiCSNet-48S). FCOS's default head (GroupNorm,
            32 groups) needs a multiple of 32.
        overrides: options of :func:`bicsnet.create_model` for the backbone
            (``width_mult``, ``norm``, ``drop_path_rate``, ``pretrained=PATH``, ...).

    Returns:
        A :class:`TorchvisionBackbone`; its ``body`` is ``bicsnet.create_model(name, **overrides)``.

    Raises:
        ConfigError: unknown model or option, a model without a pyramid backbone,
            levels the backbone does not have, ``out_channels`` contradicting ``endpoint_channels``.
    """
    if out_channels is not None:
        given = overrides.get("endpoint_channels", out_channels)
        if given != out_channels:
            raise ConfigError(f"out_channels={out_channels} contradicts endpoint_channels={given} (the same setting)")
        overrides["endpoint_channels"] = out_channels
    return TorchvisionBackbone(create_model(name, **overrides), levels)
