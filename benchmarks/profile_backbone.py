"""Profile a BiCSNet backbone forward on CPU with torch.profiler.

    flock /tmp/bicsnet-bench.lock .venv/bin/python benchmarks/profile_backbone.py --model bicsnet_48 --img-size 640

Prints the top operators by self CPU time and the time per module kind
(our own code: fusion/resampling, global context, blocks, endpoints).
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import bicsnet
from bicsnet.arch.fusion import GlobalContext, ResampleBranch, SpatialFusionModule


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bicsnet_48")
    ap.add_argument("--img-size", type=int, default=640)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    over = {}
    for kv in args.set:
        k, v = kv.split("=")
        over[k] = float(v) if "." in v else int(v)
    m = bicsnet.create_model(args.model, "backbone", **over).eval()
    x = torch.rand(1, 3, args.img_size, args.img_size)
    if args.channels_last:
        m = m.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    # Label our own module kinds so their share shows in the profile.
    def wrap(mod, label):
        fwd = mod.forward

        def f(*a, **k):
            with record_function(label):
                return fwd(*a, **k)

        mod.forward = f

    for name, mod in m.named_modules():
        if isinstance(mod, GlobalContext):
            wrap(mod, "## global_context")
        elif isinstance(mod, SpatialFusionModule):
            wrap(mod, "## fusion (all branches + sum)")
    for name, mod in m.blocks.items():
        wrap(mod, "## blocks")
    for name, mod in m.endpoints.items():
        wrap(mod, "## endpoints")
    with torch.no_grad():
        m(x)
        times = []
        for _ in range(args.iters):
            t = time.perf_counter()
            m(x)
            times.append(time.perf_counter() - t)
        print(f"forward: {sorted(times)[len(times)//2]*1e3:.1f} ms (median of {args.iters}), threads={torch.get_num_threads()}")
        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            m(x)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
