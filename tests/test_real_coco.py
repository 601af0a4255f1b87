"""Real data: the strawberry Roboflow COCO export (shared/data/strawberry) read as exported.

The export has the tool's quirks: a placeholder supercategory as category 0
that no annotation uses, image, category and annotation ids starting at 0,
``date_captured``/``license`` fields, boxes a fraction of a pixel past the
image border. Every count below is computed from the JSON with plain ``json``
and also written out once, so a change in what the loader keeps or drops fails
here.
"""
from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import pytest

from bicsnet.cli.main import main
from bicsnet.data import CocoDetection

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROOT = DATA / "strawberry"

pytestmark = [
    pytest.mark.skipif(not (ROOT / "train" / "_annotations.coco.json").is_file(),
                       reason=f"real data not found: {ROOT} (the shared/ folder next to the repository)"),  # fmt: skip
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn.t accept a copy keyword:DeprecationWarning"),
]

SPLITS = ("train", "valid", "test")
CAT_IDS = [0, 1, 2, 3]
NAMES = ["Strawberry-Plants-Parts", "Flower", "Fruit", "Leaf"]
#: split -> (images, {category id: annotations}); no record is rejected in any split.
EXPECTED = {
    "train": (117, {0: 0, 1: 75, 2: 162, 3: 192}),
    "valid": (11, {0: 0, 1: 3, 2: 41, 3: 22}),
    "test": (6, {0: 0, 1: 2, 2: 16, 3: 18}),
}


def _ann(split: str) -> Path:
    return ROOT / split / "_annotations.coco.json"


def _plain_counts(split: str) -> tuple[int, dict[int, int], int]:
    """(images, annotations per category id, annotations) straight from the JSON."""
    data = json.loads(_ann(split).read_text())
    per = Counter(a["category_id"] for a in data["annotations"])
    return len(data["images"]), {c["id"]: per.get(c["id"], 0) for c in data["categories"]}, len(data["annotations"])


@pytest.mark.parametrize("split", SPLITS)
def test_plain_json_counts_are_the_recorded_ones(split: str) -> None:
    images, per, total = _plain_counts(split)
    assert (images, per) == EXPECTED[split] and total == sum(per.values())


@pytest.mark.parametrize("with_masks", [False, True], ids=["boxes", "masks"])
@pytest.mark.parametrize("split", SPLITS)
def test_loader_keeps_every_record(split: str, with_masks: bool) -> None:
    images, per, total = _plain_counts(split)
    ds = CocoDetection(ROOT / split, _ann(split), with_masks=with_masks)
    assert len(ds) == images and ds.ids == list(range(images))  # image ids start at 0
    assert ds.cat_ids == CAT_IDS and ds.class_names == NAMES
    assert ds.per_category == per == EXPECTED[split][1]
    assert (ds.num_annotations, ds.num_used, ds.num_rejected, ds.rejected_reasons) == (total, total, 0, {})
    assert ds.skipped == [] and ds.dropped_boxes == []
    assert ds.empty_categories == [0]  # the placeholder: kept, so labels 2..4 are categories 1..3


@pytest.mark.parametrize("split", ["valid", "test"])
def test_items_match_the_json(split: str) -> None:
    data = json.loads(_ann(split).read_text())
    ds = CocoDetection(ROOT / split, _ann(split), with_masks=True)
    image, t = ds[0]
    anns = [a for a in data["annotations"] if a["image_id"] == t["image_id"]]
    assert t["image_id"] == 0 and image.shape == (3, 640, 640)
    assert [ds.cat_ids[label - 1] for label in t["labels"].tolist()] == [a["category_id"] for a in anns]
    assert t["masks"].shape == (len(anns), 640, 640) and (t["masks"].flatten(1).sum(1) > 0).all()
    for box, a in zip(t["boxes"].tolist(), anns):
        x, y, w, h = a["bbox"]
        assert box == pytest.approx([x, y, min(x + w, 640), min(y + h, 640)], abs=1e-3)


def _check(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["data", "check", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _flags(train: str | None, val: str) -> list[str]:
    flags = ["--val-ann", str(_ann(val)), "--val-images", str(ROOT / val)]
    if train:
        flags += ["--train-ann", str(_ann(train)), "--train-images", str(ROOT / train)]
    return flags


@pytest.mark.parametrize("task", ["detection", "instance"])
def test_data_check_json(task: str, capsys: pytest.CaptureFixture) -> None:
    report = _check(capsys, "--task", task, *_flags("train", "valid"))
    assert report["task"] == task and report["ok"] and report["shared_images"] == []
    for name, split in (("train", "train"), ("val", "valid")):
        images, per, total = _plain_counts(split)
        rep = report["splits"][name]
        assert rep["source"] == str(_ann(split))
        assert (rep["images"], rep["annotations"], rep["annotations_used"], rep["annotations_rejected"]) == (images, total, total, 0)
        assert rep["rejected_reasons"] == {} and rep["per_category"] == {str(c): n for c, n in per.items()}
        assert rep["categories"] == {str(c): n for c, n in zip(CAT_IDS, NAMES)} and rep["empty_categories"] == [0]
        assert rep["image_sizes"] == {"640x640": images} and rep["duplicates"] == [] and rep["errors"] == []
    test = _check(capsys, "--task", task, *_flags(None, "test"))["splits"]
    assert list(test) == ["val"] and test["val"]["per_category"] == {"0": 0, "1": 2, "2": 16, "3": 18}


@pytest.mark.parametrize("task, losses", [("detection", ("bbox_regression", "classification")),
                                          ("instance", ("loss_box_reg", "loss_classifier", "loss_mask"))])  # fmt: skip
def test_train_two_steps_and_evaluate(task: str, losses: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    argv = ["train", "--task", task, "--model", "bicsnet_48_tiny", "--img-size", "128", "--set", "width_mult=0.125",
            *_flags("train", "valid"), "--batch-size", "2", "--max-steps", "2", "--log-every", "1", "--workers", "0",
            "--device", "cpu", "--out", str(out)]  # fmt: skip
    if task == "instance":  # an untrained Mask R-CNN keeps 100 detections, each pasted as a 640x640 mask: slow on a CPU
        argv += ["--set", "box_detections_per_img=10"]
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"data train: 117 images, 429 annotations used, 0 rejected - {_ann('train')}" in printed
    assert "no samples (kept, ids unchanged): 0 Strawberry-Plants-Parts" in printed
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2]
    for r in rows:
        assert all(math.isfinite(float(r[k])) for k in ("loss", *losses)), r
        assert float(r[losses[0]]) > 0  # there were boxes to learn from
    metrics = json.loads((out / "metrics.json").read_text())
    headline = metrics["segm" if task == "instance" else "bbox"]
    assert math.isfinite(headline["AP"])
    per_class = {c["category_id"]: c for c in metrics["bbox"].get("per_class", [])}
    if per_class:  # the dataset's own ids; the placeholder has no ground truth (-1, as pycocotools)
        assert sorted(per_class) == CAT_IDS and per_class[0]["AP"] == -1

    if task == "detection":  # the held-out split, through bicsnet eval
        capsys.readouterr()
        assert main(["eval", "--checkpoint", str(out), *_flags(None, "test"), "--workers", "0", "--device", "cpu",
                     "--out", str(tmp_path / "test_eval")]) == 0  # fmt: skip
        test_metrics = json.loads((tmp_path / "test_eval" / "metrics.json").read_text())
        assert math.isfinite(test_metrics["bbox"]["AP"])
        detections = json.loads((tmp_path / "test_eval" / "detections.json").read_text())
        assert {d["image_id"] for d in detections} <= set(range(6)) and {d["category_id"] for d in detections} <= set(CAT_IDS)
