"""Basic blocks T of eqs. (1)-(3), and the registry the backbone builds them from.

Section III-D: "we adopt the building blocks in ResNet-50 as our basic blocks"
and replace some bottlenecks by residual (two 3x3 conv) blocks. The lite
models of Section V-E replace every block by an MBConv (inverted bottleneck).
A block group repeats a block ``d`` times (Table I's depth repeat); only the
first block may change width or stride (1x1 projection shortcut), as in ResNet,
SpineNet and EfficientNet.

Block types are registered by name (timm ``byobnet``'s ``create_block``
pattern), so a topology row's ``block`` or the config's ``block`` is data:

==============  ===========  =================================================
name            out width    block
==============  ===========  =================================================
``bottleneck``  4 x filters  1x1 reduce, 3x3, 1x1 expand (ResNet-50)
``residual``    filters      two 3x3 convs (ResNet-34)
``mbconv``      filters      1x1 expand, kxk depthwise, SE, 1x1 project
==============  ===========  =================================================

Every builder is called as ``create_block(name, in_ch, filters, repeats,
stride, norm, act, drop_path, expand_ratio=, kernel_size=, se_ratio=)`` and
returns an ``nn.Sequential`` with ``in_channels`` / ``out_channels`` that maps
``(N, in_ch, H, W)`` to ``(N, out_channels, ceil(H / stride), ceil(W / stride))``.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
from torch import nn

from ..errors import ConfigError
from .layers import ConvNormAct, DropPath, make_act

__all__ = [
    "BLOCK_EXPANSION",
    "BlockGroupBuilder",
    "ResidualBlock",
    "BottleneckBlock",
    "BlockGroup",
    "SqueezeExcite",
    "MBConv",
    "MBConvGroup",
    "make_divisible",
    "block_out_channels",
    "register_block",
    "create_block",
    "list_blocks",
]


class BlockGroupBuilder(Protocol):
    """The one call signature of every registered block type.

    ``expand_ratio``, ``kernel_size`` and ``se_ratio`` are the MBConv's; the
    ResNet blocks have fixed 3x3 kernels, no expansion and no SE, and
    :meth:`bicsnet.arch.backbone.BiCSNetConfig.validate` refuses those options
    for them rather than letting them be ignored.
    """

    def __call__(
        self,
        in_ch: int,
        filters: int,
        repeats: int,
        stride: int,
        norm: str,
        act: str,
        drop_path: float,
        *,
        expand_ratio: int,
        kernel_size: int,
        se_ratio: float,
    ) -> nn.Module: ...


#: Output width of a block relative to its ``filters`` (ResNet convention),
#: filled by :func:`register_block`.
BLOCK_EXPANSION: dict[str, int] = {}
_BUILDERS: dict[str, BlockGroupBuilder] = {}


def register_block(name: str, expansion: int) -> Callable[[BlockGroupBuilder], BlockGroupBuilder]:
    """Decorator registering a block-group builder under ``name``.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def deco(fn: BlockGroupBuilder) -> BlockGroupBuilder:
        if name in _BUILDERS:
            raise ValueError(f"block {name!r} is already registered")
        _BUILDERS[name] = fn
        BLOCK_EXPANSION[name] = expansion
        return fn

    return deco


def list_blocks() -> list[str]:
    """Registered block types, sorted."""
    return sorted(_BUILDERS)


def _check(block: str) -> None:
    if block not in _BUILDERS:
        raise ConfigError(f"block {block!r} is not one of {', '.join(list_blocks())}")


def block_out_channels(block: str, filters: int) -> int:
    """Channels a block of type ``block`` with ``filters`` produces.

    Raises:
        ConfigError: unknown block type.
    """
    _check(block)
    return filters * BLOCK_EXPANSION[block]


def create_block(
    block: str,
    in_ch: int,
    filters: int,
    repeats: int = 1,
    stride: int = 1,
    norm: str = "bn",
    act: str = "relu",
    drop_path: float = 0.0,
    *,
    expand_ratio: int = 6,
    kernel_size: int = 3,
    se_ratio: float = 0.25,
) -> nn.Module:
    """A group of ``repeats`` blocks of type ``block``; the first takes ``in_ch`` and ``stride``.

    Raises:
        ConfigError: unknown block type.
    """
    _check(block)
    return _BUILDERS[block](
        in_ch, filters, repeats, stride, norm, act, drop_path,
        expand_ratio=expand_ratio, kernel_size=kernel_size, se_ratio=se_ratio,
    )  # fmt: skip


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a width to a multiple of ``divisor``, never below 90% of it (EfficientNet/MobileNet).

    ``divisor <= 1`` truncates (``max(1, int(value))``), BiCSNet's own width rule.
    """
    if divisor <= 1:
        return max(1, int(value))
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


# ---------------------------------------------------------------------------- ResNet blocks


def _zero_init_last_norm(norm: nn.Module) -> None:
    # Residual branches start as identity: stabilises from-scratch training
    # (Goyal et al. 2017), which the paper's recipes use.
    if isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm)) and norm.weight is not None:
        nn.init.zeros_(norm.weight)


class _ResidualBase(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, norm: str, act: str, drop_path: float, stride: int = 1) -> None:
        super().__init__()
        self.shortcut: nn.Module = (
            nn.Identity()
            if in_ch == out_ch and stride == 1
            else ConvNormAct(in_ch, out_ch, 1, stride=stride, norm=norm, act=None)
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
    """Two 3x3 convolutions (the first strided) with an identity or 1x1 projection shortcut."""

    def __init__(
        self, in_ch: int, filters: int, norm: str = "bn", act: str = "relu", drop_path: float = 0.0, stride: int = 1
    ) -> None:
        super().__init__(in_ch, filters, norm, act, drop_path, stride)
        self.conv1 = ConvNormAct(in_ch, filters, 3, stride=stride, norm=norm, act=act)
        self.conv2 = ConvNormAct(filters, filters, 3, norm=norm, act=None)
        _zero_init_last_norm(self.conv2[1])

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class BottleneckBlock(_ResidualBase):
    """1x1 reduce, 3x3 (strided, as ResNet v1.5), 1x1 expand (x4), identity or projection shortcut."""

    def __init__(
        self, in_ch: int, filters: int, norm: str = "bn", act: str = "relu", drop_path: float = 0.0, stride: int = 1
    ) -> None:
        super().__init__(in_ch, filters * 4, norm, act, drop_path, stride)
        self.conv1 = ConvNormAct(in_ch, filters, 1, norm=norm, act=act)
        self.conv2 = ConvNormAct(filters, filters, 3, stride=stride, norm=norm, act=act)
        self.conv3 = ConvNormAct(filters, filters * 4, 1, norm=norm, act=None)
        _zero_init_last_norm(self.conv3[1])

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


_RESNET_BLOCKS: dict[str, type[_ResidualBase]] = {"residual": ResidualBlock, "bottleneck": BottleneckBlock}


class _RepeatedBlocks(nn.Sequential):
    """``repeats`` blocks at one level: the first maps ``in_ch`` to ``out_ch`` at ``stride``, the rest keep ``out_ch``.

    ``make(in_ch, stride)`` builds one block; blocks are built first to last.
    """

    def __init__(
        self, make: Callable[[int, int], nn.Module], in_ch: int, out_ch: int, repeats: int, stride: int
    ) -> None:
        super().__init__(*[make(in_ch if i == 0 else out_ch, stride if i == 0 else 1) for i in range(repeats)])
        self.in_channels = in_ch
        self.out_channels = out_ch


class BlockGroup(_RepeatedBlocks):
    """``repeats`` ResNet blocks of one type at one level (Table I's depth repeat d)."""

    def __init__(
        self,
        block: str,
        in_ch: int,
        filters: int,
        repeats: int = 1,
        norm: str = "bn",
        act: str = "relu",
        drop_path: float = 0.0,
        stride: int = 1,
    ) -> None:
        cls = _RESNET_BLOCKS[block]

        def make(block_in: int, block_stride: int) -> nn.Module:
            return cls(block_in, filters, norm, act, drop_path, block_stride)

        super().__init__(make, in_ch, filters * BLOCK_EXPANSION[block], repeats, stride)


def _resnet_builder(block: str) -> BlockGroupBuilder:
    def build(
        in_ch: int, filters: int, repeats: int, stride: int, norm: str, act: str, drop_path: float, **_mbconv: Any
    ) -> nn.Module:
        # ``_mbconv`` (expand_ratio, kernel_size, se_ratio) has no meaning here;
        # the config refuses non-default values for ResNet blocks.
        return BlockGroup(block, in_ch, filters, repeats, norm, act, drop_path, stride)

    build.__name__ = f"{block}_group"
    return build


register_block("bottleneck", expansion=4)(_resnet_builder("bottleneck"))
register_block("residual", expansion=1)(_resnet_builder("residual"))


# ---------------------------------------------------------------------------- MBConv (lite models)


class SqueezeExcite(nn.Module):
    """EfficientNet's squeeze-excitation: mean -> 1x1 reduce -> act -> 1x1 expand -> sigmoid gate."""

    def __init__(self, channels: int, squeeze: int, act: str = "swish") -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = make_act(act)
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.expand(self.act(self.reduce(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(s)


class MBConv(nn.Module):
    """Inverted bottleneck (MobileNetV2 / EfficientNet MBConv).

    1x1 expand to ``expand_ratio x in`` + norm + act, ``kernel_size`` depthwise
    (stride ``stride``) + norm + act, optional squeeze-excitation (squeeze width
    ``se_ratio x in``, EfficientNet's), 1x1 project + norm, no activation. The
    shortcut is the identity when shape allows (stride 1, in == out), with
    stochastic depth on the branch; its last norm then starts at zero.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        expand_ratio: int = 6,
        kernel_size: int = 3,
        se_ratio: float = 0.0,
        norm: str = "bn",
        act: str = "swish",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        mid = in_ch * expand_ratio
        self.expand: nn.Module = ConvNormAct(in_ch, mid, 1, norm=norm, act=act) if expand_ratio != 1 else nn.Identity()
        self.depthwise = ConvNormAct(mid, mid, kernel_size, stride=stride, norm=norm, act=act, groups=mid)
        self.se: nn.Module = SqueezeExcite(mid, max(1, int(in_ch * se_ratio)), act) if se_ratio > 0 else nn.Identity()
        self.project = ConvNormAct(mid, out_ch, 1, norm=norm, act=None)
        self.use_residual = stride == 1 and in_ch == out_ch
        self.drop_path: nn.Module = DropPath(drop_path) if self.use_residual else nn.Identity()
        if self.use_residual:
            # As EfficientNet: the block starts as the identity. (Unlike the ResNet
            # blocks this also zeroes a FrozenBatchNorm2d's weight buffer; kept as
            # it was so lite models initialise exactly as before.)
            bn = self.project[1]
            if getattr(bn, "weight", None) is not None:
                nn.init.zeros_(bn.weight)
        self.in_channels, self.out_channels, self.stride = in_ch, out_ch, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + self.drop_path(y) if self.use_residual else y


class MBConvGroup(_RepeatedBlocks):
    """``repeats`` MBConv blocks at one level (the first may stride / change width), the ``mbconv`` builder.

    ``filters`` wide in and out of every block but the first (no expansion of
    the output); ``options`` (``expand_ratio``, ``kernel_size``, ``se_ratio``)
    are :class:`MBConv`'s.
    """

    def __init__(
        self, in_ch: int, filters: int, repeats: int, stride: int = 1, norm: str = "bn", act: str = "swish",
        drop_path: float = 0.0, **options: Any,
    ) -> None:  # fmt: skip
        def make(block_in: int, block_stride: int) -> nn.Module:
            return MBConv(block_in, filters, block_stride, norm=norm, act=act, drop_path=drop_path, **options)

        super().__init__(make, in_ch, filters, repeats, stride)


register_block("mbconv", expansion=1)(MBConvGroup)
