"""Latency per multiply-add against the baseline after ``bicsnet.deploy``, both sides alternating call by call.

    .venv/bin/python benchmarks/deploy_pairs.py [--iters 9] [--threads 2] [--pairs cls-48 ...] [--out FILE]

For each of ``benchmarks/deploy.md``'s pairs (network only: backbone + head,
batch 1), four networks take turns in one loop: BiCSNet and its baseline, each
after ``bicsnet.deploy(model, fuse=False)`` (rewrites 1-6: BN folding, shared
1x1 convolutions, global context as biases, ...) and after ``bicsnet.deploy``
(all rewrites, with oneDNN fused convolutions: rewrite 7). On torchvision's
baselines deploy folds BN and, with ``fuse``, fuses their convolutions,
residual adds and activations the same way. Prints each network's median, the
latency ratio BiCSNet / baseline and that ratio over the GMACs ratio (latency
per multiply-add relative to the baseline; issue #13's target is <= 1.10).
"""
from __future__ import annotations

import argparse

import torch

import bicsnet
from bicsnet.io import atomic_write_json
from bicsnet.models.wrappers import NetworkOnly
from bicsnet.tasks import TASKS
from bicsnet.tools.bench import time_alternating
from bicsnet.tools.flops import build_meta, model_macs
from bicsnet.tools.runtimes import cpu_name, matrix_units

# (pair, BiCSNet, baseline, task, size, classes): the pairs of benchmarks/deploy.md.
PAIRS = {
    "cls-48": ("bicsnet_48", "resnet50", "classification", 224, 1000),
    "retinanet-48s": ("bicsnet_48s", "retinanet_resnet50_fpn", "detection", 640, 80),
    "seg-48": ("bicsnet_48", "deeplabv3_resnet50", "segmentation", 512, 21),
    "retinanet-48": ("bicsnet_48", "retinanet_resnet50_fpn", "detection", 640, 80),
}


def _median(ts: list[float]) -> float:
    return sorted(ts)[len(ts) // 2] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--iters", type=int, default=9, help="timed calls per network (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s, the issue's 2 cores)")
    ap.add_argument("--out", help="also write the results as JSON here (default: print only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu = cpu_name()
    units = matrix_units()
    flags = ", ".join(k for k, v in units.items() if v is True) or "none"
    print(f"# {cpu}; {flags}; {args.threads} threads; torch {torch.__version__}")
    print("| pair | GMACs ratio | unfused: BiCSNet / baseline (ms) | ratio | per MAC | fused: BiCSNet / baseline (ms) | ratio | per MAC |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for pair in args.pairs:
        name, base, task, size, k = PAIRS[pair]
        torch.manual_seed(0)
        macs = [model_macs(build_meta(n, task, k), task, size) for n in (name, base)]
        x = torch.rand(1, 3, size, size)
        labels, fns = [], []
        for n in (name, base):
            model = bicsnet.create_model(n, task, k).eval()
            for fuse in (False, True):
                net = NetworkOnly(bicsnet.deploy(model, fuse=fuse), TASKS[task].network)
                labels.append((n, fuse))
                fns.append(lambda net=net: net(x))
        with torch.inference_mode():
            times = time_alternating(fns, 2, args.iters, torch.device("cpu"))
        ms = {lab: round(_median(t), 1) for lab, t in zip(labels, times)}
        mac_ratio = macs[0] / macs[1]
        row = {"pair": pair, "model": name, "baseline": base, "task": task, "img_size": size,
               "gmacs": [round(m / 1e9, 3) for m in macs], "gmacs_ratio": round(mac_ratio, 3)}  # fmt: skip
        cells = []
        for fuse, key in ((False, "unfused"), (True, "fused")):
            a, b = ms[(name, fuse)], ms[(base, fuse)]
            row[key] = {"model_ms": a, "baseline_ms": b, "ratio": round(a / b, 3), "per_mac": round(a / b / mac_ratio, 3)}
            cells += [f"{a} / {b}", f"{a / b:.3f}", f"**{a / b / mac_ratio:.2f}**"]
        rows.append(row)
        print(f"| {pair} | {mac_ratio:.3f} | " + " | ".join(cells) + " |")
    if args.out:
        atomic_write_json(args.out, {"threads": args.threads, "cpu": cpu, "matrix_units": units, "rows": rows})


if __name__ == "__main__":
    main()
