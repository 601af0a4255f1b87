"""Normalisation and activation factories shared by every block.

The paper trains with synchronized BN (TF momentum 0.99, epsilon 1e-3) after
every convolution and ReLU, or swish in training strategy B (Section V-A1).
PyTorch's BN momentum is ``1 - tf_momentum``, hence 0.01 here.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from ..errors import ConfigError

__all__ = ["NORM_LAYERS", "ACTIVATIONS", "make_norm", "make_act", "ConvNormAct", "DropPath"]

BN_MOMENTUM = 0.01
BN_EPS = 1e-3

NORM_LAYERS = ("bn", "syncbn", "gn", "frozenbn")
ACTIVATIONS = ("relu", "swish")


def _gn_groups(channels: int, preferred: int = 32) -> int:
    # GroupNorm needs groups | channels; width multipliers give odd widths.
    for g in range(min(preferred, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def make_norm(kind: str, channels: int) -> nn.Module:
    """Build a normalisation layer: ``bn`` | ``syncbn`` | ``gn`` | ``frozenbn``."""
    if kind == "bn":
        return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
    if kind == "syncbn":
        return nn.SyncBatchNorm(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
    if kind == "gn":
        return nn.GroupNorm(_gn_groups(channels), channels, eps=BN_EPS)
    if kind == "frozenbn":
        return FrozenBatchNorm2d(channels, eps=BN_EPS)
    raise ConfigError(f"norm layer {kind!r} is not one of {', '.join(NORM_LAYERS)}")


def make_act(kind: str) -> nn.Module:
    """Build an activation: ``relu`` | ``swish`` (SiLU)."""
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "swish":
        return nn.SiLU(inplace=True)
    raise ConfigError(f"activation {kind!r} is not one of {', '.join(ACTIVATIONS)}")


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias) + norm + optional activation, 'same' padding."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 1,
        stride: int = 1,
        norm: str = "bn",
        act: str | None = "relu",
        groups: int = 1,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False),
            make_norm(norm, out_ch),
        ]
        if act is not None:
            layers.append(make_act(act))
        super().__init__(*layers)
        self.out_channels = out_ch


class DropPath(nn.Module):
    """Stochastic depth on a residual branch (per sample), Huang et al. 2016."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


ActFactory = Callable[[], nn.Module]
