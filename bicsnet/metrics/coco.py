"""COCO box / mask AP through pycocotools (or faster-coco-eval, its C++ re-implementation)."""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bicsnet.errors import ConfigError

__all__ = [
    "detections_to_coco_results", "evaluate_coco", "coco_evaluation", "CocoEvaluation", "resolve_coco_backend",
    "COCO_METRIC_NAMES", "COCO_STAT_NAMES", "COCO_BACKENDS", "DEFAULT_COCO_BACKEND", "PR_CURVES_ARTIFACT",
]  # fmt: skip

logger = logging.getLogger("bicsnet.metrics")

#: The first six numbers of ``COCOeval.stats``, in order.
COCO_METRIC_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
#: All twelve numbers of ``COCOeval.stats`` for ``bbox`` / ``segm``, in order:
#: the AP numbers, then average recall at 1, 10, 100 detections and by size.
COCO_STAT_NAMES: tuple[str, ...] = COCO_METRIC_NAMES + ("AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
#: The COCO evaluation backends: ``auto`` is faster-coco-eval when it is installed, else pycocotools.
COCO_BACKENDS: tuple[str, ...] = ("pycocotools", "faster-coco-eval", "auto")
#: pycocotools is the reference implementation (COCO's own, the one papers report), a required
#: dependency; faster-coco-eval gives the same numbers (``tests/test_eval_outputs.py``, to 1e-6)
#: several times faster (``benchmarks/coco_eval_backends.md``) but is an optional extra.
DEFAULT_COCO_BACKEND = "pycocotools"
#: The evaluation artifact holding the precision-recall curves (:attr:`CocoEvaluation.pr_curves`).
PR_CURVES_ARTIFACT = "pr_curves.json"


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


def resolve_coco_backend(backend: str) -> str:
    """The backend ``backend`` (one of :data:`COCO_BACKENDS`) names: ``pycocotools`` or ``faster-coco-eval``.

    Raises:
        ConfigError: an unknown name, or ``faster-coco-eval`` when that package is not installed.
    """
    if backend not in COCO_BACKENDS:
        raise ConfigError(f"coco backend {backend!r}: expected one of {', '.join(COCO_BACKENDS)}")
    if backend == "pycocotools":
        return backend
    installed = importlib.util.find_spec("faster_coco_eval") is not None
    if backend == "auto":
        return "faster-coco-eval" if installed else "pycocotools"
    if not installed:
        raise ConfigError(
            "coco backend faster-coco-eval: the package is not installed "
            "(pip install 'bicsnet[faster-coco-eval]', or use pycocotools)"
        )
    return backend


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


def _index(dataset: dict[str, Any]) -> COCO:
    """A pycocotools index of ``dataset`` (``createIndex`` prints: run it through :func:`_quiet`)."""
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _scoring_dataset(coco_gt: COCO, copy_always: bool) -> dict[str, Any] | None:
    """The ground truth to score against: ``None`` (``coco_gt`` as it is) or a copy to index.

    Both backends record a match as the matched annotation's id and read id 0
    as "no match", so a ground-truth annotation with id 0 (annotation tools
    such as Roboflow number from 0) would count its true positive as a false
    positive. Such a dataset is scored as a copy numbered from 1 (ids mean
    nothing else to COCOeval). faster-coco-eval also adds keys (``rle``,
    ``ignore``) to the image and annotation records it indexes
    (``copy_always``); the copy is of those records, their polygons and RLEs
    are shared (read only).
    """
    anns = coco_gt.dataset.get("annotations", [])
    renumber = any(ann.get("id") == 0 for ann in anns)
    if not (renumber or copy_always):
        return None
    dataset = dict(coco_gt.dataset)
    dataset["images"] = [dict(img) for img in dataset.get("images", [])]
    dataset["annotations"] = [dict(ann) for ann in anns]
    if renumber:
        for new_id, ann in enumerate(dataset["annotations"], start=1):
            ann["id"] = new_id
    return dataset


def _mean_valid(values: np.ndarray) -> float:
    """Mean of the entries > -1, or -1 when there are none (as ``COCOeval.summarize``)."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def _mean_valid_along(values: np.ndarray, axis: int) -> np.ndarray:
    """:func:`_mean_valid` along one axis."""
    valid = values > -1
    n = valid.sum(axis=axis)
    total = np.where(valid, values, 0.0).sum(axis=axis)
    return np.where(n > 0, total / np.maximum(n, 1), -1.0)


def _per_class(evaluator: Any, coco_gt: COCO, img_ids: Sequence[int]) -> list[dict[str, Any]]:
    """AP, AP50, AP75 and AR100 of each category (area "all", 100 detections), -1 without ground truth.

    Computed from ``evaluator.eval["precision"]`` / ``["recall"]`` exactly as
    ``COCOeval.summarize`` computes the overall numbers, restricted to one
    category. ``instances``: the category's ground-truth annotations in
    ``img_ids`` that COCOeval scores (crowd regions are not counted: they only
    excuse detections).
    """
    p = evaluator.params
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    recall = evaluator.eval["recall"]  # [T, K, A, M]
    a = p.areaRngLbl.index("all")
    m = p.maxDets.index(100)  # summarize's AP and AR100
    t50 = np.where(p.iouThrs == 0.5)[0]
    t75 = np.where(p.iouThrs == 0.75)[0]
    images = set(int(i) for i in img_ids)
    instances = Counter(
        ann["category_id"] for ann in coco_gt.anns.values() if ann["image_id"] in images and not ann.get("iscrowd", 0)
    )
    rows: list[dict[str, Any]] = []
    for k, cat_id in enumerate(p.catIds):
        cat = coco_gt.cats.get(int(cat_id), {})
        prec = precision[:, :, k, a, m]
        rows.append(
            {
                "category_id": int(cat_id),
                "name": str(cat.get("name", cat_id)),
                "instances": int(instances.get(int(cat_id), 0)),
                "AP": _mean_valid(prec),
                "AP50": _mean_valid(prec[t50]),
                "AP75": _mean_valid(prec[t75]),
                "AR100": _mean_valid(recall[:, k, a, m]),
            }
        )
    return rows


def _pr_curves(evaluator: Any, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Precision at COCO's 101 recall points (area "all", 100 detections), per category and their mean.

    Two curves per category: at IoU 0.5 (its mean over recall is AP50) and
    averaged over IoU 0.5:0.95 (its mean is AP); the ``mean`` curve averages
    the categories with ground truth, so its mean over recall is the overall
    number. A category without ground truth has -1 everywhere (as pycocotools).
    """
    p = evaluator.params
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    a, m = p.areaRngLbl.index("all"), p.maxDets.index(100)
    t50 = np.where(p.iouThrs == 0.5)[0]
    curves = []
    for metric, iou, prec in (("AP50", "0.50", precision[t50, :, :, a, m]), ("AP", "0.50:0.95", precision[:, :, :, a, m])):
        per_class = _mean_valid_along(prec, axis=0)  # [R, K]
        curves.append(
            {
                "metric": metric,
                "iou": iou,
                "mean": _mean_valid_along(per_class, axis=1).tolist(),
                "per_class": [
                    {"category_id": row["category_id"], "name": row["name"], "precision": per_class[:, k].tolist()}
                    for k, row in enumerate(rows)
                ],
            }
        )
    return {"recall": [float(r) for r in p.recThrs], "curves": curves}


@dataclass
class CocoEvaluation:
    """What :func:`coco_evaluation` returns.

    Attributes:
        metrics: per iou type, the ``metrics.json`` section (see :func:`evaluate_coco`).
        pr_curves: per iou type, ``{"recall": [101 recall points], "curves": [...]}``:
            one curve set at IoU 0.5 (``metric`` ``"AP50"``) and one averaged over
            IoU 0.5:0.95 (``"AP"``), each with ``mean`` and ``per_class``
            precision lists (-1: no ground truth); area "all", 100 detections.
    """

    metrics: dict[str, dict[str, Any]]
    pr_curves: dict[str, dict[str, Any]] = field(default_factory=dict)


def coco_evaluation(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    iou_types: Iterable[str] = ("bbox",),
    img_ids: Sequence[int] | None = None,
    backend: str = DEFAULT_COCO_BACKEND,
) -> CocoEvaluation:
    """Evaluate COCO results: the metrics of :func:`evaluate_coco` and the precision-recall curves.

    ``backend``: one of :data:`COCO_BACKENDS` (pycocotools ``COCOeval``, or
    faster-coco-eval's ``COCOeval_faster``, the same algorithm in C++).

    Raises:
        ValueError: results for images not in ``coco_gt``, an unknown iou type,
            or segm results without ``segmentation``.
        ConfigError: an unknown or uninstalled backend.
    """
    backend = resolve_coco_backend(backend)
    unknown = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
    if unknown:
        # pycocotools would fail with a bare assertion; say which ids are wrong.
        raise ValueError(f"results refer to image ids not in the ground truth: {sorted(unknown)[:10]}")
    iou_types = tuple(iou_types)
    for iou_type in iou_types:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if "segm" in iou_types and any("segmentation" not in r for r in results):
        raise ValueError("segm evaluation needs a 'segmentation' in every result")
    scored = _scoring_dataset(coco_gt, copy_always=backend == "faster-coco-eval")
    if backend == "faster-coco-eval":
        from faster_coco_eval import COCO as FasterCOCO
        from faster_coco_eval import COCOeval_faster

        gt: Any = FasterCOCO(scored)
    else:
        gt = coco_gt if scored is None else _quiet(_index, scored)
    evaluated_ids = sorted(int(i) for i in img_ids) if img_ids is not None else coco_gt.getImgIds()
    out = CocoEvaluation({})
    for iou_type in iou_types:
        # loadRes adds fields (id, area, ...) to the records it gets; it only reads what they hold.
        dets = [dict(r) for r in results]
        if iou_type == "segm":
            for d in dets:
                d.pop("bbox", None)  # so that the size ranges use the mask area
        printed: list[str] = []
        if backend == "faster-coco-eval":
            evaluator: Any = COCOeval_faster(gt, gt.loadRes(dets), iou_type, print_function=printed.append)
        else:
            # No detections is still an evaluation: ground truth that exists is missed (0),
            # ground truth that does not exist gives -1 (faster-coco-eval's loadRes takes []).
            evaluator = COCOeval(gt, _quiet(gt.loadRes, dets) if dets else _empty_results(gt), iou_type)
        if img_ids is not None:
            evaluator.params.imgIds = evaluated_ids
        _quiet(evaluator.evaluate)
        _quiet(evaluator.accumulate)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            evaluator.summarize()
        text = buf.getvalue().rstrip() or "\n".join(line for line in printed if "IoU=" in line)
        logger.info("COCO %s evaluation (%s):\n%s", iou_type, backend, text)
        section: dict[str, Any] = {name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats)}
        section["per_class"] = _per_class(evaluator, coco_gt, evaluated_ids)
        out.metrics[iou_type] = section
        out.pr_curves[iou_type] = _pr_curves(evaluator, section["per_class"])
    return out


def evaluate_coco(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    iou_types: Iterable[str] = ("bbox",),
    img_ids: Sequence[int] | None = None,
    backend: str = DEFAULT_COCO_BACKEND,
) -> dict[str, dict[str, Any]]:
    """Evaluate COCO results with pycocotools ``COCOeval`` (or ``backend``, see :func:`coco_evaluation`).

    Returns, for each iou type, the twelve numbers of ``COCOeval.stats``
    (:data:`COCO_STAT_NAMES`: ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``,
    ``APl``, ``AR1``, ``AR10``, ``AR100``, ``ARs``, ``ARm``, ``ARl``) as
    fractions in [0, 1], and ``per_class``: one record per ground-truth
    category, ``{"category_id", "name", "instances", "AP", "AP50", "AP75",
    "AR100"}`` (``instances``: its non-crowd ground-truth annotations).
    As in pycocotools, -1 means there is no ground truth to score against
    (none in that size range, none of that category, or no annotations at
    all), whether or not there are results; with no results a category
    that has ground truth scores 0.
    ``img_ids`` restricts evaluation to those images (default: all in
    ``coco_gt``). For ``"segm"``, boxes are dropped from the results so that
    the size ranges use the mask area.

    Raises:
        ValueError: results for images not in ``coco_gt``, an unknown iou type,
            or segm results without ``segmentation``.
        ConfigError: an unknown or uninstalled backend.
    """
    return coco_evaluation(coco_gt, results, iou_types, img_ids, backend).metrics
