"""``bicsnet predict`` on what users have: folders, glob patterns and videos, streamed in batches.

One tiny detector (two SGD steps on the synthetic set) and untrained instance and
classification models; every run goes through the CLI (``main([...])``) or
``bicsnet.predict`` as users call them.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
from fractions import Fraction
from pathlib import Path

import av  # the test extra has it: the video tests must not be skipped silently
import numpy as np
import pytest
import torch
from PIL import Image

import bicsnet
from bicsnet.cli.main import main
from bicsnet.data.spec import DataSpec
from bicsnet.data.synthetic import generate
from bicsnet.engine.checkpoint import read_model_meta, save_model
from bicsnet.models import create_model, model_meta
from bicsnet.tasks import get_task

torch.set_num_threads(1)  # small shared test machine: more threads only contend

SIZE = 64
TINY = {"width_mult": 0.125, "img_size": SIZE}
#: Detector options that keep the 20 best candidates of every image, whatever their score.
DETECTOR = {**TINY, "score_thresh": 0.0, "detections_per_img": 20}


def _checkpoint(path: Path, synth: Path, task: str, steps: int = 0, **options: object) -> Path:
    spec = DataSpec(synth_root=str(synth), synth_train=4, synth_val=2, synth_size=SIZE, seed=0)
    data = get_task(task).load_data(spec, SIZE, train=True)
    torch.manual_seed(0)
    model = create_model("bicsnet_48_tiny", task, data.num_classes, **options)
    if steps:
        # torchvision draws the RetinaNet head with std 0.01 and a 0.01 class prior: every candidate then
        # scores within 1e-6 of 0.01 and float noise (~1e-7) decides their order. He-initialised convolutions
        # without the prior spread the scores, so comparing two runs compares detections, not tie-breaking.
        for conv in (m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)):
            torch.nn.init.kaiming_normal_(conv.weight)
            if conv.bias is not None:
                torch.nn.init.zeros_(conv.bias)
        opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
        images, targets = data.collate([data.train[i] for i in range(4)])
        model.train()
        for _ in range(steps):
            loss = sum(model(images, targets).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
    save_model(path, model, model_meta(model, task, SIZE, data))
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict_inputs")
    generate(root / "synth", num_train=4, num_val=2, img_size=SIZE, seed=0)
    return {
        "root": root,
        "detection": _checkpoint(root / "det.safetensors", root / "synth", "detection", steps=2, **DETECTOR),
        "instance": _checkpoint(root / "inst.safetensors", root / "synth", "instance", **TINY, box_detections_per_img=5),
        "classification": _checkpoint(root / "cls.safetensors", root / "synth", "classification", width_mult=0.125,
                                      endpoint_channels=16),  # fmt: skip
        "images": sorted((root / "synth" / "coco" / "train").glob("*.jpg")),
    }


def _photos(ws: dict, folder: Path) -> dict[str, Path]:
    """The synthetic photos under repeated base names: cam1/frame.jpg, cam2/frame.jpg, cam2/night/frame.png."""
    made = {}
    for rel, src in zip(["cam1/frame.jpg", "cam2/frame.jpg", "cam2/night/frame.png"], ws["images"]):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.open(src).save(folder / rel)
        made[rel] = folder / rel
    (folder / "cam1" / "notes.txt").write_text("not an image")
    (folder / "cam1" / ".hidden.jpg").write_bytes(b"not even a jpeg")  # hidden: skipped
    return made


def _video(path: Path, frames: int = 6, size: tuple[int, int] = (96, 64), fps: int = 5) -> Path:
    """A short H.264 MP4 whose frames differ (a square moving right)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            rgb = np.full((size[1], size[0], 3), 40, np.uint8)
            rgb[16:48, 8 + 8 * i : 40 + 8 * i] = (230, 200, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def _predict(ckpt: Path, out: Path, *inputs: object, extra: tuple[str, ...] = ()) -> list[str]:
    return ["predict", "--checkpoint", str(ckpt), *map(str, inputs), "--score-thresh", "0", "--device", "cpu",
            "--workers", "0", "--out", str(out), *extra]  # fmt: skip


def test_folder_mirrors_its_tree_one_result_per_image(ws: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    made = _photos(ws, tmp_path / "data")
    out = tmp_path / "out"
    # The default workers (2 DataLoader processes) decode the folder.
    assert main(["predict", "--checkpoint", str(ws["detection"]), str(tmp_path / "data"), "--score-thresh", "0",
                 "--device", "cpu", "--out", str(out)]) == 0  # fmt: skip
    stems = ["cam1/frame", "cam2/frame", "cam2/night/frame"]
    assert _files(out) == sorted([f"{s}.{ext}" for s in stems for ext in ("json", "png")] + ["predictions.coco.json"])
    *printed, summary = capsys.readouterr().out.splitlines()
    assert sorted(printed) == sorted(str(out / f) for f in _files(out))
    found: dict[str, int] = {}
    for rel, stem in zip(made, stems):
        record = json.loads((out / f"{stem}.json").read_text())
        for d in record["detections"]:
            found[d["class_name"]] = found.get(d["class_name"], 0) + 1
        assert record["image"] == str(made[rel]) and record["task"] == "detection"
        assert (record["width"], record["height"]) == Image.open(made[rel]).size
        assert Image.open(out / f"{stem}.png").size == Image.open(made[rel]).size
    # The last line sums up what the JSON files hold, most frequent class first.
    assert found and summary == "predicted 3 image(s): " + ", ".join(
        f"{k} x{v}" for k, v in sorted(found.items(), key=lambda kv: (-kv[1], kv[0])))

    # A folder holding frame.jpg and frame.png side by side: refused (one result each is impossible), nothing written.
    Image.open(ws["images"][0]).save(tmp_path / "data" / "cam2" / "frame.png")
    assert main(_predict(ws["detection"], tmp_path / "clash", tmp_path / "data")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cam2/frame.jpg and" in err[0] and "cam2/frame.png would both write cam2/frame.json" in err[0]
    assert not (tmp_path / "clash").exists()


def test_glob_pattern_is_expanded_recursively(ws: dict, tmp_path: Path) -> None:
    made = _photos(ws, tmp_path / "data")
    out = tmp_path / "out"
    pattern = str(tmp_path / "data" / "**" / "*.jpg")  # as the user quotes it: expanded by bicsnet, not the shell
    preds = bicsnet.predict(ws["detection"], [pattern], out=out, score_thresh=0.0, device="cpu", workers=0)
    assert [p.record["image"] for p in preds] == [str(made["cam1/frame.jpg"]), str(made["cam2/frame.jpg"])]
    # Mirrored below the pattern's literal folder (data/), as for the folder itself.
    assert _files(out) == ["cam1/frame.json", "cam1/frame.png", "cam2/frame.json", "cam2/frame.png", "predictions.coco.json"]
    assert preds[0].files == [out / "cam1/frame.json", out / "cam1/frame.png"]
    assert preds.run_files == [out / "predictions.coco.json"]


def test_results_inside_the_input_folder_are_not_read_again(ws: dict, tmp_path: Path) -> None:
    _photos(ws, tmp_path / "data")
    out = tmp_path / "data" / "preds"
    for again in (False, True):
        preds = bicsnet.predict(ws["detection"], [tmp_path / "data"], out=out, score_thresh=0.0, device="cpu", workers=0,
                                overwrite=again)  # fmt: skip
        assert [Path(p.record["image"]).relative_to(tmp_path / "data").as_posix() for p in preds] == [
            "cam1/frame.jpg", "cam2/frame.jpg", "cam2/night/frame.png"]  # not preds/cam1/frame.png, ...


def test_video_gives_one_result_per_frame_and_an_annotated_video(ws: dict, tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    video = _video(tmp_path / "clips" / "clip.mp4")
    Image.open(ws["images"][0]).save(tmp_path / "clips" / "still.jpg")  # a photo beside the video
    out = tmp_path / "out"
    preds = bicsnet.predict(ws["detection"], [tmp_path / "clips" / "still.jpg", video], out=out, score_thresh=0.0,
                            batch_size=4, device="cpu", workers=0)  # fmt: skip
    frames = [f"clip/{i:06d}.json" for i in range(6)]
    assert _files(out) == sorted(["still.json", "still.png", "clip.mp4", "predictions.coco.json", *frames])
    assert len(preds) == 7 and [p.record.get("frame") for p in preds] == [None, 0, 1, 2, 3, 4, 5]
    records = [json.loads((out / f).read_text()) for f in frames]
    assert [r["frame"] for r in records] == list(range(6)) and {r["video"] for r in records} == {str(video)}
    assert [r["time_s"] for r in records] == pytest.approx([i / 5 for i in range(6)])
    assert all((r["width"], r["height"]) == (96, 64) for r in records)
    # The frames differ, and so do their detections.
    assert records[0]["detections"] != records[5]["detections"]
    with av.open(str(out / "clip.mp4")) as container:
        stream = container.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert Fraction(stream.average_rate) == 5 and (stream.width, stream.height) == (96, 64)
    assert len(decoded) == 6
    assert preds.run_files == [out / "clip.mp4", out / "predictions.coco.json"]


def test_batches_give_the_detections_of_batch_one_and_coco_json_matches(ws: dict, tmp_path: Path) -> None:
    _photos(ws, tmp_path / "data")
    Image.open(ws["images"][0]).resize((80, 48)).save(tmp_path / "data" / "cam1" / "other_size.jpg")  # its own forward
    video = _video(tmp_path / "clip.mp4")
    runs = {}
    for batch in (1, 3):  # batch 3: batches that mix image sizes and cross from the photos into the video
        assert main(_predict(ws["detection"], tmp_path / f"b{batch}", tmp_path / "data", video,
                             extra=("--batch-size", str(batch)))) == 0  # fmt: skip
        runs[batch] = json.loads((tmp_path / f"b{batch}" / "predictions.coco.json").read_text())
    one, three = runs[1], runs[3]
    assert len(one["images"]) == 4 + 6 and len(one["annotations"]) == 20 * 10
    assert three["images"] == one["images"]
    for a, b in zip(one["annotations"], three["annotations"], strict=True):
        assert (a["image_id"], a["category_id"], a["file_name"]) == (b["image_id"], b["category_id"], b["file_name"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        # The box decoder scales deltas by anchor sizes (32 px and up): ~1e-7 of float noise is ~1e-5 px.
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-4)

    # The run's COCO results are the per-image JSONs' detections (which round), image by image.
    meta = read_model_meta(ws["detection"])
    assert three["categories"] == [{"id": c, "name": n} for c, n in zip(meta["cat_ids"], meta["class_names"], strict=True)]
    by_image: dict[int, list[dict]] = {}
    for ann in three["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for image in three["images"]:
        record = json.loads((tmp_path / "b3" / image["result"]).read_text())
        assert record["image_id"] == image["id"] and (record["width"], record["height"]) == (image["width"], image["height"])
        assert record.get("image", record.get("video")) == image["path"]
        anns = by_image.get(image["id"], [])
        assert len(anns) == len(record["detections"]) == 20
        for ann, det in zip(anns, record["detections"]):
            x, y, w, h = ann["bbox"]
            assert det["box_xyxy"] == pytest.approx([x, y, x + w, y + h], abs=0.006)
            assert det["score"] == pytest.approx(ann["score"], abs=6e-5)
            assert det["category_id"] == ann["category_id"]
    frame = next(i for i in three["images"] if i.get("frame") == 2)
    assert frame["file_name"] == "clip.mp4#frame=2" and frame["result"] == "clip/000002.json"


def test_instance_results_carry_rle_masks(ws: dict, tmp_path: Path) -> None:
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO

    out = tmp_path / "out"
    preds = bicsnet.predict(ws["instance"], ws["images"][:2], out=out, score_thresh=0.0, device="cpu", workers=0)
    results = json.loads((out / "predictions.coco.json").read_text())
    anns = results["annotations"]
    assert anns and len(anns) == sum(len(p.record["detections"]) for p in preds)
    with contextlib.redirect_stdout(io.StringIO()):
        index = COCO(str(out / "predictions.coco.json"))  # the file is a COCO dataset file too
    assert sorted(index.getAnnIds()) == [a["id"] for a in anns] and sorted(index.getImgIds()) == [1, 2]
    for ann in anns:
        image = results["images"][ann["image_id"] - 1]
        rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
        assert ann["segmentation"]["size"] == [image["height"], image["width"]]
        assert mask_util.decode(rle).shape == (image["height"], image["width"])


def test_classification_writes_one_csv_for_the_run(ws: dict, tmp_path: Path) -> None:
    _photos(ws, tmp_path / "data")
    out = tmp_path / "out"
    preds = bicsnet.predict(ws["classification"], [tmp_path / "data"], out=out, batch_size=2, device="cpu", workers=0)
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["file_name"] for r in rows if r["rank"] == "1"] == ["cam1/frame.jpg", "cam2/frame.jpg", "cam2/night/frame.png"]
    for pred in preds:
        mine = [r for r in rows if int(r["image_id"]) == pred.record["image_id"]]
        assert [(int(r["label"]), r["class_name"], float(r["prob"])) for r in mine] == [
            (t["label"], t["class_name"], t["prob"]) for t in pred.record["top5"]
        ]
    assert "predictions.coco.json" not in _files(out)


@pytest.mark.parametrize("case", ["empty-folder", "glob-matches-nothing", "unreadable-video", "bad-image-after-good-ones"])
def test_bad_input_is_one_line_exit_2_and_leaves_out_untouched(
    case: str, ws: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    if case == "empty-folder":
        (tmp_path / "empty" / "sub").mkdir(parents=True)
        (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images here")
        inputs, needle = [tmp_path / "empty"], f"{tmp_path / 'empty'}: no images"
    elif case == "glob-matches-nothing":
        inputs, needle = [str(tmp_path / "nowhere" / "*.jpg")], f"{tmp_path / 'nowhere' / '*.jpg'}: the pattern matches no"
    elif case == "unreadable-video":
        (tmp_path / "broken.mp4").write_bytes(b"\x00" * 64 + b"not a video" * 50)
        inputs, needle = [tmp_path / "broken.mp4"], f"{tmp_path / 'broken.mp4'}: cannot read video"
    else:
        _photos(ws, tmp_path / "data")
        (tmp_path / "data" / "cam2" / "z_cut.jpg").write_bytes(Image.open(ws["images"][0]).tobytes()[:300])
        out.mkdir()
        (out / "keep.txt").write_text("the user's")
        inputs, needle = [tmp_path / "data"], "z_cut.jpg: "
    assert main(_predict(ws["detection"], out, *inputs, extra=("--batch-size", "2", "--workers", "1"))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bicsnet predict: error: ") and needle in err[0], err
    assert (_files(out) == ["keep.txt"]) if case == "bad-image-after-good-ones" else not out.exists()


def test_results_never_replace_inputs_even_with_overwrite(ws: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--out on the inputs' own folder: x.png would be replaced by x's drawing; refused, the input kept byte for byte."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.open(ws["images"][0]).save(folder / "x.png")
    before = (folder / "x.png").read_bytes()
    assert main(_predict(ws["detection"], folder, folder / "x.png", extra=("--overwrite",))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would replace the input" in err[0] and "x.png" in err[0]
    assert (folder / "x.png").read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["x.png"]


def test_score_thresh_below_the_detectors_floor_takes_effect(ws: dict, tmp_path: Path) -> None:
    """A checkpoint whose detector drops scores under 0.05 still returns lower ones when --score-thresh asks for them."""
    spec = DataSpec(synth_root=str(ws["root"] / "synth"), synth_train=4, synth_val=2, synth_size=SIZE, seed=0)
    data = get_task("detection").load_data(spec, SIZE, train=True)
    torch.manual_seed(0)
    model = create_model("bicsnet_48_tiny", "detection", data.num_classes, **TINY).eval()  # floor 0.05, prior 0.01
    assert model.score_thresh == 0.05
    save_model(tmp_path / "det.safetensors", model, model_meta(model, "detection", SIZE, data))
    image = ws["images"][0]
    low = bicsnet.predict(tmp_path / "det.safetensors", [image], score_thresh=0.0, device="cpu", workers=0)
    default = bicsnet.predict(tmp_path / "det.safetensors", [image], score_thresh=0.05, device="cpu", workers=0)
    scores = [d["score"] for d in low[0].record["detections"]]
    assert scores and min(scores) < 0.05  # the untrained head scores ~0.01: only visible below the floor
    assert all(d["score"] >= 0.05 for d in default[0].record["detections"])


def test_folder_that_is_out_says_why_it_has_no_inputs(ws: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.open(ws["images"][0]).save(folder / "x.jpg")
    assert main(_predict(ws["detection"], folder, folder)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "it is inside --out" in err[0] and "choose another --out" in err[0]
    assert sorted(p.name for p in folder.iterdir()) == ["x.jpg"]


def test_summary_counts_classes_and_images_without_any() -> None:
    from bicsnet.inference import PredictionRun
    from bicsnet.tasks import Prediction

    run = PredictionRun([Prediction({}, found=["b", "a", "b"]), Prediction({}, found=[]), Prediction({}, found=["a"])])
    assert run.summary() == "3 image(s): a x2, b x2; nothing found in 1"  # most frequent first, ties by name
    assert PredictionRun([Prediction({}), Prediction({})]).summary() == "2 image(s): nothing found"
