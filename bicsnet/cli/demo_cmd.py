"""``bicsnet demo``: the README's main job, offline, end to end.

Generates the synthetic COCO-format dataset, trains a small BiCSNet RetinaNet
on it, evaluates it with pycocotools, and writes metrics, a loss curve and
pictures of predictions. On a CPU it uses the narrow ``bicsnet_48_tiny``; on a
GPU the paper's BiCSNet-48S for longer.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from ..errors import ConfigError
from .common import add_device_arg, resolve_device

__all__ = ["register", "DEMO_PRESETS"]

#: What the demo trains on each kind of device (CPU preset measured in benchmarks/demo.md:
#: 32 epochs fit the 15-minute budget on 2 cores; the weights' EMA is what gets evaluated).
DEMO_PRESETS = {
    "cpu": {"model": "bicsnet_48_tiny", "img_size": 256, "epochs": 32, "batch_size": 8, "lr": 0.01, "ema": 0.996,
            "synth_train": 400, "synth_val": 100},
    "cuda": {"model": "bicsnet_48s", "img_size": 384, "epochs": 60, "batch_size": 16, "lr": 0.08, "ema": 0.999,
             "synth_train": 1000, "synth_val": 200},
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate data, train a small detector, evaluate, draw predictions (offline)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--model", help="override the preset's model")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--overwrite", action="store_true", help="delete a previous demo run in --out first")
    add_device_arg(p)
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from ..predict import predict_images
    from .main import build_parser
    from .run_cmd import train_from_args

    device = resolve_device(args.device)
    preset = dict(DEMO_PRESETS["cuda" if device.type == "cuda" else "cpu"])
    if args.epochs:
        preset["epochs"] = args.epochs
    if args.model:
        preset["model"] = args.model
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise ConfigError(f"--out {out} already holds a run; pass --overwrite to replace it or choose another --out")
        if not (out / "demo.json").exists():
            raise ConfigError(f"--out {out} was not written by 'bicsnet demo'; refusing to delete it")
        shutil.rmtree(out)
    data_dir = out / "data"
    t0 = time.perf_counter()
    train_args = build_parser().parse_args(
        [
            "train", "--task", "detection", "--model", preset["model"], "--img-size", str(preset["img_size"]),
            "--epochs", str(preset["epochs"]), "--batch-size", str(preset["batch_size"]), "--lr", str(preset["lr"]),
            "--warmup-epochs", "1", "--schedule", "step", "--ema", str(preset["ema"]), "--synth-dir", str(data_dir),
            "--synth-train", str(preset["synth_train"]), "--synth-val", str(preset["synth_val"]),
            "--synth-size", str(preset["img_size"]), "--workers", str(args.workers), "--device", device.type,
            "--out", str(out), "--log-every", "10",
        ]
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps({"preset": preset, "device": device.type}, indent=2))
    metrics = train_from_args(train_args)
    train_s = time.perf_counter() - t0
    val_images = sorted((data_dir / "coco" / "val").glob("*"))[:6]
    pics = predict_images(out / "model.safetensors", val_images, out / "predictions", device, score_thresh=0.4)
    summary = {
        "model": preset["model"],
        "device": device.type,
        "threads": torch.get_num_threads(),
        "minutes": round((time.perf_counter() - t0) / 60, 2),
        "train_and_eval_minutes": round(train_s / 60, 2),
        "bbox": metrics.get("bbox", {}),
        "outputs": {
            "metrics": str(out / "metrics.json"),
            "detections": str(out / "detections.json"),
            "loss_curve": str(out / "loss_curve.png"),
            "predictions": sorted(str(p) for p in pics if p.suffix == ".png"),
            "weights": str(out / "model.safetensors"),
        },
    }
    (out / "demo.json").write_text(json.dumps({"preset": preset, **summary}, indent=2))
    bbox = summary["bbox"]
    print(f"\nBiCSNet demo done in {summary['minutes']} min on {device.type}: "
          f"box AP {bbox.get('AP', 0):.3f}, AP50 {bbox.get('AP50', 0):.3f} on {preset['synth_val']} synthetic val images")
    print(json.dumps(summary["outputs"], indent=2))
    return 0
