"""What ``bicsnet.deploy`` gains on one model: eager, BN folding alone and deploy, taking turns call by call.

    .venv/bin/python benchmarks/deploy_gain.py [--iters 9] [--out benchmarks/results/deploy_gain.json]

``bicsnet bench --fast deploy`` times each variant of a pair in its own
window; on a machine whose speed drifts, the gain of one variant over eager
is only safe to read when they alternate in one loop, which this does:
network only (backbone + head), batch 1, medians. Variants: ``eager``,
``fold`` (BatchNorm folding alone, the generic part), ``deploy, unfused``
(:func:`bicsnet.deploy` with ``fuse=False``: rewrites 1-6 only),
``deploy`` (all rewrites, oneDNN fused convolutions included),
``deploy+channels_last``.
"""
from __future__ import annotations

import argparse

import torch

import bicsnet
from bicsnet.io import atomic_write_json
from bicsnet.models.wrappers import NetworkOnly
from bicsnet.tasks import TASKS
from bicsnet.tools.bench import time_alternating
from bicsnet.tools.fastpath import fold_batchnorm
from deploy_counts import ROWS as COUNT_ROWS  # benchmarks/ is on sys.path when run as a script

# The timed models: the pairs' BiCSNet sides (deploy_counts.py's table, without lite0 and the baselines).
ROWS = [r for r in COUNT_ROWS if r[0].startswith("bicsnet_4")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=9, help="timed calls per variant (default: %(default)s)")
    ap.add_argument("--out", help="also write the results as JSON here (default: print only)")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    print("| model | task @size | eager (ms) | fold | deploy, unfused | deploy | deploy + channels_last | deploy gain |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, task, size, k in ROWS:
        model = bicsnet.create_model(name, task, k).eval()
        variants = {
            "eager": model,
            "fold": fold_batchnorm(model),
            "deploy, unfused": bicsnet.deploy(model, fuse=False),
            "deploy": bicsnet.deploy(model),
            "deploy+channels_last": bicsnet.deploy(model).to(memory_format=torch.channels_last),
        }
        x = torch.rand(1, 3, size, size)
        fns = [lambda n=NetworkOnly(m, TASKS[task].network): n(x) for m in variants.values()]
        with torch.inference_mode():
            times = time_alternating(fns, 2, args.iters, torch.device("cpu"))
        ms = {v: round(sorted(t)[len(t) // 2] * 1e3, 1) for v, t in zip(variants, times)}
        gain = round(ms["eager"] / ms["deploy"], 3)
        rows.append({"model": name, "task": task, "img_size": size, "median_ms": ms, "deploy_gain": gain})
        print(
            f"| {name} | {task} @{size} | {ms['eager']} | {ms['fold']} | {ms['deploy, unfused']} | {ms['deploy']} "
            f"| {ms['deploy+channels_last']} | x{gain} |"
        )
    if args.out:
        atomic_write_json(args.out, rows)


if __name__ == "__main__":
    main()
