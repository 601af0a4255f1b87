"""Evaluation metrics: COCO AP, segmentation mIoU, top-k accuracy, confusion matrices, and their report."""
from bicsnet.metrics.classification import TopKAccuracy
from bicsnet.metrics.coco import (
    COCO_BACKENDS,
    COCO_METRIC_NAMES,
    COCO_STAT_NAMES,
    DEFAULT_COCO_BACKEND,
    CocoEvaluation,
    coco_evaluation,
    detections_to_coco_results,
    evaluate_coco,
    resolve_coco_backend,
)
from bicsnet.metrics.confusion import ConfusionMatrix
from bicsnet.metrics.reduce import all_reduce_max, all_reduce_sum
from bicsnet.metrics.report import format_per_class_table, write_eval_plots
from bicsnet.metrics.segmentation import SegmentationMetric

__all__ = [
    "TopKAccuracy",
    "ConfusionMatrix",
    "SegmentationMetric",
    "detections_to_coco_results",
    "evaluate_coco",
    "coco_evaluation",
    "CocoEvaluation",
    "resolve_coco_backend",
    "COCO_METRIC_NAMES",
    "COCO_STAT_NAMES",
    "COCO_BACKENDS",
    "DEFAULT_COCO_BACKEND",
    "all_reduce_sum",
    "all_reduce_max",
    "format_per_class_table",
    "write_eval_plots",
]
