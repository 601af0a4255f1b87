"""Train, evaluate and time two models for one task on the same data; print a markdown table.

    flock /tmp/bicsnet-bench.lock .venv/bin/python benchmarks/side_by_side.py \\
        --task segmentation --models bicsnet_48 deeplabv3_resnet50 \\
        --img-size 256 --epochs 10 --batch-size 8 --lr 0.05 --out runs/sbs-seg

For each model this runs ``bicsnet train`` (same flags, same data, same recipe,
same seed) and ``bicsnet eval`` through the CLI as subprocesses and times them,
then reports

* the metric of ``bicsnet eval`` (the task's headline metric with its
  neighbours, :data:`METRIC_COLUMNS`: detection box AP, AP50, AP75;
  segmentation mIoU, pixel accuracy; classification top-1, top-5);
* FLOPs (multiply-adds, ``bicsnet.tools.flops.model_macs``) and parameters at the
  paper's input size (``--flops-size``: the task table's, 512 segmentation, 224
  classification; for detection the first model's Table I size, 640 for BiCSNet-48)
  for the paper's class count (80 COCO / 21 VOC / 1000 ImageNet) and for this data's;
* batch-1 inference latency at ``--latency-size`` (default: the FLOPs size) on
  the device: median of ``--latency-runs`` forward passes after warm-up.

With no ``--data`` the CLI's synthetic set is used (``--synth-*``). A finished run
in ``OUT/<model>`` (``model.safetensors`` present) is not trained again. With
``--train-budget S`` a training still running after S seconds is interrupted and the
script stops; run the same command again and it resumes from the last checkpoint
(``--ckpt-every`` steps), so long pairs fit into short ``flock`` slots. Training
time is the trainer's own (``log.csv``'s ``time``, summed over resumes; no start-up).
Numbers go to ``OUT/results.json`` too.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bicsnet.tasks import TaskSpec, get_task, task_names
from bicsnet.tools.runtimes import cpu_name

#: Table columns by the task's headline metric (``TaskSpec.metric``, a path in
#: metrics.json: ``bbox.AP`` reads ``AP``, ``AP50``, ``AP75`` of its ``bbox`` section).
METRIC_COLUMNS = {
    "bbox.AP": ["AP", "AP50", "AP75"], "segm.AP": ["AP", "AP50", "AP75"], "mIoU": ["mIoU", "pixel_acc"],
    "top1": ["top1", "top5"],
}  # fmt: skip


def metric_section(spec: TaskSpec, metrics: dict) -> dict:
    """The part of ``metrics.json`` that holds the task's headline metric (``bbox`` for ``bbox.AP``)."""
    for key in str(spec.metric).split(".")[:-1]:
        metrics = metrics[key]
    return metrics


def run(cmd: list[str], log: Path, budget: float | None = None) -> float:
    """Run ``cmd`` with its output appended to ``log``; return wall seconds; exit on failure or budget."""
    start = time.perf_counter()
    with open(log, "a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # the CLI stops cleanly; the last checkpoint stays
            proc.wait()
            sys.exit(f"--train-budget {budget:g} s used up; run the same command again to resume ({log})")
    wall = time.perf_counter() - start
    if rc != 0:
        sys.exit(f"command failed ({rc}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return wall


def train_seconds(run_dir: Path) -> tuple[float, int]:
    """(training seconds, steps) from the last row of ``log.csv``."""
    with open(run_dir / "log.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    return float(last["time"]), int(last["step"])


def latency_ms(model: torch.nn.Module, spec: TaskSpec, size: int, runs: int, device: torch.device) -> float:
    """Median batch-1 network time in ms (inference mode) on a 1 x 3 x size x size input.

    What is timed is the task's network-only call (``TaskSpec.network``, what
    the FLOPs count): detectors time backbone + box/class subnets only, as their
    ``forward`` would resize the input to the training ``--img-size`` and run NMS.
    """
    model = model.to(device).eval()
    x = torch.rand(1, 3, size, size, device=device)
    times = []
    with torch.inference_mode():
        for i in range(runs + 2):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            spec.network(model, x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:  # two warm-up passes
                times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", required=True, choices=[n for n in task_names(trainable=True) if get_task(n).metric in METRIC_COLUMNS])
    ap.add_argument("--models", nargs=2, required=True, metavar=("A", "B"))
    ap.add_argument("--img-size", type=int, required=True, help="training crop size")
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, help="default: the recipe's, scaled to the batch")
    ap.add_argument("--warmup-epochs", type=float)
    ap.add_argument("--data", help="VOC root / image-folder root (default: synthetic)")
    ap.add_argument("--synth-dir", default="runs/sbs-synth")
    ap.add_argument("--synth-train", type=int, default=400)
    ap.add_argument("--synth-val", type=int, default=100)
    ap.add_argument("--synth-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra", default="", help="more train flags for both models, e.g. '--label-smoothing 0.1'")
    ap.add_argument("--flops-size", type=int, help="default: the task's paper size (detection: model A's Table I size)")
    ap.add_argument("--latency-size", type=int, help="default: --flops-size")
    ap.add_argument("--latency-runs", type=int, default=5)
    ap.add_argument("--threads", type=int, help="torch threads for the latency measurement")
    ap.add_argument("--bn-momentum", type=float, help="passed to bicsnet train for both models")
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--train-budget", type=float, help="seconds of training per invocation (then stop; rerun resumes)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from bicsnet.models import create_model, create_model_from_config, default_input_size, load_checkpoint_model
    from bicsnet.tools.flops import count_params, model_macs

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bicsnet = [sys.executable, "-m", "bicsnet.cli.main"]
    data = ["--data", args.data] if args.data else [
        "--synth-dir", args.synth_dir, "--synth-train", str(args.synth_train), "--synth-val", str(args.synth_val),
        "--synth-size", str(args.synth_size),
    ]  # fmt: skip
    spec = get_task(args.task)
    flops_size = args.flops_size or spec.default_size(default_input_size(args.models[0]))
    lat_size = args.latency_size or flops_size
    device = torch.device(args.device)
    rows = []
    for name in args.models:
        run_dir = out / name
        train_cmd = [
            *bicsnet, "train", "--task", args.task, "--model", name, *data, "--img-size", str(args.img_size),
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
            "--device", args.device, "--seed", str(args.seed), "--ckpt-every", str(args.ckpt_every), "--log-every", "10",
            "--out", str(run_dir), *(["--lr", str(args.lr)] if args.lr is not None else []),
            *(["--bn-momentum", str(args.bn_momentum)] if args.bn_momentum is not None else []),
            *(["--warmup-epochs", str(args.warmup_epochs)] if args.warmup_epochs is not None else []),
            *args.extra.split(),
        ]  # fmt: skip
        if not (run_dir / "model.safetensors").exists():
            resume = ["--resume"] if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()) else []
            print("$", " ".join(train_cmd[2:] + resume).replace("bicsnet.cli.main", "bicsnet"), flush=True)
            run(train_cmd + resume, out / f"{name}.train.log", args.train_budget)
        train_s, steps = train_seconds(run_dir)
        eval_cmd = [*bicsnet, "eval", "--checkpoint", str(run_dir), *(["--data", args.data] if args.data else []),
                    "--device", args.device, "--workers", str(args.workers), "--out", str(out / f"{name}.eval"),
                    "--overwrite"]  # fmt: skip
        eval_s = run(eval_cmd, out / f"{name}.eval.log")
        metrics = metric_section(spec, json.loads((out / f"{name}.eval" / "metrics.json").read_text()))
        model, meta = load_checkpoint_model(run_dir, "cpu")
        with torch.device("meta"):  # counting runs on shapes only
            paper_model = create_model(name, args.task, spec.default_classes)
            here_model = create_model_from_config(meta["model"])
        row = {
            "model": name,
            "metrics": {k: v for k, v in metrics.items() if k != "per_class_iou"},
            "train_s": train_s,
            "eval_s": eval_s,
            "steps": steps,
            "gmacs_paper": model_macs(paper_model, args.task, flops_size) / 1e9,
            "params_m_paper": count_params(paper_model) / 1e6,
            "gmacs_here": model_macs(here_model, args.task, args.img_size) / 1e9,
            "params_m_here": count_params(model) / 1e6,
            "latency_ms": latency_ms(model, spec, lat_size, args.latency_runs, device),
            "train_cmd": " ".join(train_cmd[2:]).replace("bicsnet.cli.main", "bicsnet"),
        }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "train_cmd"}), flush=True)

    env = {
        "python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
        "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": args.device,
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps({"args": vars(args), "env": env, "rows": rows}, indent=2) + "\n")
    print()
    print(table(spec, rows, flops_size, lat_size, args.img_size))
    print(f"\n{env}")


def table(spec: TaskSpec, rows: list[dict], flops_size: int, lat_size: int, img_size: int) -> str:
    """The Markdown table: the task's metric columns, paper-size GMACs and params, here-size GMACs, latency, training."""
    keys = METRIC_COLUMNS[spec.metric]
    n_cls = spec.default_classes
    head = (
        f"| model | {' | '.join(keys)} | GMACs @{flops_size} ({n_cls} cl.) | params (M) | GMACs @{img_size} (here) "
        f"| latency b=1 @{lat_size} (ms) | train (s) | steps |"
    )
    lines = [head, "|" + "---|" * (len(keys) + 7)]
    for r in rows:
        m = " | ".join(f"{r['metrics'][k]:.3f}" for k in keys)
        train = f"{r['train_s']:.0f}"
        lines.append(
            f"| {r['model']} | {m} | {r['gmacs_paper']:.2f} | {r['params_m_paper']:.1f} | {r['gmacs_here']:.2f} "
            f"| {r['latency_ms']:.0f} | {train} | {r['steps']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
