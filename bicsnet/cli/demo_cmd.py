"""``bicsnet demo``: the README's main job, offline, end to end.

Generates the synthetic COCO-format dataset, trains a small BiCSNet RetinaNet
on it, evaluates it with pycocotools, and writes metrics, a loss curve and
pictures of predictions. On a CPU it uses the narrow ``bicsnet_48_tiny``; on a
GPU the paper's BiCSNet-48S for longer. On a CPU with bfloat16 matrix units
(AMX or AVX-512 BF16, :func:`~bicsnet.engine.trainer.cpu_bf16_units`) it trains
under bf16 autocast in channels-last memory for more epochs, elsewhere in float32
(``--precision``; :data:`DEMO_PRESETS` has a row for each); ``demo.json``
records which.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import ConfigError
from ..io import atomic_write_json
from .common import add_device_arg, resolve_device

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["register", "DEMO_PRESETS", "PRECISIONS", "demo_config", "demo_precision", "demo_preset_name"]

#: What the demo trains on each kind of device and precision (measured in benchmarks/demo.md; the
#: weights' EMA is what gets evaluated). ``cpu``: float32, 32 epochs fit the 15-minute budget on 2
#: cores; channels-last is off there, because PyTorch's CPU batch norm sums NHWC statistics less
#: accurately and its one float32 demo run ended at AP50 0.36. ``cpu-bf16``: bf16 autocast (CPUs with
#: bfloat16 units, :func:`demo_precision`), where bf16's own rounding of the gradients is six times
#: that batch-norm error, so the steps run channels-last (x0.84 a step, x0.88 in a whole run), and the
#: time saved buys 36 epochs in about the time of 32 (38 took 4.5% longer than 32 NCHW).
DEMO_PRESETS = {
    "cpu": {"model": "bicsnet_48_tiny", "img_size": 256, "epochs": 32, "batch_size": 8, "lr": 0.01, "ema": 0.996,
            "synth_train": 400, "synth_val": 100, "channels_last": False},
    "cuda": {"model": "bicsnet_48s", "img_size": 384, "epochs": 60, "batch_size": 16, "lr": 0.08, "ema": 0.999,
             "synth_train": 1000, "synth_val": 200, "channels_last": False},
}
# The bf16 row is the float32 one with two switches, not a copy that could drift from it.
DEMO_PRESETS["cpu-bf16"] = {**DEMO_PRESETS["cpu"], "epochs": 36, "channels_last": True}


def demo_preset_name(device: torch.device, amp: str) -> str:
    """The :data:`DEMO_PRESETS` key for a device and a training precision (``TrainConfig.amp`` value).

    ``"cuda"`` on a CUDA GPU, ``"cpu-bf16"`` on a CPU under bf16 autocast, ``"cpu"`` otherwise
    (float32 on a CPU, and any other device).
    """
    if device.type == "cuda":
        return "cuda"
    return "cpu-bf16" if device.type == "cpu" and amp == "bf16" else "cpu"


#: ``--precision`` choices: ``auto`` (:func:`demo_precision`), ``fp32`` or ``bf16`` (autocast).
PRECISIONS = ("auto", "fp32", "bf16")


def demo_precision(choice: str, device: torch.device, cpuinfo: str | None = None) -> str:
    """The demo's training precision, as a ``TrainConfig.amp`` value: ``"bf16"`` or ``"off"`` (float32).

    ``auto``: bf16 autocast on a CPU with bfloat16 matrix units (``amx_bf16`` or
    ``avx512_bf16`` in ``cpuinfo``, default ``/proc/cpuinfo``;
    :func:`~bicsnet.engine.trainer.cpu_bf16_units`), where oneDNN runs the
    convolutions in bfloat16; float32 everywhere else (without those units bf16
    is emulated and slower, and the GPU preset was measured in float32).

    Raises:
        ConfigError: an unknown ``choice``.
    """
    from ..engine.trainer import cpu_bf16_units

    if choice not in PRECISIONS:
        raise ConfigError(f"--precision {choice!r}: must be one of {', '.join(PRECISIONS)}")
    if choice == "auto":
        return "bf16" if device.type == "cpu" and cpu_bf16_units(cpuinfo) else "off"
    return "bf16" if choice == "bf16" else "off"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate data, train a small detector, evaluate, draw predictions (offline)")
    p.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    p.add_argument("--epochs", type=int, help=f"override the preset's epochs (default: the preset's, {_per_preset('epochs')})")
    p.add_argument("--model", help=f"override the preset's model (default: the preset's, {_per_preset('model')})")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes (default: %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="training precision: auto = bf16 autocast on a CPU with AMX / AVX-512 BF16 units, "
                        "float32 on other CPUs and on GPUs; bf16 on a CPU also selects the CPU-BF16 preset "
                        "(channels-last, more epochs) (default: %(default)s)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="train in channels-last (NHWC) memory: faster steps on the CPU; in float32 its one full CPU "
                        "demo reached a lower AP50 (docs/training.md) (default: the preset's, "
                        f"{_per_preset('channels_last', on_off=True)})")
    p.add_argument("--overwrite", action="store_true", help="delete a previous demo run in --out first")
    add_device_arg(p)
    p.set_defaults(func=run_demo)


def _per_preset(key: str, on_off: bool = False) -> str:
    """``key`` of each preset for a help text: ``"CPU 32, CUDA 60, CPU-BF16 36"`` (``on_off``: booleans as on / off)."""
    def show(value: object) -> str:
        return ("on" if value else "off") if on_off else str(value)

    return ", ".join(f"{name.upper()} {show(preset[key])}" for name, preset in DEMO_PRESETS.items())


def demo_config(preset: dict, out: Path, device: str, workers: int, amp: str = "off") -> "RunConfig":
    """The run configuration of a demo preset: synthetic data in ``OUT/data``, a short step schedule with EMA.

    ``amp``: the training precision (``TrainConfig.amp``; :func:`demo_precision` chooses it).
    """
    from ..config import RunConfig

    return RunConfig.from_dict({
        # The presets were measured (benchmarks/demo.md) on the paper's recipe with these overrides.
        "recipe": "paper",
        "model": {"name": preset["model"], "task": "detection", "img_size": preset["img_size"]},
        "data": {"synth_root": str(out / "data"), "synth_train": preset["synth_train"], "synth_val": preset["synth_val"],
                 "synth_size": preset["img_size"]},
        "train": {"epochs": preset["epochs"], "batch_size": preset["batch_size"], "lr": preset["lr"], "warmup_epochs": 1.0,
                  "schedule": "step", "ema_decay": preset["ema"], "num_workers": workers, "device": device,
                  "out_dir": str(out), "log_every": 10, "amp": amp, "channels_last": preset["channels_last"]},
    })  # fmt: skip


def run_demo(args: argparse.Namespace) -> int:
    from .. import api

    device = resolve_device(args.device)
    amp = demo_precision(args.precision, device)
    preset = dict(DEMO_PRESETS[demo_preset_name(device, amp)])
    if args.epochs:
        preset["epochs"] = args.epochs
    if args.model:
        preset["model"] = args.model
    if args.channels_last is not None:
        preset["channels_last"] = args.channels_last
    precision = "bf16 autocast" if amp == "bf16" else "float32"
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise ConfigError(f"--out {out} already holds a run; pass --overwrite to replace it or choose another --out")
        if not (out / "demo.json").exists():
            raise ConfigError(f"--out {out} was not written by 'bicsnet demo'; refusing to delete it")
        shutil.rmtree(out)
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "demo.json", {"preset": preset, "device": device.type, "precision": precision})
    result = api.train(demo_config(preset, out, str(device), args.workers, amp))
    metrics = result.metrics
    train_s = time.perf_counter() - t0
    val_images = sorted((out / "data" / "coco" / "val").glob("*"))[:6]
    preds = api.predict(result.weights, val_images, out=out / "predictions", device=str(device), score_thresh=0.4)
    pics = [f for p in preds for f in p.files]
    summary = {
        "model": preset["model"],
        "device": device.type,
        "threads": torch.get_num_threads(),
        "precision": precision,
        "minutes": round((time.perf_counter() - t0) / 60, 2),
        "train_and_eval_minutes": round(train_s / 60, 2),
        "bbox": metrics.get("bbox", {}),
        "outputs": {
            "metrics": str(out / "metrics.json"),
            "detections": str(out / "detections.json"),
            "loss_curve": str(out / "loss_curve.png"),
            "predictions": sorted(str(p) for p in pics if p.suffix == ".png"),
            "weights": str(result.weights),
        },
    }
    atomic_write_json(out / "demo.json", {"preset": preset, **summary})
    bbox = summary["bbox"]
    print(f"\nBiCSNet demo done in {summary['minutes']} min on {device.type} ({precision}): "
          f"box AP {bbox.get('AP', 0):.3f}, AP50 {bbox.get('AP50', 0):.3f} on {preset['synth_val']} synthetic val images")
    print(json.dumps(summary["outputs"], indent=2))
    return 0
