"""Detection and instance segmentation end to end (issue: RetinaNet / Mask R-CNN on BiCSNet)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bicsnet
from bicsnet.cli.main import main
from bicsnet.data import generate_synthetic
from bicsnet.models.detection import BiCSNetRetinaNet, DetectionTransform

pytestmark = pytest.mark.filterwarnings("ignore:.*__array__ implementation.*:DeprecationWarning")

TINY_DET = {"width_mult": 0.125, "endpoint_channels": 32}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic(root, num_train=48, num_val=16, img_size=128, seed=0, kinds=("coco",))
    return root


def _det(**kw) -> BiCSNetRetinaNet:
    return bicsnet.create_model("bicsnet_48", "detection", 5, img_size=128, **TINY_DET, **kw)


def test_anchor_scale_and_levels_follow_the_paper() -> None:
    m = bicsnet.create_model("bicsnet_48", "detection", 80, **TINY_DET)
    sizes = m.anchor_generator.sizes
    assert len(sizes) == 5 and all(len(s) == 3 for s in sizes)
    assert [s[0] for s in sizes] == [3 * 2**lvl for lvl in range(3, 8)]  # base = 3 x stride
    assert bicsnet.create_model("bicsnet_140", "detection", 80, **TINY_DET).anchor_generator.sizes[0][0] == 4 * 8
    assert m.anchor_generator.num_anchors_per_location()[0] == 9
    assert m.head.classification_head.focal_gamma == 1.5 and m.head.classification_head.focal_alpha == 0.25


def test_transform_resizes_long_side_only_when_needed_and_pads_to_128() -> None:
    t = DetectionTransform(256).eval()
    batch, _ = t([torch.rand(3, 256, 200), torch.rand(3, 100, 50)])
    assert batch.image_sizes == [(256, 200), (256, 128)]  # long side -> 256, aspect kept
    assert batch.tensors.shape[-2:] == (256, 256)  # padded to a multiple of 128
    batch, _ = DetectionTransform(640).eval()([torch.rand(3, 300, 640)])
    assert batch.tensors.shape[-2:] == (384, 640)


def test_focal_gamma_is_settable_and_changes_the_loss() -> None:
    # Two images: BN in training mode needs more than one value per channel at P7.
    imgs = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    tgt = [{"boxes": torch.tensor([[10.0, 20, 70, 90]]), "labels": torch.tensor([3])}] * 2
    losses = []
    for g in (1.5, 2.0):
        torch.manual_seed(0)
        m = _det(focal_gamma=g).train()
        losses.append(m(imgs, tgt)["classification"].item())
    assert losses[0] != pytest.approx(losses[1])


def test_crowd_regions_are_ignored_not_negative() -> None:
    m = _det().train()
    anchors = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 120, 120]])
    matched = torch.tensor([-1, -1, 0])
    crowd = torch.tensor([[40.0, 40, 80, 80]])
    out = m._ignore_crowd(matched, anchors, crowd)
    assert out.tolist() == [-1, m.proposal_matcher.BETWEEN_THRESHOLDS, 0]


def test_empty_images_and_labels_one_based() -> None:
    m = _det().train()
    imgs = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    tgts = [
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
        {"boxes": torch.tensor([[5.0, 5, 60, 60]]), "labels": torch.tensor([5])},  # label K is valid
    ]
    losses = m(imgs, tgts)
    assert all(torch.isfinite(v) for v in losses.values())
    m.eval()
    with torch.no_grad():
        out = m([torch.rand(3, 90, 128)])[0]
    assert out["labels"].numel() == 0 or (out["labels"].min() >= 1 and out["labels"].max() <= 5)


def test_mask_rcnn_trains_and_predicts_masks() -> None:
    m = bicsnet.create_model("bicsnet_48", "instance", 3, img_size=128, **TINY_DET).train()
    mask = torch.zeros(1, 128, 128, dtype=torch.uint8)
    mask[0, 20:80, 30:90] = 1
    tgt = [{"boxes": torch.tensor([[30.0, 20, 90, 80]]), "labels": torch.tensor([2]), "masks": mask}] * 2
    losses = m([torch.rand(3, 128, 128), torch.rand(3, 128, 128)], tgt)
    assert {"loss_mask", "loss_classifier", "loss_objectness"} <= set(losses)
    sum(losses.values()).backward()
    assert m.rpn._post_nms_top_n["testing"] == 1000  # Table III: 1000 proposals
    m.eval()
    with torch.no_grad():
        out = m([torch.rand(3, 100, 128)])[0]
    assert "masks" in out and out["masks"].shape[-2:] == (100, 128)


def _score_independently(ann: Path, dets: Path) -> dict[str, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        res = json.loads(dets.read_text())
        dt = gt.loadRes(res)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": ev.stats[0], "AP50": ev.stats[1]}


def test_tiny_detector_learns_and_eval_matches_pycocotools(synth: Path, tmp_path: Path) -> None:
    """CLI train -> eval -> predict; loss falls, AP rises well above zero, detections.json re-scores exactly."""
    run = tmp_path / "run"
    args = [
        "train", "--task", "detection", "--model", "bicsnet_48_tiny", "--img-size", "128", "--epochs", "24",
        "--batch-size", "8", "--lr", "0.01", "--bn-momentum", "0.1", "--warmup-epochs", "1", "--synth-dir", str(synth),
        "--synth-train", "48", "--synth-val", "16", "--synth-size", "128", "--workers", "0", "--device", "cpu",
        "--out", str(run), "--log-every", "6", "--ckpt-every", "1000",
    ]  # fmt: skip
    assert main(args) == 0
    rows = [r for r in (run / "log.csv").read_text().splitlines()[1:]]
    header = (run / "log.csv").read_text().splitlines()[0].split(",")
    losses = [float(r.split(",")[header.index("loss")]) for r in rows]
    assert losses[-1] < 0.8 * max(losses[:3]), losses
    metrics = json.loads((run / "metrics.json").read_text())
    print("tiny detector:", losses[0], "->", losses[-1], metrics["bbox"])  # shown with pytest -s
    # An untrained detector scores ~0.001 here. 144 steps of this tiny model are chaotic:
    # seed 0 reaches AP50 0.131 with 2 threads and 0.026 with 1 (the suite runs with 1),
    # so the bar is 15x the untrained score, not a fraction of the best run.
    assert metrics["bbox"]["AP50"] > 0.015, metrics

    ev = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(run / "model.safetensors"), "--synth-dir", str(synth), "--synth-train", "48",
                 "--synth-val", "16", "--synth-size", "128", "--device", "cpu", "--workers", "0", "--out", str(ev)]) == 0
    ev_metrics = json.loads((ev / "metrics.json").read_text())
    assert ev_metrics["bbox"]["AP"] == pytest.approx(metrics["bbox"]["AP"], abs=1e-9)
    dets = json.loads((ev / "detections.json").read_text())
    ann = synth / "coco" / "annotations" / "instances_val.json"
    cat_ids = {c["id"] for c in json.loads(ann.read_text())["categories"]}
    assert dets and {d["category_id"] for d in dets} <= cat_ids  # the dataset's own (non-contiguous) ids
    indep = _score_independently(ann, ev / "detections.json")
    assert indep["AP"] == pytest.approx(ev_metrics["bbox"]["AP"], abs=1e-9)
    assert indep["AP50"] == pytest.approx(ev_metrics["bbox"]["AP50"], abs=1e-9)

    # Refuses to overwrite results silently.
    assert main(["eval", "--checkpoint", str(run / "model.safetensors"), "--synth-dir", str(synth), "--synth-train", "48",
                 "--synth-val", "16", "--synth-size", "128", "--device", "cpu", "--out", str(ev)]) == 2

    img = sorted((synth / "coco" / "val").iterdir())[0]
    pred = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(run / "model.safetensors"), str(img), "--out", str(pred), "--device", "cpu"]) == 0
    rec = json.loads((pred / f"{img.stem}.json").read_text())
    assert (pred / f"{img.stem}.png").stat().st_size > 0
    assert all({"box_xyxy", "score", "label", "class_name", "category_id"} <= set(d) for d in rec["detections"])

    # Backbone transfer between tasks (Section V: detection -> segmentation).
    seg = bicsnet.create_model("bicsnet_48_tiny", "segmentation", 4)
    from bicsnet.weights import load_backbone_weights

    report = load_backbone_weights(seg, run / "model.safetensors")
    assert report.loaded and not report.missing


def test_instance_cli_writes_box_and_mask_metrics(synth: Path, tmp_path: Path) -> None:
    run = tmp_path / "inst"
    assert main([
        "train", "--task", "instance", "--model", "bicsnet_48_tiny", "--img-size", "128", "--epochs", "1", "--max-steps", "3",
        "--set", f"width_mult={TINY_DET['width_mult']}", "--set", f"endpoint_channels={TINY_DET['endpoint_channels']}",
        "--batch-size", "4", "--synth-dir", str(synth), "--synth-train", "48", "--synth-val", "16", "--synth-size", "128",
        "--workers", "0", "--device", "cpu", "--out", str(run),
    ]) == 0  # fmt: skip
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"bbox", "segm"}
    assert set(metrics["segm"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}


def test_retinanet_bn_head_evaluates_with_each_levels_own_statistics() -> None:
    """In training a subnet's BN normalises each level with that level's batch statistics (the subnet
    runs once per level); evaluation must use the same per-level statistics, not one set mixing the
    five levels (what one BN shared by all levels holds: AP50 0.46 -> 0.52 on a demo run, benchmarks/demo.md)."""
    torch.manual_seed(0)
    m = _det()
    for subnet in (m.head.classification_head.subnet, m.head.regression_head.subnet):
        assert subnet.num_levels == 5 and len({id(n) for level in subnet.norms for n in level}) == 5 * len(subnet.convs)
        for n in subnet.modules():
            if isinstance(n, torch.nn.BatchNorm2d):
                n.momentum = 1.0  # running statistics = the last batch's
        c, per_anchor = subnet.convs[0][0].in_channels, subnet.predictor.out_channels // 9
        # Levels whose maps differ in scale by 10x each, as real P3..P7 maps differ in statistics.
        feats = [torch.randn(4, c, 16, 16) * 10.0**lvl + lvl for lvl in range(5)]
        with torch.no_grad():
            trained = subnet.train().forward_pyramid(feats, per_anchor)
            evaluated = subnet.eval().forward_pyramid(feats, per_anchor)
        # Equal up to the running variance's n / (n - 1) (n = 4 x 16 x 16 values per channel).
        torch.testing.assert_close(evaluated, trained, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("norm", ["bn", "gn", "none"])
def test_retinanet_head_of_one_shared_norm_loads_exactly(tmp_path: Path, norm: str) -> None:
    """Weights from before the per-level norms (torchvision's head: one norm shared by all levels) load,
    strictly, into the per-level subnets and give the same outputs in evaluation, for every head_norm."""
    from safetensors.torch import save_file
    from torchvision.models.detection.retinanet import RetinaNetHead

    from bicsnet.models.detection import head_norm_layer
    from bicsnet.weights import load_weights

    torch.manual_seed(0)
    m = _det(head_norm=norm).eval()
    c, a, k = m.backbone.out_channels, 9, 5
    legacy = RetinaNetHead(c, a, k, norm_layer=head_norm_layer(norm)).eval()  # what bicsnet built before
    for n in legacy.modules():
        if isinstance(n, torch.nn.BatchNorm2d):
            n.running_mean.uniform_(-1, 1), n.running_var.uniform_(0.5, 2)
        if isinstance(n, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
            n.weight.data.uniform_(0.5, 1.5), n.bias.data.uniform_(-0.5, 0.5)
        if isinstance(n, torch.nn.Conv2d) and n.bias is not None:
            n.bias.data.uniform_(-0.1, 0.1)
    state = {f"head.{name}": t for name, t in legacy.state_dict().items()}
    state.update({name: t for name, t in m.state_dict().items() if not name.startswith("head.")})
    path = tmp_path / "old.safetensors"
    save_file({name: t.contiguous() for name, t in state.items()}, str(path))
    report = load_weights(m, path, strict=True)
    assert not report.missing and not report.unexpected and "head.classification_head" in report.renamed
    feats = [torch.randn(1, c, s, s) for s in (16, 8, 4, 2, 1)]
    with torch.no_grad():
        torch.testing.assert_close(m.head.classification_head(feats), legacy.classification_head(feats))
        torch.testing.assert_close(m.head.regression_head(feats), legacy.regression_head(feats))
