"""Tests for bicsnet.data: synthetic generator, datasets, transforms, collation, bad inputs."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from bicsnet.data import (
    CocoDetection,
    ImageFolderDataset,
    VOCSegmentation,
    classification_collate,
    classification_eval_transforms,
    classification_train_transforms,
    detection_collate,
    detection_eval_transforms,
    detection_train_transforms,
    load_image,
    segmentation_collate,
    segmentation_train_transforms,
)
from bicsnet.data.synthetic import CAT_IDS, CLASSES, generate
from bicsnet.errors import ConfigError, DataError

# pycocotools calls numpy with copy=False internally; harmless, but it floods the output.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn.t accept a copy keyword:DeprecationWarning")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate(tmp_path_factory.mktemp("synth"), num_train=10, num_val=6, img_size=128, seed=3)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _raw_anns(ann_file: Path) -> dict[int, list[dict]]:
    data = json.loads(ann_file.read_text())
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in data["images"]}
    for a in data["annotations"]:
        by_image[a["image_id"]].append(a)
    return by_image


# ----------------------------------------------------------------------------- generator
def test_generator_is_deterministic(tmp_path: Path) -> None:
    kw = dict(num_train=3, num_val=2, img_size=64)
    a = _tree(generate(tmp_path / "a", seed=5, **kw)["root"])
    b = _tree(generate(tmp_path / "b", seed=5, **kw)["root"])
    c = _tree(generate(tmp_path / "c", seed=6, **kw)["root"])
    assert len(a) > 20 and a == b
    assert a.keys() == c.keys() and any(a[k] != c[k] for k in a)


def test_generator_reuses_and_regenerates(tmp_path: Path) -> None:
    paths = generate(tmp_path, num_train=2, num_val=1, img_size=64, kinds=("coco",))
    ann = paths["coco_train_ann"]
    stamp = ann.stat().st_mtime_ns
    assert generate(tmp_path, num_train=2, num_val=1, img_size=64, kinds=("coco",))["coco_train_ann"] == ann
    assert ann.stat().st_mtime_ns == stamp  # reused, not rewritten
    generate(tmp_path, num_train=3, num_val=1, img_size=64, kinds=("coco",))
    assert len(json.loads(ann.read_text())["images"]) == 3
    assert json.loads((tmp_path / "synth.json").read_text())["params"]["num_train"] == 3


def test_generator_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "coco").mkdir()
    with pytest.raises(DataError, match="refusing"):
        generate(tmp_path, num_train=1, num_val=1, img_size=64)


def test_generated_coco_content(synth: dict[str, Path]) -> None:
    data = json.loads(synth["coco_train_ann"].read_text())
    assert [c["id"] for c in data["categories"]] == list(CAT_IDS)
    segs = [a["segmentation"] for a in data["annotations"]]
    assert any(isinstance(s, list) for s in segs)
    assert any(isinstance(s, dict) and isinstance(s["counts"], str) for s in segs)
    assert any(isinstance(s, dict) and isinstance(s["counts"], list) for s in segs)
    areas = [a["area"] for a in data["annotations"] if not a["iscrowd"]]
    assert min(areas) < 32**2 <= max(areas)  # small and medium objects at 128 px
    counts = _raw_anns(synth["coco_train_ann"])
    assert any(len(v) == 0 for v in counts.values()) and max(len(v) for v in counts.values()) >= 3


# ----------------------------------------------------------------------------- COCO dataset
def test_coco_category_mapping_round_trip(synth: dict[str, Path]) -> None:
    ds = CocoDetection(synth["coco_train_images"], synth["coco_train_ann"])
    assert ds.cat_ids == list(CAT_IDS) and ds.class_names == list(CLASSES)
    raw = _raw_anns(synth["coco_train_ann"])
    assert ds.ids == sorted(raw)
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.dtype == torch.float32 and image.shape[0] == 3
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert tuple(target["orig_size"].tolist()) == tuple(image.shape[1:])
        expected = [a["category_id"] for a in raw[target["image_id"]] if not a["iscrowd"]]
        assert [ds.cat_ids[label - 1] for label in target["labels"].tolist()] == expected
        assert target["labels"].dtype == torch.int64 and target["iscrowd"].tolist() == [0] * len(expected)


def test_coco_masks_decode_to_visible_area(synth: dict[str, Path]) -> None:
    ds = CocoDetection(synth["coco_train_images"], synth["coco_train_ann"], with_masks=True)
    raw = _raw_anns(synth["coco_train_ann"])
    checked = 0
    for i in range(len(ds)):
        image, target = ds[i]
        masks, boxes = target["masks"], target["boxes"]
        assert masks.dtype == torch.uint8 and masks.shape == (len(boxes), *image.shape[1:])
        anns = [a for a in raw[target["image_id"]] if not a["iscrowd"]]
        for m, box, ann in zip(masks, boxes, anns):
            assert int(m.sum()) == ann["area"]
            ys, xs = torch.nonzero(m, as_tuple=True)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
            checked += 1
    assert checked > 10


def test_coco_crowd_and_empty_images(synth: dict[str, Path]) -> None:
    ds = CocoDetection(synth["coco_train_images"], synth["coco_train_ann"], with_masks=True)
    raw = _raw_anns(synth["coco_train_ann"])
    crowd_seen = empty_seen = False
    for i, image_id in enumerate(ds.ids):
        n_crowd = sum(a["iscrowd"] for a in raw[image_id])
        if n_crowd or not raw[image_id]:
            _, t = ds[i]
            assert t["crowd_boxes"].shape == (n_crowd, 4)
            assert len(t["boxes"]) == len(raw[image_id]) - n_crowd
            crowd_seen |= n_crowd > 0
            if not raw[image_id]:
                empty_seen = True
                assert t["boxes"].shape == (0, 4) and t["boxes"].dtype == torch.float32
                assert t["labels"].shape == (0,) and t["masks"].shape[0] == 0
    assert crowd_seen and empty_seen


def _write_coco(path: Path, images: list[dict], anns: list[dict], cats: list[dict] | None = None) -> Path:
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats or [{"id": 7, "name": "thing"}]}))
    return path


def test_coco_clips_and_drops_degenerate_boxes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "a.png")
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [-5, 2, 20, 10]},  # clipped to x >= 0
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [10, 10, 0.5, 8]},  # too thin: dropped
        {"id": 3, "image_id": 1, "category_id": 7, "bbox": [50, 0, 10, 10]},  # outside: dropped
        {"id": 4, "image_id": 9, "category_id": 7, "bbox": [1, 1, 5, 5]},  # unknown image: skipped
    ]
    ann_file = _write_coco(tmp_path / "ann.json", [{"id": 1, "file_name": "a.png", "height": 30, "width": 40}], anns)
    with caplog.at_level(logging.INFO, logger="bicsnet.data"):
        ds = CocoDetection(tmp_path, ann_file, max_skipped=1.0)  # 3 of 4 rejected: past the default floor
    assert [r.name for r in caplog.records] == ["bicsnet.data"]
    assert "dropped 2 degenerate" in caplog.text and "skipped 1" in caplog.text
    _, t = ds[0]
    assert t["boxes"].tolist() == [[0.0, 2.0, 15.0, 12.0]] and t["labels"].tolist() == [1]
    assert (ds.num_annotations, ds.num_used, ds.num_rejected) == (4, 1, 3)
    assert ds.rejected_reasons == {"degenerate box": 2, "unknown image_id": 1}
    with pytest.raises(DataError, match="annotation id 4"):
        CocoDetection(tmp_path, ann_file, skip_bad=False)
    with pytest.raises(DataError, match=r"ann\.json: 3 of 4 annotations \(75%\) rejected, more than --max-skipped 5%: "
                                        r"degenerate box \(2\), unknown image_id \(1\)$"):
        CocoDetection(tmp_path, ann_file)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"images": [], "annotations": []}', "categories"),
        ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list"),
        (
            '{"images": [{"id": 1, "file_name": "a", "height": 2, "width": 2}, {"id": 1, "file_name": "b", "height": 2, "width": 2}],'
            ' "annotations": [], "categories": [{"id": 1, "name": "x"}]}',
            "duplicate image id 1",
        ),
        (
            '{"images": [{"id": 1, "file_name": "a", "height": 2, "width": 2}], "categories": [{"id": 1, "name": "x"}],'
            ' "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]},'
            ' {"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]}',
            "duplicate annotation id 5",
        ),
    ],
)
def test_coco_bad_json_names_file(tmp_path: Path, content: str, message: str) -> None:
    ann_file = tmp_path / "bad_instances.json"
    ann_file.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        CocoDetection(tmp_path, ann_file)
    assert "bad_instances.json" in str(info.value) and "\n" not in str(info.value)


def test_coco_corrupt_image_names_file(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    anns = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 3, 3]}]
    ann_file = _write_coco(tmp_path / "ann.json", [{"id": 1, "file_name": "broken.jpg", "height": 4, "width": 4}], anns)
    ds = CocoDetection(tmp_path, ann_file)
    with pytest.raises(DataError, match="broken.jpg"):
        ds[0]


# ----------------------------------------------------------------------------- image loading
def test_load_image_modes_and_exif(tmp_path: Path) -> None:
    Image.new("L", (5, 3), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (5, 3), (255, 0, 0, 10)).save(tmp_path / "rgba.png")
    Image.new("CMYK", (5, 3), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.full((3, 5), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    p = Image.new("P", (5, 3), 1)
    p.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    p.save(tmp_path / "pal.png")
    rotated = Image.new("RGB", (6, 2), (0, 255, 0))
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    rotated.save(tmp_path / "exif.jpg", exif=exif.tobytes())

    for name in ("gray.png", "rgba.png", "cmyk.jpg", "deep.png", "pal.png"):
        img = load_image(tmp_path / name)
        assert img.shape == (3, 3, 5) and img.dtype == torch.float32, name
    assert torch.allclose(load_image(tmp_path / "gray.png"), torch.full((3, 3, 5), 128 / 255))
    assert load_image(tmp_path / "rgba.png")[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert load_image(tmp_path / "deep.png").min() == 1.0
    assert load_image(tmp_path / "pal.png")[:, 0, 0].tolist() == [0.0, 0.0, 1.0]
    assert load_image(tmp_path / "exif.jpg").shape == (3, 6, 2)


def test_load_image_bad_files_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    for name in ("missing.jpg", "empty.jpg", "text.png", "cut.jpg"):
        with pytest.raises(DataError) as info:
            load_image(tmp_path / name)
        assert name in str(info.value)


# ----------------------------------------------------------------------------- transforms
def test_lsj_geometry_is_exact() -> None:
    image = tv_tensors.Image(torch.rand(3, 40, 80))
    target = {
        "boxes": tv_tensors.BoundingBoxes([[0.0, 0.0, 20.0, 10.0]], format="XYXY", canvas_size=(40, 80)),
        "crowd_boxes": tv_tensors.BoundingBoxes([[40.0, 20.0, 80.0, 40.0]], format="XYXY", canvas_size=(40, 80)),
        "labels": torch.tensor([3]),
        "masks": tv_tensors.Mask(torch.ones(1, 40, 80, dtype=torch.uint8)),
    }
    # Scale 1 puts the long side at 64: 32x64, padded at the bottom, then flipped.
    out_img, out = detection_train_transforms(64, scale_range=(1.0, 1.0), hflip=1.0)(image, target)
    assert out_img.shape == (3, 64, 64)
    assert out_img[:, 32:].abs().sum() == 0 and out_img[:, :32].abs().sum() > 0
    assert out["boxes"].tolist() == [[48.0, 0.0, 64.0, 8.0]]
    assert out["crowd_boxes"].tolist() == [[0.0, 16.0, 32.0, 32.0]]
    assert out["masks"].shape == (1, 64, 64) and out["masks"][0, 32:].sum() == 0


def test_lsj_drops_cropped_out_boxes_consistently(synth: dict[str, Path]) -> None:
    ds = CocoDetection(synth["coco_train_images"], synth["coco_train_ann"], with_masks=True, transforms=detection_train_transforms(64))
    torch.manual_seed(0)
    dropped = False
    for epoch in range(3):
        for i in range(len(ds)):
            image, t = ds[i]
            assert type(image) is torch.Tensor and image.shape == (3, 64, 64)
            n = len(t["boxes"])
            assert t["labels"].shape == (n,) and t["iscrowd"].shape == (n,) and t["masks"].shape == (n, 64, 64)
            if n:
                b = t["boxes"]
                assert (b >= 0).all() and (b <= 64).all() and ((b[:, 2:] - b[:, :2]) > 1).all()
            dropped |= n < len(ds._targets[i].labels)
    assert dropped


def test_segmentation_transforms_pad_mask_with_ignore() -> None:
    image = tv_tensors.Image(torch.rand(3, 20, 30))
    mask = tv_tensors.Mask(torch.randint(0, 3, (20, 30)))
    out_img, out_mask = segmentation_train_transforms(crop=48, scale_range=(1.0, 1.0), hflip=0.0)(image, mask)
    assert out_img.shape == (3, 48, 48) and out_mask.shape == (48, 48)
    assert (out_mask[32:] == 255).all() and out_img[:, 32:].abs().sum() == 0
    assert set(out_mask[:32].unique().tolist()) <= {0, 1, 2}


def test_classification_and_eval_transforms() -> None:
    img = torch.rand(3, 50, 70)
    assert classification_train_transforms(32)(img).shape == (3, 32, 32)
    out = classification_eval_transforms(32)(img)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32 and out.max() <= 1.0
    target = {"boxes": tv_tensors.BoundingBoxes([[1.0, 2.0, 3.0, 4.0]], format="XYXY", canvas_size=(50, 70))}
    same_img, same_t = detection_eval_transforms()(tv_tensors.Image(img), target)
    assert torch.equal(same_img, img) and same_t["boxes"].tolist() == [[1.0, 2.0, 3.0, 4.0]]


# ----------------------------------------------------------------------------- VOC / folder
def test_voc_dataset_loads(synth: dict[str, Path]) -> None:
    ds = VOCSegmentation(synth["voc_root"], split="val")
    assert ds.num_classes == len(CLASSES) + 1 and ds.class_names == ["background", *CLASSES]
    assert len(ds) == 6
    values: set[int] = set()
    for i in range(len(ds)):
        image, mask = ds[i]
        assert mask.dtype == torch.int64 and mask.shape == image.shape[1:]
        values |= set(mask.unique().tolist())
    assert 0 in values and 255 in values and values <= set(range(ds.num_classes)) | {255}
    aug = VOCSegmentation(synth["voc_root"], split="train", transforms=segmentation_train_transforms(crop=64))
    image, mask = aug[0]
    assert type(mask) is torch.Tensor and image.shape == (3, 64, 64) and mask.shape == (64, 64)


def test_voc_bad_masks_name_the_file(tmp_path: Path) -> None:
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp_path / sub).mkdir(parents=True)
    Image.new("RGB", (8, 6)).save(tmp_path / "JPEGImages" / "a.jpg")
    Image.new("RGB", (8, 6)).save(tmp_path / "JPEGImages" / "b.jpg")
    Image.fromarray(np.full((6, 8), 40, dtype=np.uint8)).save(tmp_path / "SegmentationClass" / "a.png")
    Image.fromarray(np.zeros((5, 8), dtype=np.uint8)).save(tmp_path / "SegmentationClass" / "b.png")
    (tmp_path / "ImageSets/Segmentation/train.txt").write_text("a\nb\n")
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("a\nmissing\n")
    ds = VOCSegmentation(tmp_path, split="train")
    with pytest.raises(DataError, match=r"a\.png: label 40 outside"):
        ds[0]
    with pytest.raises(DataError, match=r"b\.png: mask is 8x5"):
        ds[1]
    with pytest.raises(DataError, match=r"missing\.jpg"):
        VOCSegmentation(tmp_path, split="val")
    (tmp_path / "aug.txt").write_text("/JPEGImages/b.jpg /SegmentationClass/a.png\n")  # DeepLab-style list
    assert VOCSegmentation(tmp_path, list_file=tmp_path / "aug.txt").samples == [
        (tmp_path / "JPEGImages" / "b.jpg", tmp_path / "SegmentationClass" / "a.png")
    ]


def test_folder_dataset(synth: dict[str, Path], tmp_path: Path) -> None:
    ds = ImageFolderDataset(synth["folder_val"], transforms=classification_eval_transforms(24))
    assert ds.classes == sorted(CLASSES) and ds.num_classes == len(CLASSES)
    image, label = ds[0]
    assert image.shape == (3, 24, 24) and isinstance(label, int) and 0 <= label < ds.num_classes
    assert set(ds.targets) == set(range(ds.num_classes))
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "cat" / "x.png")
    with pytest.raises(DataError, match="dog"):
        ImageFolderDataset(tmp_path)


# ----------------------------------------------------------------------------- collation
def test_collates_pad_and_stack() -> None:
    a = (torch.ones(3, 4, 5), torch.ones(4, 5, dtype=torch.int64))
    b = (torch.ones(3, 6, 3), torch.full((6, 3), 2, dtype=torch.int64))
    images, masks = segmentation_collate([a, b])
    assert images.shape == (2, 3, 6, 5) and masks.shape == (2, 6, 5) and masks.dtype == torch.int64
    assert images[0, :, 4:].sum() == 0 and images[1, :, :, 3:].sum() == 0 and images[0, :, :4].sum() == 60
    assert (masks[0, 4:] == 255).all() and (masks[1, :, 3:] == 255).all() and (masks[1, :, :3] == 2).all()
    imgs, targets = detection_collate([(torch.zeros(3, 4, 5), {"a": 1}), (torch.zeros(3, 2, 2), {"a": 2})])
    assert isinstance(imgs, list) and [t["a"] for t in targets] == [1, 2]
    x, y = classification_collate([(torch.zeros(3, 2, 2), 1), (torch.ones(3, 2, 2), 4)])
    assert x.shape == (2, 3, 2, 2) and y.tolist() == [1, 4] and y.dtype == torch.int64


# ----------------------------------------------------------------------------- COCO exports as exported
def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, list[str]]:
    """Run the real CLI in-process: (exit status, stdout, non-empty stderr lines)."""
    from bicsnet.cli.main import main

    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def _box_only(src: Path, dst: Path) -> Path:
    """``src`` as a box-only tool writes it: every annotation has ``"segmentation": []``."""
    data = json.loads(src.read_text())
    for a in data["annotations"]:
        a["segmentation"] = []
    dst.write_text(json.dumps(data))
    return dst


def _tiny_train(task: str, train: tuple[Path, Path], val: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    return ["train", "--task", task, "--model", "bicsnet_48_tiny", "--img-size", "64", "--set", "width_mult=0.125",
            "--train-ann", str(train[0]), "--train-images", str(train[1]), "--val-ann", str(val[0]),
            "--val-images", str(val[1]), "--batch-size", "2", "--max-steps", "2", "--log-every", "1", "--workers", "0",
            "--device", "cpu", "--out", str(out), *extra]  # fmt: skip


def test_box_only_coco_trains_detection_and_refuses_masks(synth: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import csv
    import math

    train_ann = _box_only(synth["coco_train_ann"], tmp_path / "box_train.json")
    val_ann = _box_only(synth["coco_val_ann"], tmp_path / "box_val.json")
    raw = json.loads(train_ann.read_text())
    n = len(raw["annotations"])
    assert n >= 10 and all(a["segmentation"] == [] for a in raw["annotations"])

    # Detection never reads 'segmentation': every box is used.
    ds = CocoDetection(synth["coco_train_images"], train_ann)
    assert (ds.num_annotations, ds.num_used, ds.num_rejected, ds.skipped) == (n, n, 0, [])
    assert sum(len(t.labels) + len(t.crowd_boxes) for t in ds._targets) == n
    per_cat = {c: sum(a["category_id"] == c for a in raw["annotations"]) for c in CAT_IDS}
    assert ds.per_category == per_cat

    # Instance segmentation needs masks: the same file is one error naming it, not an empty run.
    with pytest.raises(DataError) as info:
        CocoDetection(synth["coco_train_images"], train_ann, with_masks=True)
    message = str(info.value)
    assert message.startswith(f"{train_ann}: no usable annotation: all {n} rejected: no mask ({n})") and "\n" not in message

    train, val = (train_ann, synth["coco_train_images"]), (val_ann, synth["coco_val_images"])
    code, out, err = _cli(_tiny_train("detection", train, val, tmp_path / "det"), capsys)
    assert code == 0, err[-5:]
    assert f"data train: 10 images, {n} annotations used, 0 rejected - {train_ann}" in out
    with open(tmp_path / "det" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2]
    for r in rows:  # finite losses, and boxes to regress (zero boxes would give a zero box loss)
        assert math.isfinite(float(r["loss"])) and float(r["bbox_regression"]) > 0
    assert (tmp_path / "det" / "metrics.json").is_file()

    code, out, err = _cli(_tiny_train("instance", train, val, tmp_path / "inst"), capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("bicsnet train: error: ") and "box_" in err[0] and "no usable annotation" in err[0]
    assert "no mask" in err[0] and "--task detection" in err[0]


def test_placeholder_category_subfolders_and_zero_ids(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from bicsnet.data.check import summarize
    from bicsnet.data.spec import DataSpec
    from bicsnet.metrics.coco import detections_to_coco_results
    from bicsnet.tasks import get_task

    (tmp_path / "img" / "sub" / "dir").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "img" / "sub" / "dir" / "a.png")
    Image.new("RGB", (40, 30), (10, 200, 10)).save(tmp_path / "img" / "b.png")
    images = [{"id": 0, "file_name": "sub/dir/a.png", "height": 30, "width": 40},
              {"id": 1, "file_name": "b.png", "height": 30, "width": 40}]  # fmt: skip
    # A Roboflow-style export: the supercategory as category 0, which no annotation uses.
    cats = [{"id": 0, "name": "parts", "supercategory": "none"}, {"id": 1, "name": "flower", "supercategory": "parts"},
            {"id": 2, "name": "fruit", "supercategory": "parts"}]  # fmt: skip
    square = [[1, 1, 11, 1, 11, 11, 1, 11]]
    anns = [{"id": 0, "image_id": 0, "category_id": 2, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0, "segmentation": square},
            {"id": 1, "image_id": 0, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0, "segmentation": square},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0, "segmentation": square}]  # fmt: skip
    ann_file = _write_coco(tmp_path / "export.json", images, anns, cats)

    ds = CocoDetection(tmp_path / "img", ann_file, with_masks=True)
    assert ds.cat_ids == [0, 1, 2] and ds.class_names == ["parts", "flower", "fruit"]
    assert ds.per_category == {0: 0, 1: 1, 2: 2} and ds.empty_categories == [0]
    assert ds.ids == [0, 1]
    image, t = ds[0]  # from the sub-folder
    assert t["image_id"] == 0 and image.shape == (3, 30, 40) and float(image[0].mean()) > 0.7
    assert [ds.cat_ids[label - 1] for label in t["labels"].tolist()] == [2, 1]
    assert t["masks"].sum(dim=(1, 2)).tolist() == [100, 100]
    # What a model predicts maps back to the dataset's own ids (the placeholder shifts nothing).
    pred = {"boxes": torch.tensor([[1.0, 1, 11, 11], [2, 2, 9, 9]]), "scores": torch.tensor([0.9, 0.8]), "labels": t["labels"]}
    assert [r["category_id"] for r in detections_to_coco_results([pred], [0], ds.cat_ids)] == [2, 1]

    spec = DataSpec(train_ann=str(ann_file), train_images=str(tmp_path / "img"), val_ann=str(ann_file),
                    val_images=str(tmp_path / "img"))  # fmt: skip
    data = get_task("instance").load_data(spec, 64)
    assert data.num_classes == 3 and data.extra_meta["cat_ids"] == [0, 1, 2]
    report = summarize(data, "instance")
    assert report.splits["train"].empty_categories == [0]
    assert "no samples (kept, ids unchanged): 0 parts" in report.format(brief=True)

    flags = ["--val-ann", str(ann_file), "--val-images", str(tmp_path / "img")]
    code, out, err = _cli(["data", "check", "--task", "detection", *flags], capsys)
    assert code == 0 and "no samples: 0 parts" in out and "duplicate images: none" in out
    # The same file listed by two image records is a duplicate.
    _write_coco(ann_file, [*images, {"id": 2, "file_name": "./b.png", "height": 30, "width": 40}], anns, cats)
    code, out, err = _cli(["data", "check", "--task", "detection", *flags, "--json"], capsys)
    val = json.loads(out)["splits"]["val"]
    assert code == 0 and val["images"] == 3 and val["duplicates"] == [[str(tmp_path / "img" / "b.png")] * 2]
    assert val["per_category"] == {"0": 0, "1": 1, "2": 2} and val["empty_categories"] == [0]


def _floor_file(tmp_path: Path, good: int, bad: int) -> tuple[Path, Path]:
    """One 40x30 image with ``good`` valid polygons and ``bad`` polygons with an odd number of coordinates."""
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", (40, 30)).save(tmp_path / "img" / "a.png")
    anns = []
    for i in range(good + bad):
        seg = [[1, 1, 11, 1, 11, 11, 1, 11]] if i < good else [[1, 1, 11, 1, 11]]
        anns.append({"id": i + 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0, "segmentation": seg})
    ann = _write_coco(tmp_path / f"floor_{good}_{bad}.json", [{"id": 1, "file_name": "a.png", "height": 30, "width": 40}], anns)
    return ann, tmp_path / "img"


def test_skipped_records_floor(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ann, img = _floor_file(tmp_path, good=5, bad=5)
    with pytest.raises(DataError) as info:
        CocoDetection(img, ann, with_masks=True)
    assert str(info.value) == f"{ann}: 5 of 10 annotations (50%) rejected, more than --max-skipped 5%: bad polygon (5)"
    ds = CocoDetection(img, ann, with_masks=True, max_skipped=0.6)
    assert (ds.num_used, ds.num_rejected, ds.rejected_reasons) == (5, 5, {"bad polygon": 5})
    assert CocoDetection(img, ann).num_used == 10  # boxes only: the polygons are not read
    with pytest.raises(ConfigError, match="--max-skipped 1.5"):
        CocoDetection(img, ann, max_skipped=1.5)

    none_ok, _ = _floor_file(tmp_path, good=0, bad=4)
    with pytest.raises(DataError, match=r"floor_0_4\.json: no usable annotation: all 4 rejected: bad polygon \(4\)$"):
        CocoDetection(img, none_ok, with_masks=True, max_skipped=1.0)
    empty = _write_coco(tmp_path / "empty.json", [{"id": 1, "file_name": "a.png", "height": 30, "width": 40}], [])
    with pytest.raises(DataError, match=r"empty\.json: no annotations"):
        CocoDetection(img, empty, max_skipped=None)
    crowd = _write_coco(tmp_path / "crowd.json", [{"id": 1, "file_name": "a.png", "height": 30, "width": 40}],
                        [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 10, 10], "iscrowd": 1}])  # fmt: skip
    with pytest.raises(DataError, match=r"crowd\.json: no usable annotation: the 1 used are all crowd regions"):
        CocoDetection(img, crowd)

    # Through the CLI: one line and exit 2; --max-skipped lets the split through.
    flags = ["--task", "instance", "--val-ann", str(ann), "--val-images", str(img)]
    code, out, err = _cli(["data", "check", *flags, "--json"], capsys)
    assert code == 2 and out == "" and err == [f"bicsnet data: error: {ann}: 5 of 10 annotations (50%) rejected, "
                                               "more than --max-skipped 5%: bad polygon (5)"]  # fmt: skip
    code, out, err = _cli(["data", "check", *flags, "--json", "--max-skipped", "0.6"], capsys)
    val = json.loads(out)["splits"]["val"]
    assert code == 0 and (val["images"], val["annotations_used"], val["annotations_rejected"]) == (1, 5, 5)
    assert val["rejected_reasons"] == {"bad polygon": 5} and val["per_category"] == {"7": 5}
    code, out, err = _cli(["data", "check", "--task", "instance", "--val-ann", str(none_ok), "--val-images", str(img),
                           "--max-skipped", "1"], capsys)  # fmt: skip
    assert code == 2 and len(err) == 1 and "no usable annotation" in err[0]
    code, out, err = _cli(_tiny_train("instance", (ann, img), (ann, img), tmp_path / "out"), capsys)
    assert code == 2 and len(err) == 1 and "5 of 10 annotations (50%) rejected" in err[0]
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_data_check_folder_and_voc(synth: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    root = tmp_path / "folder"
    shutil.copytree(synth["folder_train"], root / "train")
    shutil.copytree(synth["folder_val"], root / "val")
    first = sorted((root / "train" / CLASSES[0]).iterdir())[0]
    shutil.copy(first, first.with_name("copy_" + first.name))  # the same image twice, under two names
    leaked = sorted((root / "val" / CLASSES[1]).iterdir())[0]
    shutil.copy(leaked, root / "train" / CLASSES[1] / "leak.png")  # a validation image in the training set
    code, out, err = _cli(["data", "check", "--task", "classification", "--data", str(root), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    classes = sorted(CLASSES)
    for split in ("train", "val"):
        rep = report["splits"][split]
        files = {c: sorted((root / split / c).iterdir()) for c in classes}
        assert rep["images"] == rep["annotations_used"] == sum(len(v) for v in files.values())
        assert rep["per_category"] == {str(i): len(files[c]) for i, c in enumerate(classes)}
        assert sum(rep["image_sizes"].values()) == rep["images"]
    assert report["splits"]["train"]["duplicates"] == [sorted([str(first), str(first.with_name("copy_" + first.name))])]
    assert report["splits"]["val"]["duplicates"] == []
    assert report["shared_images"] == [f"{leaked} (val) = {root / 'train' / CLASSES[1] / 'leak.png'} (train)"]

    voc = synth["voc_root"]
    code, out, err = _cli(["data", "check", "--task", "segmentation", "--data", str(voc), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    for split in ("train", "val"):
        names = (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        present = [set(np.unique(np.asarray(Image.open(voc / "SegmentationClass" / f"{n}.png"))).tolist()) - {255} for n in names]
        rep = report["splits"][split]
        assert rep["images"] == rep["annotations_used"] == len(names) and rep["annotations_rejected"] == 0
        assert rep["per_category"] == {str(c): sum(c in p for p in present) for c in range(len(CLASSES) + 1)}
    # A label outside the classes would stop training: reported, exit 2 with one line.
    name = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    bad = tmp_path / "voc"
    shutil.copytree(voc, bad)
    mask = np.asarray(Image.open(bad / "SegmentationClass" / f"{name}.png")).copy()
    mask[0, 0] = 40
    Image.fromarray(mask).save(bad / "SegmentationClass" / f"{name}.png")
    code, out, err = _cli(["data", "check", "--task", "segmentation", "--data", str(bad)], capsys)
    assert code == 2 and len(err) == 1 and f"{name}.png: label 40 outside" in err[0], err
    assert "error:" in out and "per category (masks containing the class)" in out


def test_invalid_area_becomes_the_box_area(tmp_path: Path) -> None:
    """'area' is read only by COCO evaluation (small/medium/large): a bad one costs no record."""
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    anns = [{"id": 0, "image_id": 0, "category_id": 7, "bbox": [1, 1, 10, 10], "area": -3},
            {"id": 1, "image_id": 0, "category_id": 7, "bbox": [1, 1, 5, 10], "area": "big"},
            {"id": 2, "image_id": 0, "category_id": 7, "bbox": [1, 1, 4, 4]}]  # fmt: skip
    ds = CocoDetection(tmp_path, _write_coco(tmp_path / "a.json", [{"id": 0, "file_name": "a.png", "height": 30, "width": 40}], anns))
    assert (ds.num_used, ds.num_rejected, ds.area_replaced) == (3, 0, [0, 1])
    assert [ds.coco.anns[i]["area"] for i in (0, 1, 2)] == [100.0, 50.0, 16.0]
