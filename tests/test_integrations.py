"""bicsnet where users already are: timm's registry, torch.hub, torchvision's detectors.

Called the way users call them: ``timm.create_model`` / ``timm.list_models``,
``torch.hub.load(repo, name, source="local")``, and torchvision's detector
constructors with their default anchors and RoI poolers.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.models.detection import FCOS, FasterRCNN, KeypointRCNN, MaskRCNN, RetinaNet

import bicsnet
from bicsnet.integrations import timm as bicsnet_timm

from .conftest import TINY

REPO = Path(__file__).resolve().parents[1]


def _same_state(a: torch.nn.Module | dict, b: torch.nn.Module | dict) -> None:
    sa = a if isinstance(a, dict) else a.state_dict()
    sb = b if isinstance(b, dict) else b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# --------------------------------------------------------------------------- timm


def test_timm_lists_bicsnet_models_without_clashes():
    timm = pytest.importorskip("timm")
    # Every BiCSNet / lite / ablation model (classifier + pyramid backbone); not the torchvision baselines.
    assert sorted(timm.list_models("bicsnet_48*")) == bicsnet.list_models("bicsnet_48*")
    assert len(timm.list_models("bicsnet_48*")) == 9
    expected = sorted(set(bicsnet.list_models(task="classification")) - {"resnet34", "resnet50"})
    assert bicsnet_timm.timm_model_names() == expected
    assert sorted(timm.list_models("*bicsnet*")) == bicsnet.list_models("*bicsnet*")  # timm sorts 48 before 140
    assert timm.list_models("csnet_48") == ["csnet_48"]
    # Ours are ours; timm's resnet50 stays timm's (bicsnet's baseline of that name is not registered).
    for name in expected:
        assert timm.models.model_entrypoint(name).__module__ == "bicsnet.integrations.timm"
    assert timm.models.model_entrypoint("resnet50").__module__ == "timm.models.resnet"
    assert bicsnet_timm.register_timm_models() == []  # idempotent


def test_timm_name_clash_keeps_timms_model(monkeypatch, caplog):
    timm = pytest.importorskip("timm")
    before = timm.models.model_entrypoint("resnet50")
    monkeypatch.setattr(bicsnet_timm, "timm_model_names", lambda: ["resnet50"])
    with caplog.at_level(logging.WARNING, logger="bicsnet.integrations.timm"):
        assert bicsnet_timm.register_timm_models() == []
    assert timm.models.model_entrypoint("resnet50") is before
    assert "timm already has a model named 'resnet50'" in caplog.text


def test_timm_features_only_returns_the_chosen_levels():
    timm = pytest.importorskip("timm")
    # As the README: full-size BiCSNet-48, P3 / P5 / P7 (on the meta device: shapes only, no memory).
    with torch.device("meta"):
        feats = timm.create_model("bicsnet_48", features_only=True, out_indices=(0, 2, 4))
    assert feats.feature_info.channels() == [256, 256, 256]
    assert feats.feature_info.reduction() == [8, 32, 128]

    tiny = timm.create_model("bicsnet_48", features_only=True, out_indices=(0, 2, 4), **TINY).eval()
    x = torch.rand(2, 3, 97, 130)
    with torch.no_grad():
        out = tiny(x)
    assert isinstance(out, list) and [tuple(o.shape) for o in out] == [(2, 16, 13, 17), (2, 16, 4, 5), (2, 16, 1, 2)]
    # The same numbers as bicsnet's backbone on the standardised image, with the same weights.
    ref = bicsnet.create_model("bicsnet_48", **TINY).eval()
    ref.load_state_dict(tiny.backbone.state_dict())
    with torch.no_grad():
        want = ref(tiny.normalize(x))
    for got, level in zip(out, ("p3", "p5", "p7")):
        torch.testing.assert_close(got, want[level])
    last = timm.create_model("bicsnet_lite0", features_only=True, out_indices=(-1,), width_mult=0.25, expand_ratio=2)
    assert last.feature_info.reduction() == [128] and last.feature_info.channels() == [24]
    with pytest.raises(bicsnet.ConfigError, match="out_indices"):
        timm.create_model("bicsnet_48", features_only=True, out_indices=(0, 5), **TINY)


def test_timm_classifier_is_bicsnets_classifier():
    timm = pytest.importorskip("timm")
    torch.manual_seed(3)
    model = timm.create_model("bicsnet_48", num_classes=10, **TINY).eval()
    torch.manual_seed(3)
    ref = bicsnet.create_model("bicsnet_48", task="classification", num_classes=10, **TINY).eval()
    assert type(model) is type(ref)
    _same_state(model, ref)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x)) and model(x).shape == (2, 10)
    # timm's data pipeline hands it [0, 1] images: the model standardises them itself.
    assert timm.data.resolve_data_config(model=model)["mean"] == (0.0, 0.0, 0.0)
    assert timm.data.resolve_data_config(model=model)["std"] == (1.0, 1.0, 1.0)
    assert timm.create_model("bicsnet_48s", num_classes=4, drop_rate=0.3, **TINY).head.dropout.p == 0.3
    with pytest.raises(bicsnet.ConfigError, match="features_only"):
        timm.create_model("bicsnet_48", num_classes=0, **TINY)
    with pytest.raises(bicsnet.ConfigError, match="in_chans"):
        timm.create_model("bicsnet_48", in_chans=1, **TINY)


def test_timm_loads_local_weights(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    from bicsnet.engine.checkpoint import save_model

    torch.manual_seed(7)
    src = bicsnet.create_model("bicsnet_48", task="classification", num_classes=1000, **TINY)
    torch.save(src.state_dict(), tmp_path / "cls.pth")
    save_model(tmp_path / "cls.safetensors", src, {"model": src.bicsnet_config})  # as `bicsnet train` writes it
    for path in (tmp_path / "cls.pth", tmp_path / "cls.safetensors"):
        torch.manual_seed(0)
        model = timm.create_model("bicsnet_48", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY)
        _same_state(model, src)

    # A 10-class file: the overlay says so, and the head loads too (as in the README).
    torch.manual_seed(8)
    src10 = bicsnet.create_model("bicsnet_48", task="classification", num_classes=10, **TINY)
    save_file(src10.state_dict(), str(tmp_path / "cls10.safetensors"))
    model = timm.create_model(
        "bicsnet_48", num_classes=10, pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "cls10.safetensors"), num_classes=10), **TINY,
    )  # fmt: skip
    _same_state(model, src10)

    # Fine-tuning: the 1000-class file's backbone, a new 5-class head.
    model = timm.create_model(
        "bicsnet_48", num_classes=5, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "cls.pth")), **TINY
    )
    _same_state(model.backbone, src.backbone)
    assert model.head.fc.weight.shape == (5, 16)

    # A bare backbone's state dict into a features_only model.
    bb = bicsnet.create_model("bicsnet_48", **TINY)
    torch.save(bb.state_dict(), tmp_path / "backbone.pth")
    feats = timm.create_model(
        "bicsnet_48", features_only=True, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "backbone.pth")), **TINY
    )
    _same_state(feats.backbone, bb)


_IMPORT_THEN_TIMM = """
import sys, bicsnet
assert "timm" not in sys.modules, "import bicsnet imported timm"
import timm
assert timm.list_models("bicsnet_48s") == ["bicsnet_48s"], timm.list_models("bicsnet_48s")
print("registered after import timm")
"""


def test_timm_registration_after_a_later_import_timm():
    # The common order: bicsnet first, timm later, in a fresh interpreter; nothing on stderr (no warning).
    pytest.importorskip("timm")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_THEN_TIMM], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "registered after import timm" and proc.stderr == ""


def test_without_timm_nothing_is_registered_or_printed(monkeypatch, recwarn):
    # import bicsnet never imports timm (the test above); the one call it makes finds no timm here.
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    hooks = [f for f in sys.meta_path if isinstance(f, bicsnet_timm._AfterTimmImport)]
    bicsnet_timm.register_when_timm_imported()
    assert [f for f in sys.meta_path if isinstance(f, bicsnet_timm._AfterTimmImport)] == hooks
    assert len(recwarn) == 0


# --------------------------------------------------------------------------- torch.hub


def _hubconf():
    """The repository's hubconf.py, imported as torch.hub imports it."""
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hub_has_one_documented_entry_per_registered_model():
    hub = _hubconf()
    # torch.hub.list's rule: public callables of hubconf.py.
    entries = [f for f in dir(hub) if callable(getattr(hub, f)) and not f.startswith("_")]
    assert entries == bicsnet.list_models()
    assert hub.dependencies == ["torch", "torchvision"]
    for name in entries:
        doc = getattr(hub, name).__doc__
        assert doc.startswith(bicsnet.get_entry(name).description) and f"bicsnet.create_model({name!r}" in doc


def test_hub_load_from_local_repo():
    torch.manual_seed(1)
    model = torch.hub.load(str(REPO), "bicsnet_48s", source="local", task="detection", num_classes=3, **TINY)
    torch.manual_seed(1)
    ref = bicsnet.create_model("bicsnet_48s", task="detection", num_classes=3, **TINY)
    assert type(model) is type(ref) and model.num_classes == 3
    _same_state(model, ref)
    backbone = torch.hub.load(str(REPO), "bicsnet_48", source="local", **TINY)  # default task: backbone
    assert backbone.out_features == ["p3", "p4", "p5", "p6", "p7"]
    with pytest.raises(bicsnet.ConfigError, match="task"):
        torch.hub.load(str(REPO), "resnet50", source="local", task="detection", num_classes=3)


# --------------------------------------------------------------------------- torchvision


def test_torchvision_backbone_renames_and_selects_levels():
    bb = bicsnet.torchvision_backbone("bicsnet_48", **TINY).eval()
    x = torch.rand(1, 3, 97, 130)
    with torch.no_grad():
        out, ref = bb(x), bb.body(x)
    assert list(out) == ["0", "1", "2", "3", "4"] and bb.out_channels == 16
    for i, level in enumerate(ref):
        assert torch.equal(out[str(i)], ref[level])
    assert bb.strides == {"0": 8, "1": 16, "2": 32, "3": 64, "4": 128} and bb.size_divisibility == 128

    two = bicsnet.torchvision_backbone("bicsnet_48", levels=(4, 6), out_channels=32, width_mult=0.125).eval()
    with torch.no_grad():
        out = two(x)
    assert [tuple(v.shape) for v in out.values()] == [(1, 32, 7, 9), (1, 32, 2, 3)] and two.out_channels == 32
    with pytest.raises(bicsnet.ConfigError, match="levels"):
        bicsnet.torchvision_backbone("bicsnet_48", levels=(2, 3), **TINY)
    with pytest.raises(bicsnet.ConfigError, match="contradicts"):
        bicsnet.torchvision_backbone("bicsnet_48", out_channels=32, endpoint_channels=64)
    with pytest.raises(bicsnet.ConfigError, match="backbone"):
        bicsnet.torchvision_backbone("resnet50")
    # The plain backbone keeps its p3..p7 names; its docstring points at the bridge.
    assert "torchvision_backbone" in bicsnet.BiCSNet.__doc__


def _images_and_targets() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images = [torch.rand(3, 128, 128), torch.rand(3, 112, 128)]
    targets = []
    for img in images:
        h, w = img.shape[1:]
        boxes = torch.tensor([[10.0, 12.0, 70.0, 80.0], [60.0, 30.0, 120.0, 100.0]])
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
            m[y1:y2, x1:x2] = 1
        keypoints = torch.zeros(2, 17, 3)
        keypoints[..., 0] = boxes[:, None, 0] + 2 + 3 * torch.arange(17)
        keypoints[..., 1] = boxes[:, None, 1] + 20
        keypoints[..., 2] = 1
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks, "keypoints": keypoints})
    return images, targets


# Anchors, RoI poolers and heads are the constructors' defaults; only image size and how
# many RoIs / detections are kept are set, for speed. FCOS's default head has GroupNorm(32):
# out_channels=32 for all five.
_RCNN = {"box_detections_per_img": 2, "box_batch_size_per_image": 4, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 20}
_ONE_STAGE = {"detections_per_img": 2, "score_thresh": 0.0}
DETECTORS = {
    "FasterRCNN": (FasterRCNN, 3, _RCNN, {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}),
    "MaskRCNN": (MaskRCNN, 3, _RCNN, {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_mask"}),
    "KeypointRCNN": (KeypointRCNN, 2, _RCNN, {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_keypoint"}),
    "RetinaNet": (RetinaNet, 3, _ONE_STAGE, {"classification", "bbox_regression"}),
    "FCOS": (FCOS, 3, _ONE_STAGE, {"classification", "bbox_regression", "bbox_ctrness"}),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(DETECTORS))
def test_torchvision_detector_with_default_anchors_and_poolers(kind):
    ctor, num_classes, options, loss_names = DETECTORS[kind]
    backbone = bicsnet.torchvision_backbone("bicsnet_48", width_mult=0.125, out_channels=32)
    model = ctor(backbone, num_classes=num_classes, min_size=128, max_size=128, **options)
    images, targets = _images_and_targets()
    if ctor is KeypointRCNN:
        targets = [{**t, "labels": torch.ones(2, dtype=torch.int64)} for t in targets]

    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for det, img in zip(detections, images):
        h, w = img.shape[1:]
        n = len(det["boxes"])
        assert n == 2
        boxes = det["boxes"]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert ((det["scores"] >= 0) & (det["scores"] <= 1)).all()
        assert ((det["labels"] >= 0) & (det["labels"] < num_classes)).all()
        if ctor is MaskRCNN:
            assert det["masks"].shape == (n, 1, h, w)
        if ctor is KeypointRCNN:
            assert det["keypoints"].shape == (n, 17, 3)

    model.train()
    stem = backbone.body.stem[0].weight
    before = stem.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = model(images, targets)
    assert set(losses) == loss_names
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert stem.grad is not None and stem.grad.abs().sum() > 0  # the loss reaches BiCSNet's first layer
    optimizer.step()
    assert not torch.equal(stem.detach(), before)
