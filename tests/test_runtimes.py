"""Exported models on runtimes (bicsnet/tools/runtimes.py): OpenVINO, onnxslim, TensorRT; export --format, bench --runtime.

Tiny models at 64-256 px. OpenVINO conversion of even a tiny model takes tens of
seconds on a shared 2-core machine, so each test converts once and the slowest
(every task, dynamic detection, INT8) run with BICSNET_SLOW_TESTS=1.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import torch

import bicsnet
from bicsnet.cli.main import main
from bicsnet.errors import ConfigError
from bicsnet.tasks import TASKS

from .conftest import TINY
from .test_bench_export import _assert_same_detections, _close, _randomize_bn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("openvino")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "strawberry"
SLOW = pytest.mark.skipif(not os.environ.get("BICSNET_SLOW_TESTS"), reason="OpenVINO conversions take minutes here; BICSNET_SLOW_TESTS=1")
EXPORTABLE = [n for n, t in TASKS.items() if t.export is not None]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster on a shared machine
    yield
    torch.set_num_threads(n)


def _tiny(task: str, size: int = 64) -> torch.nn.Module:
    kw = {"img_size": size, "head_norm": "gn"} if TASKS[task].uses_img_size else {}
    classes = (3,) if TASKS[task].needs_classes else ()
    return _randomize_bn(bicsnet.create_model("bicsnet_48", task, *classes, **kw, **TINY))


def _checkpoint(tmp_path: Path, task: str, size: int) -> tuple[torch.nn.Module, Path]:
    from bicsnet.engine.checkpoint import save_model

    model = _tiny(task, size)
    meta = {"model": model.bicsnet_config, "task": task, "img_size": size, "num_classes": 3, "class_names": ["a", "b", "c"]}
    path = tmp_path / "model.safetensors"
    save_model(path, model, meta)
    return model, path


def _openvino_parity(task: str, tmp_path: Path, dynamic: bool = False) -> None:
    from bicsnet.tools.export import detection_metadata, export_module
    from bicsnet.tools.runtimes import OpenVinoModel, export_openvino, load_exported

    size = 128 if TASKS[task].uses_img_size else 64
    model = _tiny(task, size)
    meta = {**(detection_metadata(model) if TASKS[task].uses_img_size else {}), "class_names": ["a"]}
    path = export_openvino(model, task, tmp_path / f"{task}.xml", size, dynamic=dynamic, metadata=meta)
    assert path.is_file() and path.with_suffix(".bin").is_file()
    net = OpenVinoModel(path, precision="f32")
    assert net.meta["task"] == task and net.meta["class_names"] == ["a"] and net.meta["dynamic"] is dynamic
    module, _, out_names = export_module(model, task)
    assert net.output_names == out_names
    shapes = [tuple(net.meta["input_size"])] + ([(96, 160)] if dynamic else [])
    for h, w in shapes:
        x = torch.rand(int(net.meta["batch"]), 3, h, w, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref = module(x)
        got = net(x)
        assert len(got) == len(ref) and all(_close(g, r) for g, r in zip(got, ref)), [float((g - r).abs().max()) for g, r in zip(got, ref)]
    runner = load_exported(path, precision="f32")
    assert type(runner).__name__ == ("OnnxDetector" if task == "detection" else "OpenVinoModel")
    if not dynamic:  # another batch size: one clear error naming the file, not OpenVINO's shape check
        b, h, w = int(net.meta["batch"]), *net.meta["input_size"]
        with pytest.raises(ConfigError, match=rf"{path.name}: exported for input {b}x3x{h}x{w}, given {b + 1}x3x{h}x{w}"):
            net(torch.rand(b + 1, 3, h, w))


def test_openvino_fp32_matches_eager_classifier(tmp_path: Path) -> None:
    _openvino_parity("classification", tmp_path)


@SLOW
@pytest.mark.parametrize("task", [t for t in EXPORTABLE if t != "classification"])
def test_openvino_fp32_matches_eager_every_task(task: str, tmp_path: Path) -> None:
    _openvino_parity(task, tmp_path, dynamic=task == "backbone")


def _real_images(n: int = 2) -> list[Path]:
    if not (DATA / "valid" / "_annotations.coco.json").is_file():
        pytest.skip("strawberry data not available")
    return sorted(p for p in (DATA / "valid").iterdir() if p.suffix.lower() == ".jpg")[:n]


def _detector_cli(tmp_path: Path, dynamic: bool, capsys: pytest.CaptureFixture[str]) -> None:
    from bicsnet.data.image import load_image
    from bicsnet.tools.runtimes import load_exported

    files = _real_images()
    model, ckpt = _checkpoint(tmp_path, "detection", 256)
    out = tmp_path / "det.xml"
    argv = ["export", "--checkpoint", str(ckpt), "--format", "openvino", "--out", str(out), "--check-images", str(DATA / "valid")]
    assert main(argv + (["--dynamic"] if dynamic else [])) == 0
    text = capsys.readouterr().out
    assert out.is_file() and out.with_suffix(".bin").is_file()
    assert text.count("OpenVINO (f32) vs PyTorch") == (4 if dynamic else 2)  # two images, at one or two sizes
    det = load_exported(out, precision="f32")
    assert det.net.meta["class_names"] == ["a", "b", "c"] and det.net.meta["dynamic"] is dynamic
    # Random weights score below 0.05: threshold 0 so NMS and rescaling have work to do.
    model.score_thresh = det.net.meta["score_thresh"] = 0.0
    images = [load_image(f) for f in files]
    sizes = [256] + ([384] if dynamic else [])
    for size in sizes:
        model.transform.img_size = det.transform.img_size = size  # both resize the long side to it
        with torch.no_grad():
            ref = model(images)
        got = det(images)
        assert all(len(d["boxes"]) > 0 for d in ref)
        _assert_same_detections(ref, got)


def test_openvino_detector_real_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _detector_cli(tmp_path, False, capsys)


@SLOW
def test_openvino_detector_dynamic_real_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _detector_cli(tmp_path, True, capsys)


def test_simplify_onnx_keeps_outputs_and_metadata(tmp_path: Path) -> None:
    pytest.importorskip("onnxslim")
    import onnx

    from bicsnet.tools.export import OnnxModel, export_onnx
    from bicsnet.tools.runtimes import simplify_onnx

    model = _tiny("segmentation")
    path = export_onnx(model, "segmentation", tmp_path / "seg.onnx", 64, metadata={"class_names": ["x"]})
    x = torch.rand(1, 3, 64, 64)
    before = OnnxModel(path)(x)
    nodes = len(onnx.load(str(path)).graph.node)
    simplify_onnx(path)
    net = OnnxModel(path)
    assert net.meta["class_names"] == ["x"] and net.meta["task"] == "segmentation"
    assert len(onnx.load(str(path)).graph.node) <= nodes
    with torch.no_grad():
        ref = model(x)
    (got,) = net(x)
    assert _close(got, before[0]) and _close(got, ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.onnx"]  # replaced atomically, no leftovers


def test_bench_runtime_openvino(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--model", "bicsnet_48", "--task", "classification", "--img-size", "64", "--set", "width_mult=0.125",
            "--set", "endpoint_channels=16", "--runtime", "openvino", "--iters", "1", "--warmup", "0", "--batch", "1",
            "--train-batch", "2", "--train-iters", "1", "--no-memory", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| network latency, openvino, batch 1 (ms) |" in out
    assert "matrix units: AVX2" in out and "AMX" in out
    # The plugin's own list, in its order (BF16 comes first on a CPU with avx512_bf16 or AMX).
    caps = re.search(r"OpenVINO CPU capabilities: ([A-Z0-9_, ]+)", out)
    assert caps is not None and "FP32" in caps.group(1).split(", "), out


def test_tensorrt_runtime(tmp_path: Path) -> None:
    from bicsnet.errors import ConfigError
    from bicsnet.models.wrappers import NetworkOnly
    from bicsnet.tools.runtimes import network_runner

    model = _tiny("classification")
    net = NetworkOnly(model, TASKS["classification"].network).eval()
    x = torch.rand(1, 3, 64, 64)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            network_runner(net, x, "tensorrt")
        pytest.skip("no CUDA GPU: TensorRT parity not tested")
    run = network_runner(net, x.cuda(), "tensorrt", workdir=tmp_path)
    with torch.no_grad():
        ref = model(x)
    got = run(x.cuda())
    got = got[0] if isinstance(got, (list, tuple)) else got
    assert _close(torch.as_tensor(got).float().cpu(), ref, 1e-3)  # TensorRT may pick TF32 kernels


def test_export_user_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _, ckpt = _checkpoint(tmp_path, "classification", 64)
    assert main(["export", "--checkpoint", str(ckpt), "--format", "openvino", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "m.onnx" in err[0] and ".xml" in err[0]
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "m.xml")]) == 2
    capsys.readouterr()
    # No calibration images: no run config.yaml beside the checkpoint.
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--int8", "--out", str(tmp_path / "q.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--calib-images" in err[0]
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    assert main(["export", "--checkpoint", str(ckpt), "--format", "openvino", "--out", str(tmp_path / "m.xml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install openvino" in err[0]
    assert not any(p.suffix in (".xml", ".bin", ".onnx") for p in tmp_path.iterdir())
    monkeypatch.setitem(sys.modules, "onnxslim", None)
    from bicsnet.errors import ConfigError
    from bicsnet.tools.runtimes import simplify_onnx

    with pytest.raises(ConfigError, match="pip install onnxslim"):
        simplify_onnx(tmp_path / "any.onnx")


@SLOW
def test_export_openvino_int8_reports_difference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("nncf")
    _real_images()
    _, ckpt = _checkpoint(tmp_path, "classification", 64)
    out = tmp_path / "q.xml"
    argv = ["export", "--checkpoint", str(ckpt), "--format", "openvino", "--int8", "--calib-images", str(DATA / "valid"),
            "--calib-count", "4", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "INT8 vs PyTorch" in text and "mean relative difference" in text and out.is_file()


def test_bench_runtime_end_to_end_detector_matches_eager() -> None:
    """bench's end-to-end runner on a runtime (here the eager graph, runtime "torch") gives the model's own detections."""
    from bicsnet.tools.bench import ModelSpec, Workload, _runtime_e2e, build_model

    spec = ModelSpec("bicsnet_48", "detection", 128, 3, {**TINY, "head_norm": "gn"})
    model = build_model(spec, score_thresh=0.0)
    w = Workload(spec, model, torch.device("cpu"), 1, 2)
    run = _runtime_e2e(w, "torch", 1)
    assert run is not None
    with torch.no_grad():
        ref = model([w.image.float().div(255)])
    got = run()
    assert len(ref[0]["boxes"]) > 0
    _assert_same_detections(ref, got)
    tv = ModelSpec("tv:resnet18", "classification", 64, 5)
    assert _runtime_e2e(Workload(tv, build_model(tv), torch.device("cpu"), 1, 2), "torch", 1) is None  # no export: no e2e


def test_bench_runners_do_not_busy_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench times its runtime sessions in turns: onnxruntime's idle threads must not spin (OnnxModel's spinning)."""
    import bicsnet.tools.runtimes as runtimes
    from bicsnet.tools.bench import ModelSpec, Workload, _runtime_latency, build_model

    spinning: list[bool] = []
    real = runtimes.network_runner

    def spy(*args: object, **kwargs: object):  # noqa: ANN202
        spinning.append(bool(kwargs.get("spinning", True)))
        return real(*args, **kwargs)

    monkeypatch.setattr(runtimes, "network_runner", spy)
    spec = ModelSpec("bicsnet_48", "detection", 128, 3, {**TINY, "head_norm": "gn"})
    w = Workload(spec, build_model(spec, score_thresh=0.0), torch.device("cpu"), 1, 2)
    (times,) = _runtime_latency([w], "torch", 0, 1)
    assert spinning == [False, False]  # the network-only runner and the end-to-end one
    assert times["net_ms"] > 0 and times["e2e_ms"] > 0
