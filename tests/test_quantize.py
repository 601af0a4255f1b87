"""INT8 post-training quantization (bicsnet/tools/quantize.py): calibration inputs, NNCF/OpenVINO, onnxruntime."""
from __future__ import annotations

import json
import sys
from typing import Any
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bicsnet
from bicsnet.data.image import load_image
from bicsnet.errors import ConfigError, DataError
from bicsnet.tools import quantize as Q
from bicsnet.tools.signal_stack import keep_signal_stack

from .conftest import TINY

pytest.importorskip("onnxruntime")


def _write_images(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    """Smooth RGB pictures (gradients plus a little noise) of the given (H, W), as PNG and JPEG files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx / w, yy / h, (xx + yy) / (h + w)], -1) * 200 + rng.normal(0, 12, (h, w, 3)) + 20
        path = folder / f"img{i:02d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def test_detection_calibration_inputs_are_the_detectors_preprocessing(tmp_path: Path) -> None:
    from bicsnet.tools.export import detection_metadata

    model = bicsnet.create_model("bicsnet_48", "detection", 3, img_size=128, **TINY).eval()
    paths = _write_images(tmp_path / "imgs", [(150, 100), (90, 160), (128, 128)])
    meta = {**detection_metadata(model), "input_size": [256, 256]}  # a static graph exported at --img-size 128 into 256
    got = Q.calibration_inputs("detection", list(reversed(paths)), 128, meta, count=2)
    assert len(got) == 2  # the first two in sorted order: img00, img01
    for arr, path in zip(got, paths[:2]):
        assert arr.dtype == np.float32 and arr.shape == (1, 3, 256, 256)
        with torch.no_grad():
            ref = model.transform([load_image(path)])[0].tensors  # the eager detector's resize, normalise, pad
        h, w = ref.shape[-2:]
        assert (h, w) == (128, 128)  # long side 128, padded to 128
        np.testing.assert_allclose(arr[..., :h, :w], ref.numpy(), rtol=0, atol=1e-6)
        assert not arr[..., h:, :].any() and not arr[..., :, w:].any()  # zero padding after normalisation
    # Another mean/std in the metadata is used, not the defaults.
    shifted = Q.calibration_inputs("detection", paths[:1], 128, {**meta, "image_mean": [0.0] * 3, "image_std": [1.0] * 3}, 1)[0]
    with torch.no_grad():
        plain = torch.nn.functional.interpolate(load_image(paths[0])[None], size=(128, 85), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(shifted[0, :, :128, :85], plain[0].numpy(), atol=1e-6)


def test_classification_calibration_inputs(tmp_path: Path) -> None:
    from bicsnet.data.transforms import classification_eval_transforms

    paths = _write_images(tmp_path, [(120, 90), (70, 200)])
    got = Q.calibration_inputs("classification", paths, 64, None)
    assert [a.shape for a in got] == [(1, 3, 64, 64)] * 2
    expected = classification_eval_transforms(64)(load_image(paths[1]))
    np.testing.assert_array_equal(got[1][0], expected.numpy())
    assert 0.0 <= min(a.min() for a in got) and max(a.max() for a in got) <= 1.0


def test_missing_calibration_images_are_data_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere"):
        Q.images_from(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*no calibration images"):
        Q.images_from(tmp_path / "empty")
    ann = tmp_path / "coco" / "_annotations.coco.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "gone.jpg", "height": 8, "width": 8}], "annotations": [], "categories": []}))
    listed = Q.images_from(ann)
    assert listed == [ann.parent / "gone.jpg"]
    with pytest.raises(DataError, match="gone.jpg.*not found"):
        Q.calibration_inputs("detection", listed, 128, None)
    with pytest.raises(DataError, match="no calibration images"):
        Q.calibration_inputs("classification", [], 64, None)
    with pytest.raises(ConfigError, match="instance"):
        Q.calibration_inputs("instance", listed, 128, None)


def test_missing_runtimes_name_the_pip_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nncf", None)  # import nncf -> ImportError
    with pytest.raises(ConfigError, match="pip install nncf"):
        Q.quantize_openvino(object(), [np.zeros((1, 3, 8, 8), np.float32)])  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)
    with pytest.raises(ConfigError, match="pip install onnxruntime"):
        Q.quantize_onnx(tmp_path / "a.onnx", tmp_path / "b.onnx", [])


@pytest.fixture(scope="module")
def classifier_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """A tiny BiCSNet classifier (the no-SFM ablation: the fewest layers) exported to ONNX at 64 px, and calibration inputs."""
    from bicsnet.tools.export import export_onnx

    tmp = tmp_path_factory.mktemp("quant")
    torch.manual_seed(0)
    model = bicsnet.create_model("bicsnet_48_no_sfm", "classification", 5, **TINY).eval()
    with torch.no_grad():  # BN statistics as after training: every folded convolution gets a non-zero bias
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.normal_(0, 0.1)
                bn.running_var.uniform_(0.5, 1.5)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0, 0.1)
    path = export_onnx(model, "classification", tmp / "cls.onnx", 64, metadata={"class_names": list("abcde")})
    sizes = [(60 + 7 * i, 90 - 3 * i) for i in range(12)]
    calib = Q.calibration_inputs("classification", _write_images(tmp / "calib", sizes), 64, None)
    return path, calib


def _assert_close_to_fp32(fp32: list[np.ndarray], int8: list[np.ndarray]) -> None:
    """INT8 logits follow FP32's: every error under 15% of the logits' range, and cosine similarity > 0.98.

    (8-bit activations and per-channel weights lose about 1% per layer on a
    random-weight network of ~70 convolutions; a broken quantization, e.g.
    mis-scaled or clipped, is far outside both bounds.)
    """
    a, b = np.concatenate(fp32).ravel(), np.concatenate(int8).ravel()
    assert np.abs(a - b).max() < 0.15 * (a.max() - a.min())
    assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) > 0.98
    assert not np.array_equal(a, b)  # it did change the arithmetic


def _activation_ranges(model: Any) -> dict[str, tuple[float, float]]:
    """``(low, high)`` of every FakeQuantize on an activation (not a weight), by name."""
    out = {}
    for op in model.get_ops():
        if op.get_type_name() == "FakeQuantize" and op.input_value(0).get_node().get_type_name() != "Constant":
            lo, hi = (op.input_value(i).get_node().get_data() for i in (1, 2))
            out[op.get_friendly_name()] = (float(lo.min()), float(hi.max()))
    return out


def _conv_biases(model: Any) -> dict[str, np.ndarray]:
    """The bias constant of every convolution (the ``Add`` after it), by the ``Add``'s name."""
    out = {}
    for op in model.get_ops():
        if op.get_type_name() != "Add":
            continue
        parents = [v.get_node() for v in op.input_values()]
        if parents[0].get_type_name() in ("Convolution", "GroupConvolution") and parents[1].get_type_name() == "Constant":
            out[op.get_friendly_name()] = parents[1].get_data().copy()
    return out


def test_openvino_int8_has_fake_quantize_and_follows_fp32(classifier_onnx: tuple[Path, list[np.ndarray]]) -> None:
    ov = pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    path, calib = classifier_onnx
    fp32 = ov.convert_model(str(path))
    int8 = Q.quantize_openvino(fp32, calib)
    types = [op.get_type_name() for op in int8.get_ops()]
    convs = types.count("Convolution") + types.count("GroupConvolution")
    assert types.count("FakeQuantize") >= convs > 0  # at least the input and the weights of every convolution
    assert "FakeQuantize" not in [op.get_type_name() for op in fp32.get_ops()]  # the input model is left alone
    # No bias correction (it cost 48S 0.2-0.7 point of box AP, benchmarks/deploy.md): every bias as trained.
    biases32, biases8 = _conv_biases(fp32), _conv_biases(int8)
    assert len(biases32) >= convs and biases8.keys() == biases32.keys()
    for name, b in biases32.items():
        np.testing.assert_array_equal(biases8[name], b, err_msg=name)
    with keep_signal_stack():  # the CPU plugin's own stack dangles once Cores go in creation order
        core = ov.Core()
        c32, c8 = core.compile_model(fp32, "CPU"), core.compile_model(int8, "CPU")
    _assert_close_to_fp32([c32(x)[0] for x in calib], [c8(x)[0] for x in calib])
    # The histogram ranges (the default) lie within the calibration extremes ("minmax"; up to the
    # histogram's bin edges, 1% of the range) and clip some of them by more than 5%.
    hist, extremes = _activation_ranges(int8), _activation_ranges(Q.quantize_openvino(fp32, calib, ranges="minmax"))
    assert hist.keys() == extremes.keys() and len(hist) > 0
    widths = {n: extremes[n][1] - extremes[n][0] for n in hist}
    for name, (lo, hi) in hist.items():
        slack = 0.01 * widths[name]
        assert extremes[name][0] - slack <= lo <= hi <= extremes[name][1] + slack, name
    assert any(hist[n][1] - hist[n][0] < 0.95 * widths[n] for n in hist)
    with pytest.raises(ConfigError, match="ranges: choose from histogram"):
        Q.quantize_openvino(fp32, calib, ranges="entropy")


def test_onnx_int8_has_quantize_linear_and_follows_fp32(classifier_onnx: tuple[Path, list[np.ndarray]], tmp_path: Path) -> None:
    import onnx

    from bicsnet.tools.export import load_onnx

    path, calib = classifier_onnx
    out = tmp_path / "sub" / "cls.int8.onnx"
    Q.quantize_onnx(path, out, calib)
    assert sorted(p.name for p in out.parent.iterdir()) == ["cls.int8.onnx"]  # no staging files left behind
    nodes = onnx.load(str(out)).graph.node
    convs = [n for n in nodes if n.op_type == "Conv"]
    weights_dq = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
    assert sum(n.op_type == "QuantizeLinear" for n in nodes) > 0
    assert convs and all(c.input[1] in weights_dq for c in convs)  # every convolution takes INT8 weights
    fp32, int8 = load_onnx(path), load_onnx(out)
    assert int8.meta == fp32.meta and int8.meta["class_names"] == list("abcde")  # bicsnet.* metadata kept
    _assert_close_to_fp32([fp32(torch.from_numpy(x))[0].numpy() for x in calib], [int8(torch.from_numpy(x))[0].numpy() for x in calib])
    with pytest.raises(ConfigError, match="missing.onnx"):
        Q.quantize_onnx(tmp_path / "missing.onnx", tmp_path / "x.onnx", calib)
