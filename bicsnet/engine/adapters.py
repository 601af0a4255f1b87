"""Engine adapters: how a batch becomes losses and a loader becomes metrics, per kind of task.

The task table (:mod:`bicsnet.tasks`) says which adapter each task uses.

The :class:`~bicsnet.engine.trainer.Trainer` is task-agnostic: it asks a task
for the loss terms of a batch (which it sums), for the number of images in a
batch, and for an evaluation over a loader.  Evaluation returns an
:class:`EvalResult` whose ``metrics`` are exactly the content of
``metrics.json`` and whose ``artifacts`` are extra JSON files (detection
writes ``detections.json``, the COCO-format results).

Under ``torchrun`` evaluation loaders must give each sample to exactly one
rank (``ResumableDistributedSampler(..., shuffle=False, pad=False)``):
detections are gathered with ``all_gather_object`` and scored on rank 0, then
the metrics are broadcast; metric accumulators are all-reduced.  Every rank
returns the same metrics; only rank 0's result carries artifacts.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from .distributed import all_gather_objects, broadcast_object, is_distributed, is_main_process

__all__ = [
    "EvalResult",
    "Task",
    "DetectionTask",
    "ClassificationTask",
    "SegmentationTask",
]

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Metrics (the ``metrics.json`` content) and extra JSON artifacts by file name."""

    metrics: dict[str, Any]
    artifacts: dict[str, Any] = field(default_factory=dict)


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


class Task:
    """Interface of a task adapter."""

    name = "task"

    def losses(self, model: nn.Module, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
        """Loss terms of one training batch (the trainer sums them)."""
        raise NotImplementedError

    def batch_size(self, batch: Any) -> int:
        """Number of images in a batch (for img/s)."""
        return len(batch[0])

    def evaluate(self, model: nn.Module, loader: Iterable, device: torch.device, dataset: Any) -> EvalResult:
        """Evaluate ``model`` (eval mode is set here) over ``loader``."""
        raise NotImplementedError


class DetectionTask(Task):
    """Box detection and instance segmentation with torchvision-style models.

    Args:
        with_masks: evaluate ``segm`` as well as ``bbox``.  ``None`` decides
            from the model outputs (masks present or not).
        coco_backend: the COCO evaluation backend
            (:data:`~bicsnet.metrics.coco.COCO_BACKENDS`; default pycocotools).
    """

    name = "detection"

    def __init__(self, with_masks: bool | None = None, coco_backend: str | None = None) -> None:
        from ..metrics.coco import DEFAULT_COCO_BACKEND

        self.with_masks = with_masks
        self.coco_backend = coco_backend or DEFAULT_COCO_BACKEND

    def losses(self, model: nn.Module, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
        images, targets = batch
        images = [img.to(device, non_blocking=True) for img in images]
        targets = [_to_device(t, device) for t in targets]
        return dict(model(images, targets))

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, loader: Iterable, device: torch.device, dataset: Any) -> EvalResult:
        """COCO ``bbox`` (and ``segm``) AP over ``dataset.coco``; artifacts ``detections.json`` and ``pr_curves.json``.

        No detection at all on a non-empty set is logged as a warning naming the
        model's score threshold (AP and AR are then 0, or -1 without ground truth).
        """
        from ..metrics.coco import PR_CURVES_ARTIFACT, coco_evaluation, detections_to_coco_results

        model.eval()
        results: list[dict[str, Any]] = []
        saw_masks = False
        seen = 0  # images evaluated on this rank
        for images, targets in loader:
            seen += len(images)
            outputs = model([img.to(device, non_blocking=True) for img in images])
            outputs = [{k: v.detach().cpu() for k, v in out.items()} for out in outputs]
            has_masks = any("masks" in out for out in outputs)
            saw_masks = saw_masks or has_masks
            with_masks = has_masks if self.with_masks is None else (self.with_masks and has_masks)
            image_ids = [int(t["image_id"]) for t in targets]
            # Converted per batch so masks are kept as compact RLE, not full-size tensors.
            results.extend(detections_to_coco_results(outputs, image_ids, dataset.cat_ids, with_masks=with_masks))
        gathered = all_gather_objects((results, saw_masks, seen))
        metrics: dict[str, Any] | None = None
        all_results: list[dict[str, Any]] = []
        curves: dict[str, Any] = {}
        if is_main_process():
            for part, _, _ in gathered:
                all_results.extend(part)
            any_masks = any(flag for _, flag, _ in gathered)
            # No image on any rank (empty validation set): nothing says the model lacks masks,
            # so with_masks=True still scores segm (every number -1, as pycocotools gives).
            no_images = not any(n for _, _, n in gathered)
            masks = any_masks if self.with_masks is None else (self.with_masks and (any_masks or no_images))
            iou_types = ("bbox", "segm") if masks else ("bbox",)
            # No results (on any rank) still goes through COCOeval: -1 where there is no ground truth.
            evaluation = coco_evaluation(dataset.coco, all_results, iou_types=iou_types, backend=self.coco_backend)
            metrics, curves = evaluation.metrics, evaluation.pr_curves
            images = sum(n for _, _, n in gathered)
            if images and not all_results:
                log.warning(
                    "no detections on %d image(s): no box scored at or above the model's score threshold (%s), so AP "
                    "and AR are 0 (-1 where there is no ground truth). A detector early in training scores below it: "
                    "train longer (more epochs or data)",
                    images, _score_threshold(model),
                )  # fmt: skip
        metrics = broadcast_object(metrics)
        artifacts = {"detections.json": all_results, PR_CURVES_ARTIFACT: curves} if is_main_process() else {}
        return EvalResult(metrics, artifacts)


def _score_threshold(model: nn.Module) -> float | str:
    """The score below which a torchvision-style detector drops boxes (RetinaNet's ``score_thresh``, R-CNN's ``roi_heads``')."""
    inner = getattr(model, "module", model)  # DistributedDataParallel wraps it
    for owner in (inner, getattr(inner, "roi_heads", None)):
        value = getattr(owner, "score_thresh", None)
        if isinstance(value, (int, float)):
            return float(value)
    return "unknown"


class ClassificationTask(Task):
    """Image classification: cross-entropy with optional label smoothing; top-1/top-5 accuracy."""

    name = "classification"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def losses(self, model: nn.Module, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits = model(images.to(device, non_blocking=True))
        loss = F.cross_entropy(logits.float(), labels.to(device), label_smoothing=self.label_smoothing)
        return {"loss_ce": loss}

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, loader: Iterable, device: torch.device, dataset: Any) -> EvalResult:
        """``{"top1", "top5", "confusion_matrix"}`` over the loader (class names: ``dataset.classes``)."""
        from ..metrics.classification import TopKAccuracy
        from ..metrics.confusion import ConfusionMatrix

        model.eval()
        metric = TopKAccuracy(ks=(1, 5))
        # Without a class list the matrix takes the logits' width (ConfusionMatrix agrees on it across ranks).
        confusion = ConfusionMatrix(class_names=getattr(dataset, "classes", None))
        for images, labels in loader:
            logits = model(images.to(device, non_blocking=True)).float().cpu()
            metric.update(logits, labels.cpu())
            confusion.update(logits.argmax(1), labels.cpu(), num_classes=logits.shape[1])
        if is_distributed():
            metric.all_reduce()
            confusion.all_reduce()
        return EvalResult({**metric.compute(), "confusion_matrix": confusion.to_dict()})


class SegmentationTask(Task):
    """Semantic segmentation: pixel cross-entropy ignoring ``ignore_index``; mIoU.

    Logits smaller than the mask are upsampled bilinearly to the mask size.
    Batches are ``(images [B, C, H, W], masks [B, H, W])`` or, for images of
    different sizes (:func:`~bicsnet.data.segmentation_collate_unpadded`), two
    lists: each image then goes through the model on its own, unpadded.

    Args:
        num_classes: number of classes (needed so every rank builds the same
            accumulator); ``None`` takes it from ``dataset.num_classes``,
            ``len(dataset.class_names)`` or the logits.
        ignore_index: mask value excluded from loss and metrics. The datasets of
            :mod:`bicsnet.data.masks` give ignored pixels as 255 whatever value
            their files use (``--ignore-index``), so the task table keeps 255.
    """

    name = "segmentation"

    def __init__(self, num_classes: int | None = None, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    @staticmethod
    def _match_size(logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits

    @staticmethod
    def _pairs(images: Any, masks: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(images, masks)]`` for a stacked batch, one ``([1, C, H, W], [1, H, W])`` pair per image for lists."""
        if isinstance(images, torch.Tensor):
            return [(images, masks)]
        return [(image[None], mask[None]) for image, mask in zip(images, masks)]

    def losses(self, model: nn.Module, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
        """``{"loss_ce"}``: the mean cross-entropy over every labelled pixel of the batch.

        A batch without a labelled pixel (every mask all ``ignore_index``) gives
        exactly 0, still attached to the graph, so backward and DDP's gradient
        all-reduce run as usual (``F.cross_entropy``'s mean would be 0/0 = NaN).
        """
        images, masks = batch
        total: torch.Tensor | None = None
        count: torch.Tensor | None = None
        # A stacked batch is one pair; images of different sizes go through the model one by one.
        for x, y in self._pairs(images, masks):
            y = y.to(device, non_blocking=True)
            logits = self._match_size(model(x.to(device, non_blocking=True)), y.shape[-2:])
            part = F.cross_entropy(logits.float(), y, ignore_index=self.ignore_index, reduction="sum")
            labelled = (y != self.ignore_index).sum()
            total = part if total is None else total + part
            count = labelled if count is None else count + labelled
        if total is None or count is None:
            raise ValueError("segmentation batch without images")
        return {"loss_ce": total / count.clamp(min=1)}

    def _classes(self, dataset: Any) -> int | None:
        if self.num_classes is not None:
            return self.num_classes
        if getattr(dataset, "num_classes", None) is not None:
            return int(dataset.num_classes)
        names = getattr(dataset, "class_names", None)
        return len(names) if names is not None else None

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, loader: Iterable, device: torch.device, dataset: Any) -> EvalResult:
        """``{"mIoU", "pixel_acc", "per_class_iou"}`` over the loader."""
        from ..metrics.segmentation import SegmentationMetric

        model.eval()
        class_names = getattr(dataset, "class_names", None)
        num_classes = self._classes(dataset)
        metric = None
        if num_classes is not None:
            metric = SegmentationMetric(num_classes, ignore_index=self.ignore_index, class_names=class_names)
        for images, masks in loader:
            for x, y in self._pairs(images, masks):
                logits = self._match_size(model(x.to(device, non_blocking=True)), y.shape[-2:])
                if metric is None:
                    metric = SegmentationMetric(logits.shape[1], ignore_index=self.ignore_index, class_names=class_names)
                metric.update(logits.argmax(1), y.to(device))  # the metric follows the tensors' device
        if metric is None:
            raise ConfigError("segmentation evaluation: empty dataset and unknown number of classes")
        if is_distributed():
            metric.all_reduce()
        return EvalResult(dict(metric.compute()))
