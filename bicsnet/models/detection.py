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
  Mask R-CNN, for both models.
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
from torchvision.models.detection.retinanet import RetinaNetClassificationHead, RetinaNetHead
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
    "FocalLossClassificationHead",
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
    (Section V-A1), with the backbone's momentum / eps, one layer shared by all
    levels as torchvision's heads share their convs; ``gn``: batch-size
    independent (torchvision's RetinaNet v2); ``none``: torchvision's v1 head.
    """
    if kind not in ("gn", "bn", "none"):
        raise ConfigError(f"head_norm {kind!r} is not one of bn, gn, none")
    return {"gn": _group_norm, "bn": _batch_norm, "none": None}[kind]


class FocalLossClassificationHead(RetinaNetClassificationHead):
    """RetinaNet's class subnet with settable focal loss and 1..K labels."""

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        focal_alpha: float = 0.25,
        focal_gamma: float = 1.5,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__(in_channels, num_anchors, num_classes, norm_layer=norm_layer)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

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
            # Box and class subnets: 4 conv layers each (torchvision's), focal loss ours.
            norm = head_norm_layer(head_norm)
            head = RetinaNetHead(backbone.out_channels, num_anchors, num_classes, norm_layer=norm)
            head.classification_head = FocalLossClassificationHead(
                backbone.out_channels, num_anchors, num_classes, focal_alpha, focal_gamma, norm
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
