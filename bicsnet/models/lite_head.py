"""EfficientDet-style separable box and class subnets of the lite detectors (Section V-E).

The convolutions are depthwise-separable and shared by every pyramid level,
with a norm layer per level (statistics differ per level), as EfficientDet's
box/class nets. Focal loss and labels 1..K come from
:class:`~bicsnet.models.detection.FocalLossClassificationHead`.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.retinanet import RetinaNetHead, RetinaNetRegressionHead

from ..arch.layers import make_act
from .detection import FocalLossClassificationHead, head_norm_layer, pyramid_strides, retinanet_anchor_generator

__all__ = [
    "SeparableConv",
    "variance_scaling_",
    "SeparableSubnet",
    "SeparableClassificationHead",
    "SeparableRegressionHead",
    "SeparableRetinaNetHead",
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


def _head_norm(kind: str, channels: int) -> nn.Module:
    layer = head_norm_layer(kind)  # the same bn / gn / none choice as the RetinaNet subnets
    return nn.Identity() if layer is None else layer(channels)


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1 (EfficientDet's SeparableConv2d)."""

    def __init__(self, in_ch: int, out_ch: int, bias: bool = False) -> None:
        super().__init__(
            nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False),
            nn.Conv2d(in_ch, out_ch, 1, bias=bias),
        )


class SeparableSubnet(nn.Module):
    """``num_layers`` x (separable conv, norm, act) shared across levels, then a separable predictor.

    Level ``level``'s ``(N, in_ch, H, W)`` becomes ``(N, out_ch, H, W)``; the
    predictor's bias starts at ``prior_bias``. As EfficientDet's box/class
    nets: the convolutions are shared by every level, each level has its own
    norm layers (statistics differ per level).
    """

    def __init__(
        self, in_ch: int, channels: int, num_layers: int, out_ch: int, num_levels: int, norm: str, act: str, prior_bias: float
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList([SeparableConv(in_ch if i == 0 else channels, channels) for i in range(num_layers)])
        self.norms = nn.ModuleList(
            [nn.ModuleList([_head_norm(norm, channels) for _ in range(num_layers)]) for _ in range(num_levels)]
        )
        self.act = make_act(act)
        self.predictor = SeparableConv(channels if num_layers else in_ch, out_ch, bias=True)
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

    def forward(self, x: Tensor, level: int) -> Tensor:
        norms = self.norms[level]
        for conv, norm in zip(self.convs, norms):
            x = self.act(norm(conv(x)))
        return self.predictor(x)

    def forward_pyramid(self, features: list[Tensor], per_anchor: int) -> Tensor:
        """All levels (finest first): ``(N, sum of H * W * A, per_anchor)``, torchvision's layout."""
        return torch.cat([_flatten(self(f, level), per_anchor) for level, f in enumerate(features)], dim=1)


def _flatten(out: Tensor, per_anchor: int) -> Tensor:
    # (N, A * K, H, W) -> (N, HWA, K), torchvision's layout.
    n, _, h, w = out.shape
    return out.view(n, -1, per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, per_anchor)


class SeparableClassificationHead(FocalLossClassificationHead):
    """Class subnet with separable convs; focal loss (settable alpha/gamma) and 1..K labels as the base.

    ``subnet`` predicts ``num_anchors * num_classes`` logits per position;
    :meth:`forward` returns ``(N, HWA, num_classes)`` over all levels.
    """

    def __init__(
        self, subnet: SeparableSubnet, num_anchors: int, num_classes: int, focal_alpha: float = 0.25,
        focal_gamma: float = 1.5,
    ) -> None:  # fmt: skip
        nn.Module.__init__(self)  # the base's 256-wide 3x3 convs are not built
        self.subnet = subnet
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.BETWEEN_THRESHOLDS = det_utils.Matcher.BETWEEN_THRESHOLDS

    def forward(self, x: list[Tensor]) -> Tensor:
        return self.subnet.forward_pyramid(x, self.num_classes)


class SeparableRegressionHead(RetinaNetRegressionHead):
    """Box subnet with separable convs; torchvision's L1 box loss and coder.

    ``subnet`` predicts ``num_anchors * 4`` box deltas per position;
    :meth:`forward` returns ``(N, HWA, 4)`` over all levels.
    """

    def __init__(self, subnet: SeparableSubnet) -> None:
        nn.Module.__init__(self)
        self.subnet = subnet
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self._loss_type = "l1"

    def forward(self, x: list[Tensor]) -> Tensor:
        return self.subnet.forward_pyramid(x, 4)


class SeparableRetinaNetHead(RetinaNetHead):
    """EfficientDet-style box and class subnets for :class:`~bicsnet.models.detection.BiCSNetRetinaNet`.

    Holds the two subnets (built by :func:`build_lite_head`); forward and loss
    are torchvision's :class:`RetinaNetHead`'s: ``{"cls_logits": (N, HWA, K),
    "bbox_regression": (N, HWA, 4)}``.
    """

    def __init__(
        self, classification_head: SeparableClassificationHead, regression_head: SeparableRegressionHead
    ) -> None:
        nn.Module.__init__(self)  # the base's 256-wide subnets are not built
        self.classification_head = classification_head
        self.regression_head = regression_head


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
) -> SeparableRetinaNetHead:
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
    return SeparableRetinaNetHead(
        SeparableClassificationHead(cls_subnet, num_anchors, num_classes, focal_alpha, focal_gamma),
        SeparableRegressionHead(subnet(4, 0.0)),
    )
