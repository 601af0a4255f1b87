"""bench, the inference fast path and ONNX export, at tiny sizes (CPU, well under a minute)."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os

import pytest
from pathlib import Path
import torch
from torch import nn

import bicsnet
from bicsnet.cli.main import main
from bicsnet.tools.fastpath import apply_fast_path, count_batchnorms, fold_batchnorm

from .conftest import TINY

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models are hundreds of small ops: on a shared 2-core machine two
    # OpenMP threads mostly wait for each other. One thread is several times faster.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so folding has something to fold."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    # Within 1e-4 of the tensor's scale (1e-4 absolute for values of order 1;
    # for boxes in pixels, 1e-4 of the largest coordinate).
    return a.shape == b.shape and (a.numel() == 0 or float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max())))


def test_bench_tiny_json(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    out = tmp_path / "bench.json"
    # The cls-48 pair with a tiny BiCSNet and ResNet-18 for ResNet-50, to keep it quick.
    argv = ["bench", "--pair", "cls-48", "--baseline", "tv:resnet18", "--img-size", "64", "--set", "width_mult=0.125",
            "--set", "endpoint_channels=16", "--iters", "2", "--warmup", "1", "--batch", "2", "--train-batch", "2",
            "--train-iters", "1", "--threads", "1", "--json", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res == json.loads(out.read_text())
    assert res["model"]["name"] == "bicsnet_48" and res["baseline"]["name"] == "tv:resnet18"
    for role in ("model", "baseline"):
        r = res[role]
        for key in ("gmacs", "params_m", "net_ms", "e2e_ms", "throughput_ips", "train_ips"):
            assert r[key] > 0, (role, key)
        assert "train_peak_mb" in r and "train_mem_per_image_mb" in r and "infer_peak_mb" in r
    assert res["ratios"]["gmacs"] == pytest.approx(res["model"]["gmacs"] / res["baseline"]["gmacs"], rel=1e-2)
    assert set(res["targets"]) >= {"net_latency_vs_flops"}
    assert res["machine"]["torch"] == torch.__version__


def test_bench_detector_and_fast_path() -> None:
    from bicsnet.tools.bench import ModelSpec, format_table, run_bench

    spec = ModelSpec("bicsnet_48", "detection", 256, 3, dict(TINY))
    res = run_bench(spec, None, warmup=0, iters=1, batch=1, train_batch=1, train_iters=1, fast="fold,channels_last", memory=False)
    assert set(res["model"]["fast"]) == {"fold", "channels_last", "fold+channels_last"}
    assert res["model"]["e2e_ms"] > 0 and res["model"]["train_ips"] > 0 and "ratios" not in res
    table = format_table(res)
    assert "network latency, fold (ms)" in table
    # The title names what was timed: the --set overrides too, not just the registered name.
    assert "bicsnet_48 (detection, 256px, width_mult=0.125, endpoint_channels=16" in table.splitlines()[0]


def test_bench_refuses_a_one_image_training_batch_before_timing(capsys: pytest.CaptureFixture[str]) -> None:
    from bicsnet.errors import ConfigError
    from bicsnet.tools.bench import ModelSpec, run_bench

    # At 64 px the coarsest level is 1x1: BatchNorm cannot train on one image there.
    spec = ModelSpec("bicsnet_48", "classification", 64, 3, dict(TINY))
    said: list[str] = []
    with pytest.raises(ConfigError, match="--train-batch 1: .* at least 2 images"):
        run_bench(spec, None, warmup=0, iters=1, batch=1, train_batch=1, train_iters=1, memory=False, log=said.append)
    assert said == []  # refused before the first timing phase, not after all of them
    argv = ["bench", "--model", "bicsnet_48", "--task", "classification", "--img-size", "64", "--set", "width_mult=0.125",
            "--set", "endpoint_channels=16", "--train-batch", "1", "--iters", "1", "--warmup", "0"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--train-batch 1" in err and "network latency" not in err


def test_machine_description_starts_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # platform.processor() starts a `uname -p` process from a process whose OpenVINO / oneDNN /
    # onnxruntime thread pools run (a long pytest process crashed inside it). The CPU's name
    # comes from /proc/cpuinfo, with no process started, in bench and every benchmark script.
    import platform
    import subprocess

    from bicsnet.tools.bench import _machine
    from bicsnet.tools.runtimes import cpu_name

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("started a process")

    monkeypatch.setattr(platform, "processor", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    info = _machine(torch.device("cpu"))
    assert info["cpu"] == cpu_name() and info["cpu"]
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
    except OSError:
        names = []
    assert cpu_name() == (names[0] if names else platform.machine() or "unknown")


def test_bench_user_errors() -> None:
    assert main(["bench", "--pair", "nope"]) == 2
    assert main(["bench"]) == 2
    assert main(["bench", "--model", "bicsnet_48", "--baseline", "tv:no_such_model", "--task", "classification"]) == 2
    assert main(["bench", "--pair", "cls-48", "--fast", "warp"]) == 2
    assert main(["bench", "--list-pairs"]) == 0


def test_fold_batchnorm_matches_eager() -> None:
    import torchvision

    cls = _randomize_bn(bicsnet.create_model("bicsnet_48", "classification", 5, **TINY))
    seg = _randomize_bn(bicsnet.create_model("bicsnet_48", "segmentation", 4, **TINY))
    r18 = _randomize_bn(torchvision.models.resnet18(weights=None, num_classes=7))
    x = torch.rand(2, 3, 64, 80)
    for model in (cls, seg, r18):
        folded = fold_batchnorm(model)
        assert count_batchnorms(model) > 0 and count_batchnorms(folded) == 0
        with torch.no_grad():
            ref, got = model(x), folded(x)
        assert _close(got, ref), float((got - ref).abs().max())
    # Folding copies: the original keeps its BatchNorms; the fast path stacks with channels_last.
    fast = apply_fast_path(cls, ["fold", "channels_last"])
    with torch.no_grad():
        assert _close(fast(x.contiguous(memory_format=torch.channels_last)), cls(x))
    assert count_batchnorms(cls) > 0


def test_onnx_backbone_dynamic_and_classifier(tmp_path) -> None:
    from bicsnet.errors import ConfigError
    from bicsnet.tools.export import OnnxModel, export_onnx

    bb = _randomize_bn(bicsnet.create_model("bicsnet_48", "backbone", **TINY))
    path = export_onnx(bb, "backbone", tmp_path / "bb.onnx", 128, dynamic=True)
    net = OnnxModel(path)
    assert net.output_names == ["p3", "p4", "p5", "p6", "p7"]
    for shape in [(1, 3, 64, 64), (2, 3, 97, 203)]:  # any size, any batch: no 128-multiple needed
        x = torch.rand(*shape)
        with torch.no_grad():
            ref = list(bb(x).values())
        got = net(x)
        assert [g.shape for g in got] == [r.shape for r in ref]
        assert all(_close(g, r) for g, r in zip(got, ref))

    # The classifier: the no-SFM ablation, whose graph has the fewest layers (the export's time grows with
    # them; test_quantize.py picks it for that too). Every layer of the full BiCSNet-48, SFM included, is
    # exported and checked just above; what is new here is the classification head and a static batch of 2.
    cls = _randomize_bn(bicsnet.create_model("bicsnet_48_no_sfm", "classification", 10, **TINY))
    path = export_onnx(cls, "classification", tmp_path / "cls.onnx", 64, batch=2)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = cls(x)
    (got,) = OnnxModel(path)(x)
    assert got.shape == (2, 10) and _close(got, ref)
    # Timed in turns (bench, int8.py): no busy-waiting idle threads; onnxruntime's default otherwise.
    quiet, default = OnnxModel(path, spinning=False), OnnxModel(path)
    entry = "session.intra_op.allow_spinning"
    assert quiet.session.get_session_options().get_session_config_entry(entry) == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # unset: onnxruntime spins
        default.session.get_session_options().get_session_config_entry(entry)
    assert _close(quiet(x)[0], ref)
    # A static graph given another shape: one clear error naming the file, before onnxruntime's.
    with pytest.raises(ConfigError, match=r"cls.onnx: exported for input 2x3x64x64, given 1x3x64x64; .*--dynamic"):
        quiet(x[:1])
    assert net.input_shape == [None, 3, None, None]  # the dynamic backbone takes any batch and size


def _detector_checkpoint(tmp_path, size: int = 256):
    from bicsnet.engine.checkpoint import save_model

    # GroupNorm head: with random BN statistics many of this 16-wide head's channels
    # die, whole regions score exactly alike, and top-k / NMS may keep either of a tie;
    # GN keeps the untrained scores distinct (BN export is covered by the other tests).
    model = _randomize_bn(bicsnet.create_model("bicsnet_48", "detection", 3, img_size=size, head_norm="gn", **TINY))
    meta = {"model": model.bicsnet_config, "task": "detection", "img_size": size, "num_classes": 3, "class_names": ["a", "b", "c"]}
    path = tmp_path / "model.safetensors"
    save_model(path, model, meta)
    return model, path


def _assert_same_detections(ref: list[dict], got: list[dict], tol: float = 1e-4) -> None:
    """Same detections; order-insensitive among (near-)equal scores, which float noise may swap."""
    assert len(ref) == len(got)
    for r, g in zip(ref, got):
        assert r["boxes"].shape == g["boxes"].shape
        assert _close(g["scores"], r["scores"])
        if not len(r["boxes"]):
            continue
        scale = tol * max(1.0, float(r["boxes"].abs().max()))
        same = (
            ((r["boxes"][:, None] - g["boxes"][None]).abs().amax(-1) <= scale)
            & (r["labels"][:, None] == g["labels"][None])
            & ((r["scores"][:, None] - g["scores"][None]).abs() <= tol)
        )
        assert bool(same.any(1).all()) and bool(same.any(0).all())


@pytest.fixture(scope="module")
def detector_b2(tmp_path_factory: pytest.TempPathFactory):
    """A detector checkpoint (trained at 256) and its ``bicsnet export`` at its own size with a static batch
    of 2, made once (an export takes tens of seconds) for the two tests below: the batch-2 test, and the
    own-size case of the any-image-size test (a static batch runs fewer images too, filled with blanks).

    Returns the eager model, the checkpoint, the ONNX file, the exit code and the CLI's stdout.
    """
    tmp = tmp_path_factory.mktemp("det_b2")
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as _one_thread does for the tests (a module fixture is set up before it)
    try:
        torch.manual_seed(0)
        model, ckpt = _detector_checkpoint(tmp)
        out = tmp / "det.onnx"
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            code = main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--batch", "2", "--out", str(out)])
    finally:
        torch.set_num_threads(n)
    return model, ckpt, out, code, stdout.getvalue()


def test_export_cli_detector_batch2_and_zero_detections(detector_b2) -> None:
    from bicsnet.tools.export import OnnxDetector

    model, _, out, code, stdout = detector_b2
    model = copy.deepcopy(model)  # score_thresh is changed below; the fixture's model is shared
    assert code == 0
    assert "onnxruntime vs PyTorch" in stdout
    det = OnnxDetector(out)
    assert det.net.output_names == ["boxes", "scores"] and "outside" in det.net.meta["nms"]
    assert det.net.meta["batch"] == 2 and det.net.meta["input_size"] == [256, 256] and not det.net.meta["dynamic"]
    images = [torch.rand(3, 200, 256), torch.rand(3, 256, 170)]  # both pad to 256 x 256: batch 2
    # Random weights score every anchor at ~0.01 < 0.05: zero detections, in both.
    with torch.no_grad():
        ref = model(images)
    got = det(images)
    assert all(len(d["boxes"]) == 0 for d in ref) and all(len(d["boxes"]) == 0 for d in got)
    _assert_same_detections(ref, got)
    # Threshold 0: every image keeps its top-k candidates, NMS has work to do. (Unpadded
    # images: padding gives many anchors exactly equal scores, which NMS may order either way.)
    images = [torch.rand(3, 256, 256), torch.rand(3, 256, 256)]
    model.score_thresh = det.net.meta["score_thresh"] = 0.0
    with torch.no_grad():
        ref = model(images)
    got = det(images)
    assert all(len(d["boxes"]) > 0 for d in ref)
    _assert_same_detections(ref, got)


def test_export_cli_user_errors(tmp_path) -> None:
    assert main(["export", "--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "x.onnx")]) == 2
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert main(["export", "--checkpoint", str(bad), "--out", str(tmp_path / "x.onnx")]) == 2


def test_export_cli_leaves_no_file_that_failed_its_check(tmp_path, monkeypatch, capsys) -> None:
    import bicsnet.tools.export as export_lib
    from bicsnet.errors import ConfigError

    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"stands in for a checkpoint: the export itself is replaced below")
    # A missing --check-images folder is refused before any exporting.
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "a.onnx"), "--check-images", str(tmp_path / "nope")]) == 2
    assert "--check-images" in capsys.readouterr().err and not (tmp_path / "a.onnx").exists()

    def fake_export(checkpoint, out, format="onnx", **kw):
        out = Path(out)
        out.write_bytes(b"graph")
        if format == "openvino":
            out.with_suffix(".bin").write_bytes(b"weights")
        return out

    def failing_check(*a, **kw):
        raise ConfigError("the export differs from PyTorch by 1e-3 (> 1e-12)")

    monkeypatch.setattr(export_lib, "export_checkpoint", fake_export)
    monkeypatch.setattr(export_lib, "check_export", failing_check)
    for fmt, name in (("onnx", "m.onnx"), ("openvino", "m.xml")):
        out = tmp_path / name
        assert main(["export", "--checkpoint", str(ckpt), "--format", fmt, "--out", str(out)]) == 2
        assert not out.exists() and not out.with_suffix(".bin").exists()
        captured = capsys.readouterr()
        assert "differs from PyTorch" in captured.err and "wrote" not in captured.out


@pytest.mark.skipif(not os.environ.get("BICSNET_SLOW_TESTS"), reason="dynamic detector export takes ~30 s; BICSNET_SLOW_TESTS=1")
def test_export_detector_dynamic(tmp_path) -> None:
    from bicsnet.tools.export import OnnxDetector, detection_metadata, export_onnx

    # GroupNorm head: random BN statistics make whole regions score alike, and NMS may keep either of a tie.
    model = _randomize_bn(
        bicsnet.create_model("bicsnet_48", "detection", 3, img_size=256, score_thresh=0.0, head_norm="gn", **TINY)
    )
    path = export_onnx(model, "detection", tmp_path / "det.onnx", 256, dynamic=True, metadata=detection_metadata(model))
    det = OnnxDetector(path)
    for images in ([torch.rand(3, 500, 260)], [torch.rand(3, 256, 256), torch.rand(3, 120, 256), torch.rand(3, 256, 64)]):
        with torch.no_grad():
            ref = model(images)
        _assert_same_detections(ref, det(images))


def test_static_detector_export_runs_any_image_size(detector_b2, tmp_path) -> None:
    """A detector trained at 256, exported static at its own size and at --img-size 384, runs on any image.

    Its own size: the fixture's export (no --img-size, static batch 2; one image runs as a batch
    of 2 filled with a blank). --img-size 384: exported here with the default static batch 1.
    """
    from bicsnet.models.wrappers import DetectionExportModule
    from bicsnet.tools.export import OnnxDetector, _letterbox

    model, ckpt, own_size_export, code, _ = detector_b2
    assert code == 0
    eager = DetectionExportModule(copy.deepcopy(model)).eval()
    out384 = tmp_path / "det384.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out384), "--img-size", "384"]) == 0
    for export_size, out, batch in ((256, own_size_export, 2), (384, out384, 1)):
        det = OnnxDetector(out)
        assert det.net.meta["input_size"] == [export_size, export_size] and det.net.meta["img_size"] == export_size
        assert det.net.meta["batch"] == batch and not det.net.meta["dynamic"]
        det.net.meta["score_thresh"] = 0.0  # random weights: keep candidates so the runner does real work
        for shape in [(export_size, export_size), (128, 256), (600, 900)]:  # the exported size, smaller non-square, larger
            image = torch.rand(3, *shape)
            (d,) = det([image])
            assert len(d["boxes"]) > 0
            assert float(d["boxes"][:, 2].max()) <= shape[1] and float(d["boxes"][:, 3].max()) <= shape[0]
            # The graph on the letterboxed input equals the eager network on the same input.
            batch_in, _ = det.transform([image])
            x = _letterbox(batch_in.tensors, (export_size, export_size), batch)
            with torch.no_grad():
                ref = eager(x)
            got = det.net(x)
            assert all(_close(g, r) for g, r in zip(got, ref))


def test_fast_path_deploy_matches_eager() -> None:
    """``--fast deploy`` (bicsnet.deploy, applied first) keeps the outputs, and stacks with fold."""
    from bicsnet.tools.fastpath import parse_fast

    assert parse_fast("deploy,fold") == ["deploy", "fold"]
    cls = _randomize_bn(bicsnet.create_model("bicsnet_48", "classification", 5, **TINY))
    x = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        ref = cls(x)
        for opts in (["deploy"], ["deploy", "fold"]):
            fast = apply_fast_path(cls, opts)
            assert fast is not cls and _close(fast(x), ref)
    assert count_batchnorms(cls) > 0  # the original is untouched
