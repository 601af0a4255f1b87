"""Basic blocks T of eqs. (1)-(3): ResNet-50's residual and bottleneck blocks.

Section III-D: "we adopt the building blocks in ResNet-50 as our basic blocks"
and replace some bottlenecks by residual (two 3x3 conv) blocks. A block group
repeats a block ``d`` times (Table I's depth repeat); only the first block
may carry a 1x1 projection shortcut, as in ResNet and SpineNet.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import ConvNormAct, DropPath, make_act, make_norm

__all__ = ["BLOCK_EXPANSION", "ResidualBlock", "BottleneckBlock", "BlockGroup", "block_out_channels"]

#: Output width of a block relative to its ``filters`` (ResNet convention).
BLOCK_EXPANSION = {"residual": 1, "bottleneck": 4}


def block_out_channels(block: str, filters: int) -> int:
    """Channels a block of type ``block`` with ``filters`` produces."""
    return filters * BLOCK_EXPANSION[block]


def _zero_init_last_norm(norm: nn.Module) -> None:
    # Residual branches start as identity: stabilises from-scratch training
    # (Goyal et al. 2017), which the paper's recipes use.
    if isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm)) and norm.weight is not None:
        nn.init.zeros_(norm.weight)


class _ResidualBase(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, norm: str, act: str, drop_path: float) -> None:
        super().__init__()
        self.shortcut: nn.Module = (
            nn.Identity() if in_ch == out_ch else ConvNormAct(in_ch, out_ch, 1, norm=norm, act=None)
        )
        self.drop_path = DropPath(drop_path)
        self.act = make_act(act)
        self.in_channels = in_ch
        self.out_channels = out_ch

    def branch(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shortcut(x) + self.drop_path(self.branch(x)))


class ResidualBlock(_ResidualBase):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_ch: int, filters: int, norm: str = "bn", act: str = "relu", drop_path: float = 0.0):
        super().__init__(in_ch, filters, norm, act, drop_path)
        self.conv1 = ConvNormAct(in_ch, filters, 3, norm=norm, act=act)
        self.conv2 = ConvNormAct(filters, filters, 3, norm=norm, act=None)
        _zero_init_last_norm(self.conv2[1])

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class BottleneckBlock(_ResidualBase):
    """1x1 reduce, 3x3, 1x1 expand (x4), with identity or projection shortcut."""

    def __init__(self, in_ch: int, filters: int, norm: str = "bn", act: str = "relu", drop_path: float = 0.0):
        super().__init__(in_ch, filters * 4, norm, act, drop_path)
        self.conv1 = ConvNormAct(in_ch, filters, 1, norm=norm, act=act)
        self.conv2 = ConvNormAct(filters, filters, 3, norm=norm, act=act)
        self.conv3 = ConvNormAct(filters, filters * 4, 1, norm=norm, act=None)
        _zero_init_last_norm(self.conv3[1])

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


_BLOCKS = {"residual": ResidualBlock, "bottleneck": BottleneckBlock}


class BlockGroup(nn.Sequential):
    """``repeats`` blocks of one type at one level (Table I's depth repeat d)."""

    def __init__(
        self,
        block: str,
        in_ch: int,
        filters: int,
        repeats: int = 1,
        norm: str = "bn",
        act: str = "relu",
        drop_path: float = 0.0,
    ) -> None:
        cls = _BLOCKS[block]
        out_ch = block_out_channels(block, filters)
        blocks = [cls(in_ch if i == 0 else out_ch, filters, norm, act, drop_path) for i in range(repeats)]
        super().__init__(*blocks)
        self.in_channels = in_ch
        self.out_channels = out_ch
