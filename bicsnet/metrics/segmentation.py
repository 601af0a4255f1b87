"""Semantic segmentation metrics from a confusion matrix."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from bicsnet.metrics.confusion import ConfusionMatrix

__all__ = ["SegmentationMetric"]


class SegmentationMetric:
    """Accumulate a ``num_classes x num_classes`` pixel confusion matrix (rows = ground truth).

    Pixels whose target is ``ignore_index`` are skipped: a batch without a
    labelled pixel adds nothing. ``compute`` gives ``mIoU`` (mean over classes
    present in prediction or ground truth), ``pixel_acc``, ``per_class_iou``
    keyed by class name (``None`` for absent classes) and ``confusion_matrix``
    (:meth:`ConfusionMatrix.to_dict`: the pixel counts behind them); with no
    labelled pixel at all, ``mIoU`` and ``pixel_acc`` are 0, never NaN
    (``metrics.json`` stays valid JSON).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.matrix = ConfusionMatrix(num_classes, self.class_names, ignore_index=ignore_index)

    @property
    def confusion(self) -> torch.Tensor:
        """The pixel counts ``[K, K]`` (int64; rows = ground truth, columns = prediction)."""
        return self.matrix.counts

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.matrix.reset()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` are integer class maps of the same shape (e.g. ``[B, H, W]``).

        Raises:
            ValueError: shapes differ, or a label is outside ``[0, num_classes)`` (targets: other than ``ignore_index``).
        """
        self.matrix.update(pred, target)

    def all_reduce(self) -> None:
        """Sum the confusion matrix over processes (no-op without torch.distributed)."""
        self.matrix.all_reduce()

    def compute(self) -> dict[str, object]:
        """Return ``{"mIoU", "pixel_acc", "per_class_iou": {name: float | None}, "confusion_matrix"}``.

        ``mIoU`` and ``pixel_acc`` are fractions (0 when nothing was added);
        ``confusion_matrix`` is :meth:`ConfusionMatrix.to_dict` of the pixel counts.
        """
        cm = self.confusion.double().cpu()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        present = union > 0
        iou = torch.where(present, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        total = cm.sum()
        return {
            "mIoU": float(iou[present].mean()) if present.any() else 0.0,
            "pixel_acc": float(tp.sum() / total) if total > 0 else 0.0,
            "per_class_iou": {
                name: (float(v) if ok else None) for name, v, ok in zip(self.class_names, iou.tolist(), present.tolist())
            },
            "confusion_matrix": self.matrix.to_dict(),
        }
