"""Batch-1 CPU latency of BiCSNet-lite0..3 beside torchvision's SSDLite320-MobileNetV3-Large.

    flock /tmp/bicsnet-bench.lock .venv/bin/python benchmarks/lite_latency.py --threads 1

End to end = ``model([image])`` in eval mode on one 640x480 image that starts as
uint8 (the uint8 -> float conversion, the model's own resize / normalise / pad,
the network, box decoding, NMS and mapping boxes back to 640x480 are all
timed). Network only = backbone + box/class subnets on the already
pre-processed batch tensor. Both are medians over ``--runs`` runs after
``--warmup`` runs, the models taking turns (one call each per round) so drifts
in machine load hit every model alike. Besides wall-clock time the table gives
the process CPU time per call: on a shared machine wall time grows with other
processes' load, while with one thread the CPU time stays the work done (run
with ``--threads 1`` when others are using the cores: a second intra-op thread
that gets descheduled makes every op wait for it).

The weights are random. So that post-processing is not flattered by an
untrained model whose scores all fall under the threshold, every model runs
with every candidate reaching NMS: the lite models with ``score_thresh=0``
(then their usual top-1000 candidates per level), SSDLite with its default
0.001 (its random softmax scores, ~1/91, all pass). That is the most
post-processing either can do. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import torch
import torchvision
from torch import nn
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

import bicsnet
from bicsnet.tools.flops import count_macs, count_params
from bicsnet.tools.runtimes import cpu_name

LITE = [f"bicsnet_lite{i}" for i in range(4)]


def _network(model: nn.Module, batch: torch.Tensor) -> Callable[[], object]:
    def fn() -> object:
        feats = model.backbone(batch)
        return model.head(list(feats.values()))

    return fn


def build(name: str, num_classes: int) -> nn.Module:
    if name == "ssdlite320_mobilenet_v3_large":
        return ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
    return bicsnet.create_model(name, "detection", num_classes, score_thresh=0.0).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=LITE + ["ssdlite320_mobilenet_v3_large"])
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--num-classes", type=int, default=80, help="lite models' classes (SSDLite keeps its 91)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    image_u8 = torch.randint(0, 256, (3, args.height, args.width), dtype=torch.uint8)
    models = {n: build(n, args.num_classes) for n in args.models}
    info: dict[str, dict[str, object]] = {}
    e2e: dict[str, Callable[[], object]] = {}
    net: dict[str, Callable[[], object]] = {}
    with torch.inference_mode():
        for n, m in models.items():
            batch = m.transform([image_u8.float().div(255)])[0].tensors
            with torch.device("meta"):
                meta_batch = torch.empty(batch.shape)
            meta_model = build(n, args.num_classes).to("meta")
            info[n] = {
                "input": f"{batch.shape[-1]}x{batch.shape[-2]}",
                "gmacs": count_macs(_network(meta_model, meta_batch)) / 1e9,
                "params": count_params(m) / 1e6,
            }
            e2e[n] = lambda m=m: m([image_u8.float().div(255)])
            net[n] = _network(m, batch)
        times: dict[tuple[str, str], list[float]] = {(n, k): [] for n in models for k in ("e2e", "net", "e2e_cpu", "net_cpu")}
        load0 = os.getloadavg()[0]
        for i in range(args.warmup + args.runs):
            for n in models:  # the models take turns
                for kind, fn in (("e2e", e2e[n]), ("net", net[n])):
                    t, c = time.perf_counter(), time.process_time()
                    fn()
                    dt, dc = (time.perf_counter() - t) * 1e3, (time.process_time() - c) * 1e3
                    if i >= args.warmup:
                        times[(n, kind)].append(dt)
                        times[(n, kind + "_cpu")].append(dc)
        load1 = os.getloadavg()[0]

    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, {cpu_name()}, "
        f"{torch.get_num_threads()} thread(s), batch 1, image {args.width}x{args.height} uint8, "
        f"median of {args.runs} runs after {args.warmup} warm-up, 1-min load average {load0:.1f} -> {load1:.1f} "
        f"on {os.cpu_count()} CPUs\n"
    )
    print(
        "| model | network input (WxH) | GMACs | params (M) | median ms end to end | median ms network only "
        "| CPU ms end to end | CPU ms network only |"
    )
    print("|---|---|---|---|---|---|---|---|")
    med = lambda n, k: statistics.median(times[(n, k)])  # noqa: E731
    for n in models:
        d = info[n]
        print(
            f"| {n} | {d['input']} | {d['gmacs']:.2f} | {d['params']:.2f} | {med(n, 'e2e'):.1f} | {med(n, 'net'):.1f} "
            f"| {med(n, 'e2e_cpu'):.1f} | {med(n, 'net_cpu'):.1f} |"
        )


if __name__ == "__main__":
    main()
