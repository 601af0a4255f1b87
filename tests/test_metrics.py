"""Tests for bicsnet.metrics (COCO AP, mIoU, top-k) and bicsnet.viz."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from PIL import Image

from bicsnet.data import CocoDetection, make_coco
from bicsnet.data.synthetic import generate
from bicsnet.metrics import SegmentationMetric, TopKAccuracy, detections_to_coco_results, evaluate_coco
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
        assert set(m) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
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


def test_empty_results_give_zeros(coco_val: CocoDetection) -> None:
    metrics = evaluate_coco(coco_val.coco, [], iou_types=("bbox", "segm"))
    assert metrics == {t: dict.fromkeys(("AP", "AP50", "AP75", "APs", "APm", "APl"), 0.0) for t in ("bbox", "segm")}


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
    assert not list(tmp_path.glob(".*.tmp"))
