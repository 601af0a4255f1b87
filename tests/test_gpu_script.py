"""benchmarks/gpu.sh (issue #13's GPU latency table) on the CPU with --quick, and its table from GPU-shaped results."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"
PAIRS = ("cls-48", "seg-48", "retinanet-48s", "retinanet-48")
QUICK_PAIRS = ("cls-48", "retinanet-48")
BASELINES = {"cls-48": "tv:resnet50", "seg-48": "tv:deeplabv3_resnet50", "retinanet-48s": "tv:retinanet_resnet50_fpn",
             "retinanet-48": "tv:retinanet_resnet50_fpn"}  # fmt: skip
PAPER = {("cls-48", "model"): "2.5", ("cls-48", "baseline"): "2.9", ("seg-48", "model"): "16.0", ("seg-48", "baseline"): "72.0"}

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="benchmarks/gpu.sh needs bash")


def _gpu_table():
    spec = importlib.util.spec_from_file_location("gpu_table", ROOT / "benchmarks" / "gpu_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _env() -> dict[str, str]:
    # The bicsnet of the interpreter running the tests (CI's venv or ours), one thread: the machine is shared.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, "BICSNET": str(Path(sys.executable).parent / "bicsnet")}


def _rows(table: str) -> dict[tuple[str, str], list[str]]:
    """(pair, network or 'ratio') -> the cells after them, from the Markdown table."""
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] in PAIRS:
            rows[(cells[0], cells[1].split(" @")[0])] = cells[2:]
    return rows


@needs_bash
def test_gpu_script_cpu_quick(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    # Two of the four pairs (the classifier, and RetinaNet-48 for the training line): every pair
    # is the same bench call, and each costs about a CPU-minute of imports and tiny runs.
    proc = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out), *QUICK_PAIRS], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "table.md").read_text().strip() == proc.stdout.strip()
    rows = _rows(proc.stdout)
    assert "channels_last + bf16" in proc.stdout  # fp16 autocast is CUDA-only
    for pair in QUICK_PAIRS:
        res = json.loads((out / f"{pair}.json").read_text())
        assert res["pair"] == pair and res["machine"]["device"] == "cpu"
        assert res["model"]["img_size"] == 64 and res["model"]["overrides"] == {"width_mult": 0.125, "endpoint_channels": 16}
        assert not (out / f"{pair}-compile.json").exists() and not (out / f"{pair}-tensorrt.json").exists()
        names = {"model": res["model"]["name"], "baseline": BASELINES[pair]}
        assert res["baseline"]["name"] == names["baseline"]
        for role, name in names.items():
            eager, half, compiled, trt, paper = rows[(pair, name)]
            # The table's numbers are the JSON's, to its two decimals.
            assert float(eager) == pytest.approx(res[role]["net_ms"], abs=0.006) and float(eager) > 0
            assert float(half) == pytest.approx(res[role]["fast"]["channels_last+bf16"]["net_ms"], abs=0.006)
            assert compiled == "-" and trt == "-"
            assert paper == PAPER.get((pair, role), "-")
        ratio = rows[(pair, "ratio")]
        assert float(ratio[0]) == pytest.approx(res["model"]["net_ms"] / res["baseline"]["net_ms"], abs=2e-3)
    train = json.loads((out / "retinanet-48.json").read_text())
    assert f"bicsnet_48 {train['model']['train_ips']:.2f} img/s" in proc.stdout
    assert "Training, RetinaNet-48 @64 (fp32 SGD step, batch 2)" in proc.stdout
    assert "all pairs tensorrt: TensorRT needs a CUDA device" in proc.stdout
    assert "all pairs compile: --quick" in proc.stdout
    assert "Not the paper's networks" in proc.stdout


@needs_bash
def test_gpu_script_bad_options(tmp_path: Path) -> None:
    for argv, word in ((["--device", "tpu"], "--device"), (["--frobnicate"], "--frobnicate")):
        proc = subprocess.run(["bash", str(SCRIPT), *argv, "--out", str(tmp_path)], env=_env(), capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert proc.returncode == 2 and word in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written before the options are known good
    # A pair bench does not know: the script goes on to the end, no table, exit 2 naming the failure.
    proc = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--quick", "--out", str(tmp_path), "no-such-pair"],
                          env=_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "unknown pair 'no-such-pair'" in proc.stderr, proc.stderr


def _fake_result(pair: str, model_ms: float, base_ms: float, fast: dict[str, tuple[float, float]],
                 trt: tuple[float | None, float | None] | None = None) -> dict:  # fmt: skip
    """A bicsnet bench result as `--out` writes it on a CUDA machine (the keys gpu_table reads)."""
    res = {"pair": pair, "machine": {"device": "cuda", "gpu": "NVIDIA H200", "cpu": "x", "torch": "2.9"},
           "settings": {"warmup": 10, "iters": 50, "train_batch": 8}}  # fmt: skip
    for role, name, ms, i in (("model", "bicsnet_48", model_ms, 0), ("baseline", "tv:resnet50", base_ms, 1)):
        res[role] = {"name": name, "img_size": 224, "overrides": {}, "net_ms": ms, "train_ips": 100.0 * (i + 1),
                     "fast": {k: {"net_ms": v[i]} for k, v in fast.items()}}  # fmt: skip
        if trt is not None:  # bench --runtime tensorrt
            res[role]["runtimes"] = {"tensorrt": {"net_ms": trt[i], "e2e_ms": None}}
    return res


def test_gpu_table_from_cuda_results(tmp_path: Path) -> None:
    gt = _gpu_table()
    (tmp_path / "cls-48.json").write_text(json.dumps(_fake_result(
        "cls-48", 8.0, 5.0, {"channels_last": (7.0, 4.0), "fp16": (6.0, 3.0), "channels_last+fp16": (4.0, 2.0)})))
    (tmp_path / "cls-48-compile.json").write_text(json.dumps(_fake_result("cls-48", 8.1, 5.1, {"compile": (3.0, 2.5)})))
    (tmp_path / "cls-48-tensorrt.json").write_text(json.dumps(_fake_result("cls-48", 8.2, 5.2, {}, trt=(1.5, 1.2))))
    (tmp_path / "retinanet-48.json").write_text(json.dumps(_fake_result("retinanet-48", 20.0, 25.0, {"channels_last+fp16": (9.0, 10.0)})))
    (tmp_path / "skipped.tsv").write_text("retinanet-48\ttensorrt\tno engine\n")
    table = gt.format_table(tmp_path, ["cls-48", "retinanet-48"])
    assert "cuda (NVIDIA H200)" in table and "channels_last + fp16" in table
    assert "| cls-48 | bicsnet_48 @224 | 8.00 | 4.00 | 3.00 | 1.50 | 2.5 |" in table
    assert "| cls-48 | tv:resnet50 @224 | 5.00 | 2.00 | 2.50 | 1.20 | 2.9 |" in table
    assert "| cls-48 | ratio | 1.600 | 2.000 | 1.200 | 1.250 | 0.862 |" in table
    assert "| retinanet-48 | bicsnet_48 @224 | 20.00 | 9.00 | - | - | - |" in table
    assert "batch 8): bicsnet_48 100.00 img/s, tv:resnet50 200.00 img/s (ratio 0.500)" in table
    assert "- retinanet-48 tensorrt: no engine" in table and "Not the paper's" not in table
    # A model TensorRT could not convert (bench reports None) leaves its cell empty, not the eager figure.
    assert gt.tensorrt_ms(_fake_result("cls-48", 8.0, 5.0, {}, trt=(None, 1.2)), "model") is None
    assert gt.tensorrt_ms(_fake_result("cls-48", 8.0, 5.0, {}), "model") is None
    # A pair without its eager result: one line, exit 2.
    assert gt.main([str(tmp_path), "seg-48"]) == 2
    assert gt.main([str(tmp_path / "empty")]) == 2
