"""Semantic segmentation on your own masks: a mask folder, split lists, class names, an ignore value.

Real data: the Stanford Background Dataset (Gould, Fulton, Koller, "Decomposing a
Scene into Geometric and Semantically Consistent Regions", ICCV 2009) in
``shared/data/stanford_background`` (see its README): 8 classes, unknown pixels
stored as 15, the 10 / 2 image subset. Those tests skip when the folder is absent;
the bad-mask tests build their own files.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from bicsnet.cli.main import main
from bicsnet.data import SegmentationFolder
from bicsnet.data.spec import DataSpec
from bicsnet.engine.checkpoint import read_model_meta
from bicsnet.errors import ConfigError, DataError
from bicsnet.models import load_checkpoint_model
from bicsnet.tasks import get_task

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stanford_background"
needs_sb = pytest.mark.skipif(not SB.is_dir(), reason=f"real data not present: {SB} (shared/data, see its README)")

CLASSES = ["sky", "tree", "road", "grass", "water", "building", "mountain", "foreground object"]
UNKNOWN = 15  # Stanford Background's value of unlabelled pixels
# The two validation masks (splits/val.txt), counted once with PIL + numpy (the test recounts them):
# 2 x 320 x 240 = 153,600 pixels, 10 of them unknown.
VAL_IDS = ["6000294", "6000295"]
VAL_PIXELS = {"sky": 12447, "tree": 34133, "road": 41142, "grass": 0, "water": 0, "building": 51459, "mountain": 0,
              "foreground object": 14409}  # fmt: skip
VAL_IGNORED = 10


@pytest.fixture(scope="module")
def class_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("classes") / "classes.txt"
    path.write_text("\n".join(CLASSES) + "\n")
    return path


def _sb_flags(class_file: Path, train: bool = True) -> list[str]:
    return [
        "--images", str(SB / "images"), "--masks", str(SB / "labels"), "--val-split", str(SB / "splits" / "val.txt"),
        *(["--train-split", str(SB / "splits" / "train.txt")] if train else []),
        "--class-names", str(class_file), "--ignore-index", str(UNKNOWN),
    ]  # fmt: skip


def _count_png(ids: list[str]) -> tuple[dict[str, int], int]:
    """Pixels per class and unknown pixels of label PNGs, straight from the files."""
    counts = np.zeros(256, np.int64)
    for i in ids:
        with Image.open(SB / "labels" / f"{i}.png") as im:
            counts += np.bincount(np.asarray(im).ravel(), minlength=256)
    return {name: int(counts[k]) for k, name in enumerate(CLASSES)}, int(counts[UNKNOWN])


# --------------------------------------------------------------------------- Stanford Background
@needs_sb
def test_stanford_background_through_the_loader(class_file: Path) -> None:
    spec = DataSpec(images=str(SB / "images"), masks=str(SB / "labels"), train_split=str(SB / "splits" / "train.txt"),
                    val_split=str(SB / "splits" / "val.txt"), ignore_index=UNKNOWN, class_names=str(class_file))  # fmt: skip
    data = get_task("segmentation").load_data(spec, 96)
    assert (len(data.train), len(data.val)) == (10, 2)
    assert data.num_classes == 8 and data.class_names == CLASSES
    assert [p.stem for p, _ in data.val.samples] == VAL_IDS
    assert [p.name for p, _ in data.train.samples] == [f"{i}.jpg" for i in (SB / "splits" / "train.txt").read_text().split()]
    assert data.extra_meta["ignore_index"] == UNKNOWN
    with Image.open(SB / "labels" / f"{VAL_IDS[0]}.png") as im:
        assert data.extra_meta["palette"] == np.asarray(im.getpalette()[:24]).reshape(8, 3).tolist()

    assert _count_png(VAL_IDS) == (VAL_PIXELS, VAL_IGNORED)  # the hard-coded counts are the files'
    counts, ignored, total = dict.fromkeys(CLASSES, 0), 0, 0
    for image, mask in data.val:
        assert image.shape == (3, 240, 320) and mask.shape == (240, 320) and mask.dtype == torch.int64
        ignored += int((mask == 255).sum())  # unknown (15) comes out as the pipeline's ignore label
        for k, name in enumerate(CLASSES):
            counts[name] += int((mask == k).sum())
        total += mask.numel()
    assert counts == VAL_PIXELS and ignored == VAL_IGNORED and total == 153_600
    image, mask = data.train[0]  # a training crop
    assert image.shape == (3, 96, 96) and set(mask.unique().tolist()) <= set(range(8)) | {255}


@needs_sb
def test_stanford_background_train_and_eval(class_file: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    run = tmp_path / "run"
    argv = ["train", "--task", "segmentation", "--model", "bicsnet_48_tiny", *_sb_flags(class_file), "--img-size", "96",
            "--batch-size", "2", "--max-steps", "2", "--workers", "0", "--device", "cpu", "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    meta = read_model_meta(run / "model.safetensors")
    assert meta["ignore_index"] == UNKNOWN and meta["class_names"] == CLASSES and meta["num_classes"] == 8
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["ignore_index"] == UNKNOWN
    metrics = json.loads((run / "metrics.json").read_text())
    assert math.isfinite(metrics["mIoU"]) and 0 <= metrics["mIoU"] <= 1
    assert list(metrics["per_class_iou"]) == CLASSES

    out = tmp_path / "eval"
    argv = ["eval", "--checkpoint", str(run), *_sb_flags(class_file, train=False), "--workers", "0", "--device", "cpu",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    evaluated = json.loads((out / "metrics.json").read_text())
    assert list(evaluated["per_class_iou"]) == CLASSES and math.isfinite(evaluated["mIoU"])
    # Without --ignore-index, eval takes the checkpoint's (15): the same metrics.
    flags = _sb_flags(class_file, train=False)[:-2]
    assert main(["eval", "--checkpoint", str(run), *flags, "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "e2")]) == 0
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text()) == evaluated

    # The same numbers from the model's predictions and the PNGs: unknown pixels are in neither.
    model, _ = load_checkpoint_model(run)
    from bicsnet.data import load_image

    cm = np.zeros((8, 8), np.int64)
    with torch.no_grad():
        for i in VAL_IDS:
            pred = model(load_image(SB / "images" / f"{i}.jpg")[None]).argmax(1)[0].numpy()
            with Image.open(SB / "labels" / f"{i}.png") as im:
                gt = np.asarray(im).astype(np.int64)
            keep = gt != UNKNOWN
            np.add.at(cm, (gt[keep], pred[keep]), 1)
    assert cm.sum() == 153_600 - VAL_IGNORED
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    assert evaluated["pixel_acc"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-12)
    assert evaluated["mIoU"] == pytest.approx((np.diag(cm)[union > 0] / union[union > 0]).mean(), abs=1e-12)
    for k, name in enumerate(CLASSES):
        iou = evaluated["per_class_iou"][name]
        assert iou is None if union[k] == 0 else iou == pytest.approx(cm[k, k] / union[k], abs=1e-12)


# --------------------------------------------------------------------------- a mask folder of our own
def _folder(tmp: Path, n: int = 2, size: tuple[int, int] = (40, 32)) -> dict[str, Path]:
    """``n`` images with palette masks of 3 classes (ids a0, a1, ...), an id list and a class file."""
    (tmp / "img").mkdir()
    (tmp / "lab").mkdir()
    rng = np.random.default_rng(0)
    for k in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(tmp / "img" / f"a{k}.jpg")
        mask = Image.fromarray(rng.integers(0, 3, (size[1], size[0]), np.uint8), mode="L").convert("P")
        mask.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0] + [0] * (768 - 9))
        mask.save(tmp / "lab" / f"a{k}.png")
    (tmp / "ids.txt").write_text("".join(f"a{k}\n" for k in range(n)))
    (tmp / "classes.txt").write_text("bg\nred\ngreen\n")
    return {"images": tmp / "img", "masks": tmp / "lab", "list": tmp / "ids.txt", "classes": tmp / "classes.txt"}


def _bad_wrong_size(f: dict[str, Path]) -> Path:
    path = f["masks"] / "a1.png"
    Image.fromarray(np.zeros((31, 40), np.uint8)).save(path)
    return path


def _bad_value(f: dict[str, Path]) -> Path:
    path = f["masks"] / "a1.png"
    arr = np.asarray(Image.open(path)).copy()
    arr[3, 4] = 9  # neither a class (0..2) nor the ignore value (15)
    Image.fromarray(arr).save(path)
    return path


@pytest.mark.parametrize("edit, needle", [(_bad_wrong_size, "mask is 40x31 but image a1.jpg is 40x32"),
                                          (_bad_value, "label 9 outside [0, 3) and not 15 (ignore)")])  # fmt: skip
def test_bad_mask_is_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture, edit, needle: str) -> None:
    f = _folder(tmp_path)
    bad = edit(f)
    argv = ["train", "--task", "segmentation", "--model", "bicsnet_48_tiny", "--set", "width_mult=0.125",
            "--set", "endpoint_channels=16", "--set", "head_channels=16", "--images", str(f["images"]),
            "--masks", str(f["masks"]), "--train-split", str(f["list"]), "--val-split", str(f["list"]),
            "--class-names", str(f["classes"]), "--ignore-index", "15", "--img-size", "32", "--batch-size", "2",
            "--max-steps", "1", "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "run")]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bicsnet train: error: {bad}: {needle}"]
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_mask_folder_lists(tmp_path: Path) -> None:
    f = _folder(tmp_path, n=3)
    Image.open(f["images"] / "a2.jpg").save(f["images"] / "a2.png")  # a second image named a2
    (f["images"] / "a2.jpg").unlink()
    ds = SegmentationFolder(f["images"], f["masks"], f["list"], ["bg", "red", "green"], ignore_index=15)
    assert [p.name for p, _ in ds.samples] == ["a0.jpg", "a1.jpg", "a2.png"] and len(ds) == 3
    assert ds.palette == [[0, 0, 0], [200, 0, 0], [0, 200, 0]]
    # Pairs, relative to the list file's folder (no --images / --masks needed).
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("img/a1.jpg lab/a1.png\n\nimg/a0.jpg lab/a0.png\n")
    ds = SegmentationFolder(None, None, pairs, ["bg", "red", "green"])
    assert ds.samples == [(tmp_path / "img" / "a1.jpg", tmp_path / "lab" / "a1.png"),
                          (tmp_path / "img" / "a0.jpg", tmp_path / "lab" / "a0.png")]  # fmt: skip
    # An ignore value in the files comes out as 255; masks of class indices keep them.
    arr = np.asarray(Image.open(f["masks"] / "a0.png")).copy()
    arr[0, :5] = 15
    Image.fromarray(arr).save(f["masks"] / "a0.png")
    mask = SegmentationFolder(f["images"], f["masks"], f["list"], ["bg", "red", "green"], ignore_index=15)[0][1]
    assert mask[0, :5].tolist() == [255] * 5 and torch.equal(mask[1:], torch.from_numpy(arr[1:].astype(np.int64)))

    (f["list"]).write_text("a0\nnope\n")
    with pytest.raises(DataError, match=r"img/nope\.\*: listed in ids\.txt line 2 but no image"):
        SegmentationFolder(f["images"], f["masks"], f["list"], ["bg", "red", "green"])
    (f["masks"] / "a1.png").unlink()
    (f["list"]).write_text("a1\n")
    with pytest.raises(DataError, match=r"lab/a1\.png: listed in ids\.txt line 1 but not found"):
        SegmentationFolder(f["images"], f["masks"], f["list"], ["bg", "red", "green"])
    Image.new("RGB", (4, 4)).save(f["images"] / "a0.png")
    (f["list"]).write_text("a0\n")
    with pytest.raises(DataError, match=r"several images have that name \(a0\.jpg, a0\.png\)"):
        SegmentationFolder(f["images"], f["masks"], f["list"], ["bg", "red", "green"])


def test_mask_folder_options_are_checked(tmp_path: Path) -> None:
    f = _folder(tmp_path)
    seg = get_task("segmentation")
    base = dict(images=str(f["images"]), masks=str(f["masks"]), train_split=str(f["list"]), val_split=str(f["list"]))
    with pytest.raises(ConfigError, match="--class-names FILE is required"):
        seg.load_data(DataSpec(**base), 32)
    with pytest.raises(ConfigError, match=r"--ignore-index 2: that is a class index \(the data has 3 classes"):
        seg.load_data(DataSpec(**base, class_names=str(f["classes"]), ignore_index=2), 32)
    with pytest.raises(ConfigError, match="--ignore-index 300: must be an integer in 0..255"):
        seg.load_data(DataSpec(**base, class_names=str(f["classes"]), ignore_index=300), 32)
    with pytest.raises(ConfigError, match="--images, --masks, --train-split, --val-split: flags of a mask folder"):
        seg.load_data(DataSpec(**base, data=str(tmp_path)), 32)
    with pytest.raises(ConfigError, match="--ignore-index: describe your masks"):
        seg.load_data(DataSpec(ignore_index=15), 32)
    with pytest.raises(ConfigError, match="--ignore-index: not used by task 'classification'"):
        get_task("classification").load_data(DataSpec(ignore_index=0), 32)
    data = seg.load_data(DataSpec(**base, class_names=str(f["classes"])), 32, train=False)
    assert data.train is None and len(data.val) == 2 and data.extra_meta["ignore_index"] == 255
