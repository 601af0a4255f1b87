"""One summary table over benchmarks/results/*.json (written by benchmarks/run_all.sh).

    .venv/bin/python benchmarks/summarize.py

Columns: FLOPs ratio, network latency ratio eager and with the fast path
(fold + channels_last + compile on both models), latency ratio / FLOPs ratio
(target <= 1.1), end-to-end ratio, training img/s ratio, training memory per
image ratio (target <= 1.0). Ratios are model / baseline.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ["retinanet-48s", "retinanet-48", "retinanet-48-head-none", "retinanet-48-gradckpt", "seg-48", "cls-48", "lite0", "lite1", "lite2", "lite3"]


def fmt(v: object, nd: int = 3) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def main(directory: str = "benchmarks/results") -> None:
    rows = []
    files = {p.stem: p for p in Path(directory).glob("*.json") if p.stem != "before_after"}
    for name in sorted(files, key=lambda n: ORDER.index(n) if n in ORDER else 99):
        r = json.loads(files[name].read_text())
        if "ratios" not in r:
            continue
        q = r["ratios"]
        fast_key = next((k for k in q if k.startswith("net_ms[") and "+" in k), None)
        fast = q.get(fast_key) if fast_key else None
        flops = q["gmacs"]
        rows.append(
            f"| {name} | {r['model']['name']} @{r['model']['img_size']} vs {r['baseline']['name']} @{r['baseline']['img_size']} "
            f"| {fmt(flops)} | {fmt(q['net_ms'])} | **{fmt(q['net_ms'] / flops, 2)}** "
            f"| {fmt(fast)} | {fmt(None if fast is None else fast / flops, 2)} "
            f"| {fmt(q.get('e2e_ms'))} | {fmt(q.get('train_ips'))} | **{fmt(q.get('train_mem_per_image_mb'))}** "
            f"| {r['machine'].get('loadavg_1m', '-')} |"
        )
    print("| pair | model vs baseline | FLOPs ratio | net latency ratio (eager) | latency / FLOPs | "
          "net latency ratio (fold+cl+compile) | latency / FLOPs (fast) | e2e latency ratio | train img/s ratio | "
          "train mem / image ratio | load |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main(*sys.argv[1:])
