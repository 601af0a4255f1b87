"""Spatial Fusion Module (Section III-C, Fig. 4) and the fusion of its branches.

Each input edge of a block gets one resampling branch that

1. squeezes the source to ``gamma x`` its base width with a 1x1 conv (the
   feature multiplier of Table I),
2. applies a global-context step (global average pool -> 1x1 conv -> added
   back, as in DetectoRS [6]; no excitation/gating),
3. resizes to the block's level: nearest-neighbour up-sampling to the exact
   target size, or a 3x3 stride-2 conv followed by 3x3 stride-2 max-pools for
   each further level (this squeeze + strided conv is the operator D of
   eqs. (1), (3), (4) and (6)),
4. applies a second global-context step,
5. projects to the block's input width with a 1x1 conv + norm (no activation),

and the branches are summed (element-wise addition, eqs. (1)-(6)) and
activated. ``spatial_fusion=False`` is Table X's "- SFM" ablation: a plain
1x1 projection with max-pool / nearest resizing, no squeeze and no global
context. ``fusion="fast_normalized"`` is EfficientDet's weighted sum, used by
the lite models (Section V-E).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .layers import ConvNormAct, make_act

__all__ = ["GlobalContext", "ResampleBranch", "SpatialFusionModule", "resize_to"]


class GlobalContext(nn.Module):
    """x + W * mean_hw(x): DetectoRS' global context without excitation.

    The 1x1 conv starts at zero so a fresh module is the identity.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1, bias=True)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One pooling kernel and a matrix product on the (N, C) context instead of
        # ``mean`` (sum + divide + copy) and a 1x1 conv on a 1x1 map: the same
        # maths, a third of the time per call (benchmarks/README.md, hot spots).
        ctx = F.adaptive_avg_pool2d(x, 1).flatten(1)
        ctx = F.linear(ctx, self.conv.weight.flatten(1), self.conv.bias)
        return x + ctx[:, :, None, None]


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize to an explicit ``size`` (no-op when equal).

    Sizing from the target rather than a scale factor keeps any input size
    working: level l is ceil(H / 2^l), which a factor of 2 does not invert.
    """
    # statically_known_true is plain ``==`` in eager mode; under torch.export
    # with symbolic H/W it never adds a guard (nearest to the same size is an
    # exact copy, so interpolating when equality is unprovable is harmless).
    if statically_known_true(x.shape[-2] == size[0]) and statically_known_true(x.shape[-1] == size[1]):
        return x
    return F.interpolate(x, size=size, mode="nearest")


class ResampleBranch(nn.Module):
    """One SFM branch: source (channels, base filters, level) -> target (width, level)."""

    def __init__(
        self,
        in_channels: int,
        in_filters: int,
        in_level: int,
        out_channels: int,
        out_level: int,
        sfm_ratio: float,
        norm: str = "bn",
        act: str = "relu",
        spatial_fusion: bool = True,
        global_context: bool = True,
        squeeze: bool = True,
        down: str = "conv",
        mid_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.in_level, self.out_level = in_level, out_level
        self.spatial_fusion = spatial_fusion
        steps_down = max(0, out_level - in_level)
        if spatial_fusion:
            mid = mid_channels or (max(1, int(in_filters * sfm_ratio)) if squeeze else in_channels)
            self.squeeze: nn.Module = ConvNormAct(in_channels, mid, 1, norm=norm, act=act) if squeeze else nn.Identity()
            self.gc_pre: nn.Module = GlobalContext(mid) if global_context else nn.Identity()
            down_layers: list[nn.Module] = []
            if steps_down:
                if down == "conv":
                    down_layers.append(ConvNormAct(mid, mid, 3, stride=2, norm=norm, act=act))
                elif down == "space_to_depth":
                    # Lite models (Section V-E, following [64]): space-to-depth then a
                    # stride-2 conv, i.e. a 2x2 pixel-unshuffle and a 1x1 mixing conv.
                    down_layers += [nn.PixelUnshuffle(2), ConvNormAct(mid * 4, mid, 1, norm=norm, act=act)]
                else:
                    raise ValueError(f"unknown down-sampling {down!r}")
                down_layers += [nn.MaxPool2d(3, 2, 1) for _ in range(steps_down - 1)]
            self.down = nn.Sequential(*down_layers)
            self.gc_post: nn.Module = GlobalContext(mid) if global_context else nn.Identity()
            self.project = (
                ConvNormAct(mid, out_channels, 1, norm=norm, act=None)
                if (mid != out_channels or squeeze)
                else nn.Identity()
            )
        else:
            self.down = nn.Sequential(*[nn.MaxPool2d(3, 2, 1) for _ in range(steps_down)])
            self.project = (
                ConvNormAct(in_channels, out_channels, 1, norm=norm, act=None)
                if in_channels != out_channels
                else nn.Identity()
            )
        self.down_conv = down

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if not self.spatial_fusion:
            # Pool before projecting (cheaper); up-sample after.
            x = self.project(self.down(x))
            return resize_to(x, size)
        x = self.gc_pre(self.squeeze(x))
        if self.out_level > self.in_level:
            if self.down_conv == "space_to_depth" and (x.shape[-2] % 2 or x.shape[-1] % 2):
                x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
            x = self.down(x)
        elif self.out_level < self.in_level:
            x = resize_to(x, size)
        return self.project(self.gc_post(x))


class SpatialFusionModule(nn.Module):
    """Resample every input edge of a block to its level and width, then fuse.

    ``fusion="sum"`` is the paper's element-wise addition; ``"fast_normalized"``
    is EfficientDet's sum_i relu(w_i) x_i / (eps + sum_j relu(w_j)).
    """

    def __init__(self, branches: Sequence[ResampleBranch], act: str = "relu", fusion: str = "sum") -> None:
        super().__init__()
        if fusion not in ("sum", "fast_normalized"):
            raise ValueError(f"unknown fusion {fusion!r}")
        self.branches = nn.ModuleList(branches)
        self.fusion = fusion
        if fusion == "fast_normalized":
            self.weights = nn.Parameter(torch.ones(len(branches)))
        self.act = make_act(act)

    def forward(self, inputs: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        # Accumulate from the first branch: ``sum()`` would start from 0 and
        # copy the first full-size map once more per fusion.
        out: torch.Tensor | None = None
        if self.fusion == "fast_normalized":
            w = F.relu(self.weights)
            w = w / (w.sum() + 1e-4)
        for i, (b, x) in enumerate(zip(self.branches, inputs)):
            y = b(x, size)
            if self.fusion == "fast_normalized":
                y = w[i] * y
            out = y if out is None else out + y
        assert out is not None, "a fusion needs at least one input"
        if any(out is x for x in inputs):  # one identity branch: the in-place act must not touch the source
            out = out.clone()
        return self.act(out)
