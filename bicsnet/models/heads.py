"""Task heads on P3..P7 (Section IV).

Both merge the pyramid the same way: every level is nearest-neighbour
up-sampled to P3's size and the five maps are averaged (Sections IV-B, IV-C).
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..arch.layers import ConvNormAct

__all__ = ["merge_to_finest", "ClassificationHead", "SegmentationHead", "Normalize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def merge_to_finest(features: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Up-sample every level to the finest one (nearest) and average them."""
    maps = list(features.values())
    size = maps[0].shape[-2:]
    return torch.stack([m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="nearest") for m in maps]).mean(0)


class Normalize(nn.Module):
    """Images in [0, 1] -> ImageNet-standardised, so models take raw images."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ClassificationHead(nn.Module):
    """Section IV-C: merge P3..P7, global mean, linear layer on the 256-d vector."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = merge_to_finest(features).mean(dim=(2, 3))
        return self.fc(self.dropout(x))


class SegmentationHead(nn.Module):
    """Section IV-B: merge P3..P7, two 3x3 conv layers of 256, 1x1 classifier."""

    def __init__(
        self, in_channels: int, num_classes: int, channels: int = 256, num_convs: int = 2, norm: str = "bn", act: str = "relu"
    ) -> None:
        super().__init__()
        convs = [ConvNormAct(in_channels if i == 0 else channels, channels, 3, norm=norm, act=act) for i in range(num_convs)]
        self.convs = nn.Sequential(*convs)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.convs(merge_to_finest(features)))
