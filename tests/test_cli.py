"""The CLI's informational commands and its error contract."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bicsnet.cli.main import main


def test_info_lists_models(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "--json"]) == 0
    names = {m["name"] for m in json.loads(capsys.readouterr().out)}
    assert {"bicsnet_48s", "bicsnet_140", "csnet_48", "retinanet_resnet50_fpn"} <= names


def test_info_paper_table(paper_rows: list[dict], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import copy

    import bicsnet.tools.flops as flops

    # The comparison itself (every paper model counted at full size, ~20 s) is computed once per
    # session by paper_comparison() (conftest.py's paper_rows, also read by test_models.py);
    # here both output forms of `info --paper` print that same result.
    calls = []

    def shared_comparison(*args: object, **kwargs: object) -> list[dict]:
        calls.append((args, kwargs))
        return copy.deepcopy(paper_rows)

    monkeypatch.setattr(flops, "paper_comparison", shared_comparison)
    assert main(["info", "--paper", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    tables = {r["table"] for r in rows}
    assert {"II", "III", "V", "VI", "IX"} <= tables
    r48 = next(r for r in rows if r["table"] == "II" and r["model"] == "bicsnet_48")
    assert r48["paper_flops_b"] == 84.8 and abs(r48["flops_diff_pct"]) <= 5
    assert main(["info", "--paper"]) == 0
    assert "bicsnet_140" in capsys.readouterr().out
    assert calls == [((), {})] * 2  # each form asked for the comparison of every paper row (the default)


def test_info_model(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "--model", "bicsnet_48s", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["input_size"] == 640 and info["outputs"]["p7"]["stride"] == 128


def test_flops_counts_torchvision_baselines_like_targets(capsys: pytest.CaptureFixture) -> None:
    # targets.md: ResNet-50 at 224 is 4.09 GMACs / 25.56M params with this convention.
    assert main(["flops", "--model", "resnet50", "--task", "classification", "--img-size", "224", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gmacs"] == pytest.approx(4.09, abs=0.01) and out["params_m"] == pytest.approx(25.56, abs=0.01)
    assert main(["flops", "--model", "bicsnet_48", "--task", "detection", "--img-size", "97", "203", "--set", "width_mult=0.5"]) == 0
    assert "97x203" in capsys.readouterr().out


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_draw(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"g{suffix}"
    assert main(["draw", "--model", "csnet_48", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000


def test_data_synth_is_deterministic(tmp_path: Path) -> None:
    for d in ("a", "b"):
        assert main(["data", "synth", "--out", str(tmp_path / d), "--num-train", "4", "--num-val", "2", "--img-size", "64", "--seed", "3"]) == 0
    a = (tmp_path / "a" / "coco" / "annotations" / "instances_train.json").read_bytes()
    assert a == (tmp_path / "b" / "coco" / "annotations" / "instances_train.json").read_bytes()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["flops", "--model", "bicsnet_49"], "did you mean"),
        (["flops", "--model", "bicsnet_48", "--set", "nonsense=1"], "nonsense"),
        (["draw", "--model", "bicsnet_48", "--out", "x.gif"], "--out"),
        (["train", "--model", "bicsnet_48", "--device", "cuda", "--max-steps", "1"], None),
    ],
)
def test_user_errors_are_one_line(argv: list[str], needle: str | None, capsys: pytest.CaptureFixture) -> None:
    import torch

    if argv[0] == "train" and torch.cuda.is_available():
        pytest.skip("has CUDA")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and "Traceback" not in err[0]
    if needle:
        assert needle in err[0]


def test_demo_end_to_end_small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The README's main job, shrunk: data, training, COCO metrics, loss curve, pictures; refuses to clobber."""
    from bicsnet.cli import demo_cmd

    # Both CPU presets: ``auto`` picks the bf16 one on CPUs with bfloat16 units.
    for name in ("cpu", "cpu-bf16"):
        small = {**demo_cmd.DEMO_PRESETS[name], "img_size": 128, "epochs": 1, "synth_train": 16, "synth_val": 4}
        monkeypatch.setitem(demo_cmd.DEMO_PRESETS, name, small)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu", "--workers", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(metrics["bbox"])
    assert (out / "loss_curve.png").stat().st_size > 0 and (out / "model.safetensors").exists()
    pngs = sorted((out / "predictions").glob("*.png"))
    assert len(pngs) == 4 and all(p.stat().st_size > 0 for p in pngs)
    assert "BiCSNet demo done" in capsys.readouterr().out
    # A second run into the same directory needs --overwrite; the first run stays intact.
    assert main(["demo", "--out", str(out), "--device", "cpu", "--workers", "0"]) == 2
    assert (out / "model.safetensors").exists()
