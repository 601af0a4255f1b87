"""The table of benchmarks/real.md from the run directories benchmarks/real.sh writes.

    .venv/bin/python benchmarks/real_table.py [RUNS_DIR]      # default runs/real

For each run: model, task, recipe, input size, epochs, training wall time (from
``log.csv``), wall and CPU minutes of the whole command (``NAME.time``, when real.sh
timed it), GMACs of one image at the input size (``bicsnet flops``), and the
headline metrics of ``metrics.json`` (validation) and ``test/metrics.json``
when present (box AP / AP50, mask AP / AP50, mIoU and per-class IoU).
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import yaml

from bicsnet.tools.flops import build_meta, model_macs


def _train_minutes(run: Path) -> float | None:
    rows = list(csv.DictReader((run / "log.csv").open())) if (run / "log.csv").exists() else []
    return float(rows[-1]["time"]) / 60 if rows else None


def _cpu_minutes(run: Path) -> str:
    """``wall / CPU`` minutes of the whole command from ``NAME.time`` (``/usr/bin/time -f "%e %U %S"``, real.sh)."""
    path = run.parent / f"{run.name}.time"
    if not path.exists():
        return "-"
    values = path.read_text().split()[-3:]
    if len(values) < 3:  # the command is still running
        return "-"
    wall, user, system = (float(v) for v in values)
    return f"{wall / 60:.1f} / {(user + system) / 60:.1f}"


def _gmacs(cfg: dict, num_classes: int) -> float:
    m = cfg["model"]
    model = build_meta(m["name"], m["task"], num_classes, **{k: v for k, v in m["options"].items() if k != "img_size"})
    return model_macs(model, m["task"], int(m["img_size"])) / 1e9


def _fmt(v: float | None, nd: int = 3) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _metrics(path: Path, task: str) -> str:
    if not path.exists():
        return "-"
    m = json.loads(path.read_text())
    if task == "segmentation":
        return f"mIoU {_fmt(m.get('mIoU'))}"
    parts = [f"box AP {_fmt(m['bbox']['AP'])} / AP50 {_fmt(m['bbox']['AP50'])}"]
    if "segm" in m:
        parts.append(f"mask AP {_fmt(m['segm']['AP'])} / AP50 {_fmt(m['segm']['AP50'])}")
    return ", ".join(parts)


def _per_class_iou(path: Path) -> str:
    m = json.loads(path.read_text()) if path.exists() else {}
    per = m.get("per_class_iou") or {}
    return ", ".join(f"{k} {_fmt(v, 2)}" for k, v in per.items())


def main(root: str = "runs/real") -> None:
    print("| run | model | task | recipe | input | epochs | train min | command wall / CPU min | GMACs | validation | test |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    seg_rows = []
    for run in sorted(p for p in Path(root).iterdir() if (p / "config.yaml").exists()):
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        m, t = cfg["model"], cfg["train"]
        num_classes = 8 if m["task"] == "segmentation" else 4
        print(
            f"| {run.name} | {m['name']} | {m['task']} | {cfg.get('recipe', '-')} | {m['img_size']} | {t['epochs']} "
            f"| {_fmt(_train_minutes(run), 1)} | {_cpu_minutes(run)} | {_gmacs(cfg, num_classes):.2f} "
            f"| {_metrics(run / 'metrics.json', m['task'])} | {_metrics(run / 'test' / 'metrics.json', m['task'])} |"
        )
        if m["task"] == "segmentation":
            seg_rows.append(f"| {run.name} | {_per_class_iou(run / 'metrics.json')} |")
    if seg_rows:
        print("\n| run | per-class IoU (validation) |\n|---|---|")
        print("\n".join(seg_rows))


if __name__ == "__main__":
    main(*sys.argv[1:])
