"""Evaluation metrics: COCO AP, segmentation mIoU and top-k accuracy."""
from bicsnet.metrics.classification import TopKAccuracy
from bicsnet.metrics.coco import COCO_METRIC_NAMES, COCO_STAT_NAMES, detections_to_coco_results, evaluate_coco
from bicsnet.metrics.reduce import all_reduce_sum
from bicsnet.metrics.segmentation import SegmentationMetric

__all__ = [
    "TopKAccuracy",
    "SegmentationMetric",
    "detections_to_coco_results",
    "evaluate_coco",
    "COCO_METRIC_NAMES",
    "COCO_STAT_NAMES",
    "all_reduce_sum",
]
