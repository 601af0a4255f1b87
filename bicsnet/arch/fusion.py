"""Spatial Fusion Module (Section III-C, Fig. 4) and the fusion of its branches.

Every input edge of a basic block T (its main input and its cross-scale
pathways: Gap-Connection eq. (4), Skip-Connection eq. (5), Long-Range
Gap-Connection eq. (6)) gets one resampling branch that

1. squeezes the source to ``gamma x`` its base width with a 1x1 conv (the
   feature multiplier of Table I),
2. applies a global-context step (global average pool -> 1x1 conv -> added
   back, as in DetectoRS [6]; no excitation/gating),
3. resizes to the block's level: nearest-neighbour up-sampling to the exact
   target size (the Up-Sampling Part's up(x), eq. (2)), or a 3x3 stride-2
   conv followed by 3x3 stride-2 max-pools for each further level (this
   squeeze + strided conv is the operator D of eqs. (1), (3), (4) and (6):
   Down-Sampling and End Down-Sampling Parts),
4. applies a second global-context step,
5. projects to the block's input width with a 1x1 conv + norm (no activation),

and the branches are summed (element-wise addition, eqs. (1)-(6)) and
activated. A branch's steps are chosen when it is built
(:class:`ResampleBranch`); its ``forward`` is one fixed sequence.

Switches: :class:`PlainResampleBranch` is Table X's "- SFM" ablation
(``spatial_fusion=False``): a plain 1x1 projection with max-pool / nearest
resizing, no squeeze and no global context. The lite models (Section V-E)
drop the squeeze (``squeeze=False``), down-sample by space-to-depth and a
1x1 conv (``down="space_to_depth"``) and fuse with EfficientDet's weighted sum
(``fusion="fast_normalized"``).

Shapes: a branch maps ``(N, C_src, H_src, W_src)`` to ``(N, C_target, h, w)``
with ``(h, w) = (ceil(H / 2^l), ceil(W / 2^l))`` for the input image's
``H, W`` and the target level ``l``; :class:`SpatialFusionModule` takes one
tensor per branch and returns that shape. Unknown ``down`` or ``fusion``
values are a :class:`~bicsnet.errors.ConfigError`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ..errors import ConfigError
from ..fused_ops import OneDNNMaxPool2d
from .layers import ConvNormAct, make_act

__all__ = [
    "DOWN_SAMPLINGS",
    "FUSIONS",
    "GlobalContext",
    "SpaceToDepth",
    "ResizeTo",
    "KeepSize",
    "BranchBase",
    "ResampleBranch",
    "PlainResampleBranch",
    "SpatialFusionModule",
    "resize_to",
]

#: Learned down-sampling steps of a branch (the first of its stride-2 steps).
DOWN_SAMPLINGS = ("conv", "space_to_depth")
#: How a block fuses its branches.
FUSIONS = ("sum", "fast_normalized")


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


class SpaceToDepth(nn.PixelUnshuffle):
    """2x2 space-to-depth, ``(N, C, H, W) -> (N, 4C, ceil(H/2), ceil(W/2))``.

    Odd sizes are zero-padded at the bottom / right first, so the output has
    the ``ceil`` size that every other down-sampling of the network produces.
    """

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            x = F.pad(x, (0, w % 2, 0, h % 2))
        return super().forward(x)


class ResizeTo(nn.Module):
    """Nearest-neighbour resize to the target level's size (:func:`resize_to`)."""

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return resize_to(x, size)


class KeepSize(nn.Module):
    """The resize step of a branch that does not go to a finer level: a no-op."""

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return x


def _down_layers(channels: int, steps: int, down: str, norm: str, act: str) -> list[nn.Module]:
    """Operator D for ``steps`` levels: one learned stride-2 step, then 3x3/2 max-pools."""
    if down not in DOWN_SAMPLINGS:
        raise ConfigError(f"down {down!r} is not one of {', '.join(DOWN_SAMPLINGS)}")
    if not steps:
        return []
    if down == "conv":
        first: list[nn.Module] = [ConvNormAct(channels, channels, 3, stride=2, norm=norm, act=act)]
    else:
        # Lite models (Section V-E, following [64]): space-to-depth then a
        # stride-2 conv, i.e. a 2x2 pixel-unshuffle and a 1x1 mixing conv.
        first = [SpaceToDepth(), ConvNormAct(channels * 4, channels, 1, norm=norm, act=act)]
    return first + [OneDNNMaxPool2d(3, 2, 1) for _ in range(steps - 1)]


class BranchBase(nn.Module):
    """A branch from a source level to a target level; subclasses fix its steps at build time.

    ``resize`` is chosen here: a nearest up-sampling to the target size when
    the target is finer, else a no-op (down-sampling produces the target size
    by itself: every stride-2 step gives ``ceil(H / 2)``).
    """

    def __init__(self, in_level: int, out_level: int) -> None:
        super().__init__()
        self.in_level, self.out_level = in_level, out_level
        self.resize: nn.Module = ResizeTo() if out_level < in_level else KeepSize()

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class ResampleBranch(BranchBase):
    """One Spatial Fusion Module branch (Section III-C, Fig. 4).

    Source ``(N, in_channels, H_in, W_in)`` at ``in_level`` ->
    ``(N, out_channels, *size)`` at ``out_level``, where ``size`` is the
    target level's ``ceil(H / 2^l), ceil(W / 2^l)``. ``forward`` is one fixed
    sequence: ``squeeze`` (1x1 conv to the squeezed width), ``gc_pre``
    (global context), ``down`` (operator D; empty when the target is not
    coarser), ``resize`` (nearest up-sampling, or a no-op), ``gc_post``,
    ``project`` (1x1 conv + norm to the target width). Steps switched off are
    identities, decided here rather than tested on every call.

    ``squeeze=False`` (lite) keeps the source's width through the branch and
    ``mid_channels`` does not apply; with ``squeeze`` the width is
    ``mid_channels`` or else ``gamma x in_filters``.

    Raises:
        ConfigError: unknown ``down``.
    """

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
        global_context: bool = True,
        squeeze: bool = True,
        down: str = "conv",
        mid_channels: int | None = None,
    ) -> None:
        super().__init__(in_level, out_level)
        mid = (mid_channels or max(1, int(in_filters * sfm_ratio))) if squeeze else in_channels
        # Submodule names and creation order are the checkpoint format and the
        # seeded initialisation: keep both.
        self.squeeze: nn.Module = ConvNormAct(in_channels, mid, 1, norm=norm, act=act) if squeeze else nn.Identity()
        self.gc_pre: nn.Module = GlobalContext(mid) if global_context else nn.Identity()
        self.down = nn.Sequential(*_down_layers(mid, max(0, out_level - in_level), down, norm, act))
        self.gc_post: nn.Module = GlobalContext(mid) if global_context else nn.Identity()
        # Without the squeeze a same-width branch needs no projection (identity edge).
        self.project: nn.Module = (
            ConvNormAct(mid, out_channels, 1, norm=norm, act=None)
            if (mid != out_channels or squeeze)
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.project(self.gc_post(self.resize(self.down(self.gc_pre(self.squeeze(x))), size)))


class PlainResampleBranch(BranchBase):
    """Table X's "- SFM" ablation: 3x3/2 max-pools down, 1x1 conv + norm projection, nearest up.

    ``forward`` pools before projecting and up-samples after (the cheaper
    order); no squeeze and no global context.
    """

    def __init__(self, in_channels: int, in_level: int, out_channels: int, out_level: int, norm: str = "bn") -> None:
        super().__init__(in_level, out_level)
        self.down = nn.Sequential(*[OneDNNMaxPool2d(3, 2, 1) for _ in range(max(0, out_level - in_level))])
        self.project: nn.Module = (
            ConvNormAct(in_channels, out_channels, 1, norm=norm, act=None)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.resize(self.project(self.down(x)), size)


class SpatialFusionModule(nn.Module):
    """Resample every input edge of a block to its level and width, then fuse and activate.

    ``fusion="sum"`` is the paper's element-wise addition; ``"fast_normalized"``
    is EfficientDet's sum_i relu(w_i) x_i / (eps + sum_j relu(w_j)) with one
    learned weight per branch (``weights``).

    Raises:
        ConfigError: unknown ``fusion``.
    """

    def __init__(self, branches: Sequence[BranchBase], act: str = "relu", fusion: str = "sum") -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"fusion {fusion!r} is not one of {', '.join(FUSIONS)}")
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
