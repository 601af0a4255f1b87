"""Detectors on BiCSNet: RetinaNet without FPN and Mask R-CNN (Section IV-A).

Both are torchvision's models with BiCSNet's P3..P7 fed straight into the
heads. What differs from torchvision's defaults is done by subclassing or by
passing objects in:

* focal loss alpha / gamma are settable (torchvision hard-codes gamma = 2;
  the paper uses 1.5);
* anchors: 3 scales x 3 aspect ratios per level with base size
  ``anchor_scale x stride`` (anchor scale 3, or 4 for BiCSNet-140, V-A1);
* preprocessing is the config's: the long side is resized to ``img_size``
  only if it differs (training crops already have it), then padded to a
  multiple of 128 so P7 exists - no hidden 800-1333 resize;
* crowd boxes (``target["crowd_boxes"]``) are ignored regions: anchors
  mostly inside one are neither positive nor negative;
* labels are contiguous 1..K with 0 = background, as in torchvision's
  Mask R-CNN, for both models;
* RetinaNet's box and class subnets share their convolutions across levels
  but keep one norm layer per level (:class:`LevelNormSubnet`), as the TF
  RetinaNet head of SpineNet's recipe and EfficientDet do; torchvision's
  share one, whose BatchNorm statistics then mix the levels.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.retinanet import RetinaNetClassificationHead, RetinaNetHead, RetinaNetRegressionHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, box_iou, sigmoid_focal_loss
from torchvision.ops import boxes as box_ops

from ..arch.backbone import BiCSNet
from ..errors import ConfigError
from ..arch.layers import make_norm
from .heads import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "DetectionTransform",
    "LevelNormSubnet",
    "RetinaNetSubnet",
    "FocalLossClassificationHead",
    "SubnetRegressionHead",
    "SubnetRetinaNetHead",
    "retinanet_head",
    "level_norms",
    "BiCSNetRetinaNet",
    "BiCSNetMaskRCNN",
    "retinanet_anchor_generator",
    "pyramid_strides",
]


class DetectionTransform(GeneralizedRCNNTransform):
    """Normalise, resize the long side to ``img_size`` (only if needed), pad to 128."""

    def __init__(self, img_size: int, size_divisible: int = 128) -> None:
        super().__init__(img_size, img_size, list(IMAGENET_MEAN), list(IMAGENET_STD), size_divisible=size_divisible)
        self.img_size = img_size

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor] | None]:
        # Training crops are already img_size x img_size: skip a no-op interpolation.
        if max(image.shape[-2:]) == self.img_size:
            return image, target
        h, w = image.shape[-2:]
        if min(h, w) * self.img_size / max(h, w) >= 1:
            return super().resize(image, target)
        # Extreme aspect ratio (e.g. 2000 x 2 px): the short side would round to 0
        # pixels and fail inside torch; keep it at least 1 pixel.
        scale = self.img_size / max(h, w)
        size = [max(1, int(h * scale)), max(1, int(w * scale))]
        image = nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        if target is not None:
            from torchvision.models.detection.transform import resize_boxes

            target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
            if "masks" in target:
                masks = target["masks"][:, None].float()
                target["masks"] = nn.functional.interpolate(masks, size=size)[:, 0].byte()
        return image, target


def pyramid_strides(backbone: nn.Module) -> list[int]:
    """Strides of ``backbone``'s outputs in ``out_features`` order (P3..P7: 8..128)."""
    return [backbone.strides[p] for p in backbone.out_features]


def retinanet_anchor_generator(strides: list[int], anchor_scale: float = 3.0) -> AnchorGenerator:
    """3 octave scales x 3 aspect ratios per level, base size anchor_scale x stride."""
    sizes = tuple(tuple(anchor_scale * s * 2 ** (i / 3) for i in range(3)) for s in strides)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))


def _group_norm(channels: int) -> nn.GroupNorm:
    # 32 groups at the usual 256 channels; at least 4 channels per group for
    # narrow heads, so a 1x1 P7 map still has more than one value per group.
    groups = math.gcd(32, max(1, channels // 4))
    return nn.GroupNorm(groups, channels)


def _batch_norm(channels: int) -> nn.Module:
    return make_norm("bn", channels)


def head_norm_layer(kind: str) -> Callable[[int], nn.Module] | None:
    """Norm for the detection heads.

    ``bn`` (default): the paper's "batch normalization after every convolution"
    (Section V-A1), with the backbone's momentum / eps; ``gn``: batch-size
    independent (torchvision's RetinaNet v2); ``none``: torchvision's v1 head.
    The RetinaNet subnets give every pyramid level its own norm layers
    (:class:`LevelNormSubnet`); Mask R-CNN's RoI heads have one set.
    """
    if kind not in ("gn", "bn", "none"):
        raise ConfigError(f"head_norm {kind!r} is not one of bn, gn, none")
    return {"gn": _group_norm, "bn": _batch_norm, "none": None}[kind]


def level_norms(kind: str, channels: int, num_layers: int, num_levels: int) -> nn.ModuleList:
    """``num_levels`` lists of ``num_layers`` norm layers (``head_norm_layer(kind)``; identities for ``none``)."""
    layer = head_norm_layer(kind)
    return nn.ModuleList(
        [nn.ModuleList([nn.Identity() if layer is None else layer(channels) for _ in range(num_layers)]) for _ in range(num_levels)]
    )


class LevelNormSubnet(nn.Module):
    """A box or class subnet: ``num_layers`` x (conv, norm, act) with the convolutions shared by every
    pyramid level and one set of norm layers per level, then a predictor convolution.

    Why a norm per level: in training a BatchNorm normalises each level's map with that map's
    own batch statistics (the subnets run once per level), so one shared layer's running
    statistics would average five levels' statistics into one set that no level was trained
    with, and evaluation would differ from training. The reference RetinaNet head of SpineNet's
    training (strategy A, which the paper follows: TF Model Garden's ``RetinaNetHead``, norms
    ``classnet-conv-norm_{level}_{i}``) and EfficientDet's box/class nets keep one norm per level.

    Args:
        convs: the shared convolutions, each a ``nn.Sequential`` whose last layer is the
            convolution the norm follows (a dense 3x3 conv, or depthwise + pointwise).
        norms: ``norms[level][i]`` follows ``convs[i]`` at ``level`` (:func:`level_norms`).
        act: the activation after each norm.
        predictor: the last convolution (``A * K`` logits or ``A * 4`` box deltas per position).

    Shapes: :meth:`forward` maps level ``level``'s ``(N, C, H, W)`` to ``(N, out, H, W)``;
    :meth:`forward_pyramid` all levels (finest first) to ``(N, sum of H * W * A, per_anchor)``,
    torchvision's layout.
    """

    def __init__(self, convs: list[nn.Sequential], norms: nn.ModuleList, act: nn.Module, predictor: nn.Module) -> None:
        super().__init__()
        if any(len(level) != len(convs) for level in norms):
            raise ConfigError(f"every level needs {len(convs)} norm layers, got {[len(level) for level in norms]}")
        self.convs = nn.ModuleList(convs)
        self.norms = norms
        self.act = act
        self.predictor = predictor

    @property
    def num_levels(self) -> int:
        return len(self.norms)

    def forward(self, x: Tensor, level: int) -> Tensor:
        for conv, norm in zip(self.convs, self.norms[level]):
            x = self.act(norm(conv(x)))
        return self.predictor(x)

    def forward_pyramid(self, features: list[Tensor], per_anchor: int) -> Tensor:
        """All levels (finest first): ``(N, sum of H * W * A, per_anchor)``, torchvision's layout."""
        if len(features) != self.num_levels:
            raise ValueError(f"the subnet has norms for {self.num_levels} levels, got {len(features)} feature maps")
        return torch.cat([_flatten_anchors(self(f, level), per_anchor) for level, f in enumerate(features)], dim=1)


def _flatten_anchors(out: Tensor, per_anchor: int) -> Tensor:
    # (N, A * K, H, W) -> (N, HWA, K), torchvision's layout.
    n, _, h, w = out.shape
    return out.view(n, -1, per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, per_anchor)


class RetinaNetSubnet(LevelNormSubnet):
    """RetinaNet's box or class subnet (Lin et al. 2017): ``num_layers`` x 3x3 ``channels``-wide
    convolutions + norm + ReLU, then a 3x3 predictor to ``out_channels``.

    Initialised as torchvision's heads: weights N(0, 0.01), biases 0, the predictor's bias
    ``prior_bias`` (the class subnet's starts the logits at probability 0.01). The
    convolutions have a bias only without a norm (``head_norm="none"``, torchvision's v1 head).
    """

    def __init__(
        self, in_channels: int, out_channels: int, num_levels: int, head_norm: str = "bn", num_layers: int = 4,
        prior_bias: float = 0.0,
    ) -> None:  # fmt: skip
        bias = head_norm == "none"
        convs = [nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=bias)) for _ in range(num_layers)]
        predictor = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        super().__init__(convs, level_norms(head_norm, in_channels, num_layers, num_levels), nn.ReLU(inplace=True), predictor)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(predictor.bias, prior_bias)

    def upgrade_torchvision_tensors(self, prefix: str, predictor: str, tensors: dict[str, Tensor]) -> bool:
        """Rename, in place, a torchvision head's tensors (one norm shared by all levels) to this subnet's.

        ``{prefix}conv.{i}.0.*`` (conv), ``{prefix}conv.{i}.1.*`` (norm) and
        ``{prefix}{predictor}.*`` become ``{prefix}subnet.convs.{i}.0.*``, every
        level's ``{prefix}subnet.norms.{level}.{i}.*`` (the shared norm copied: the
        same outputs in evaluation) and ``{prefix}subnet.predictor.*``. Files written
        before bicsnet kept a norm per level have these names. Returns whether any was renamed.
        """
        old = [k for k in tensors if k.startswith(prefix + "conv.") or k.startswith(f"{prefix}{predictor}.")]
        if not old or any(k.startswith(prefix + "subnet.") for k in tensors):
            return False
        for key in old:
            value = tensors.pop(key)
            rest = key[len(prefix) :]
            if rest.startswith(predictor + "."):
                tensors[f"{prefix}subnet.predictor.{rest[len(predictor) + 1:]}"] = value
                continue
            _, i, part, *name = rest.split(".")  # conv.{i}.{0 conv | 1 norm}.{tensor}
            if part == "0":
                tensors[f"{prefix}subnet.convs.{i}.0.{'.'.join(name)}"] = value
            else:
                for level in range(self.num_levels):
                    tensors[f"{prefix}subnet.norms.{level}.{i}.{'.'.join(name)}"] = value.clone()
        return True


class FocalLossClassificationHead(RetinaNetClassificationHead):
    """RetinaNet's class subnet (any :class:`LevelNormSubnet`) with settable focal loss and 1..K labels.

    ``subnet`` predicts ``num_anchors * num_classes`` logits per position;
    :meth:`forward` returns ``(N, HWA, num_classes)`` over all levels, torchvision's layout.
    """

    def __init__(
        self, subnet: LevelNormSubnet, num_anchors: int, num_classes: int, focal_alpha: float = 0.25,
        focal_gamma: float = 1.5,
    ) -> None:  # fmt: skip
        nn.Module.__init__(self)  # torchvision's own convolutions are not built: ``subnet`` is the subnet
        self.subnet = subnet
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.BETWEEN_THRESHOLDS = det_utils.Matcher.BETWEEN_THRESHOLDS

    def forward(self, x: list[Tensor]) -> Tensor:
        return self.subnet.forward_pyramid(x, self.num_classes)

    def upgrade_legacy_tensors(self, prefix: str, tensors: dict[str, Tensor]) -> bool:
        """torchvision's names (``conv.*``, ``cls_logits.*``) to the subnet's (:meth:`RetinaNetSubnet.upgrade_torchvision_tensors`)."""
        return isinstance(self.subnet, RetinaNetSubnet) and self.subnet.upgrade_torchvision_tensors(prefix, "cls_logits", tensors)

    def compute_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], matched_idxs: list[Tensor]) -> Tensor:
        losses = []
        for tgt, logits, matched in zip(targets, head_outputs["cls_logits"], matched_idxs):
            fg = matched >= 0
            num_fg = int(fg.sum())
            gt = torch.zeros_like(logits)
            # Labels are 1..K (0 = background); logits index 0..K-1.
            gt[fg, tgt["labels"][matched[fg]] - 1] = 1.0
            valid = matched != self.BETWEEN_THRESHOLDS
            loss = sigmoid_focal_loss(logits[valid], gt[valid], alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum")
            losses.append(loss / max(1, num_fg))
        return sum(losses) / len(targets)


class SubnetRegressionHead(RetinaNetRegressionHead):
    """RetinaNet's box subnet (any :class:`LevelNormSubnet`); torchvision's L1 box loss and coder.

    ``subnet`` predicts ``num_anchors * 4`` box deltas per position;
    :meth:`forward` returns ``(N, HWA, 4)`` over all levels.
    """

    def __init__(self, subnet: LevelNormSubnet) -> None:
        nn.Module.__init__(self)  # torchvision's own convolutions are not built
        self.subnet = subnet
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self._loss_type = "l1"

    def forward(self, x: list[Tensor]) -> Tensor:
        return self.subnet.forward_pyramid(x, 4)

    def upgrade_legacy_tensors(self, prefix: str, tensors: dict[str, Tensor]) -> bool:
        """torchvision's names (``conv.*``, ``bbox_reg.*``) to the subnet's."""
        return isinstance(self.subnet, RetinaNetSubnet) and self.subnet.upgrade_torchvision_tensors(prefix, "bbox_reg", tensors)


class SubnetRetinaNetHead(RetinaNetHead):
    """The box and class subnets of :class:`BiCSNetRetinaNet`; forward and loss are torchvision's
    :class:`RetinaNetHead`'s: ``{"cls_logits": (N, HWA, K), "bbox_regression": (N, HWA, 4)}``."""

    def __init__(self, classification_head: FocalLossClassificationHead, regression_head: SubnetRegressionHead) -> None:
        nn.Module.__init__(self)  # torchvision's 256-wide subnets are not built
        self.classification_head = classification_head
        self.regression_head = regression_head


def retinanet_head(
    in_channels: int, num_anchors: int, num_classes: int, num_levels: int, head_norm: str = "bn",
    focal_alpha: float = 0.25, focal_gamma: float = 1.5,
) -> SubnetRetinaNetHead:  # fmt: skip
    """RetinaNet's head for ``num_levels`` levels of ``in_channels``: 4-conv box and class subnets with
    a norm per level (:class:`RetinaNetSubnet`), focal loss ``focal_alpha`` / ``focal_gamma``."""
    prior = -math.log((1 - 0.01) / 0.01)
    cls = RetinaNetSubnet(in_channels, num_anchors * num_classes, num_levels, head_norm, prior_bias=prior)
    box = RetinaNetSubnet(in_channels, num_anchors * 4, num_levels, head_norm)
    return SubnetRetinaNetHead(
        FocalLossClassificationHead(cls, num_anchors, num_classes, focal_alpha, focal_gamma), SubnetRegressionHead(box)
    )


class BiCSNetRetinaNet(RetinaNet):
    """RetinaNet whose box and class subnets read P3..P7 directly (no FPN)."""

    def __init__(
        self,
        backbone: BiCSNet,
        num_classes: int,
        img_size: int,
        anchor_scale: float = 3.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 1.5,
        head_norm: str = "bn",
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        topk_candidates: int = 1000,
        crowd_ioa_thresh: float = 0.5,
        head: RetinaNetHead | None = None,
    ) -> None:
        anchors = retinanet_anchor_generator(pyramid_strides(backbone), anchor_scale)
        num_anchors = anchors.num_anchors_per_location()[0]
        if head is None:
            # Box and class subnets: 4 conv layers each (torchvision's), a norm per level, focal loss ours.
            head = retinanet_head(
                backbone.out_channels, num_anchors, num_classes, len(backbone.out_features), head_norm, focal_alpha, focal_gamma
            )
        super().__init__(
            backbone,
            num_classes,
            anchor_generator=anchors,
            head=head,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            topk_candidates=topk_candidates,
        )
        self.transform = DetectionTransform(img_size, backbone.size_divisibility)
        self.num_classes = num_classes
        self.crowd_ioa_thresh = crowd_ioa_thresh

    def compute_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], anchors: list[Tensor]) -> dict[str, Tensor]:
        matched_idxs = []
        for anchors_i, tgt in zip(anchors, targets):
            if tgt["boxes"].numel() == 0:
                matched = torch.full((anchors_i.size(0),), -1, dtype=torch.int64, device=anchors_i.device)
            else:
                matched = self.proposal_matcher(box_iou(tgt["boxes"], anchors_i))
            crowd = tgt.get("crowd_boxes")
            if crowd is not None and crowd.numel():
                matched = self._ignore_crowd(matched, anchors_i, crowd.to(anchors_i))
            matched_idxs.append(matched)
        return self.head.compute_loss(targets, head_outputs, anchors, matched_idxs)

    def _ignore_crowd(self, matched: Tensor, anchors: Tensor, crowd: Tensor) -> Tensor:
        # Intersection over anchor area: an anchor mostly inside a crowd region
        # is not a negative, it is ignored (COCO's crowd semantics).
        lt = torch.max(anchors[:, None, :2], crowd[None, :, :2])
        rb = torch.min(anchors[:, None, 2:], crowd[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        ioa = inter / box_ops.box_area(anchors).clamp(min=1e-6)[:, None]
        ignore = (ioa.max(1).values >= self.crowd_ioa_thresh) & (matched < 0)
        return torch.where(ignore, torch.full_like(matched, self.proposal_matcher.BETWEEN_THRESHOLDS), matched)

    def postprocess_detections(self, head_outputs: Any, anchors: Any, image_shapes: Any) -> list[dict[str, Tensor]]:
        detections = super().postprocess_detections(head_outputs, anchors, image_shapes)
        for d in detections:
            d["labels"] = d["labels"] + 1
        return detections


class BiCSNetMaskRCNN(MaskRCNN):
    """Mask R-CNN on P3..P7 with 4conv1fc box head, 1000 test proposals (Table III)."""

    def __init__(
        self,
        backbone: BiCSNet,
        num_classes: int,
        img_size: int,
        anchor_scale: float = 4.0,
        rpn_post_nms_top_n_test: int = 1000,
        box_detections_per_img: int = 100,
        box_score_thresh: float = 0.05,
        head_norm: str = "bn",
    ) -> None:
        c = backbone.out_channels
        names = backbone.out_features
        strides = pyramid_strides(backbone)
        anchors = AnchorGenerator(tuple((anchor_scale * s,) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))
        norm = head_norm_layer(head_norm)
        super().__init__(
            backbone,
            num_classes=None,  # given by the predictors: K + background
            rpn_anchor_generator=anchors,
            rpn_head=RPNHead(c, anchors.num_anchors_per_location()[0], conv_depth=2),
            rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
            box_roi_pool=MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2),
            box_head=FastRCNNConvFCHead((c, 7, 7), [c] * 4, [1024], norm_layer=norm),
            box_predictor=FastRCNNPredictor(1024, num_classes + 1),
            box_detections_per_img=box_detections_per_img,
            box_score_thresh=box_score_thresh,
            mask_roi_pool=MultiScaleRoIAlign(names, output_size=14, sampling_ratio=2),
            mask_head=MaskRCNNHeads(c, [c] * 4, 1, norm_layer=norm),
            mask_predictor=MaskRCNNPredictor(c, c, num_classes + 1),
        )
        self.transform = DetectionTransform(img_size, backbone.size_divisibility)
        self.num_classes = num_classes
