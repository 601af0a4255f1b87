"""EfficientDet-style separable box and class subnets of the lite detectors (Section V-E).

The convolutions are depthwise-separable and shared by every pyramid level,
with a norm layer per level (statistics differ per level), as EfficientDet's
box/class nets. Focal loss and labels 1..K come from
:class:`~bicsnet.models.detection.FocalLossClassificationHead`.
"""
from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from ..arch.layers import make_act
from .detection import (
    FocalLossClassificationHead,
    LevelNormSubnet,
    SubnetRegressionHead,
    SubnetRetinaNetHead,
    level_norms,
    pyramid_strides,
    retinanet_anchor_generator,
)

__all__ = [
    "SeparableConv",
    "variance_scaling_",
    "SeparableSubnet",
    "build_lite_head",
]


def variance_scaling_(weight: Tensor) -> Tensor:
    """Fill ``weight`` in place from a normal truncated at 2 std, std ``1 / sqrt(fan_in)``.

    TensorFlow's ``VarianceScaling(scale=1, mode="fan_in", distribution="truncated_normal")``,
    which EfficientDet uses for both halves of its separable box/class convolutions. Why not
    RetinaNet's ``N(0, 0.01)``: a separable convolution is a product of two convolutions, so
    ``0.01 x 0.01`` starts the predictor (which has no norm layer after it) at a saddle where
    each half's gradient is scaled by the other's tiny weights, and the subnets do not train
    (BiCSNet-lite0 on strawberry: box loss flat for 35 epochs, no detection).
    """
    fan_in = weight.shape[1] * weight[0, 0].numel()  # input channels per group x kernel area
    # 0.8796 = std of a unit normal truncated at +-2: corrects the truncation's loss of variance.
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1 (EfficientDet's SeparableConv2d)."""

    def __init__(self, in_ch: int, out_ch: int, bias: bool = False) -> None:
        super().__init__(
            nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False),
            nn.Conv2d(in_ch, out_ch, 1, bias=bias),
        )


class SeparableSubnet(LevelNormSubnet):
    """``num_layers`` x (separable conv, norm, act) shared across levels, then a separable predictor.

    Level ``level``'s ``(N, in_ch, H, W)`` becomes ``(N, out_ch, H, W)``; the
    predictor's bias starts at ``prior_bias``. As EfficientDet's box/class
    nets: the convolutions are shared by every level, each level has its own
    norm layers (statistics differ per level; :class:`~bicsnet.models.detection.LevelNormSubnet`).
    """

    def __init__(
        self, in_ch: int, channels: int, num_layers: int, out_ch: int, num_levels: int, norm: str, act: str, prior_bias: float
    ) -> None:
        convs = [SeparableConv(in_ch if i == 0 else channels, channels) for i in range(num_layers)]
        predictor = SeparableConv(channels if num_layers else in_ch, out_ch, bias=True)
        super().__init__(convs, level_norms(norm, channels, num_layers, num_levels), make_act(act), predictor)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                variance_scaling_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # The predictor's pointwise half starts as RetinaNet's N(0, 0.01): the logits start at the
        # prior and the box deltas near 0, and with the depthwise half at full scale its
        # gradient is not small.
        nn.init.normal_(self.predictor[1].weight, std=0.01)
        nn.init.constant_(self.predictor[1].bias, prior_bias)


def build_lite_head(
    backbone: nn.Module,
    num_classes: int,
    *,
    channels: int,
    num_layers: int,
    anchor_scale: float = 3.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 1.5,
    head_norm: str = "bn",
    **_: Any,
) -> SubnetRetinaNetHead:
    """The separable head for ``backbone``; extra detector options are ignored (they are the detector's).

    Both subnets are ``num_layers`` x ``channels`` wide with a norm per pyramid
    level (``head_norm``) and the backbone's activation (swish if it has none).
    """
    strides = pyramid_strides(backbone)
    num_anchors = retinanet_anchor_generator(strides, anchor_scale).num_anchors_per_location()[0]
    act = getattr(getattr(backbone, "config", None), "activation", "swish")
    c, levels = backbone.out_channels, len(strides)

    def subnet(per_anchor: int, prior_bias: float) -> SeparableSubnet:
        return SeparableSubnet(c, channels, num_layers, num_anchors * per_anchor, levels, head_norm, act, prior_bias)

    # The class logits' bias starts at prior probability 0.01 (RetinaNet's), the box deltas' at 0.
    cls_subnet = subnet(num_classes, -math.log((1 - 0.01) / 0.01))
    return SubnetRetinaNetHead(
        FocalLossClassificationHead(cls_subnet, num_anchors, num_classes, focal_alpha, focal_gamma),
        SubnetRegressionHead(subnet(4, 0.0)),
    )
