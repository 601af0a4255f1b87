"""Bad input: a counted, named skip or one clear line - never a traceback or a half-written output.

One table (``CASES``) drives the real CLI (``bicsnet.cli.main.main``) the way a
user meets each problem.  Every case is one of

* ``stop``: exit status 2, exactly one line ``bicsnet CMD: error: ...`` on
  stderr naming the file, record or option, no traceback, and no output file
  created or changed (``OUT`` is compared before and after);
* ``skip``: exit status 0; a warning names the skipped record and gives the
  count (repeated at the end of the run);
* ``ok``: odd but valid input, handled (exit 0, outputs written).

docs/reliability.md lists the same cases with the behaviour and a message.
Library-level cases (transforms on odd images, RLE decoding) follow the table.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from bicsnet.cli.main import main, one_line
from bicsnet.data.synthetic import generate
from bicsnet.engine.checkpoint import RunCheckpointer, save_model
from bicsnet.errors import DataError

torch.set_num_threads(1)  # small shared test machine: more threads only contend

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn.t accept a copy keyword:DeprecationWarning",
    "ignore:Detected pickle protocol",
)

SYNTH = {"num_train": 4, "num_val": 3, "img_size": 64, "seed": 0}
# Tiny models: (task, img size, overrides).
MODELS = {
    "classification": (32, {"width_mult": 0.125, "endpoint_channels": 16}),
    "detection": (64, {"width_mult": 0.125, "img_size": 64}),
    "instance": (64, {"width_mult": 0.125, "img_size": 64, "box_detections_per_img": 10}),
    "segmentation": (64, {"width_mult": 0.125, "endpoint_channels": 16, "head_channels": 16}),
}


@dataclass
class WS:
    """The shared, read-only workspace: synthetic data, untrained checkpoints, one short run."""

    root: Path
    synth: dict[str, Path]
    ckpt: dict[str, Path]
    run: Path  # a classification run directory with checkpoints at steps 1 and 2

    def synth_flags(self) -> list[str]:
        return ["--synth-dir", str(self.synth["root"]), "--synth-train", str(SYNTH["num_train"]),
                "--synth-val", str(SYNTH["num_val"]), "--synth-size", str(SYNTH["img_size"])]  # fmt: skip


def _train_args(ws: WS, out: Path, *extra: str, task: str = "classification") -> list[str]:
    size, over = MODELS[task]
    sets = [a for k, v in over.items() if k != "img_size" for a in ("--set", f"{k}={v}")]
    return [
        "train", "--task", task, "--model", "bicsnet_48_tiny", "--img-size", str(size), *sets, *ws.synth_flags(),
        "--epochs", "1", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--deterministic",
        "--log-every", "1", "--out", str(out), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> WS:
    from bicsnet.models import create_model
    from bicsnet.data.spec import DataSpec
    from bicsnet.models import model_meta
    from bicsnet.tasks import get_task

    root = tmp_path_factory.mktemp("bad_input")
    synth = generate(root / "synth", **SYNTH)
    spec = DataSpec(synth_root=str(root / "synth"), synth_train=SYNTH["num_train"], synth_val=SYNTH["num_val"],
                    synth_size=SYNTH["img_size"], seed=SYNTH["seed"])  # fmt: skip
    ckpt = {}
    for task, (size, over) in MODELS.items():
        data = get_task(task).load_data(spec, size, train=False)
        torch.manual_seed(0)
        model = create_model("bicsnet_48_tiny", task, data.num_classes, **over)
        ckpt[task] = root / f"{task}.safetensors"
        save_model(ckpt[task], model, model_meta(model, task, size, data))
    ws = WS(root, synth, ckpt, root / "run")
    assert main(_train_args(ws, ws.run, "--max-steps", "2", "--ckpt-every", "1")) == 0
    assert [s.step for s in RunCheckpointer(ws.run / "checkpoints").scan()] == [2, 1]
    return ws


# --------------------------------------------------------------------------- helpers
def _jpeg(path: Path, size=(48, 40), colour=(200, 30, 30)) -> Path:
    Image.new("RGB", size, colour).save(path, quality=90)
    return path


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    if not directory.exists():
        return {}
    return {p.relative_to(directory).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in directory.rglob("*") if p.is_file()}  # fmt: skip


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _coco(ws: WS) -> dict:
    return json.loads(ws.synth["coco_val_ann"].read_text())


def _write_coco(tmp: Path, data: dict | str | bytes) -> Path:
    path = tmp / "instances_bad.json"
    path.write_bytes(data if isinstance(data, bytes) else (data if isinstance(data, str) else json.dumps(data)).encode())
    return path


def _eval_det(ws: WS, tmp: Path, ann: Path, images: Path | None = None, task: str = "detection", *extra: str) -> list[str]:
    return ["eval", "--checkpoint", str(ws.ckpt[task]), "--val-ann", str(ann),
            "--val-images", str(images or ws.synth["coco_val_images"]), "--workers", "0", "--device", "cpu",
            "--out", str(tmp / "out"), *extra]  # fmt: skip


def _eval(ws: WS, tmp: Path, task: str, data: Path, *extra: str) -> list[str]:
    return ["eval", "--checkpoint", str(ws.ckpt[task]), "--data", str(data), "--workers", "0", "--device", "cpu",
            "--out", str(tmp / "out"), *extra]  # fmt: skip


def _predict(ws: WS, tmp: Path, image: Path, task: str = "classification") -> list[str]:
    return ["predict", "--checkpoint", str(ws.ckpt[task]), str(image), "--device", "cpu", "--out", str(tmp / "out")]


def _coco_with(ws: WS, tmp: Path, *anns: dict, task: str = "detection", max_skipped: str | None = "0.5", **changes) -> list[str]:
    """Eval on the val set plus extra annotation records (ids 9001...), or with top-level changes.

    One bad record among the 11 of the val set is past the default --max-skipped (5%): the
    cases of single bad records raise it (the floor has its own case, ``max_skipped=None``).
    """
    data = _coco(ws)
    img = data["images"][0]
    for i, ann in enumerate(anns):
        record = {"id": 9001 + i, "image_id": img["id"], "category_id": data["categories"][0]["id"],
                  "bbox": [4, 4, 10, 10], "area": 100, "iscrowd": 0}  # fmt: skip
        record.update({k: v(img) if callable(v) else v for k, v in ann.items()})
        data["annotations"].append({k: v for k, v in record.items() if v is not _DROP})
    data.update(changes)
    return _eval_det(ws, tmp, _write_coco(tmp, data), None, task, *(["--max-skipped", max_skipped] if max_skipped else []))


_DROP = object()


def _voc(ws: WS, tmp: Path, edit: Callable[[Path], None]) -> list[str]:
    root = _copy(ws.synth["voc_root"], tmp / "voc")
    edit(root)
    return _eval(ws, tmp, "segmentation", root)


def _first_val(root: Path) -> str:
    return (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]


def _folder(ws: WS, tmp: Path, edit: Callable[[Path], None], train: bool = False) -> list[str]:
    root = tmp / "folder"
    _copy(ws.synth["folder_train"], root / "train")
    _copy(ws.synth["folder_val"], root / "val")
    edit(root)
    if train:
        return _train_args(ws, tmp / "out", "--data", str(root))
    return _eval(ws, tmp, "classification", root)


def _pick_val_image(ws: WS, tmp: Path, breaker: Callable[[Path], None]) -> tuple[Path, str]:
    images = _copy(ws.synth["coco_val_images"], tmp / "val")
    victim = sorted(images.iterdir())[0]
    breaker(victim)
    return images, victim.name


# --------------------------------------------------------------------------- image builders
def _img_missing(tmp: Path) -> Path:
    return tmp / "no_such_image.jpg"


def _img_empty(tmp: Path) -> Path:
    (tmp / "empty.jpg").write_bytes(b"")
    return tmp / "empty.jpg"


def _img_truncated_jpeg(tmp: Path) -> Path:
    path = tmp / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    _truncate(path)
    return path


def _img_truncated_png(tmp: Path) -> Path:
    path = tmp / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    _truncate(path, 0.6)
    return path


def _img_corrupt(tmp: Path) -> Path:
    path = _jpeg(tmp / "garbled.jpg")
    data = bytearray(path.read_bytes())
    data[200:] = bytes(len(data) - 200)  # JPEG header intact, entropy-coded data destroyed
    path.write_bytes(bytes(data))
    return path


def _img_text(tmp: Path) -> Path:
    (tmp / "notes.jpg").write_text("this is not an image\n")
    return tmp / "notes.jpg"


def _img_html(tmp: Path) -> Path:
    (tmp / "page.png").write_text("<html><body>404 Not Found</body></html>")
    return tmp / "page.png"


def _img_bomb(tmp: Path) -> Path:
    Image.new("L", (120, 100)).save(tmp / "huge.png")  # over the lowered limit set by the test
    return tmp / "huge.png"


def _img_mode(mode: str, size=(40, 30)) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        if mode == "I;16":
            arr = (np.arange(size[0] * size[1], dtype=np.uint16).reshape(size[1], size[0]) * 50).astype(np.uint16)
            im = Image.fromarray(arr)
        elif mode == "P":
            im = Image.new("P", size, 1)
            im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
            im.info["transparency"] = 0
        else:
            im = Image.new(mode, size, {"L": 90, "LA": (90, 200), "RGBA": (10, 200, 10, 30), "CMYK": (0, 255, 255, 0),
                                        "RGB": (50, 60, 70), "1": 1}[mode])  # fmt: skip
        path = tmp / f"mode_{mode.replace(';', '')}_{size[0]}x{size[1]}.{'jpg' if mode == 'CMYK' else 'png'}"
        im.save(path)
        return path

    return make


def _img_exif(tmp: Path) -> Path:
    im = Image.new("RGB", (60, 20), (0, 200, 0))
    exif = im.getexif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: 20 x 60
    im.save(tmp / "exif.jpg", exif=exif.tobytes())
    return tmp / "exif.jpg"


def _img_large(tmp: Path) -> Path:
    Image.new("RGB", (3000, 2000), (120, 30, 30)).save(tmp / "large.jpg", quality=50)
    return tmp / "large.jpg"


# --------------------------------------------------------------------------- the table
@dataclass
class Case:
    id: str
    behaviour: str  # "stop", "skip" or "ok"
    build: Callable[[WS, Path], list[str]]
    needle: str | tuple[str, ...] = ()  # in the error line (stop) or the warnings (skip)
    outputs: tuple[str, ...] = ()  # files under OUT an ok / skip case must write


def _stop(id: str, build, *needle: str) -> Case:
    return Case(id, "stop", build, needle)


def _img_stop(id: str, maker, *needle: str) -> Case:
    def build(ws: WS, tmp: Path) -> list[str]:
        return _predict(ws, tmp, maker(tmp))

    return Case(id, "stop", build, needle)


def _img_ok(id: str, maker, shape: tuple[int, int] | None = None) -> Case:
    def build(ws: WS, tmp: Path) -> list[str]:
        build.image = maker(tmp)
        return _predict(ws, tmp, build.image, "detection")

    return Case(id, "ok", build, (), ("{stem}.json", "{stem}.png")) if shape is None else Case(
        id, "ok", build, (f"shape={shape[0]}x{shape[1]}",), ("{stem}.json", "{stem}.png")
    )


def _skip(id: str, *anns: dict, needle: tuple[str, ...], task: str = "detection") -> Case:
    return Case(id, "skip", lambda ws, tmp: _coco_with(ws, tmp, *anns, task=task), needle, ("metrics.json", "detections.json"))


def _box_only(ws: WS) -> list[dict]:
    """The val set's annotations as a box-only tool writes them: ``"segmentation": []``."""
    return [dict(a, segmentation=[]) for a in _coco(ws)["annotations"]]


def _label_40(root: Path) -> None:
    name = _first_val(root)
    Image.fromarray(np.full((8, 8), 40, np.uint8)).resize(Image.open(root / "JPEGImages" / f"{name}.jpg").size).save(
        root / "SegmentationClass" / f"{name}.png"
    )


def _mask_wrong_size(root: Path) -> None:
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(root / "SegmentationClass" / f"{_first_val(root)}.png")


def _mask_rgb(root: Path) -> None:
    Image.new("RGB", Image.open(root / "JPEGImages" / f"{_first_val(root)}.jpg").size).save(
        root / "SegmentationClass" / f"{_first_val(root)}.png"
    )


def _missing_list_entry(root: Path) -> None:
    with open(root / "ImageSets" / "Segmentation" / "val.txt", "a") as f:
        f.write("gone_00042\n")


def _empty_class(root: Path) -> None:
    for p in (root / "val" / "star").iterdir():
        p.unlink()


def _extra_class(root: Path) -> None:
    for split in ("train", "val"):
        (root / split / "zebra").mkdir()
        _jpeg(root / split / "zebra" / "z.jpg")


def _bad_folder_image(root: Path) -> None:
    victim = next((root / "val" / "ring").iterdir())
    victim.write_bytes(b"")


def _train_corrupt(root: Path) -> None:
    victim = next((root / "train" / "cross").iterdir())
    victim.write_bytes(victim.read_bytes()[:60])


def _run_copy(ws: WS, tmp: Path, edit: Callable[[Path], None] | None = None) -> Path:
    run = _copy(ws.run, tmp / "out")
    if edit:
        edit(run)
    return run


def _resume_args(ws: WS, tmp: Path, edit: Callable[[Path], None] | None = None, *extra: str) -> list[str]:
    _run_copy(ws, tmp, edit)
    return _train_args(ws, tmp / "out", "--max-steps", "3", "--ckpt-every", "1", "--resume", *extra)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_state(run: Path) -> None:
    """A training state that runs a shell command when unpickled (torch.save's zip format, as a real one)."""
    state = run / "checkpoints" / "last.state.pt"
    info = torch.load(state, weights_only=True)["checkpoint"]  # keep the pairing with last.safetensors
    torch.save({"step": 2, "checkpoint": info, "x": _Evil(run.parent / "PWNED")}, state)


def _break_all_checkpoints(run: Path) -> None:
    for p in (run / "checkpoints").iterdir():
        _truncate(p, 0.3)


CASES: list[Case] = [
    # ---- images: unreadable files stop, naming the file; odd but valid ones load.
    _img_stop("image-missing", _img_missing, "no_such_image.jpg", "not found"),
    _img_stop("image-zero-bytes", _img_empty, "empty.jpg", "empty (0 bytes)"),
    _img_stop("image-truncated-jpeg", _img_truncated_jpeg, "cut.jpg", "cannot decode"),
    _img_stop("image-truncated-png", _img_truncated_png, "cut.png", "cannot decode"),
    _img_stop("image-corrupt", _img_corrupt, "garbled.jpg"),
    _img_stop("image-not-an-image", _img_text, "notes.jpg", "not a recognised image"),
    _img_stop("image-html-as-png", _img_html, "page.png", "not a recognised image"),
    _img_stop("image-decompression-bomb", _img_bomb, "huge.png", "too large"),
    _stop("image-truncated-in-coco-eval",
          lambda ws, tmp: _eval_det(ws, tmp, ws.synth["coco_val_ann"], _pick_val_image(ws, tmp, _truncate)[0]),
          "val_00000", "cannot decode"),  # fmt: skip
    _stop("image-missing-in-coco-eval",
          lambda ws, tmp: _eval_det(ws, tmp, ws.synth["coco_val_ann"], _pick_val_image(ws, tmp, Path.unlink)[0]),
          "val_00000", "not found"),  # fmt: skip
    _stop("image-zero-bytes-in-folder-eval", lambda ws, tmp: _folder(ws, tmp, _bad_folder_image), "val_00004",
          "empty (0 bytes)"),  # fmt: skip
    _stop("image-corrupt-in-training-worker",
          lambda ws, tmp: _folder(ws, tmp, _train_corrupt, train=True) + ["--workers", "1"], "train_00005.png"),
    _img_ok("image-grayscale", _img_mode("L")),
    _img_ok("image-grayscale-alpha", _img_mode("LA")),
    _img_ok("image-rgba", _img_mode("RGBA")),
    _img_ok("image-palette-transparency", _img_mode("P")),
    _img_ok("image-16-bit", _img_mode("I;16")),
    _img_ok("image-1-bit", _img_mode("1")),
    _img_ok("image-cmyk", _img_mode("CMYK")),
    _img_ok("image-exif-rotated", _img_exif, (60, 20)),
    _img_ok("image-1x1", _img_mode("RGB", (1, 1))),
    _img_ok("image-very-large", _img_large),
    _img_ok("image-extreme-wide", _img_mode("RGB", (2000, 2))),
    _img_ok("image-extreme-tall", _img_mode("RGB", (3, 1500))),
    # ---- COCO JSON: file-level problems stop; bad annotation records are skipped and counted.
    _stop("coco-not-json", lambda ws, tmp: _eval_det(ws, tmp, _write_coco(tmp, '{"images": [')),
          "instances_bad.json", "not valid JSON"),  # fmt: skip
    _stop("coco-not-utf8", lambda ws, tmp: _eval_det(ws, tmp, _write_coco(tmp, b"\xff\xfe{")), "instances_bad.json",
          "not valid JSON"),  # fmt: skip
    _stop("coco-top-level-list", lambda ws, tmp: _eval_det(ws, tmp, _write_coco(tmp, "[]")), "instances_bad.json",
          "top level must be a JSON object"),  # fmt: skip
    _stop("coco-missing-key", lambda ws, tmp: _eval_det(ws, tmp, _write_coco(
        tmp, {k: v for k, v in _coco(ws).items() if k != "annotations"})), "instances_bad.json", "'annotations'"),
    _stop("coco-wrong-type-images", lambda ws, tmp: _coco_with(ws, tmp, images={}), "instances_bad.json",
          "'images' must be a list"),  # fmt: skip
    _stop("coco-wrong-type-image-height",
          lambda ws, tmp: _coco_with(ws, tmp, images=[dict(im, height=str(im["height"])) for im in _coco(ws)["images"]]),
          "instances_bad.json", "'height' must be a positive integer"),  # fmt: skip
    _stop("coco-image-without-file-name",
          lambda ws, tmp: _coco_with(ws, tmp, images=[{k: v for k, v in im.items() if k != "file_name"}
                                                      for im in _coco(ws)["images"]]),
          "instances_bad.json", "'file_name'"),  # fmt: skip
    _stop("coco-duplicate-image-id", lambda ws, tmp: _coco_with(ws, tmp, images=_coco(ws)["images"] * 2),
          "instances_bad.json", "duplicate image id"),  # fmt: skip
    _stop("coco-duplicate-category-id", lambda ws, tmp: _coco_with(ws, tmp, categories=_coco(ws)["categories"] * 2),
          "instances_bad.json", "duplicate category id"),  # fmt: skip
    _stop("coco-duplicate-annotation-id", lambda ws, tmp: _coco_with(ws, tmp, {"id": 9001}, {"id": 9001}),
          "instances_bad.json", "duplicate annotation id 9001"),  # fmt: skip
    _stop("coco-no-categories", lambda ws, tmp: _coco_with(ws, tmp, categories=[]), "instances_bad.json",
          "'categories' is empty"),  # fmt: skip
    _stop("coco-image-size-differs",
          lambda ws, tmp: _coco_with(ws, tmp, images=[dict(im, width=im["width"] + 3) for im in _coco(ws)["images"]]),
          "val_0000", "instances_bad.json says"),  # fmt: skip
    _skip("coco-annotation-unknown-image", {"image_id": 424242},
          needle=("annotation id 9001: unknown image_id", "skipped 1 bad annotation record")),
    _skip("coco-annotation-unknown-category", {"category_id": 999},
          needle=("annotation id 9001: unknown category_id", "skipped 1 bad annotation record")),
    _skip("coco-annotation-bbox-wrong-type", {"bbox": "4,4,10,10"},
          needle=("annotation id 9001: 'bbox' must be a list of 4 finite numbers", "skipped 1")),
    _skip("coco-annotation-missing-bbox", {"bbox": _DROP}, needle=("annotation id 9001: 'bbox'", "skipped 1")),
    Case("coco-annotation-not-an-object", "skip",
         lambda ws, tmp: _coco_with(ws, tmp, annotations=_coco(ws)["annotations"] + [7]),
         ("annotations[", "not an object", "skipped 1 bad annotation record"), ("metrics.json",)),  # fmt: skip
    _skip("coco-box-outside-image", {"bbox": [5000, 5000, 10, 10]},
          needle=("dropped 1 degenerate boxes", "annotation ids 9001")),
    _skip("coco-box-zero-size", {"bbox": [4, 4, 0, 10]}, needle=("dropped 1 degenerate boxes", "annotation ids 9001")),
    _skip("coco-box-negative-size", {"bbox": [4, 4, -10, 10]},
          needle=("annotation id 9001: negative bbox width or height", "skipped 1")),
    _skip("coco-box-nan", {"bbox": [4, 4, float("nan"), 10]}, needle=("annotation id 9001: 'bbox'", "skipped 1")),
    # Masks are read only by instance segmentation: detection ignores 'segmentation' altogether.
    _skip("coco-empty-segmentation", {"segmentation": []}, task="instance",
          needle=("annotation id 9001: bad segmentation: empty 'segmentation' (no mask)", "skipped 1")),
    _skip("coco-empty-polygon", {"segmentation": [[1, 2, 3, 4]]}, task="instance",
          needle=("annotation id 9001: bad segmentation: polygon segmentation has no polygon", "skipped 1")),
    _skip("coco-polygon-odd-coordinates", {"segmentation": [[1, 2, 3, 4, 5, 6, 7]]}, task="instance",
          needle=("annotation id 9001: bad segmentation: polygon has an odd number", "skipped 1")),
    _skip("coco-invalid-rle-string", {"segmentation": lambda im: {"size": [im["height"], im["width"]], "counts": "garbage"}},
          task="instance", needle=("annotation id 9001: bad segmentation: compressed RLE 'counts' is not a valid", "skipped 1")),
    _skip("coco-rle-size-differs", {"segmentation": {"size": [1, 1], "counts": "11"}}, task="instance",
          needle=("annotation id 9001: bad segmentation: RLE size [1, 1] does not match image size", "skipped 1")),
    _skip("coco-invalid-rle-counts", {"segmentation": {"size": None, "counts": [1, 2]}}, task="instance",
          needle=("annotation id 9001: bad segmentation: RLE segmentation needs 'size'", "skipped 1")),
    Case("coco-box-only-for-detection", "ok", lambda ws, tmp: _coco_with(ws, tmp, annotations=_box_only(ws), max_skipped=None),
         (), ("metrics.json", "detections.json")),  # fmt: skip
    _stop("coco-box-only-for-instance",
          lambda ws, tmp: _coco_with(ws, tmp, annotations=_box_only(ws), task="instance", max_skipped="1"),
          "instances_bad.json: no usable annotation: all 11 rejected: no mask (11)", "--task detection"),  # fmt: skip
    _stop("coco-too-many-bad-records", lambda ws, tmp: _coco_with(ws, tmp, {"bbox": "4,4,10,10"}, max_skipped=None),
          "instances_bad.json: 1 of 12 annotations (8.33%) rejected, more than --max-skipped 5%: bad bbox (1)"),  # fmt: skip
    # ---- VOC / image-folder layouts.
    _stop("voc-missing-list-entry", lambda ws, tmp: _voc(ws, tmp, _missing_list_entry), "gone_00042.jpg",
          "listed in val.txt line"),  # fmt: skip
    _stop("voc-missing-split-list", lambda ws, tmp: _voc(ws, tmp, lambda r: (r / "ImageSets/Segmentation/val.txt").unlink()),
          "val.txt", "split list not found"),  # fmt: skip
    _stop("voc-mask-wrong-size", lambda ws, tmp: _voc(ws, tmp, _mask_wrong_size), "val_00000.png", "mask is 7x5"),
    _stop("voc-mask-label-out-of-range", lambda ws, tmp: _voc(ws, tmp, _label_40), "val_00000.png", "label 40 outside"),
    _stop("voc-mask-rgb", lambda ws, tmp: _voc(ws, tmp, _mask_rgb), "val_00000.png", "palette or grayscale"),
    _stop("voc-class-list-too-short", lambda ws, tmp: _voc(ws, tmp, lambda r: (r / "classes.txt").write_text("bg\n")),
          "classes.txt", "at least 2 class names"),  # fmt: skip
    _stop("folder-empty-class", lambda ws, tmp: _folder(ws, tmp, _empty_class), "star", "contains no images"),
    _stop("folder-no-classes", lambda ws, tmp: _eval(ws, tmp, "classification", (tmp / "val").mkdir() or tmp),
          "no class sub-folders"),  # fmt: skip
    _stop("folder-train-val-classes-differ",
          lambda ws, tmp: _folder(ws, tmp, lambda r: shutil.rmtree(r / "train" / "star"), train=True),
          "different class folders"),  # fmt: skip
    _stop("folder-classes-differ-from-checkpoint", lambda ws, tmp: _folder(ws, tmp, _extra_class), "classification.safetensors",
          "model has 6 classes, the evaluation data 7"),  # fmt: skip
    # ---- options.
    _stop("option-unknown-model", lambda ws, tmp: ["train", "--model", "bicsnet_48_tiyn", *ws.synth_flags(), "--out", str(tmp / "out")],
          "unknown model 'bicsnet_48_tiyn'", "did you mean bicsnet_48_tiny"),  # fmt: skip
    _stop("option-model-task-incompatible",
          lambda ws, tmp: ["train", "--task", "detection", "--model", "resnet50", *ws.synth_flags(), "--device", "cpu",
                           "--max-steps", "1", "--out", str(tmp / "out")],
          "resnet50", "not 'detection'"),  # fmt: skip
    _stop("option-unknown-override", lambda ws, tmp: _train_args(ws, tmp / "out", "--set", "widht_mult=0.5"),
          "widht_mult"),
    _stop("option-override-wrong-type", lambda ws, tmp: _train_args(ws, tmp / "out", "--set", "width_mult=abc"),
          "width_mult='abc'", "expected float"),  # fmt: skip
    _stop("option-img-size-too-small", lambda ws, tmp: _train_args(ws, tmp / "out", "--img-size", "8"), "img_size 8", "at least 32"),
    _stop("option-batch-larger-than-dataset", lambda ws, tmp: _train_args(ws, tmp / "out", "--batch-size", "64"),
          "batch_size=64 is larger than the"),  # fmt: skip
    _stop("option-bad-training-value", lambda ws, tmp: _train_args(ws, tmp / "out", "--ema", "1.5"), "ema_decay=1.5"),
    _stop("option-data-flags-of-another-task",
          lambda ws, tmp: _eval(ws, tmp, "classification", ws.synth["voc_root"])[:3] + [
              "--val-ann", str(ws.synth["coco_val_ann"]), "--out", str(tmp / "out"), "--device", "cpu"],
          "--val-ann", "not used by task 'classification'"),  # fmt: skip
    _stop("option-backbone-weights-incompatible",
          lambda ws, tmp: _train_args(ws, tmp / "out", "--backbone-weights", str(ws.ckpt["detection"])),
          "detection.safetensors", "shape mismatch"),  # fmt: skip
    _stop("option-resume-num-classes-differ",
          lambda ws, tmp: _resume_args(ws, tmp) + ["--data", str((_folder(ws, tmp, _extra_class), tmp / "folder")[1])],
          "last.safetensors", "shape mismatch"),  # fmt: skip
    _stop("option-resume-batch-size-changed", lambda ws, tmp: _resume_args(ws, tmp) + ["--batch-size", "4"],
          "last.state.pt", "global batch of 2", "this run has 4", "as 8 images instead of 4"),  # fmt: skip
    _stop("output-dir-holds-checkpoint", lambda ws, tmp: (_run_copy(ws, tmp), _train_args(ws, tmp / "out"))[1],
          "already holds a checkpoint (step 2)"),  # fmt: skip
    _stop("output-dir-holds-finished-run",
          lambda ws, tmp: (_run_copy(ws, tmp, lambda r: shutil.rmtree(r / "checkpoints")), _train_args(ws, tmp / "out"))[1],
          "already holds the results of a run", "model.safetensors"),  # fmt: skip
    _stop("output-dir-resume-nothing", lambda ws, tmp: _train_args(ws, tmp / "out", "--resume"), "nothing to resume"),
    _stop("output-dir-eval-results-exist",
          lambda ws, tmp: (_run_copy(ws, tmp), _eval(ws, tmp, "classification", tmp / "x")[:3] + [
              "--out", str(tmp / "out"), "--device", "cpu"])[1],
          "metrics.json", "--overwrite"),  # fmt: skip
    _stop("output-dir-predict-results-exist",
          lambda ws, tmp: ((tmp / "out").mkdir(), (tmp / "out" / "p.json").write_text("{}"),
                           _predict(ws, tmp, _jpeg(tmp / "p.jpg")))[-1],
          "p.json", "--overwrite"),  # fmt: skip
    # ---- checkpoints.
    _stop("checkpoint-missing", lambda ws, tmp: _predict(ws, tmp, _jpeg(tmp / "a.jpg"))[:1] + [
        "--checkpoint", str(tmp / "nope.safetensors"), str(tmp / "a.jpg"), "--out", str(tmp / "out")],
        "nope.safetensors", "not found"),  # fmt: skip
    _stop("checkpoint-not-safetensors",
          lambda ws, tmp: (tmp / "junk.safetensors").write_text("junk") and _eval(ws, tmp, "classification", tmp)[:1] + [
              "--checkpoint", str(tmp / "junk.safetensors"), "--out", str(tmp / "out")],
          "junk.safetensors", "not a readable safetensors file"),  # fmt: skip
    _stop("checkpoint-truncated",
          lambda ws, tmp: (_copy(ws.ckpt["classification"].parent, tmp / "c"), _truncate(tmp / "c" / "classification.safetensors"),
                           ["eval", "--checkpoint", str(tmp / "c" / "classification.safetensors"), "--out", str(tmp / "out")])[-1],
          "classification.safetensors", "truncated"),  # fmt: skip
    # Exported models given where a training checkpoint goes: named as exports, not as "corrupt".
    _stop("checkpoint-exported-onnx",
          lambda ws, tmp: ((tmp / "m.onnx").write_bytes(b"\x08\x08\x12\x07pytorch" + bytes(64)),
                           ["eval", "--checkpoint", str(tmp / "m.onnx"), "--out", str(tmp / "out")])[-1],
          "m.onnx: an exported ONNX model, not a bicsnet checkpoint", "bicsnet.tools.runtimes.load_exported"),  # fmt: skip
    _stop("checkpoint-exported-openvino-any-suffix",
          lambda ws, tmp: ((tmp / "net").write_text('<?xml version="1.0"?>\n<net name="m" version="11"></net>\n'),
                           ["predict", "--checkpoint", str(tmp / "net"), str(_jpeg(tmp / "a.jpg")), "--out", str(tmp / "out")])[-1],
          "net: an exported OpenVINO model, not a bicsnet checkpoint"),  # fmt: skip
    _stop("export-calibration-without-int8",
          lambda ws, tmp: ["export", "--checkpoint", str(ws.ckpt["classification"]), "--calib-images", str(tmp),
                           "--calib-count", "8", "--out", str(tmp / "out" / "m.onnx")],
          "--calib-images and --calib-count only apply with --int8"),  # fmt: skip
    _stop("checkpoint-foreign-safetensors",
          lambda ws, tmp: (__import__("safetensors.torch").torch.save_file({"w": torch.zeros(2)}, str(tmp / "f.safetensors")),
                           ["eval", "--checkpoint", str(tmp / "f.safetensors"), "--out", str(tmp / "out")])[-1],
          "f.safetensors", "no 'bicsnet' metadata"),  # fmt: skip
    _stop("checkpoint-metadata-without-model",
          lambda ws, tmp: (save_model(tmp / "m.safetensors", {"w": torch.zeros(2)}, {"task": "detection"}),
                           ["eval", "--checkpoint", str(tmp / "m.safetensors"), "--out", str(tmp / "out")])[-1],
          "m.safetensors", "lacks the model description"),  # fmt: skip
    _stop("checkpoint-run-dir-without-weights",
          lambda ws, tmp: ["eval", "--checkpoint", str(tmp), "--out", str(tmp / "out")], "model.safetensors", "not found"),
    _stop("checkpoint-backbone-weights-truncated",
          lambda ws, tmp: (shutil.copy(ws.ckpt["classification"], tmp / "bb.safetensors"), _truncate(tmp / "bb.safetensors"),
                           _train_args(ws, tmp / "out", "--backbone-weights", str(tmp / "bb.safetensors")))[-1],
          "bb.safetensors", "truncated"),  # fmt: skip
    _stop("checkpoint-resume-all-unreadable", lambda ws, tmp: _resume_args(ws, tmp, _break_all_checkpoints),
          "nothing to resume", "4 unreadable file(s) skipped", "truncated or corrupt"),
    Case("checkpoint-resume-last-truncated", "skip",
         lambda ws, tmp: _resume_args(ws, tmp, lambda r: _truncate(r / "checkpoints" / "last.safetensors")),
         ("skipped unreadable checkpoint file", "last.safetensors", "resumed from", "prev.safetensors at step 1"),
         ("model.safetensors",)),  # fmt: skip
    Case("checkpoint-resume-crafted-pickle", "skip", lambda ws, tmp: _resume_args(ws, tmp, _evil_state),
         ("last.state.pt", "refused", "resumed from", "at step 1"), ("model.safetensors",)),
]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture):
    def run(argv: list[str]) -> tuple[int, str, str, str]:
        capsys.readouterr()
        with caplog.at_level(logging.WARNING):
            code = main(argv)
        captured = capsys.readouterr()
        return code, captured.out, captured.err, caplog.text

    return run


def _out_dir(argv: list[str]) -> Path:
    return Path(argv[len(argv) - 1 - argv[::-1].index("--out") + 1])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_matrix(case: Case, ws: WS, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    if case.id == "image-decompression-bomb":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # the 120 x 100 image is > 2x the limit
    argv = case.build(ws, tmp_path)
    out_dir = _out_dir(argv)
    before = _snapshot(out_dir)
    code, out, err, logs = cli(argv)
    after = _snapshot(out_dir)
    command = argv[0]
    assert "Traceback" not in out + err + logs
    if case.behaviour == "stop":
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (code, err)
        assert lines[0].startswith(f"bicsnet {command}: error: "), lines
        for needle in case.needle:
            assert needle in lines[0], (needle, lines[0])
        # Nothing written or changed - except a training run's own logs when it died before its first checkpoint.
        allowed = {"config.json", "config.yaml", "log.csv", "eval_log.jsonl"} if command == "train" and not before else set()
        changed = {k for k in after if before.get(k) != after[k]} | (before.keys() - after.keys())
        assert changed <= allowed, changed
        assert not any(Path(k).name.startswith(".") for k in after), after  # no temporary files left
        return
    assert code == 0, (code, err[-2000:])
    assert not any(Path(k).name.startswith(".") for k in after), after
    stem = Path(getattr(case.build, "image", "x")).stem
    for name in case.outputs:
        assert (out_dir / name.format(stem=stem)).is_file(), name
    if case.behaviour == "skip":
        text = out + logs
        for needle in case.needle:
            assert needle in text, (needle, text[-3000:])
        if command == "eval":  # the count is repeated at the end of the run
            assert logs.strip().splitlines()[-1].endswith("named when it was loaded"), logs
    elif case.needle and case.needle[0].startswith("shape="):
        record = json.loads((out_dir / f"{stem}.json").read_text())
        w, h = (int(v) for v in case.needle[0][len("shape="):].split("x"))
        assert (record["width"], record["height"]) == (h, w)  # EXIF orientation applied
    if case.id == "checkpoint-resume-crafted-pickle":
        assert not (tmp_path / "PWNED").exists()


# --------------------------------------------------------------------------- beyond the table
def test_training_on_odd_images_finishes(ws: WS, tmp_path: Path, cli) -> None:
    """Grayscale, RGBA, palette, 16-bit, CMYK, EXIF, 1x1, huge and extreme-aspect images train and evaluate."""
    makers = [_img_mode("L"), _img_mode("LA"), _img_mode("RGBA"), _img_mode("P"), _img_mode("I;16"), _img_mode("CMYK"),
              _img_exif, _img_mode("RGB", (1, 1)), _img_mode("RGB", (900, 2)), _img_mode("RGB", (2, 700)),
              _img_mode("1")]  # fmt: skip
    root = tmp_path / "folder"
    for split in ("train", "val"):
        for i, make in enumerate(makers):
            d = root / split / ("a" if i % 2 else "b")
            d.mkdir(parents=True, exist_ok=True)
            make(d)
    n = sum(1 for _ in (root / "train").rglob("*.*"))
    argv = _train_args(ws, tmp_path / "out", "--data", str(root), "--batch-size", str(n), "--max-steps", "1")
    code, out, err, _ = cli(argv)
    assert code == 0, err[-2000:]
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "metrics.json").is_file()


@pytest.mark.parametrize("size", [(1, 1), (2000, 2), (2, 1500), (3000, 2000)])
def test_train_transforms_of_every_task_accept_odd_geometry(size: tuple[int, int]) -> None:
    from bicsnet.data import (
        classification_train_transforms, detection_collate, detection_train_transforms, segmentation_collate,
        segmentation_train_transforms,
    )  # fmt: skip

    w, h = size
    image = tv_tensors.Image(torch.rand(3, h, w))
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.tensor([[0.0, 0.0, w, h]]), format="XYXY", canvas_size=(h, w)),
        "crowd_boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(h, w)),
        "labels": torch.tensor([1]), "iscrowd": torch.zeros(1, dtype=torch.int64),
        "masks": tv_tensors.Mask(torch.ones(1, h, w, dtype=torch.uint8)),
    }  # fmt: skip
    img, t = detection_train_transforms(64)(image, target)
    assert img.shape == (3, 64, 64) and t["masks"].shape[-2:] == (64, 64) and len(t["boxes"]) == len(t["labels"])
    detection_collate([(img, t)])
    img, mask = segmentation_train_transforms(64)(image, tv_tensors.Mask(torch.zeros(h, w, dtype=torch.int64)))
    assert img.shape == (3, 64, 64) and mask.shape == (64, 64)
    segmentation_collate([(img, mask)])
    assert classification_train_transforms(32)(image).shape == (3, 32, 32)


def test_detector_keeps_extreme_aspect_images_at_least_one_pixel() -> None:
    from bicsnet.models.detection import DetectionTransform

    t = DetectionTransform(64)
    image, target = t.resize(torch.rand(3, 2, 3000), {"boxes": torch.tensor([[0.0, 0.0, 3000.0, 2.0]]),
                                                      "masks": torch.ones(1, 2, 3000, dtype=torch.uint8)})  # fmt: skip
    assert image.shape == (3, 1, 64) and target["masks"].shape == (1, 1, 64)
    assert target["boxes"].tolist() == [[0.0, 0.0, 64.0, 1.0]]


def test_rle_strings_are_validated_before_pycocotools_sees_them() -> None:
    from pycocotools import mask as mask_util

    from bicsnet.data.coco import _check_segmentation, _rle_string_counts

    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        rle = mask_util.encode(np.asfortranarray(rng.random((h, w)) < rng.random()).astype(np.uint8))
        counts = rle["counts"].decode()
        assert sum(_rle_string_counts(counts)) == h * w
        assert _check_segmentation({"size": [h, w], "counts": counts}, h, w)[1] is None
        # Another image size, a cut string: refused (pycocotools would read or write out of bounds).
        assert _check_segmentation({"size": [h + 1, w], "counts": counts}, h + 1, w)[1] is not None
    assert _rle_string_counts("garbage") is None and _rle_string_counts("\x7f") is None


def test_dataloader_worker_errors_become_one_line() -> None:
    from torch.utils.data import DataLoader, Dataset

    class Broken(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int):
            raise DataError(f"/data/img_{i}.jpg: cannot decode image (broken data stream)")

    with pytest.raises(DataError) as info:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert "Traceback" in str(info.value)  # what torch makes of it
    assert one_line(info.value) == "/data/img_0.jpg: cannot decode image (broken data stream)"
