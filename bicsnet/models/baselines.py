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

import torch
from torch import nn
from torchvision.models import resnet34, resnet50
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.models.segmentation import deeplabv3_resnet50

from .heads import Normalize

__all__ = ["ResNetFPNBackbone", "ImageModel", "build_retinanet_resnet50_fpn", "build_deeplabv3_resnet50", "build_resnet"]


class ResNetFPNBackbone(nn.Module):
    """torchvision's ResNet-50-FPN with P6/P7, exposing BiCSNet's backbone contract."""

    def __init__(self, norm: str = "bn") -> None:
        super().__init__()
        norm_layer = {"bn": nn.BatchNorm2d, "frozenbn": None}.get(norm, nn.BatchNorm2d)
        kw = {"norm_layer": norm_layer} if norm_layer is not None else {}
        self.body = resnet_fpn_backbone(
            backbone_name="resnet50", weights=None, trainable_layers=5, returned_layers=[2, 3, 4],
            extra_blocks=LastLevelP6P7(256, 256), **kw,
        )  # fmt: skip
        self.out_channels = self.body.out_channels
        self.strides = {f"p{lvl}": 2**lvl for lvl in range(3, 8)}
        self.size_divisibility = 128

    @property
    def out_features(self) -> list[str]:
        return list(self.strides)

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


def build_retinanet_resnet50_fpn(num_classes: int, img_size: int = 640, **kw: object) -> nn.Module:
    """ResNet-50-FPN RetinaNet with BiCSNet's detection recipe (anchor scale 4 = torchvision's 32..512)."""
    from .detection import BiCSNetRetinaNet

    kw.setdefault("anchor_scale", 4.0)
    return BiCSNetRetinaNet(ResNetFPNBackbone(), num_classes, img_size, **kw)


def build_deeplabv3_resnet50(num_classes: int) -> nn.Module:
    """torchvision DeepLabv3-ResNet50 (dilated, output stride 8), no auxiliary head."""
    return ImageModel(deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False), "out")


def build_resnet(depth: int, num_classes: int) -> nn.Module:
    """torchvision ResNet-34 / ResNet-50 classifier."""
    fn = {34: resnet34, 50: resnet50}[depth]
    return ImageModel(fn(weights=None, num_classes=num_classes))
