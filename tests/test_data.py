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
from bicsnet.errors import DataError

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
        ds = CocoDetection(tmp_path, ann_file)
    assert [r.name for r in caplog.records] == ["bicsnet.data"]
    assert "dropped 2 degenerate" in caplog.text and "skipped 1" in caplog.text
    _, t = ds[0]
    assert t["boxes"].tolist() == [[0.0, 2.0, 15.0, 12.0]] and t["labels"].tolist() == [1]
    with pytest.raises(DataError, match="annotation id 4"):
        CocoDetection(tmp_path, ann_file, skip_bad=False)


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
    ann_file = _write_coco(tmp_path / "ann.json", [{"id": 1, "file_name": "broken.jpg", "height": 4, "width": 4}], [])
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
