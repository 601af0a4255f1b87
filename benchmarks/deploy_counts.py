"""Operators and convolutions one forward runs, before and after ``bicsnet.deploy``.

    .venv/bin/python benchmarks/deploy_counts.py [--out benchmarks/results/deploy_counts.json]

Counts ATen operators (``bicsnet.reparam.operator_counts``) of the network-only
call (backbone + head, what the GMACs count) at batch 1, for the models of
``benchmarks/deploy.md``'s pairs; deterministic, so one run is the figure.
"""
from __future__ import annotations

import argparse
import json

import torch

import bicsnet
from bicsnet.reparam import deploy, operator_counts
from bicsnet.io import atomic_write_json
from bicsnet.models.wrappers import NetworkOnly
from bicsnet.tasks import TASKS

ROWS = [
    ("bicsnet_48s", "detection", 640, 80),
    ("bicsnet_48", "detection", 640, 80),
    ("bicsnet_48", "segmentation", 512, 21),
    ("bicsnet_48", "classification", 224, 1000),
    ("bicsnet_lite0", "detection", 256, 80),
    # the baselines of benchmarks/deploy.md's pairs (deploy folds their BNs)
    ("retinanet_resnet50_fpn", "detection", 640, 80),
    ("deeplabv3_resnet50", "segmentation", 512, 21),
    ("resnet50", "classification", 224, 1000),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="also write the table as JSON here (default: print only)")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    print("| model | task @size | operators before | after, fuse=False | after | convolutions before | after | BNs folded | 1x1 convs merged |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, task, size, k in ROWS:
        model = bicsnet.create_model(name, task, k).eval()
        dep = deploy(model)
        x = torch.rand(1, 3, size, size)
        before = operator_counts(NetworkOnly(model, TASKS[task].network), x)
        unfused = operator_counts(NetworkOnly(deploy(model, fuse=False), TASKS[task].network), x)
        after = operator_counts(NetworkOnly(dep, TASKS[task].network), x)
        rep = dep.deploy_report
        rows.append({"model": name, "task": task, "img_size": size, "before": before, "after_unfused": unfused,
                     "after": after, "report": rep})  # fmt: skip
        print(
            f"| {name} | {task} @{size} | {before['operators']} | {unfused['operators']} | {after['operators']} | {before['convolutions']} "
            f"| {after['convolutions']} | {rep['batchnorms_folded']} | {rep['pointwise_convs_merged']} |"
        )
    if args.out:
        atomic_write_json(args.out, rows)


if __name__ == "__main__":
    main()
