"""What an evaluation leaves for people to read: per-class table, PR curves, confusion matrices, COCO backends.

Covers ``bicsnet.metrics`` (``coco_evaluation`` with both backends, ``ConfusionMatrix``,
``format_per_class_table``, ``write_eval_plots``), the plots of ``bicsnet.viz`` and the
``bicsnet eval --coco-backend`` / ``bicsnet train`` outputs on a tiny detector.
"""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util
from torch import nn
from torch.utils.data import TensorDataset

from bicsnet.cli.main import main
from bicsnet.data import make_coco
from bicsnet.engine.trainer import TrainConfig, evaluate_model
from bicsnet.errors import ConfigError
from bicsnet.metrics import (
    COCO_STAT_NAMES,
    ConfusionMatrix,
    SegmentationMetric,
    coco_evaluation,
    evaluate_coco,
    format_per_class_table,
    resolve_coco_backend,
    write_eval_plots,
)
from bicsnet.viz import plot_confusion_matrix, plot_pr_curves

pytestmark = pytest.mark.filterwarnings("ignore:.*__array__ implementation.*:DeprecationWarning")

_TOL = 1e-6  # backends: pycocotools and faster-coco-eval sum in different orders, nothing more


# --------------------------------------------------------------------------- a COCO set with every case
def _rle(mask: np.ndarray) -> dict[str, Any]:
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}


def _ellipse(h: int, w: int, box: tuple[float, float, float, float]) -> np.ndarray:
    """A filled ellipse inscribed in the xywh ``box``: a mask that is not its box (segm differs from bbox)."""
    x, y, bw, bh = box
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy, rx, ry = x + bw / 2, y + bh / 2, max(bw / 2, 1), max(bh / 2, 1)
    return ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1


def _synthetic_set(seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ground truth and results covering what COCOeval distinguishes.

    Categories 1, 2, 4 have ground truth, 9 ("ghost") has none but gets
    detections; objects are small, medium and large; some ground truth is
    crowd (RLE regions that excuse detections); image 11 has no ground truth;
    image 12 gets 130 detections (beyond maxDets 100); scores are rounded to
    two decimals so many tie; every result has an RLE mask.
    """
    rng = np.random.default_rng(seed)
    h = w = 160
    cats = [{"id": 1, "name": "apple"}, {"id": 2, "name": "pear"}, {"id": 4, "name": "plum"}, {"id": 9, "name": "ghost"}]
    images = [{"id": i, "width": w, "height": h, "file_name": f"{i}.png"} for i in range(1, 13)]
    anns: list[dict[str, Any]] = []
    dets: list[dict[str, Any]] = []

    def det(img: int, cat: int, box: tuple[float, float, float, float]) -> None:
        score = round(float(rng.uniform(0.05, 1.0)), 2)
        dets.append({"image_id": img, "category_id": cat, "bbox": [float(v) for v in box], "score": score,
                     "segmentation": _rle(_ellipse(h, w, box))})  # fmt: skip

    for img in range(1, 13):
        if img != 11:
            for _ in range(int(rng.integers(3, 7))):
                side = float(rng.choice([rng.uniform(8, 28), rng.uniform(36, 90), rng.uniform(100, 150)]))
                bw, bh = side, float(np.clip(side * rng.uniform(0.6, 1.4), 6, h - 2))
                x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
                mask = _ellipse(h, w, (x, y, bw, bh))
                crowd = rng.random() < 0.12
                anns.append({"id": len(anns) + 1, "image_id": img, "category_id": int(rng.choice([1, 2, 4])),
                             "bbox": [x, y, bw, bh], "area": float(mask.sum()), "iscrowd": int(crowd),
                             "segmentation": _rle(mask)})  # fmt: skip
                for _ in range(int(rng.integers(0, 3))):  # misses, hits, duplicates, also on crowd regions
                    jx, jy = rng.normal(0, 0.12 * bw), rng.normal(0, 0.12 * bh)
                    box = (float(np.clip(x + jx, 0, w - 4)), float(np.clip(y + jy, 0, h - 4)), bw * rng.uniform(0.8, 1.2),
                           bh * rng.uniform(0.8, 1.2))  # fmt: skip
                    det(img, anns[-1]["category_id"], box)
        for _ in range(int(rng.integers(1, 4)) + (130 if img == 12 else 0)):  # false positives, ghost included
            bw, bh = float(rng.uniform(6, 80)), float(rng.uniform(6, 80))
            det(img, int(rng.choice([1, 2, 4, 9])), (float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh)), bw, bh))
    return {"images": images, "annotations": anns, "categories": cats}, dets


def _assert_close(a: Any, b: Any, where: str = "") -> None:
    """Equal structure, numbers within _TOL (every number of metrics.json / pr_curves.json)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert isinstance(b, float) and abs(a - b) <= _TOL, (where, a, b)
    else:
        assert a == b, (where, a, b)


# --------------------------------------------------------------------------- COCO backends
def test_synthetic_set_covers_the_cases() -> None:
    dataset, results = _synthetic_set()
    anns = dataset["annotations"]
    areas = [a["area"] for a in anns if not a["iscrowd"]]
    assert min(areas) < 32**2 and any(32**2 < a < 96**2 for a in areas) and max(areas) > 96**2
    assert any(a["iscrowd"] for a in anns) and not any(a["image_id"] == 11 for a in anns)
    assert not any(a["category_id"] == 9 for a in anns) and any(r["category_id"] == 9 for r in results)
    assert sum(r["image_id"] == 12 for r in results) > 100
    assert len({r["score"] for r in results}) < len(results)  # ties


@pytest.mark.parametrize("iou_types", [("bbox",), ("bbox", "segm")])
def test_faster_coco_eval_equals_pycocotools(iou_types: tuple[str, ...]) -> None:
    pytest.importorskip("faster_coco_eval")
    dataset, results = _synthetic_set()
    ref = coco_evaluation(make_coco(copy.deepcopy(dataset)), results, iou_types, backend="pycocotools")
    fast = coco_evaluation(make_coco(copy.deepcopy(dataset)), results, iou_types, backend="faster-coco-eval")
    for iou_type in iou_types:
        m = ref.metrics[iou_type]
        assert all(0.05 < m[k] < 0.95 for k in ("AP", "AP50", "APs", "APm", "APl", "AR100")), m  # real numbers
        assert {r["name"]: r["AP"] for r in m["per_class"]}["ghost"] == -1.0
        assert list(m) == [*COCO_STAT_NAMES, "per_class"]
    _assert_close(ref.metrics, fast.metrics, "metrics")
    _assert_close(ref.pr_curves, fast.pr_curves, "pr_curves")
    # A subset of the images, and no results at all, agree too.
    subset = [1, 2, 11]
    _assert_close(evaluate_coco(make_coco(copy.deepcopy(dataset)), results, iou_types, img_ids=subset),
                  evaluate_coco(make_coco(copy.deepcopy(dataset)), results, iou_types, img_ids=subset,
                                backend="faster-coco-eval"))  # fmt: skip
    _assert_close(evaluate_coco(make_coco(copy.deepcopy(dataset)), [], iou_types),
                  evaluate_coco(make_coco(copy.deepcopy(dataset)), [], iou_types, backend="faster-coco-eval"))  # fmt: skip


def test_annotation_id_zero_is_scored_as_a_match() -> None:
    # Annotation tools (Roboflow) number annotations from 0; COCOeval reads a match with id 0 as no match.
    dataset, _ = _synthetic_set()
    anns = [a for a in dataset["annotations"] if a["image_id"] == 1]
    for i, ann in enumerate(anns):
        ann["id"] = i  # 0, 1, ...
    dataset["annotations"] = anns
    perfect = [{"image_id": 1, "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9 - 0.01 * i}
               for i, a in enumerate(anns) if not a["iscrowd"]]  # fmt: skip
    gt = make_coco(copy.deepcopy(dataset))
    backends = ["pycocotools"] + (["faster-coco-eval"] if resolve_coco_backend("auto") == "faster-coco-eval" else [])
    for backend in backends:
        m = evaluate_coco(gt, perfect, backend=backend)["bbox"]
        assert m["AP"] == pytest.approx(1.0) and m["AR100"] == pytest.approx(1.0), backend
    assert [a["id"] for a in gt.dataset["annotations"]] == list(range(len(anns)))  # the caller's index is untouched


def test_backend_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert resolve_coco_backend("pycocotools") == "pycocotools"
    assert resolve_coco_backend("auto") in ("pycocotools", "faster-coco-eval")
    with pytest.raises(ConfigError, match="expected one of pycocotools, faster-coco-eval, auto"):
        resolve_coco_backend("detectron2")
    # Without the package: auto falls back, asking for it by name says how to install it.
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "faster_coco_eval" else find_spec(name, *a))  # fmt: skip
    assert resolve_coco_backend("auto") == "pycocotools"
    with pytest.raises(ConfigError, match=r"not installed \(pip install 'bicsnet\[faster-coco-eval\]'"):
        resolve_coco_backend("faster-coco-eval")
    # train --coco-backend: refused before the first step (not at the first evaluation), exit 2.
    run = tmp_path / "run"
    argv = ["train", "--task", "detection", "--model", "bicsnet_48_tiny", "--img-size", "96", "--max-steps", "1",
            "--synth-dir", str(tmp_path / "synth"), "--synth-train", "4", "--synth-val", "4", "--synth-size", "96",
            "--workers", "0", "--device", "cpu", "--out", str(run), "--coco-backend", "faster-coco-eval"]  # fmt: skip
    assert main(argv) == 2
    assert "coco backend faster-coco-eval: the package is not installed" in capsys.readouterr().err
    assert not run.exists() and not (tmp_path / "synth").exists()  # nothing made, not even the synthetic data
    with pytest.raises(ConfigError, match="coco_backend='detectron2': must be one of pycocotools, faster-coco-eval, auto"):
        TrainConfig(coco_backend="detectron2")


# --------------------------------------------------------------------------- per-class table and PR curves
def test_per_class_table_shows_metrics_json_values(tmp_path: Path) -> None:
    dataset, results = _synthetic_set()
    evaluation = coco_evaluation(make_coco(dataset), results, ("bbox", "segm"))
    metrics = json.loads(json.dumps(evaluation.metrics))  # as read back from metrics.json
    text = format_per_class_table(metrics)
    for iou_type in ("bbox", "segm"):
        block = text.split(f"{iou_type} per class")[1].split("per class")[0]
        lines = block.splitlines()
        assert lines[1].split() == ["class", "instances", "AP", "AP50", "AP75", "AR100"]
        for row in metrics[iou_type]["per_class"]:
            cells = next(line for line in lines if line.startswith(row["name"] + " ")).split()
            expected = [f"{row[k]:.3f}" if row[k] > -1 else "-" for k in ("AP", "AP50", "AP75", "AR100")]
            assert cells == [row["name"], str(row["instances"]), *expected]
        total = sum(r["instances"] for r in metrics[iou_type]["per_class"])
        assert next(line for line in lines if line.startswith("all ")).split() == [
            "all", str(total), *(f"{metrics[iou_type][k]:.3f}" for k in ("AP", "AP50", "AP75", "AR100"))]
    ghost = next(r for r in metrics["bbox"]["per_class"] if r["name"] == "ghost")
    assert ghost["instances"] == 0 and ghost["AP"] == -1.0  # -1 stays in the JSON, "-" in the table
    # Instances: the non-crowd ground truth of each category.
    apple = next(r for r in metrics["bbox"]["per_class"] if r["name"] == "apple")
    assert apple["instances"] == sum(a["category_id"] == 1 and not a["iscrowd"] for a in dataset["annotations"])
    assert format_per_class_table({"top1": 0.5, "confusion_matrix": {"classes": [], "counts": []}}) == ""

    # The curves behind pr_curve_*.png: their means over recall are the table's numbers.
    curves = evaluation.pr_curves["bbox"]
    assert len(curves["recall"]) == 101 and [c["metric"] for c in curves["curves"]] == ["AP50", "AP"]
    for c in curves["curves"]:
        assert np.mean(c["mean"]) == pytest.approx(evaluation.metrics["bbox"][c["metric"]], abs=1e-12)
        for cls, row in zip(c["per_class"], evaluation.metrics["bbox"]["per_class"]):
            assert cls["name"] == row["name"]
            assert (np.mean(cls["precision"]) if row["AP"] > -1 else -1.0) == pytest.approx(row[c["metric"]], abs=1e-12)
    written = write_eval_plots(tmp_path, metrics, {"pr_curves.json": evaluation.pr_curves})
    assert written == [tmp_path / "pr_curve_bbox.png", tmp_path / "pr_curve_segm.png"]
    for path in written:
        _assert_png(path, min_side=300)


def _assert_png(path: Path, min_side: int = 200, max_side: int = 4000) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()  # a complete, valid file
    with Image.open(path) as im:
        assert im.format == "PNG" and min_side <= min(im.size) and max(im.size) <= max_side, im.size
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 5  # something is drawn
    return im.size


# --------------------------------------------------------------------------- confusion matrices
def test_classification_confusion_matrix_by_hand(tmp_path: Path) -> None:
    # Logits that make the model predict exactly `pred`: the confusion matrix is then known.
    target = torch.tensor([0, 0, 1, 2, 2, 2, 1])
    pred = torch.tensor([0, 1, 1, 2, 0, 2, 1])
    expected = [[1, 1, 0], [0, 2, 0], [1, 0, 2]]  # rows = ground truth, columns = prediction
    result = evaluate_model(nn.Identity(), "classification", TensorDataset(nn.functional.one_hot(pred, 3).float(), target),
                            batch_size=3, device="cpu")  # fmt: skip
    assert result.metrics["confusion_matrix"] == {"classes": ["0", "1", "2"], "counts": expected}
    assert result.metrics["top1"] == pytest.approx(5 / 7)
    # Named classes (an image-folder dataset's), and a class nobody predicts or is: row and column of zeros.
    named = TensorDataset(nn.functional.one_hot(pred, 4).float(), target)
    named.classes = ["cat", "dog", "eel", "fox"]  # type: ignore[attr-defined]
    result = evaluate_model(nn.Identity(), "classification", named, batch_size=4, device="cpu")
    assert result.metrics["confusion_matrix"] == {"classes": ["cat", "dog", "eel", "fox"],
                                                  "counts": [r + [0] for r in expected] + [[0, 0, 0, 0]]}  # fmt: skip
    assert write_eval_plots(tmp_path, result.metrics) == [tmp_path / "confusion_matrix.png"]
    _assert_png(tmp_path / "confusion_matrix.png")


def test_segmentation_confusion_matrix_skips_ignored_pixels() -> None:
    target = torch.tensor([[[0, 0, 1, 255], [2, 2, 255, 1]], [[1, 1, 1, 255], [0, 2, 2, 2]]])
    pred = torch.tensor([[[0, 1, 1, 2], [2, 0, 0, 1]], [[1, 1, 0, 0], [0, 2, 2, 1]]])
    # Counted by hand over the 13 labelled pixels.
    expected = [[2, 1, 0], [1, 4, 0], [1, 1, 3]]
    metric = SegmentationMetric(3, ignore_index=255, class_names=["bg", "a", "b"])
    metric.update(pred, target)
    out = metric.compute()
    assert out["confusion_matrix"] == {"classes": ["bg", "a", "b"], "counts": expected}
    assert out["pixel_acc"] == pytest.approx(9 / 13)
    # Through the engine as `bicsnet eval` runs it (a perfect "model" reading one-hot class maps).
    images = nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    result = evaluate_model(nn.Identity(), "segmentation", TensorDataset(images, target), 1, device="cpu", num_classes=3)
    assert result.metrics["confusion_matrix"]["counts"] == expected


def test_confusion_matrix_sizes_and_errors() -> None:
    cm = ConfusionMatrix()  # sized by its updates
    cm.update(torch.tensor([1]), torch.tensor([0]), num_classes=4)
    cm.update(torch.tensor([5]), torch.tensor([5]))  # a label beyond the hint grows it
    assert cm.num_classes == 6 and cm.counts[0, 1] == 1 and cm.counts[5, 5] == 1 and int(cm.counts.sum()) == 2
    fixed = ConfusionMatrix(2, ["x", "y"])
    with pytest.raises(ValueError, match=r"target labels must be in \[0, 2\)"):
        fixed.update(torch.tensor([0]), torch.tensor([2]))
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        ConfusionMatrix(3, ["x", "y"])


def _reduce_worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        cm = ConfusionMatrix()  # rank 1 sees nothing: it must still take part at rank 0's size
        seg = SegmentationMetric(3, ignore_index=255)
        if rank == 0:
            cm.update(torch.tensor([0, 2, 2]), torch.tensor([0, 1, 2]), num_classes=3)
            seg.update(torch.tensor([0, 1, 2]), torch.tensor([0, 255, 1]))
        else:
            seg.update(torch.tensor([2, 2]), torch.tensor([2, 255]))
        cm.all_reduce()
        seg.all_reduce()
        Path(out, f"{rank}.json").write_text(json.dumps([cm.to_dict(), seg.compute()["confusion_matrix"]]))
    finally:
        dist.destroy_process_group()


def test_confusion_matrices_sum_over_processes(tmp_path: Path) -> None:
    # fork: the workers inherit the imports (spawning two fresh interpreters costs more than the test).
    torch.multiprocessing.start_processes(_reduce_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2,
                                          start_method="fork")  # fmt: skip
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    assert results[0] == results[1]
    cls, seg = results[0]
    assert cls["counts"] == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]
    assert seg["counts"] == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]


def test_confusion_matrix_plot_many_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    k = 40  # above 30: no tick labels, still drawn
    counts = (np.eye(k, dtype=int) * 20 + rng.integers(0, 3, (k, k))).tolist()
    counts[3] = [0] * k  # a class without samples: an empty row, not NaN
    plot_confusion_matrix(counts, [f"class{i}" for i in range(k)], tmp_path / "cm.png")
    w, h = _assert_png(tmp_path / "cm.png", min_side=500)
    small = tmp_path / "small.png"
    plot_confusion_matrix([[3, 1], [0, 0]], ["a", "b"], small)
    assert min(_assert_png(small)) < min(w, h)  # the figure grows with the classes
    with pytest.raises(ValueError, match="for 3 class names"):
        plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b", "c"], tmp_path / "bad.png")
    curves = {"recall": [0.0, 0.5, 1.0], "curves": [
        {"metric": "AP50", "iou": "0.50", "mean": [1.0, 0.5, 0.0],
         "per_class": [{"name": "a", "precision": [1.0, 0.5, 0.0]}, {"name": "b", "precision": [-1.0] * 3}]}]}
    plot_pr_curves(curves, tmp_path / "pr.png")
    _assert_png(tmp_path / "pr.png", min_side=300)


# --------------------------------------------------------------------------- the CLI on a tiny detector
def test_cli_train_then_eval_with_faster_coco_eval(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("faster_coco_eval")
    # 16 validation images: an untrained detector's top 100 boxes per image hit an object only now and
    # then (with 4 images, whether any did depended on how the head's initial weights were drawn).
    synth = ["--synth-dir", str(tmp_path / "synth"), "--synth-train", "4", "--synth-val", "16", "--synth-size", "96"]
    run = tmp_path / "run"
    # Untrained, with every detection kept (score_thresh 0): many boxes, a few hits, non-trivial numbers.
    assert main(["train", "--task", "detection", "--model", "bicsnet_48_tiny", "--img-size", "96", "--epochs", "1",
                 "--max-steps", "1", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--out", str(run),
                 "--set", "score_thresh=0.0", *synth]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    train_metrics = json.loads((run / "metrics.json").read_text())
    assert format_per_class_table(train_metrics) in printed  # the table at the end of training
    _assert_png(run / "pr_curve_bbox.png", min_side=300)

    # The run's final evaluation used pycocotools (the default) at the same batch size: the same detections.
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(run), "--device", "cpu", "--workers", "0", "--batch-size", "2",
                 "--out", str(out), "--coco-backend", "faster-coco-eval", *synth]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    evaluated = json.loads((out / "metrics.json").read_text())
    assert format_per_class_table(evaluated) in printed
    assert all(row["name"] in printed for row in evaluated["bbox"]["per_class"])
    _assert_png(out / "pr_curve_bbox.png", min_side=300)
    assert set(json.loads((out / "pr_curves.json").read_text())) == {"bbox"}
    m = train_metrics["bbox"]
    assert m["AR100"] > 0 and any(r["AP50"] > 0 for r in m["per_class"])  # a comparison of real numbers
    _assert_close(train_metrics, evaluated)

    # The same run with --coco-backend on train: its evaluations use it, with the same numbers.
    import bicsnet.metrics.coco as coco_lib

    used: list[str] = []
    scored = coco_lib.coco_evaluation

    def spy(*args, **kwargs):
        used.append(kwargs.get("backend"))
        return scored(*args, **kwargs)

    monkeypatch.setattr(coco_lib, "coco_evaluation", spy)
    fast = tmp_path / "run_fast"
    assert main(["train", "--task", "detection", "--model", "bicsnet_48_tiny", "--img-size", "96", "--epochs", "1",
                 "--max-steps", "1", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--out", str(fast),
                 "--set", "score_thresh=0.0", "--coco-backend", "faster-coco-eval", *synth]) == 0  # fmt: skip
    capsys.readouterr()
    assert used == ["faster-coco-eval"]
    assert "coco_backend: faster-coco-eval" in (fast / "config.yaml").read_text()
    _assert_close(train_metrics, json.loads((fast / "metrics.json").read_text()))


def test_metrics_json_keeps_number_rows_on_one_line(tmp_path: Path) -> None:
    """A 1000-class confusion matrix is 1000 lines of metrics.json, and the file reads back unchanged."""
    import json

    from bicsnet.io import atomic_write_json

    counts = [[(i * 7 + j) % 5 for j in range(1000)] for i in range(1000)]
    obj = {"top1": 0.5, "confusion_matrix": {"classes": [str(i) for i in range(1000)], "counts": counts},
           "nested": {"box": [0.5, -1e-3, 2e10], "empty": [], "nan": float("nan")}}  # fmt: skip
    path = tmp_path / "metrics.json"
    atomic_write_json(path, obj)
    text = path.read_text()
    back = json.loads(text)
    assert back["confusion_matrix"] == obj["confusion_matrix"] and back["nested"]["box"] == [0.5, -1e-3, 2e10]
    assert back["nested"]["nan"] != back["nested"]["nan"]
    assert len(text.splitlines()) < 2 * 1000 + 50
