"""COCO box / mask AP through pycocotools."""
from __future__ import annotations

import contextlib
import copy
import io
import logging
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["detections_to_coco_results", "evaluate_coco", "COCO_METRIC_NAMES", "COCO_STAT_NAMES"]

logger = logging.getLogger("bicsnet.metrics")

#: The first six numbers of ``COCOeval.stats``, in order.
COCO_METRIC_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
#: All twelve numbers of ``COCOeval.stats`` for ``bbox`` / ``segm``, in order:
#: the AP numbers, then average recall at 1, 10, 100 detections and by size.
COCO_STAT_NAMES: tuple[str, ...] = COCO_METRIC_NAMES + ("AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def detections_to_coco_results(
    outputs: Sequence[dict[str, Any]],
    image_ids: Sequence[int],
    cat_ids: Sequence[int],
    with_masks: bool = False,
) -> list[dict[str, Any]]:
    """Convert torchvision-style predictions to COCO result records.

    ``outputs[i]`` (for image ``image_ids[i]``) has ``boxes`` ``[N, 4]`` xyxy,
    ``scores`` ``[N]``, ``labels`` ``[N]`` in ``1..K`` and, with
    ``with_masks``, ``masks`` ``[N, 1, H, W]`` (or ``[N, H, W]``) probabilities.
    Each record has ``image_id``, ``category_id = cat_ids[label - 1]``,
    ``bbox`` (xywh floats), ``score`` and, with masks, ``segmentation``: the
    mask thresholded at 0.5 as compressed RLE with string counts (JSON-ready).
    """
    if len(outputs) != len(image_ids):
        raise ValueError(f"got {len(outputs)} outputs for {len(image_ids)} image ids")
    results: list[dict[str, Any]] = []
    for out, image_id in zip(outputs, image_ids):
        boxes = _numpy(out["boxes"]).astype(np.float64).reshape(-1, 4)
        scores = _numpy(out["scores"]).astype(np.float64).reshape(-1)
        labels = _numpy(out["labels"]).astype(np.int64).reshape(-1)
        if labels.size and (labels.min() < 1 or labels.max() > len(cat_ids)):
            raise ValueError(f"image {image_id}: labels must be in 1..{len(cat_ids)}, got {labels.min()}..{labels.max()}")
        rles: list[dict[str, Any]] = []
        if with_masks:
            masks = _numpy(out["masks"])
            if masks.ndim == 4:
                masks = masks[:, 0]
            if len(masks) != len(boxes):
                raise ValueError(f"image {image_id}: {len(masks)} masks for {len(boxes)} boxes")
            if len(masks):
                binary = np.asfortranarray((masks > 0.5).transpose(1, 2, 0).astype(np.uint8))
                rles = mask_util.encode(binary)
        xywh = boxes.copy()
        xywh[:, 2:] -= xywh[:, :2]
        for k in range(len(boxes)):
            rec: dict[str, Any] = {
                "image_id": int(image_id),
                "category_id": int(cat_ids[labels[k] - 1]),
                "bbox": [float(v) for v in xywh[k]],
                "score": float(scores[k]),
            }
            if with_masks:
                rle = rles[k]
                rec["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
            results.append(rec)
    return results


def _quiet(fn: Any, *args: Any) -> Any:
    """Run a pycocotools call, sending what it prints to the debug log instead of stdout."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        value = fn(*args)
    text = buf.getvalue().strip()
    if text:
        logger.debug("%s", text)
    return value


def _empty_results(coco_gt: COCO) -> COCO:
    """The result index ``coco_gt.loadRes`` would build for no detections (it fails on an empty list)."""
    res = COCO()
    res.dataset = {
        "info": copy.deepcopy(coco_gt.dataset.get("info", {})),
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    }
    _quiet(res.createIndex)
    return res


def _mean_valid(values: np.ndarray) -> float:
    """Mean of the entries > -1, or -1 when there are none (as ``COCOeval.summarize``)."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def _per_class(evaluator: COCOeval, coco_gt: COCO) -> list[dict[str, Any]]:
    """AP, AP50, AP75 and AR100 of each category (area "all", 100 detections), -1 without ground truth.

    Computed from ``evaluator.eval["precision"]`` / ``["recall"]`` exactly as
    ``COCOeval.summarize`` computes the overall numbers, restricted to one
    category.
    """
    p = evaluator.params
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    recall = evaluator.eval["recall"]  # [T, K, A, M]
    a = p.areaRngLbl.index("all")
    m = p.maxDets.index(100)  # summarize's AP and AR100
    t50 = np.where(p.iouThrs == 0.5)[0]
    t75 = np.where(p.iouThrs == 0.75)[0]
    rows: list[dict[str, Any]] = []
    for k, cat_id in enumerate(p.catIds):
        cat = coco_gt.cats.get(cat_id, {})
        prec = precision[:, :, k, a, m]
        rows.append(
            {
                "category_id": int(cat_id),
                "name": str(cat.get("name", cat_id)),
                "AP": _mean_valid(prec),
                "AP50": _mean_valid(prec[t50]),
                "AP75": _mean_valid(prec[t75]),
                "AR100": _mean_valid(recall[:, k, a, m]),
            }
        )
    return rows


def evaluate_coco(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    iou_types: Iterable[str] = ("bbox",),
    img_ids: Sequence[int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate COCO results with pycocotools ``COCOeval``.

    Returns, for each iou type, the twelve numbers of ``COCOeval.stats``
    (:data:`COCO_STAT_NAMES`: ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``,
    ``APl``, ``AR1``, ``AR10``, ``AR100``, ``ARs``, ``ARm``, ``ARl``) as
    fractions in [0, 1], and ``per_class``: one record per ground-truth
    category, ``{"category_id", "name", "AP", "AP50", "AP75", "AR100"}``.
    As in pycocotools, -1 means there is no ground truth to score against
    (none in that size range, none of that category, or no annotations at
    all), whether or not there are results; with no results a category
    that has ground truth scores 0.
    ``img_ids`` restricts evaluation to those images (default: all in
    ``coco_gt``). For ``"segm"``, boxes are dropped from the results so that
    pycocotools uses the mask area for the size ranges.
    """
    unknown = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
    if unknown:
        # pycocotools would fail with a bare assertion; say which ids are wrong.
        raise ValueError(f"results refer to image ids not in the ground truth: {sorted(unknown)[:10]}")
    metrics: dict[str, dict[str, Any]] = {}
    for iou_type in iou_types:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        if results:
            dets = copy.deepcopy(results)  # loadRes adds fields to the records it gets
            if iou_type == "segm":
                if any("segmentation" not in d for d in dets):
                    raise ValueError("segm evaluation needs a 'segmentation' in every result")
                for d in dets:
                    d.pop("bbox", None)
            coco_dt = _quiet(coco_gt.loadRes, dets)
        else:
            # No detections is still an evaluation: ground truth that exists is missed (0),
            # ground truth that does not exist gives -1.
            coco_dt = _empty_results(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        if img_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in img_ids)
        _quiet(evaluator.evaluate)
        _quiet(evaluator.accumulate)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            evaluator.summarize()
        logger.info("COCO %s evaluation:\n%s", iou_type, buf.getvalue().rstrip())
        section: dict[str, Any] = {name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats)}
        section["per_class"] = _per_class(evaluator, coco_gt)
        metrics[iou_type] = section
    return metrics
