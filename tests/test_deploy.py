"""bicsnet.deploy: the deployed copy computes what the model computes, with fewer operators."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import bicsnet
from bicsnet.arch.fusion import GlobalContext
from bicsnet.reparam import DeployedFusion, SharedPointwise, deploy, merge_max_pools, operator_counts
from bicsnet.models.wrappers import NetworkOnly
from bicsnet.tasks import TASKS

MODELS = [n for n in bicsnet.list_models() if bicsnet.get_entry(n).config is not None]


def _randomize(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and global-context weights (a fresh model has identity ones)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
        if isinstance(m, GlobalContext):
            m.conv.weight.data.normal_(0, 0.1, generator=g)
            m.conv.bias.data.normal_(0, 0.1, generator=g)
        if getattr(m, "weights", None) is not None and isinstance(m.weights, nn.Parameter):
            m.weights.data.uniform_(0.2, 2.0, generator=g)  # fast-normalized fusion weights
    return model.eval()


def _tiny(name: str, task: str = "backbone", num_classes: int | None = None, **kw) -> nn.Module:
    entry = bicsnet.get_entry(name)
    return bicsnet.create_model(name, task, num_classes, **{**entry.tiny, **kw})


def _outputs(model: nn.Module, task: str, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return NetworkOnly(model, TASKS[task].network)(x)


def _assert_close(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        scale = y.abs().max().clamp_min(1e-6)
        assert ((x - y).abs().max() / scale).item() < 1e-5


@pytest.mark.parametrize("name", MODELS)
def test_deploy_matches_eager_every_model(name: str) -> None:
    torch.manual_seed(0)
    model = _randomize(_tiny(name))
    # 100 x 72: odd level sizes, so nearest up-sampling is not pure replication everywhere.
    x = torch.rand(2, 3, 100, 72)
    ref = _outputs(model, "backbone", x)
    dep = deploy(model)
    _assert_close(_outputs(dep, "backbone", x), ref)
    # batch 2 takes the fusion's plain add, batch 1 the chained post-ops (rewrite 7)
    _assert_close(_outputs(dep, "backbone", x[:1]), _outputs(model, "backbone", x[:1]))
    _assert_close(_outputs(deploy(model, fuse=False), "backbone", x), ref)
    # the original is untouched and still the reference
    _assert_close(_outputs(model, "backbone", x), ref)
    if bicsnet.get_entry(name).config.spatial_fusion:
        assert any(isinstance(m, DeployedFusion) for m in dep.modules())
    assert dep.deploy_report["batchnorms_left"] == 0


@pytest.mark.parametrize(
    "name,task,size",
    [
        ("bicsnet_48", "classification", 96),
        ("bicsnet_48", "segmentation", 128),
        ("bicsnet_48s", "detection", 128),
        ("bicsnet_lite0", "detection", 128),
        ("bicsnet_48", "detection", 128),
    ],
)
def test_deploy_matches_eager_task_models(name: str, task: str, size: int) -> None:
    model = _randomize(_tiny(name, task, 3, **({"head_norm": "bn"} if task == "detection" else {})))
    x = torch.rand(1, 3, size, size)
    ref = _outputs(model, task, x)
    dep = deploy(model)
    _assert_close(_outputs(dep, task, x), ref)
    assert dep.deploy_report["batchnorms_left"] == 0  # the detection subnets' BNs too


def test_deployed_detector_predicts_the_same_scores() -> None:
    """End to end (transform, network, decoding, NMS). A random head scores near-equal
    anchors, which NMS may order either way, so the sorted scores are what must agree;
    the network outputs themselves are compared above."""
    model = _randomize(_tiny("bicsnet_48s", "detection", 3, head_norm="bn"))
    model.score_thresh = 0.0
    images = [torch.rand(3, 120, 150)]
    with torch.no_grad():
        a = model(images)[0]
        b = deploy(model)(images)[0]
    assert len(a["scores"]) == len(b["scores"]) > 10
    torch.testing.assert_close(b["scores"][:20], a["scores"][:20], atol=1e-6, rtol=1e-4)
    assert b["boxes"].shape == a["boxes"].shape and set(b["labels"].tolist()) <= {1, 2, 3}


def test_deploy_counts_fewer_operators_and_convolutions() -> None:
    model = _randomize(_tiny("bicsnet_48"))
    x = torch.rand(1, 3, 128, 128)
    before = operator_counts(model, x)
    dep = deploy(model)
    after = operator_counts(dep, x)
    assert after["convolutions"] < before["convolutions"]
    assert after["operators"] < before["operators"]
    assert "native_batch_norm" not in after["by_op"] and "_native_batch_norm_legit_no_training" not in after["by_op"]
    # every squeeze 1x1 conv reading one source is one convolution now
    shared = [m for m in dep.modules() if isinstance(m, SharedPointwise)]
    assert shared and before["convolutions"] - after["convolutions"] == dep.deploy_report["pointwise_convs_merged"]


def test_deploy_torchvision_baseline_folds_batchnorm() -> None:
    import torchvision

    from bicsnet.fused_ops import OneDNNMaxPool2d

    model = _randomize(torchvision.models.resnet18(num_classes=5))
    x = torch.rand(1, 3, 64, 64)
    dep = deploy(model)
    with torch.no_grad():
        ref = model(x)
        out = dep(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # The stem's max-pool runs on oneDNN too (rewrite 8), so baselines get what bicsnet's backbones have.
    assert dep.deploy_report["max_pools_replaced"] == 1 and isinstance(dep.maxpool, OneDNNMaxPool2d)
    assert type(model.maxpool) is nn.MaxPool2d


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("size", [(37, 64), (40, 41), (5, 9)])
def test_merge_max_pools_is_exact(k: int, size: tuple[int, int]) -> None:
    seq = nn.Sequential(*[nn.MaxPool2d(3, 2, 1) for _ in range(k)])
    merged = merge_max_pools(seq)
    assert len(merged) == 1 and merged[0].kernel_size == 2 ** (k + 1) - 1
    x = torch.randn(2, 4, *size)
    assert torch.equal(merged(x), seq(x))


def test_deploy_leaves_training_model_alone_and_is_eval() -> None:
    model = _tiny("bicsnet_48").train()
    dep = deploy(model)
    assert model.training and not dep.training
    assert not any(isinstance(m, SharedPointwise) for m in model.modules())


# --------------------------------------------------------------------------- fused convolutions (rewrite 7)


def _reference(x, weight, bias, stride, padding, groups, act, other=None):
    y = torch.nn.functional.conv2d(x, weight, bias, stride, padding, 1, groups)
    if other is not None:
        y = y + other
    return {"relu": torch.relu, "swish": torch.nn.functional.silu, None: lambda t: t}[act](y)


@pytest.mark.parametrize("act", ["relu", "swish", None])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("groups,stride,batch", [(1, 1, 1), (1, 2, 2), (8, 1, 2)])
def test_fused_conv_equals_conv_add_act(act: str | None, residual: bool, groups: int, stride: int, batch: int) -> None:
    from bicsnet.fused_ops import FusedConv2d, use_onednn

    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(16, 16 // groups, 3, 3, generator=g), torch.randn(16, generator=g)
    conv = FusedConv2d(weight, bias, stride=(stride, stride), padding=(1, 1), groups=groups, act=act)
    x = torch.randn(batch, 16, 13, 10, generator=g)
    other = torch.randn(batch, 16, *conv(x).shape[-2:], generator=g) if residual else None
    ref = _reference(x, weight, bias, stride, 1, groups, act, other)
    with torch.no_grad():
        assert use_onednn(x, conv.weight) == bicsnet.fused_ops.onednn_available()
        out = conv(x, other)
        again = conv(x, other)  # the laid-out weight is cached and reused
        cl = conv(x.contiguous(memory_format=torch.channels_last), other)
        per_call = conv(x, other, bias=torch.zeros(16), act="relu")  # per-call bias and activation
    for y in (out, again, cl):
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    # Another input size (a RetinaNet head runs one convolution on every level): its own weight layout.
    small = torch.randn(batch, 16, 5, 4, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(conv(small), _reference(small, weight, bias, stride, 1, groups, act), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(conv(x, other), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(per_call, _reference(x, weight, None, stride, 1, groups, "relu", other), rtol=1e-4, atol=1e-4)
    # With autograd the plain operators run, and input gradients flow (saliency maps on a deployed model).
    xg = x.clone().requires_grad_(True)
    assert not use_onednn(xg, conv.weight)
    y = conv(xg, other)
    torch.testing.assert_close(y.detach(), ref, rtol=1e-4, atol=1e-4)
    y.sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_fused_deploy_rewrites_residual_blocks_and_matches_unfused() -> None:
    import torchvision

    from bicsnet.fused_ops import FusedConv2d
    from bicsnet.reparam import FusedResidual

    model = _randomize(_tiny("bicsnet_48"))
    x = torch.rand(1, 3, 96, 80)
    fused, plain = deploy(model), deploy(model, fuse=False)
    assert fused.deploy_report["convolutions_fused"] > 0 and plain.deploy_report["convolutions_fused"] == 0
    assert fused.deploy_report["onednn"] is bicsnet.fused_ops.onednn_available() and plain.deploy_report["onednn"] is False
    for copy_ in (fused, plain):  # inference-only: training would silently skip the buffers
        with pytest.raises(RuntimeError, match=r"copy made by bicsnet.deploy\(\), for inference only.*\.eval\(\) puts"):
            copy_.train()
        assert copy_.eval() is copy_ and not any(m.training for m in copy_.modules())
        _assert_close(_outputs(copy_, "backbone", x), _outputs(plain, "backbone", x))
    assert any(isinstance(m, FusedResidual) for m in fused.modules())
    assert not any(isinstance(m, FusedResidual) for m in plain.modules())
    if bicsnet.fused_ops.onednn_available():
        assert "_convolution_pointwise" in operator_counts(fused, x)["by_op"]
    assert "_convolution_pointwise" not in operator_counts(plain, x)["by_op"]
    _assert_close(_outputs(fused, "backbone", x), _outputs(plain, "backbone", x))
    # torchvision's ResNet (the baselines) gets the same rewrite: blocks and the stem.
    tv = _randomize(torchvision.models.resnet50(num_classes=4))
    dep = deploy(tv, fuse=True)
    assert isinstance(dep.layer1[0], FusedResidual) and isinstance(dep.conv1, FusedConv2d) and dep.conv1.act == "relu"
    with torch.no_grad():
        torch.testing.assert_close(dep(x), tv(x), rtol=1e-4, atol=1e-4)


def test_deployed_state_dict_restores_the_deployed_copy(tmp_path) -> None:
    """A deployed copy saved with state_dict() and loaded into another deploy of the same architecture."""
    x = torch.rand(1, 3, 64, 64)
    trained = _randomize(_tiny("bicsnet_48", "classification", 4))
    dep = deploy(trained, fuse=True)
    sd = dep.state_dict()
    # Each folded projection is stored once (as its FusedConv2d's weight), not also on its branch.
    assert any(k.endswith(".proj.weight") for k in sd)
    assert not [k for k in sd if k.endswith(".weight") and k[: -len(".weight")] + ".proj.weight" in sd]
    torch.save(sd, tmp_path / "deployed.pt")
    torch.manual_seed(123)
    other = deploy(_tiny("bicsnet_48", "classification", 4).eval(), fuse=True)  # different weights
    assert not torch.allclose(other(x), dep(x))
    other.load_state_dict(torch.load(tmp_path / "deployed.pt"))
    with torch.no_grad():
        torch.testing.assert_close(other(x), dep(x), rtol=1e-6, atol=1e-6)


def test_fused_deploy_under_inference_mode() -> None:
    """Deployed and called inside torch.inference_mode (inference tensors have no version counter)."""
    model = _randomize(_tiny("bicsnet_48"))
    x = torch.rand(1, 3, 64, 64)
    ref = _outputs(model, "backbone", x)
    with torch.inference_mode():
        dep = deploy(model, fuse=True)
        out = tuple(dep(x).values())
        again = tuple(dep(x).values())
    _assert_close(out, ref)
    _assert_close(again, ref)


def test_fused_deploy_exports_plain_operators() -> None:
    """torch.export (the ONNX / OpenVINO route) sees aten.convolution, never oneDNN's CPU-only operators."""
    model = _randomize(_tiny("bicsnet_48"))
    dep = deploy(model, fuse=True)
    x = torch.rand(1, 3, 64, 64)
    program = torch.export.export(dep, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("mkldnn" in t for t in targets), sorted(t for t in targets if "mkldnn" in t)
    assert any("conv2d" in t or "convolution" in t for t in targets)
    with torch.no_grad():
        _assert_close(tuple(program.module()(x).values()), tuple(dep(x).values()))


# --------------------------------------------------------------------------- oneDNN max-pooling


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "kernel,stride,padding,ceil_mode,size",
    [(3, 2, 1, False, (40, 41)), (3, 2, 1, False, (9, 6)), (7, 4, 3, False, (37, 64)), (15, 8, 7, False, (33, 20)),
     (3, 2, 0, True, (10, 11)), (2, None, 0, False, (8, 8))],
)  # fmt: skip
def test_onednn_max_pool_equals_max_pool(dtype, kernel, stride, padding, ceil_mode, size) -> None:
    """Forward values identical to nn.MaxPool2d; each gradient goes to the same input position (training uses it)."""
    from bicsnet.fused_ops import OneDNNMaxPool2d, onednn_available, use_onednn_pool

    g = torch.Generator().manual_seed(0)
    # ReLU'd values with a block of equal maxima: ties must go to the same (first) position.
    x = torch.randn(2, 5, *size, generator=g).relu().to(dtype)
    x[0, 1, 2:7, 2:7] = 1.5
    ours = OneDNNMaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode)
    ref = nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode)
    assert use_onednn_pool(x) == onednn_available()
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ours(xa), ref(xb)
    assert ya.dtype == dtype and ya.is_contiguous()
    assert torch.equal(ya, yb)
    # Integer gradients sum exactly: equal input gradients mean equal routing, ties included.
    grad = torch.randint(-3, 4, yb.shape, generator=g).to(dtype)
    ya.backward(grad)
    yb.backward(grad)
    assert torch.equal(xa.grad, xb.grad)
    # Channels-last input takes PyTorch's own (vectorised) kernel: the same values.
    cl = x.contiguous(memory_format=torch.channels_last)
    assert not use_onednn_pool(cl)
    assert torch.equal(ours(cl), yb.detach())


def test_onednn_max_pool_is_plain_when_exported() -> None:
    from bicsnet.fused_ops import OneDNNMaxPool2d

    program = torch.export.export(nn.Sequential(OneDNNMaxPool2d(3, 2, 1)), (torch.rand(1, 4, 16, 16),))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("mkldnn" in t for t in targets) and any("max_pool2d" in t for t in targets), targets


def test_backbone_pools_take_the_onednn_path_in_training() -> None:
    """The stem and Down-Sampling max-pools are OneDNNMaxPool2d; a training step's gradients are as exact as with plain pools.

    Gradients through oneDNN's pooling differ from PyTorch's only in the order
    overlapping windows are summed, so both are compared with a float64 run
    (which takes the plain path): neither may be further from it than the other
    by more than float rounding.
    """
    import copy

    from bicsnet.fused_ops import OneDNNMaxPool2d

    model = _tiny("bicsnet_48").train()
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert pools and all(isinstance(m, OneDNNMaxPool2d) for m in pools)
    plain = copy.deepcopy(model)
    for m in list(plain.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, OneDNNMaxPool2d):
                setattr(m, child_name, nn.MaxPool2d(child.kernel_size, child.stride, child.padding))
    reference = copy.deepcopy(plain).double()
    x = torch.rand(2, 3, 96, 80)

    def grads(m: nn.Module, inp: torch.Tensor) -> dict[str, torch.Tensor]:
        sum(v.square().mean() for v in m(inp).values()).backward()
        return {n: p.grad.double() for n, p in m.named_parameters() if p.grad is not None}

    ours, theirs, exact = grads(model, x), grads(plain, x), grads(reference, x.double())
    assert ours.keys() == exact.keys()
    for name, g in exact.items():
        scale = g.norm().clamp_min(1e-12)
        err_ours, err_plain = ((ours[name] - g).norm() / scale).item(), ((theirs[name] - g).norm() / scale).item()
        assert err_ours <= 1.5 * err_plain + 1e-5, (name, err_ours, err_plain)
