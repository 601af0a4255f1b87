"""Registry-wide model tests: every registered model and ablation at tiny width."""
from __future__ import annotations

import json
import math

import pytest
import torch

import bicsnet
from bicsnet.arch.backbone import BiCSNetConfig
from bicsnet.arch.fusion import GlobalContext, ResampleBranch
from bicsnet.arch.specs import PATHWAYS, TOPOLOGIES


ALL = [n for n in bicsnet.list_models() if bicsnet.get_entry(n).config is not None]
BASELINES = [n for n in bicsnet.list_models() if bicsnet.get_entry(n).config is None]
BICSNET_FAMILY = [n for n in ALL if bicsnet.get_entry(n).family == "bicsnet"]


def tiny(name: str, task: str = "backbone", num_classes: int | None = None, **kw):
    over = {**bicsnet.get_entry(name).tiny, **kw}  # each family's own width knobs
    return bicsnet.create_model(name, task, num_classes, **over)


def test_torchvision_nms_runs() -> None:
    from torchvision.ops import nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float)
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]


def test_registry_has_paper_family_and_ablations() -> None:
    for n in ["bicsnet_48s", "bicsnet_48", "bicsnet_48l", "bicsnet_94", "bicsnet_140", "csnet_48",
              "bicsnet_48_no_gac", "bicsnet_48_no_skc", "bicsnet_48_no_lrgac", "bicsnet_48_no_sfm", "bicsnet_48_fpn"]:
        assert n in ALL
    assert [bicsnet.default_input_size(n) for n in ["bicsnet_48s", "bicsnet_48", "bicsnet_48l", "bicsnet_94", "bicsnet_140"]] == [640, 640, 896, 1024, 1280]


def test_unknown_model_suggests_closest() -> None:
    with pytest.raises(bicsnet.ConfigError, match="did you mean bicsnet_48"):
        bicsnet.create_model("bicsnet_48x")
    with pytest.raises(bicsnet.ConfigError, match="focal_gamma"):
        bicsnet.create_model("bicsnet_48", "classification", 10, focal_gamma=2.0)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("size", [(64, 64), (97, 203)])
def test_backbone_forward_any_size(name: str, size: tuple[int, int]) -> None:
    m = tiny(name).eval()
    h, w = size
    with torch.no_grad():
        out = m(torch.rand(2, 3, h, w))
    assert list(out) == ["p3", "p4", "p5", "p6", "p7"]
    for lvl, (k, v) in zip(range(3, 8), out.items()):
        assert v.shape == (2, m.out_channels, math.ceil(h / 2**lvl), math.ceil(w / 2**lvl)), k
        assert m.output_shape()[k].stride == 2**lvl
    assert m.size_divisibility == 128


@pytest.mark.parametrize("name", ALL)
def test_backward_reaches_every_parameter(name: str) -> None:
    m = tiny(name).train()
    out = m(torch.rand(2, 3, 64, 96))
    sum(v.square().mean() for v in out.values()).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing, missing[:5]
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_grad_checkpointing_same_outputs_and_gradients_less_memory() -> None:
    torch.manual_seed(0)
    ref = tiny("bicsnet_48").train()
    ck = tiny("bicsnet_48", grad_checkpointing=True).train()
    ck.load_state_dict(ref.state_dict())
    assert ck.config.grad_checkpointing and BiCSNetConfig.from_dict(ck.config.to_dict()).grad_checkpointing
    x = torch.rand(2, 3, 64, 96)
    saved = []
    for m in (ref, ck):
        n = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            n[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = m(x)
        sum(v.square().mean() for v in out.values()).backward()
        saved.append(n[0])
    for (k, a), b in zip(ref.named_parameters(), ck.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=k)
    assert saved[1] < 0.7 * saved[0], saved  # the fusions' activations are not kept
    ck.set_grad_checkpointing(False)
    assert not ck.grad_checkpointing and not ck.config.grad_checkpointing


@pytest.mark.parametrize("name", ALL)
def test_eval_is_deterministic(name: str) -> None:
    m = tiny(name).eval()
    x = torch.rand(1, 3, 80, 72)
    with torch.no_grad():
        a, b = m(x), m(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ALL)
def test_config_round_trip(name: str) -> None:
    m = tiny(name, "classification", 7)
    cfg = json.loads(json.dumps(m.bicsnet_config))  # plain data, JSON-safe
    m2 = bicsnet.create_model_from_config(cfg)
    assert str(m2) == str(m)
    assert sum(p.numel() for p in m2.parameters()) == sum(p.numel() for p in m.parameters())
    if name in BICSNET_FAMILY:
        c = m.backbone.config
        assert BiCSNetConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def _edges(cfg: BiCSNetConfig) -> set[tuple[str, str, str]]:
    return {(s.name, e.source, e.kind) for s in cfg.specs() for e in s.inputs}


@pytest.mark.parametrize("switch,kind", [("gap_connection", "gap"), ("skip_connection", "skip"), ("long_range_gap_connection", "long_range_gap")])
def test_ablation_removes_exactly_its_pathway(switch: str, kind: str) -> None:
    full = bicsnet.get_entry("bicsnet_48").config
    ablated = bicsnet.get_entry(f"bicsnet_48_no_{ {'gap':'gac','skip':'skc','long_range_gap':'lrgac'}[kind] }").config
    assert getattr(ablated, switch) is False
    removed = _edges(full) - _edges(ablated)
    assert removed and all(k == kind for _, _, k in removed)
    assert removed == {e for e in _edges(full) if e[2] == kind}
    m_full, m_abl = tiny("bicsnet_48"), tiny(f"bicsnet_48_no_{ {'gap':'gac','skip':'skc','long_range_gap':'lrgac'}[kind] }")
    n = lambda m: sum(isinstance(x, ResampleBranch) for x in m.modules())  # noqa: E731
    assert n(m_full) - n(m_abl) == len(removed)


def test_pathways_match_the_equations() -> None:
    specs = {s.name: s for s in TOPOLOGIES["bicsnet"]}
    level = lambda n: specs[n].level if n in specs else 1  # noqa: E731
    for s in specs.values():
        for e in s.inputs:
            if e.kind == "gap":  # eq. (4): level i-2 of the Down part -> level i
                assert s.part == "down" and level(e.source) == s.level - 2
            elif e.kind == "skip":  # eq. (5): same level, Down part -> Up part
                assert s.part == "up" and specs[e.source].part == "down" and level(e.source) == s.level
            elif e.kind == "long_range_gap":  # eq. (6): level i-1 -> End part level i
                assert s.part == "end" and level(e.source) == s.level - 1
    # Bidirectional main path: down to L7, up to L3, down again to L7.
    mains = [specs[s.name].level for s in specs.values() if s.part != "stem"]
    assert mains == [3, 4, 5, 6, 7, 6, 5, 4, 3, 3, 4, 5, 6, 7]
    assert all(k in PATHWAYS for k in ("gap", "skip", "long_range_gap"))


def test_no_sfm_and_fpn_and_csnet_switches() -> None:
    assert not any(isinstance(x, GlobalContext) for x in tiny("bicsnet_48_no_sfm").modules())
    assert any(isinstance(x, GlobalContext) for x in tiny("bicsnet_48").modules())
    assert tiny("bicsnet_48_fpn").fpn is not None and tiny("bicsnet_48").fpn is None
    cs = bicsnet.get_entry("csnet_48").config.specs()
    lv = {s.name: s.level for s in cs}
    # Unidirectional: no main edge goes from a coarser to a finer level.
    assert all(lv.get(e.source, 1) <= s.level for s in cs for e in s.inputs if e.kind == "main")


@pytest.mark.parametrize("name", ["bicsnet_48", "bicsnet_94"])
def test_torch_export_matches_eager(name: str) -> None:
    m = tiny(name).eval()
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        ref = m(x)
        out = torch.export.export(m, (x,)).module()(x)
    for k, v in ref.items():
        torch.testing.assert_close(out[k], v)


@pytest.mark.parametrize("norm", ["bn", "gn", "frozenbn"])
@pytest.mark.parametrize("act", ["relu", "swish"])
def test_norm_and_activation_options(norm: str, act: str) -> None:
    m = tiny("bicsnet_48", norm=norm, activation=act, drop_path_rate=0.2).train()
    out = m(torch.rand(2, 3, 64, 64))
    assert torch.isfinite(out["p3"]).all()


def test_bn_defaults_follow_paper() -> None:
    bn = next(x for x in tiny("bicsnet_48").modules() if isinstance(x, torch.nn.BatchNorm2d))
    assert bn.momentum == 0.01 and bn.eps == 1e-3


@pytest.mark.parametrize("task,nc", [("classification", 10), ("segmentation", 4)])
def test_task_heads(task: str, nc: int) -> None:
    m = tiny("bicsnet_48", task, nc).eval()
    with torch.no_grad():
        y = m(torch.rand(2, 3, 70, 90))
    assert y.shape == ((2, nc) if task == "classification" else (2, nc, 70, 90))


def test_flops_match_paper_tables(paper_rows: list[dict]) -> None:
    """Table II within 5% of FLOPs; Table VI within 10% of FLOPs and params."""
    rows = paper_rows  # paper_comparison(), shared with test_cli.py (conftest.py)
    checked = 0
    for r in rows:
        if r["table"] == "II":
            assert abs(r["flops_diff_pct"]) <= 5, r
            checked += 1
        if r["table"] == "VI":
            assert abs(r["flops_diff_pct"]) <= 10 and abs(r["params_diff_pct"]) <= 10, r
            checked += 1
    assert checked == 11


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_build_and_run(name: str) -> None:
    task = bicsnet.get_entry(name).tasks[0]
    m = bicsnet.create_model(name, task, 3, **({"img_size": 128} if bicsnet.get_task(task).uses_img_size else {})).eval()
    with torch.no_grad():
        if task == "detection":
            out = m([torch.rand(3, 100, 128)])
            assert set(out[0]) >= {"boxes", "scores", "labels"}
        else:
            y = m(torch.rand(1, 3, 64, 64))
            assert y.shape[:2] == (1, 3)
    assert bicsnet.create_model_from_config(m.bicsnet_config).bicsnet_config == m.bicsnet_config


@pytest.mark.parametrize("name", bicsnet.list_models())
def test_every_batchnorm_runs_once_per_forward(name: str) -> None:
    """A BatchNorm module called more than once per forward (a layer shared by pyramid levels) normalises
    each call with that call's batch statistics in training, but evaluates with one running set that mixes
    the calls: evaluation then computes something training never did. Every model and task, as built."""
    from bicsnet.models.wrappers import NetworkOnly
    from bicsnet.tasks import TASKS

    entry = bicsnet.get_entry(name)
    for task in entry.tasks:
        spec = bicsnet.get_task(task)
        opts = {"img_size": 128} if spec.uses_img_size else {}
        model = bicsnet.create_model(name, task, spec.default_classes and 3, **{**entry.tiny, **opts}).eval()
        calls: dict[str, int] = {}
        for mod_name, m in model.named_modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.register_forward_hook(lambda *_, key=mod_name: calls.__setitem__(key, calls.get(key, 0) + 1))
        with torch.no_grad():
            NetworkOnly(model, TASKS[task].network)(torch.rand(1, 3, 128, 128))
        assert calls, f"{name}/{task}: no BatchNorm ran"
        shared = {k: n for k, n in calls.items() if n > 1}
        assert not shared, f"{name}/{task}: BatchNorms run more than once per forward: {shared}"
