"""The paper's baselines as registered models, trained through the same CLI.

Comparisons are only fair with the same recipe, data pipeline, loss and head,
so the detection baseline is torchvision's ResNet-50-FPN backbone (P3-P7, as
``retinanet_resnet50_fpn`` builds it) inside the same RetinaNet wrapper as
BiCSNet: same anchors per stride, focal loss, BN head, transform. The
segmentation and classification baselines are torchvision's
``deeplabv3_resnet50`` and ``resnet34``/``resnet50``, taking images in [0, 1]
like our models. No pretrained weights anywhere (the paper trains from
scratch, and nothing is downloaded).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet34 as resnet34_tv
from torchvision.models import resnet50 as resnet50_tv
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.models.segmentation import deeplabv3_resnet50 as deeplabv3_resnet50_tv

from ..arch.backbone import PyramidBackbone
from ..errors import ConfigError
from .factory import task_model
from .heads import Normalize
from .registry import register_model

__all__ = ["ResNetFPNBackbone", "ImageModel"]


class ResNetFPNBackbone(PyramidBackbone):
    """torchvision's ResNet-50-FPN with P6/P7, exposing BiCSNet's backbone contract (P3..P7, 256 wide)."""

    def __init__(self, norm: str = "bn") -> None:
        super().__init__()
        norm_layer = {"bn": nn.BatchNorm2d, "frozenbn": None}.get(norm, nn.BatchNorm2d)
        kw = {"norm_layer": norm_layer} if norm_layer is not None else {}
        self.body = resnet_fpn_backbone(
            backbone_name="resnet50", weights=None, trainable_layers=5, returned_layers=[2, 3, 4],
            extra_blocks=LastLevelP6P7(256, 256), **kw,
        )  # fmt: skip
        self._declare_outputs(range(3, 8), self.body.out_channels, 128)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body(x)
        return OrderedDict(zip(self.strides, feats.values()))


class ImageModel(nn.Module):
    """Wrap a torchvision classifier/segmenter to take [0, 1] images and return a tensor."""

    def __init__(self, net: nn.Module, output_key: str | None = None) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.net = net
        self.output_key = output_key

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.net(self.normalize(images))
        return out[self.output_key] if self.output_key else out


def _no_options(name: str, options: dict[str, Any]) -> None:
    if options:
        raise ConfigError(f"option(s) {', '.join(sorted(options))} do not apply to baseline {name}")


@register_model(
    input_size=640, tasks=("detection",),
    description="baseline: torchvision ResNet-50-FPN in the same RetinaNet (no pretrained weights)",
)  # fmt: skip
def retinanet_resnet50_fpn(task: str, num_classes: int | None = None, **options: Any) -> nn.Module:
    """ResNet-50-FPN RetinaNet with BiCSNet's detection recipe (anchor scale 4 = torchvision's 32..512)."""
    return task_model(task, ResNetFPNBackbone(), num_classes, options, {"img_size": 640, "anchor_scale": 4.0})


@register_model(
    input_size=512, tasks=("segmentation",),
    description="baseline: torchvision DeepLabv3-ResNet50 (no pretrained weights)",
)  # fmt: skip
def deeplabv3_resnet50(task: str, num_classes: int | None = None, **options: Any) -> nn.Module:
    """torchvision DeepLabv3-ResNet50 (dilated, output stride 8), no auxiliary head."""
    _no_options("deeplabv3_resnet50", options)
    return ImageModel(deeplabv3_resnet50_tv(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False), "out")


@register_model(input_size=224, tasks=("classification",), description="baseline: torchvision ResNet-34 (no pretrained weights)")
def resnet34(task: str, num_classes: int | None = None, **options: Any) -> nn.Module:
    """torchvision ResNet-34 classifier."""
    _no_options("resnet34", options)
    return ImageModel(resnet34_tv(weights=None, num_classes=num_classes))


@register_model(input_size=224, tasks=("classification",), description="baseline: torchvision ResNet-50 (no pretrained weights)")
def resnet50(task: str, num_classes: int | None = None, **options: Any) -> nn.Module:
    """torchvision ResNet-50 classifier."""
    _no_options("resnet50", options)
    return ImageModel(resnet50_tv(weights=None, num_classes=num_classes))
