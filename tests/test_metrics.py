"""Tests for bicsnet.metrics (COCO AP, mIoU, top-k) and bicsnet.viz."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bicsnet.data import CocoDetection, make_coco
from bicsnet.data.synthetic import generate
from bicsnet.engine.adapters import DetectionTask
from bicsnet.engine.runlog import flatten_metrics
from bicsnet.metrics import (
    COCO_METRIC_NAMES,
    COCO_STAT_NAMES,
    SegmentationMetric,
    TopKAccuracy,
    detections_to_coco_results,
    evaluate_coco,
)
from bicsnet.viz import draw_detections, overlay_segmentation, plot_loss_curve, save_image

# pycocotools calls numpy with copy=False internally; harmless, but it floods the output.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn.t accept a copy keyword:DeprecationWarning")


@pytest.fixture(scope="module")
def coco_val(tmp_path_factory: pytest.TempPathFactory) -> CocoDetection:
    paths = generate(tmp_path_factory.mktemp("synth"), num_train=1, num_val=8, img_size=128, seed=1, kinds=("coco",))
    return CocoDetection(paths["coco_val_images"], paths["coco_val_ann"], with_masks=True)


def _gt_as_predictions(ds: CocoDetection, shift: float = 0.0) -> tuple[list[dict], list[int]]:
    outputs, ids = [], []
    for i in range(len(ds)):
        _, t = ds[i]
        n = len(t["labels"])
        outputs.append(
            {
                "boxes": t["boxes"] + shift,
                "scores": torch.linspace(1.0, 0.5, n),
                "labels": t["labels"],
                "masks": t["masks"][:, None].float() * 0.9,  # probabilities, thresholded at 0.5
            }
        )
        ids.append(t["image_id"])
    return outputs, ids


def test_ground_truth_as_detections_scores_ap_one(coco_val: CocoDetection) -> None:
    outputs, ids = _gt_as_predictions(coco_val)
    results = detections_to_coco_results(outputs, ids, coco_val.cat_ids, with_masks=True)
    json.dumps(results)  # must be JSON-ready
    metrics = evaluate_coco(coco_val.coco, results, iou_types=("bbox", "segm"))
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        assert set(m) == set(COCO_STAT_NAMES) | {"per_class"}
        assert [r["category_id"] for r in m["per_class"]] == coco_val.cat_ids
        assert [r["name"] for r in m["per_class"]] == coco_val.class_names
        assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)
        assert all(m[k] == pytest.approx(1.0) or m[k] == -1.0 for k in ("APs", "APm", "APl"))
    shifted = detections_to_coco_results(_gt_as_predictions(coco_val, shift=6.0)[0], ids, coco_val.cat_ids)
    assert evaluate_coco(coco_val.coco, shifted)["bbox"]["AP"] < 0.9


def test_results_conversion_maps_labels_and_boxes() -> None:
    out = {
        "boxes": torch.tensor([[1.0, 2.0, 11.0, 22.0], [0.0, 0.0, 3.0, 3.0]]),
        "scores": torch.tensor([0.9, 0.2]),
        "labels": torch.tensor([2, 3]),
        "masks": torch.zeros(2, 1, 4, 5).index_fill_(2, torch.tensor([1]), 0.7),
    }
    res = detections_to_coco_results([out], [42], cat_ids=[1, 3, 5], with_masks=True)
    assert [r["category_id"] for r in res] == [3, 5]
    assert res[0]["bbox"] == [1.0, 2.0, 10.0, 20.0] and res[0]["image_id"] == 42
    assert res[0]["score"] == pytest.approx(0.9)
    assert isinstance(res[0]["segmentation"]["counts"], str) and res[0]["segmentation"]["size"] == [4, 5]
    with pytest.raises(ValueError, match="image ids not in the ground truth"):
        evaluate_coco(make_coco({"images": [], "annotations": [], "categories": []}), res)
    with pytest.raises(ValueError, match="labels"):
        detections_to_coco_results([dict(out, labels=torch.tensor([0, 1]))], [42], cat_ids=[1, 3, 5])


# --------------------------------------------------------------------------- COCO numbers against pycocotools
_H = _W = 128
_CATS = [{"id": 1, "name": "apple"}, {"id": 3, "name": "fruit"}, {"id": 5, "name": "ghost"}]  # no "ghost" ground truth
_IMAGES = [{"id": i, "width": _W, "height": _H, "file_name": f"{i}.png"} for i in (1, 2, 7)]  # 7: no ground truth


def _rle(mask: np.ndarray) -> dict[str, Any]:
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}


def _box_mask(x: int, y: int, w: int, h: int, notch: bool = False) -> np.ndarray:
    m = np.zeros((_H, _W), np.uint8)
    m[y : y + h, x : x + w] = 1
    if notch:  # a mask that is not its box, so segm differs from bbox
        m[y : y + h // 3, x : x + w // 3] = 0
    return m


def _gt(*boxes: tuple[int, int, int, int, int, int]) -> dict[str, Any]:
    """A COCO dataset dict from ``(image_id, category_id, x, y, w, h)``; masks fill the boxes (RLE)."""
    anns = [
        {"id": k + 1, "image_id": img, "category_id": cat, "bbox": [float(x), float(y), float(w), float(h)],
         "area": float(w * h), "iscrowd": 0, "segmentation": _rle(_box_mask(x, y, w, h))}
        for k, (img, cat, x, y, w, h) in enumerate(boxes)
    ]  # fmt: skip
    return {"images": copy.deepcopy(_IMAGES), "annotations": anns, "categories": copy.deepcopy(_CATS)}


def _dets(*boxes: tuple[int, int, int, int, int, int, float]) -> list[dict[str, Any]]:
    """Results from ``(image_id, category_id, x, y, w, h, score)``, each with a notched RLE mask."""
    return [
        {"image_id": img, "category_id": cat, "bbox": [float(x), float(y), float(w), float(h)], "score": score,
         "segmentation": _rle(_box_mask(x, y, w, h, notch=True))}
        for img, cat, x, y, w, h, score in boxes
    ]  # fmt: skip


#: All ground truth medium-sized (32^2 < area < 96^2).
_MEDIUM_GT = ((1, 1, 10, 10, 40, 40), (1, 3, 60, 60, 50, 40), (2, 1, 20, 30, 60, 45))
#: Small, medium and large ground truth.
_MIXED_GT = ((1, 1, 5, 5, 20, 20), (1, 3, 40, 40, 40, 40), (2, 1, 10, 10, 110, 100), (2, 3, 70, 20, 50, 50),
             (2, 3, 100, 100, 16, 16))  # fmt: skip
_MIXED_DETS = (
    (1, 1, 5, 5, 20, 20, 0.9),  # exact, small
    (1, 3, 44, 43, 40, 40, 0.8),  # shifted, medium
    (2, 1, 12, 12, 105, 96, 0.95),  # shrunk, large
    (2, 3, 70, 20, 50, 50, 0.3),  # exact, medium, below a false positive
    (2, 3, 0, 100, 30, 20, 0.6),  # false positive
    (7, 1, 50, 50, 30, 30, 0.5),  # false positive on an image without ground truth
    (1, 5, 0, 60, 20, 20, 0.4),  # a class without ground truth
)


def _pycocotools(dataset: dict[str, Any], results: list[dict[str, Any]], iou_type: str) -> COCOeval:
    """``COCOeval`` run directly: results without boxes for segm; an empty result index for no results."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(dataset)
        gt.createIndex()
        if results:
            dets = copy.deepcopy(results)
            if iou_type == "segm":
                for d in dets:
                    del d["bbox"]
            dt = gt.loadRes(dets)
        else:  # loadRes([]) raises IndexError; no results is an index with no annotations
            dt = COCO()
            dt.dataset = {"images": copy.deepcopy(dataset["images"]), "categories": copy.deepcopy(dataset["categories"]),
                          "annotations": []}  # fmt: skip
            dt.createIndex()
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _assert_stats_equal(ours: dict[str, Any], ev: COCOeval) -> None:
    assert len(ev.stats) == len(COCO_STAT_NAMES) == 12
    assert list(ours)[:6] == list(COCO_METRIC_NAMES)
    for name, ref in zip(COCO_STAT_NAMES, ev.stats):
        assert isinstance(ours[name], float)
        assert ours[name] == pytest.approx(float(ref), abs=1e-12, rel=0), name


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_no_detections_on_medium_ground_truth_matches_pycocotools(iou_type: str) -> None:
    dataset = _gt(*_MEDIUM_GT)
    m = evaluate_coco(make_coco(copy.deepcopy(dataset)), [], iou_types=(iou_type,))[iou_type]
    ev = _pycocotools(dataset, [], iou_type)
    _assert_stats_equal(m, ev)
    assert m["APs"] == -1.0 and m["APl"] == -1.0 and m["APm"] == 0.0 and m["AP"] == 0.0
    assert m["ARs"] == -1.0 and m["ARl"] == -1.0 and m["AR100"] == 0.0
    by_id = {r["category_id"]: r for r in m["per_class"]}
    assert by_id[1]["AP"] == 0.0 and by_id[3]["AP50"] == 0.0 and by_id[3]["AR100"] == 0.0
    assert by_id[5] == {"category_id": 5, "name": "ghost", "instances": 0, "AP": -1.0, "AP50": -1.0, "AP75": -1.0,
                        "AR100": -1.0}  # fmt: skip


@pytest.mark.parametrize("with_results", [False, True])
def test_coco_without_annotations_is_minus_one_everywhere(with_results: bool) -> None:
    dataset = _gt()
    results = _dets(*_MIXED_DETS) if with_results else []
    metrics = evaluate_coco(make_coco(copy.deepcopy(dataset)), results, iou_types=("bbox", "segm"))
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        _assert_stats_equal(m, _pycocotools(dataset, results, iou_type))
        assert all(m[k] == -1.0 for k in COCO_STAT_NAMES)
        assert [r["category_id"] for r in m["per_class"]] == [1, 3, 5]
        assert all(r[k] == -1.0 for r in m["per_class"] for k in ("AP", "AP50", "AP75", "AR100"))
    # No images at all (an empty validation set): the same.
    empty = make_coco({"images": [], "annotations": [], "categories": copy.deepcopy(_CATS)})
    m = evaluate_coco(empty, [], iou_types=("bbox",))["bbox"]
    assert all(m[k] == -1.0 for k in COCO_STAT_NAMES) and len(m["per_class"]) == 3


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_detections_match_pycocotools(iou_type: str) -> None:
    dataset, results = _gt(*_MIXED_GT), _dets(*_MIXED_DETS)
    m = evaluate_coco(make_coco(copy.deepcopy(dataset)), copy.deepcopy(results), iou_types=(iou_type,))[iou_type]
    ev = _pycocotools(dataset, results, iou_type)
    _assert_stats_equal(m, ev)
    assert all(0.0 < m[k] < 1.0 for k in ("AP", "APs", "APm", "APl", "AR1", "AR100"))  # a case with real numbers
    # Per class, by hand from COCOeval's precision [T, R, K, A, M] / recall [T, K, A, M]
    # (area "all" = index 0, 100 detections = index 2; K follows the sorted category ids).
    assert ev.params.catIds == [1, 3, 5]
    k = ev.params.catIds.index(3)
    prec, rec = ev.eval["precision"][:, :, k, 0, 2], ev.eval["recall"][:, k, 0, 2]
    fruit = next(r for r in m["per_class"] if r["category_id"] == 3)
    assert fruit["name"] == "fruit"
    assert fruit["AP"] == pytest.approx(float(np.mean(prec[prec > -1])), abs=1e-12, rel=0)
    assert fruit["AP50"] == pytest.approx(float(np.mean(prec[0][prec[0] > -1])), abs=1e-12, rel=0)  # iouThrs[0] = 0.5
    assert fruit["AP75"] == pytest.approx(float(np.mean(prec[5][prec[5] > -1])), abs=1e-12, rel=0)  # iouThrs[5] = 0.75
    assert fruit["AR100"] == pytest.approx(float(np.mean(rec[rec > -1])), abs=1e-12, rel=0)
    assert 0.0 < fruit["AP"] < 1.0
    ghost = next(r for r in m["per_class"] if r["category_id"] == 5)  # detections, but no ground truth
    assert ghost["name"] == "ghost" and ghost["AP"] == ghost["AP50"] == ghost["AR100"] == -1.0
    # The class mean over classes with ground truth is the overall AP (as COCO defines it).
    assert m["AP"] == pytest.approx(np.mean([r["AP"] for r in m["per_class"] if r["AP"] > -1]), abs=1e-12)
    json.dumps(m)  # metrics.json must be writable


def test_coco_metrics_flatten_without_per_class() -> None:
    metrics = evaluate_coco(make_coco(_gt(*_MIXED_GT)), _dets(*_MIXED_DETS), iou_types=("bbox", "segm"))
    flat = flatten_metrics(metrics)
    assert set(flat) == {f"{t}/{k}" for t in ("bbox", "segm") for k in COCO_STAT_NAMES}
    assert all(isinstance(v, float) for v in flat.values())
    assert json.loads(json.dumps(metrics)) == metrics


class _NoDetections(torch.nn.Module):
    """A Mask R-CNN-like model that finds nothing (torchvision still returns an empty ``masks``)."""

    def forward(self, images, targets=None):
        return [
            {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, 1, _H, _W)}
            for _ in images
        ]  # fmt: skip


def test_detection_task_keeps_minus_one_without_detections(caplog: pytest.LogCaptureFixture) -> None:
    dataset = types.SimpleNamespace(coco=make_coco(_gt(*_MEDIUM_GT)), cat_ids=[1, 3, 5])
    image = torch.rand(3, _H, _W)
    loader = [([image] * 2, [{"image_id": 1}, {"image_id": torch.tensor(2)}]), ([image], [{"image_id": 7}])]
    model = _NoDetections()
    model.score_thresh = 0.05  # as torchvision's RetinaNet
    with caplog.at_level(logging.WARNING, logger="bicsnet.engine.adapters"):
        result = DetectionTask(with_masks=None).evaluate(model, loader, torch.device("cpu"), dataset)
    assert set(result.metrics) == {"bbox", "segm"} and result.artifacts["detections.json"] == []
    # AP 0 is explained, not just printed.
    assert [r.getMessage().split(", so")[0] for r in caplog.records] == [
        "no detections on 3 image(s): no box scored at or above the model's score threshold (0.05)"
    ]
    caplog.clear()
    for iou_type in ("bbox", "segm"):
        m = result.metrics[iou_type]
        _assert_stats_equal(m, _pycocotools(_gt(*_MEDIUM_GT), [], iou_type))
        assert (m["APs"], m["APm"], m["APl"]) == (-1.0, 0.0, -1.0)
    # An empty validation set: -1 everywhere; a mask task still reports segm.
    empty = types.SimpleNamespace(coco=make_coco({"images": [], "annotations": [], "categories": copy.deepcopy(_CATS)}),
                                  cat_ids=[1, 3, 5])  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="bicsnet.engine.adapters"):
        result = DetectionTask(with_masks=True).evaluate(_NoDetections(), [], torch.device("cpu"), empty)
    assert set(result.metrics) == {"bbox", "segm"}
    assert not caplog.records  # no image, nothing to explain
    assert all(result.metrics[t][k] == -1.0 for t in ("bbox", "segm") for k in COCO_STAT_NAMES)
    result = DetectionTask(with_masks=False).evaluate(_NoDetections(), [], torch.device("cpu"), empty)
    assert set(result.metrics) == {"bbox"}


def test_empty_results_on_synthetic_set_match_pycocotools(coco_val: CocoDetection) -> None:
    metrics = evaluate_coco(coco_val.coco, [], iou_types=("bbox", "segm"))
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        _assert_stats_equal(m, _pycocotools(coco_val.coco.dataset, [], iou_type))
        assert m["AP"] == 0.0 and all(m[k] in (0.0, -1.0) for k in COCO_STAT_NAMES)


def test_miou_against_hand_computed_confusion() -> None:
    metric = SegmentationMetric(3, ignore_index=255, class_names=["bg", "a", "b"])
    # Class 2 is only predicted on ignored pixels, so it is absent from both.
    metric.update(torch.tensor([[[0, 1, 1, 2], [1, 0, 0, 0]]]), torch.tensor([[[0, 0, 1, 255], [1, 1, 0, 255]]]))
    assert metric.confusion.tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]
    r = metric.compute()
    assert r["per_class_iou"] == {"bg": 0.5, "a": 0.5, "b": None}
    assert r["mIoU"] == pytest.approx(0.5) and r["pixel_acc"] == pytest.approx(4 / 6)
    # A second image where class 2 exists: now it counts.
    metric.update(torch.tensor([[2, 0]]), torch.tensor([[2, 2]]))
    assert metric.confusion.tolist() == [[2, 1, 0], [1, 2, 0], [1, 0, 1]]
    r = metric.compute()
    assert r["per_class_iou"] == {"bg": pytest.approx(2 / 5), "a": 0.5, "b": 0.5}
    assert r["mIoU"] == pytest.approx((0.4 + 0.5 + 0.5) / 3) and r["pixel_acc"] == pytest.approx(5 / 8)
    metric.reset()
    assert metric.compute()["mIoU"] == 0.0
    with pytest.raises(ValueError):
        metric.update(torch.tensor([[0]]), torch.tensor([[7]]))


def test_topk_accuracy_by_hand() -> None:
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.0],  # target 1: top-1 hit
            [0.5, 0.1, 0.4, 0.0],  # target 2: second best -> top-2 hit
            [0.1, 0.2, 0.3, 0.4],  # target 0: last -> only top-4
        ]
    )
    acc = TopKAccuracy(ks=(1, 2, 5))
    acc.update(logits, torch.tensor([1, 2, 0]))
    r = acc.compute()
    assert r["top1"] == pytest.approx(1 / 3) and r["top2"] == pytest.approx(2 / 3) and r["top5"] == 1.0
    acc.update(logits[:1], torch.tensor([3]))
    assert acc.compute()["top1"] == pytest.approx(1 / 4)


def test_all_reduce_with_single_process_group(tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        acc = TopKAccuracy(ks=(1,))
        acc.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
        acc.all_reduce()
        seg = SegmentationMetric(2)
        seg.update(torch.tensor([[0, 1]]), torch.tensor([[0, 0]]))
        seg.all_reduce()
    finally:
        dist.destroy_process_group()
    assert acc.compute()["top1"] == 1.0 and seg.confusion.tolist() == [[1, 1], [0, 0]]


def test_viz_outputs(tmp_path: Path) -> None:
    image = torch.rand(3, 40, 50)
    masks = torch.zeros(2, 1, 40, 50)
    masks[0, 0, 5:15, 5:15] = 0.9
    pil = draw_detections(image, torch.tensor([[5.0, 5, 15, 15], [20, 20, 30, 30]]), torch.tensor([1, 2]),
                          torch.tensor([0.9, 0.1]), ["a", "b"], masks=masks)
    assert pil.size == (50, 40)
    assert pil.getpixel((5, 5)) != tuple(int(v * 255 + 0.5) for v in image[:, 5, 5].tolist())
    seg = torch.zeros(40, 50, dtype=torch.int64)
    seg[:10] = 1
    seg[-1] = 255
    over = overlay_segmentation(image, seg, num_classes=2)
    assert over.size == (50, 40) and over.getpixel((0, 20)) == tuple(int(v * 255 + 0.5) for v in image[:, 20, 0].tolist())
    save_image(over, tmp_path / "over.png")
    assert Image.open(tmp_path / "over.png").size == (50, 40)
    rows = [{"step": i, "loss": 1.0 / (i + 1), "lr": 0.1, "epoch": 0} for i in range(5)] + [{"step": 5, "loss": math.nan}]
    plot_loss_curve(rows, tmp_path / "loss.png")
    assert Image.open(tmp_path / "loss.png").format == "PNG"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns when a log axis has no positive value
        plot_loss_curve([{"step": 0, "loss": 2.0, "lr": 0.0}], tmp_path / "one_step.png")
    assert not list(tmp_path.glob(".*.tmp"))
