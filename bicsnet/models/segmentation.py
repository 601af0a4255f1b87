"""Semantic segmenter: BiCSNet backbone + Section IV-B head (DeepLabv3-style, no dilation)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..arch.backbone import BiCSNet
from .heads import Normalize, SegmentationHead

__all__ = ["BiCSNetSegmenter"]


class BiCSNetSegmenter(nn.Module):
    """Takes images in [0, 1] (B, 3, H, W); returns logits (B, num_classes, H, W)."""

    def __init__(self, backbone: BiCSNet, num_classes: int, head_channels: int = 256, head_convs: int = 2) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.backbone = backbone
        # The head's convs follow the backbone's norm and activation (BN + ReLU for one without a config).
        cfg = getattr(backbone, "config", None)
        norm, act = getattr(cfg, "norm", "bn"), getattr(cfg, "activation", "relu")
        self.head = SegmentationHead(backbone.out_channels, num_classes, head_channels, head_convs, norm, act)
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.backbone(self.normalize(images)))
        # Bilinear to the input size: the output stride of P3 is 8.
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
