"""Image classifier: BiCSNet backbone + Section IV-C head."""
from __future__ import annotations

import torch
from torch import nn

from ..arch.backbone import BiCSNet
from .heads import ClassificationHead, Normalize

__all__ = ["BiCSNetClassifier"]


class BiCSNetClassifier(nn.Module):
    """Takes images in [0, 1] (B, 3, H, W); returns logits (B, num_classes)."""

    def __init__(self, backbone: BiCSNet, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.backbone = backbone
        self.head = ClassificationHead(backbone.out_channels, num_classes, dropout)
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.normalize(images)))
