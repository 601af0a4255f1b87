"""The uint8 image pipeline: decoding (torchvision or PIL) and transforms that go float only at the end.

See :mod:`bicsnet.data.image` (which decoder reads what) and :mod:`bicsnet.data.transforms`.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

import bicsnet.data.image as image_module
from bicsnet.data import (
    CocoDetection,
    ImageFolderDataset,
    SegmentationFolder,
    ToFloatImage,
    classification_eval_transforms,
    classification_train_transforms,
    detection_eval_transforms,
    detection_train_transforms,
    load_image,
    read_label_png,
    segmentation_eval_transforms,
    segmentation_train_transforms,
)
from bicsnet.data.image import read_image, to_float_image
from bicsnet.errors import ConfigError, DataError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn.t accept a copy keyword:DeprecationWarning")

#: Largest JPEG difference, in levels of 255, accepted between torchvision's and PIL's decoders.
#: JPEG decoding is not bit-exact across libraries: the standard's compliance test (ITU-T T.83)
#: lets each reconstructed sample differ by one level, and the rounding of chroma upsampling and
#: YCbCr -> RGB conversion can add one more. Measured here: 0 (both link libjpeg-turbo).
JPEG_TOLERANCE = 2


def _photo(h: int = 61, w: int = 83, seed: int = 0) -> np.ndarray:
    """Photo-like uint8 RGB: smooth colour ramps, edges and noise (odd size: chroma upsampling at the borders)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (h + w) * 255], -1)
    img[h // 3 : h // 2, w // 4 : w // 2] = (230, 40, 60)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def tv_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count torchvision decodes (``bicsnet.data.image`` calls it by this module-level name)."""
    calls: list[int] = []
    real = image_module.decode_image

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(image_module, "decode_image", counting)
    return calls


# --------------------------------------------------------------------------- decoding
def test_jpeg_torchvision_matches_pil(tmp_path: Path, tv_calls: list[int]) -> None:
    photo = _photo()
    cases = {"q90.jpg": {"quality": 90}, "q60_444.jpg": {"quality": 60, "subsampling": 0},
             "progressive.jpg": {"quality": 80, "progressive": True}}  # fmt: skip
    for name, options in cases.items():
        Image.fromarray(photo).save(tmp_path / name, **options)
    Image.fromarray(photo[..., 1]).save(tmp_path / "gray.jpg", quality=85)
    for name in [*cases, "gray.jpg"]:
        calls = len(tv_calls)
        fast, ref = read_image(tmp_path / name), read_image(tmp_path / name, decode="pil")
        assert len(tv_calls) == calls + 1, name  # torchvision decoded it
        assert fast.dtype == ref.dtype == torch.uint8 and fast.shape == ref.shape == (3, 61, 83), name
        assert (fast.int() - ref.int()).abs().max() <= JPEG_TOLERANCE, name
        # PIL's own decode, independent of read_image's PIL path.
        with Image.open(tmp_path / name) as im:
            pil = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(ref, pil), name


def test_png_torchvision_decoder_equals_pil_exactly(tmp_path: Path) -> None:
    # PNG is lossless, so any two correct decoders agree exactly. read_image still leaves PNG to PIL
    # (torchvision's decode_png crashes on corrupt data, see below); this pins what the two give.
    from torchvision.io import ImageReadMode, decode_image

    photo = _photo()
    Image.fromarray(photo).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([photo, photo[..., :1]])).save(tmp_path / "rgba.png")
    pal = Image.fromarray(photo).convert("P")
    pal.save(tmp_path / "palette.png", transparency=0)
    for name in ("rgb.png", "rgba.png", "palette.png"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            tv = decode_image(str(tmp_path / name), mode=ImageReadMode.RGB)
        assert torch.equal(tv, read_image(tmp_path / name)), name
    assert torch.equal(read_image(tmp_path / "rgb.png"), torch.from_numpy(photo).permute(2, 0, 1))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(tmp_path: Path, tv_calls: list[int], orientation: int) -> None:
    photo = _photo(40, 64)
    im = Image.fromarray(photo)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(tmp_path / "o.jpg", exif=exif.tobytes(), quality=95)
    fast = read_image(tmp_path / "o.jpg")
    assert tv_calls  # torchvision applied the orientation
    assert torch.equal(fast, read_image(tmp_path / "o.jpg", decode="pil"))
    assert fast.shape[1:] == ((64, 40) if orientation >= 5 else (40, 64))


def test_exif_rotated_jpeg_is_upright(tmp_path: Path, tv_calls: list[int]) -> None:
    # Stored 60 wide x 20 tall, red left third; orientation 6 = "rotate 90 degrees clockwise to display":
    # upright it is 20 wide x 60 tall with the red part at the top.
    stored = np.zeros((20, 60, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=100)
    out = read_image(tmp_path / "rot.jpg")
    assert len(tv_calls) == 1 and out.shape == (3, 60, 20)
    top, bottom = out[:, 5, 10].int(), out[:, 50, 10].int()
    assert top[0] > 240 and top[2] < 15, top.tolist()
    assert bottom[2] > 240 and bottom[0] < 15, bottom.tolist()


def test_webp_torchvision_and_rotated_webp_via_pil(tmp_path: Path, tv_calls: list[int]) -> None:
    photo = _photo()
    Image.fromarray(photo).save(tmp_path / "plain.webp", quality=80)
    assert torch.equal(read_image(tmp_path / "plain.webp"), read_image(tmp_path / "plain.webp", decode="pil"))
    assert len(tv_calls) == 1
    im = Image.fromarray(photo)
    exif = im.getexif()
    exif[0x0112] = 8
    im.save(tmp_path / "rot.webp", exif=exif.tobytes(), lossless=True)
    out = read_image(tmp_path / "rot.webp")
    assert len(tv_calls) == 1  # torchvision would ignore a WebP's orientation: PIL read it
    assert torch.equal(out, torch.from_numpy(np.ascontiguousarray(np.rot90(photo))).permute(2, 0, 1))


def test_16_bit_png_keeps_its_precision(tmp_path: Path, tv_calls: list[int]) -> None:
    values = np.array([[0, 1000, 1001, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    out = read_image(tmp_path / "deep.png")
    assert out.dtype == torch.float32 and out.shape == (3, 1, 4)
    want = torch.tensor(values.astype(np.float32) / 65535.0)
    assert torch.equal(out[0], want) and torch.equal(out[2], want)
    assert out[0, 0, 1] != out[0, 0, 2]  # 1000 and 1001 differ: not squeezed into 8 bits
    assert not tv_calls
    # ... and survives the training pipeline as float.
    img, mask = segmentation_train_transforms(8, scale_range=(1.0, 1.0))(tv_tensors.Image(out), tv_tensors.Mask(torch.zeros(1, 4, dtype=torch.int64)))
    assert img.dtype == torch.float32 and img.max() <= 1.0


def test_cmyk_jpeg_is_converted_by_pil(tmp_path: Path, tv_calls: list[int]) -> None:
    rng = np.random.default_rng(1)
    cmyk = Image.fromarray(rng.integers(0, 256, (24, 32, 4), dtype=np.uint8), mode="CMYK")
    cmyk.save(tmp_path / "cmyk.jpg", quality=95)
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "red.jpg", quality=100)
    out = read_image(tmp_path / "cmyk.jpg")
    with Image.open(tmp_path / "cmyk.jpg") as im:
        assert im.mode == "CMYK"
        want = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
    assert out.dtype == torch.uint8 and torch.equal(out, want)
    red = read_image(tmp_path / "red.jpg")[:, 4, 4].int()
    assert red[0] > 245 and red[1] < 10 and red[2] < 10, red.tolist()
    assert not tv_calls


def test_load_image_is_x_over_255_exactly(tmp_path: Path) -> None:
    photo = _photo()
    Image.fromarray(photo).save(tmp_path / "a.png")
    Image.fromarray(photo).save(tmp_path / "a.jpg", quality=90)
    assert torch.equal(load_image(tmp_path / "a.png"), torch.from_numpy(photo).permute(2, 0, 1).float() / 255)
    for name in ("a.png", "a.jpg"):
        assert torch.equal(load_image(tmp_path / name), read_image(tmp_path / name, decode="pil").float() / 255)
    # Every uint8 value: x / 255, where v2.ToDtype's x * (1 / 255) is one ulp off for half of them.
    levels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_float_image(levels), levels.float() / 255)
    with pytest.raises(TypeError, match="uint8 or floating-point"):
        to_float_image(levels.int())


def test_bad_files_and_bad_decoder_name(tmp_path: Path) -> None:
    Image.fromarray(_photo()).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    for name, why in (("cut.jpg", "cannot decode image"), ("empty.jpg", "empty"), ("text.jpg", "not a recognised image"),
                      ("missing.jpg", "not found")):  # fmt: skip
        for decode in ("torchvision", "pil"):
            with pytest.raises(DataError, match=why) as info:
                read_image(tmp_path / name, decode=decode)
            assert str(info.value).startswith(str(tmp_path / name)), str(info.value)
    with pytest.raises(ConfigError, match="decode='opencv'"):
        read_image(tmp_path / "full.jpg", decode="opencv")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="decode='opencv'"):
        ImageFolderDataset(tmp_path, decode="opencv")  # type: ignore[arg-type]


def test_corrupt_png_is_a_data_error_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # torchvision 0.29's decode_png kills the process (segmentation fault) on this file, so read_image
    # leaves every PNG to PIL; a torchvision call here fails the test instead of ending the test run.
    Image.fromarray(_photo(64, 80)).save(tmp_path / "garbled.png")
    data = bytearray((tmp_path / "garbled.png").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 50] = bytes(50)
    (tmp_path / "garbled.png").write_bytes(bytes(data))

    def refuse(*args: Any, **kwargs: Any) -> torch.Tensor:
        pytest.fail("a PNG was handed to torchvision's decoder")

    monkeypatch.setattr(image_module, "decode_image", refuse)
    with pytest.raises(DataError, match="cannot decode image") as info:
        read_image(tmp_path / "garbled.png")
    assert str(info.value).startswith(str(tmp_path / "garbled.png"))


# --------------------------------------------------------------------------- transforms
def _run_stepwise(transforms: Any, *inputs: Any) -> list[Any]:
    """Apply a ``v2.Compose``'s steps one by one; the outputs after each step."""
    outs = []
    for step in transforms.transforms:
        inputs = step(*inputs)
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        outs.append(inputs)
    return outs


def test_detection_training_stays_uint8_until_the_last_step() -> None:
    photo = torch.from_numpy(_photo(120, 160)).permute(2, 0, 1).contiguous()
    target = {"boxes": tv_tensors.BoundingBoxes([[10, 10, 90, 70], [100, 20, 150, 110]], format="XYXY", canvas_size=(120, 160)),
              "labels": torch.tensor([1, 2]), "iscrowd": torch.zeros(2, dtype=torch.int64),
              "masks": tv_tensors.Mask(torch.zeros(2, 120, 160, dtype=torch.uint8))}  # fmt: skip
    t = detection_train_transforms(96, scale_range=(0.8, 1.2))
    names = [type(s).__name__ for s in t.transforms]
    assert names[-2:] == ["ToFloatImage", "SanitizeDetectionTarget"]
    torch.manual_seed(3)
    steps = _run_stepwise(t, tv_tensors.Image(photo), target)
    convert = names.index("ToFloatImage")
    for name, (img, tgt) in zip(names[:convert], steps[:convert]):
        assert img.dtype == torch.uint8, name  # resize, crop / pad, flip: all on uint8
        assert tgt["masks"].dtype == torch.uint8 and tgt["labels"].dtype == torch.int64, name
    before, after = steps[convert - 1][0], steps[convert][0]
    assert after.dtype == torch.float32 and isinstance(after, tv_tensors.Image)
    assert torch.equal(after.as_subclass(torch.Tensor), before.as_subclass(torch.Tensor).float() / 255)
    assert torch.equal(steps[convert][1]["masks"], steps[convert - 1][1]["masks"])  # targets untouched
    torch.manual_seed(3)
    img, tgt = t(tv_tensors.Image(photo), target)
    assert torch.equal(img, steps[-1][0]) and torch.equal(tgt["boxes"], steps[-1][1]["boxes"])
    assert img.shape == (3, 96, 96)


def test_segmentation_and_classification_training_stay_uint8() -> None:
    photo = torch.from_numpy(_photo(50, 70)).permute(2, 0, 1).contiguous()
    mask = tv_tensors.Mask(torch.randint(0, 5, (50, 70)))
    steps = _run_stepwise(segmentation_train_transforms(64), tv_tensors.Image(photo), mask)
    assert [s[0].dtype for s in steps] == [torch.uint8] * (len(steps) - 1) + [torch.float32]
    assert steps[-1][1].dtype == torch.int64 and set(steps[-1][1].unique().tolist()) <= {0, 1, 2, 3, 4, 255}
    steps = _run_stepwise(classification_train_transforms(32), photo)
    assert [s[0].dtype for s in steps] == [torch.uint8] * (len(steps) - 1) + [torch.float32]
    assert steps[-1][0].shape == (3, 32, 32)


def test_eval_transforms_equal_the_float_pipeline_exactly() -> None:
    photo = torch.from_numpy(_photo(50, 70)).permute(2, 0, 1).contiguous()
    as_float = photo.float() / 255  # what load_image gave the old, float-from-the-start pipeline
    for t in (detection_eval_transforms(), segmentation_eval_transforms()):
        out = t(tv_tensors.Image(photo))
        assert out.dtype == torch.float32 and torch.equal(out.as_subclass(torch.Tensor), as_float)
    cls = classification_eval_transforms(32)
    assert torch.equal(cls(photo), cls(as_float))  # converts before resizing: same numbers for uint8 and float input
    boxes = tv_tensors.BoundingBoxes([[1, 2, 3, 4]], format="XYXY", canvas_size=(50, 70))
    mask = tv_tensors.Mask(torch.ones(50, 70, dtype=torch.uint8))
    _, b, m = ToFloatImage()(tv_tensors.Image(photo), boxes, mask)
    assert b.dtype == boxes.dtype and m.dtype == torch.uint8 and torch.equal(m, mask)


def test_every_pipeline_hands_the_model_contiguous_chw_images() -> None:
    """torchvision's JPEG decoder returns H, W, C memory (a permuted view), which the uint8 transforms keep;
    the float image leaves as C, H, W in memory.

    On the permuted view every later per-image step in the model runs several times
    slower (the detectors' normalisation: 175 against 15 us per 256 px image,
    benchmarks/demo.md). Values are unchanged: x / 255 of the same pixels.
    """
    photo = torch.from_numpy(_photo(120, 160)).permute(2, 0, 1)  # as read_image gives a JPEG
    assert photo.stride(-1) == 3
    target = {"boxes": tv_tensors.BoundingBoxes([[10, 10, 90, 70]], format="XYXY", canvas_size=(120, 160)),
              "labels": torch.tensor([1]), "iscrowd": torch.zeros(1, dtype=torch.int64)}  # fmt: skip
    mask = tv_tensors.Mask(torch.randint(0, 5, (120, 160)))
    torch.manual_seed(0)
    outputs = {
        "detection train": detection_train_transforms(96, scale_range=(0.5, 2.0))(tv_tensors.Image(photo), target)[0],
        "detection eval": detection_eval_transforms()(tv_tensors.Image(photo)),
        "segmentation train": segmentation_train_transforms(64)(tv_tensors.Image(photo), mask)[0],
        "segmentation eval": segmentation_eval_transforms()(tv_tensors.Image(photo)),
        "classification train": classification_train_transforms(32)(photo),
        "classification eval": classification_eval_transforms(32)(photo),
    }
    for name, img in outputs.items():
        # C, H, W order in memory: each row contiguous, channel planes apart (a centre crop may be a
        # view of a larger image: collate stacks it anyway); a channels-last view has stride 3 along W.
        assert img.dtype == torch.float32 and img.stride(-1) == 1, (name, img.stride())
        assert img.stride(0) >= img.stride(1) * img.shape[1], (name, img.stride())
    # A video frame (H, W, C array, permuted) becomes contiguous with the same values.
    hwc = torch.from_numpy(_photo(40, 30)).permute(2, 0, 1)
    assert not hwc.is_contiguous()
    out = to_float_image(hwc)
    assert out.is_contiguous() and torch.equal(out, hwc.contiguous().float() / 255)
    assert to_float_image(hwc.float()).is_contiguous()


# --------------------------------------------------------------------------- datasets
def test_coco_items_equal_the_pil_float_path(tmp_path: Path) -> None:
    photo = _photo(48, 64)
    Image.fromarray(photo).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(photo[::-1].copy()).save(tmp_path / "b.png")
    images = [{"id": 1, "file_name": "a.jpg", "height": 48, "width": 64}, {"id": 2, "file_name": "b.png", "height": 48, "width": 64}]
    anns = [{"id": i, "image_id": i, "category_id": 7, "bbox": [5, 5, 20, 20]} for i in (1, 2)]
    (tmp_path / "ann.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 7, "name": "x"}]}))
    fast = CocoDetection(tmp_path, tmp_path / "ann.json", detection_eval_transforms())
    old = CocoDetection(tmp_path, tmp_path / "ann.json", detection_eval_transforms(), decode="pil")
    raw = CocoDetection(tmp_path, tmp_path / "ann.json")  # no transforms: still float32 [0, 1]
    for i, name in enumerate(("a.jpg", "b.png")):
        want = load_image(tmp_path / name, decode="pil")  # the float pipeline's input, as before
        assert torch.equal(old[i][0], want), name
        tolerance = JPEG_TOLERANCE / 255 if name.endswith(".jpg") else 0.0  # PNG: PIL on both paths
        for ds in (fast, raw):
            img, target = ds[i]
            assert img.dtype == torch.float32 and type(img) is torch.Tensor, name
            assert (img - want).abs().max() <= tolerance, name
    train = CocoDetection(tmp_path, tmp_path / "ann.json", detection_train_transforms(32))
    img, target = train[0]
    assert img.dtype == torch.float32 and img.shape == (3, 32, 32) and 0 <= img.min() and img.max() <= 1


def test_palette_label_indices_survive(tmp_path: Path) -> None:
    # Indices 0..4 and 15 (ignore) in a palette PNG whose colours are nothing like the indices.
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    labels = np.zeros((40, 56), np.uint8)
    labels[:, 10:20], labels[:, 20:30], labels[:, 30:40], labels[:, 40:50], labels[:, 50:] = 1, 2, 3, 4, 15
    mask = Image.fromarray(labels, mode="L").convert("P")
    mask.putpalette([200, 10, 10, 10, 200, 10, 10, 10, 200, 250, 250, 0, 0, 250, 250] + [77] * (3 * 251))
    mask.save(tmp_path / "masks" / "s1.png")
    Image.fromarray(_photo(40, 56)).save(tmp_path / "images" / "s1.jpg", quality=90)
    (tmp_path / "list.txt").write_text("s1\n")
    assert Image.open(tmp_path / "masks" / "s1.png").mode == "P"
    want = np.where(labels == 15, 255, labels)
    assert np.array_equal(read_label_png(tmp_path / "masks" / "s1.png", 5, ignore_index=15), want)
    names = ["a", "b", "c", "d", "e"]
    ev = SegmentationFolder(tmp_path / "images", tmp_path / "masks", tmp_path / "list.txt", names, 15,
                            segmentation_eval_transforms())  # fmt: skip
    img, m = ev[0]
    assert img.dtype == torch.float32 and m.dtype == torch.int64 and m.shape == (40, 56)
    assert torch.equal(m, torch.from_numpy(want).long())
    tr = SegmentationFolder(tmp_path / "images", tmp_path / "masks", tmp_path / "list.txt", names, 15,
                            segmentation_train_transforms(48, scale_range=(0.7, 1.6)))  # fmt: skip
    for seed in range(4):
        torch.manual_seed(seed)
        img, m = tr[0]
        assert img.dtype == torch.float32 and img.shape == (3, 48, 48)
        assert m.ndim == 2 and set(m.unique().tolist()) <= {0, 1, 2, 3, 4, 255}  # nearest: no blended labels
