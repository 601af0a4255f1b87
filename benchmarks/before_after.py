"""Before/after of the backbone hot-spot fixes, on one model, alternating runs.

    flock /tmp/bicsnet-bench.lock .venv/bin/python benchmarks/before_after.py --img-size 640 --iters 9

"before" re-creates the previous forward passes in this script: fusion by
Python ``sum()`` (0 + first branch: one extra full-size copy per fusion), a
backbone that keeps every block's output until the end and computes the
endpoints last, and the global-context step as ``mean`` + a 1x1 conv on the
1x1 map (now one pooling kernel + ``linear``). "after" is the library code: accumulate from the first
branch, endpoints as soon as their block exists, features dropped after their
last reader. Outputs agree to float rounding (checked); FLOPs are unchanged.
``after_grad_checkpointing_train_peak_mb`` is the "after" training step with
``set_grad_checkpointing(True)`` (every block and its fusion recomputed in backward).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import types
from collections import OrderedDict

import torch

import bicsnet
from bicsnet.arch.backbone import _level_size
from bicsnet.tools.bench import peak_memory_mb  # pins malloc thresholds: RSS tracks live tensors
from bicsnet.arch.fusion import GlobalContext, SpatialFusionModule
from bicsnet.arch.specs import STEM_SOURCE


def old_global_context_forward(self, x):
    return x + self.conv(x.mean(dim=(2, 3), keepdim=True))


def old_fusion_forward(self, inputs, size):
    out = sum(b(x, size) for b, x in zip(self.branches, inputs))
    return self.act(out)


def old_backbone_forward(self, x):
    h, w = x.shape[-2:]
    feats = {STEM_SOURCE: self.stem(x)}
    for spec in self.specs:
        if spec.part == "stem":
            src = feats[spec.inputs[0].source]
            if spec.inputs[0].source == STEM_SOURCE:
                src = self.stem_pool(src)
            feats[spec.name] = self.blocks[spec.name](src)
        else:
            size = _level_size(h, w, spec.level)
            fused = self.fusions[spec.name]([feats[e.source] for e in spec.inputs], size)
            feats[spec.name] = self.blocks[spec.name](fused)
    return OrderedDict((p, self.endpoints[p](feats[b])) for p, b in self.output_blocks.items())


def make_old(model):
    import copy

    old = copy.deepcopy(model)
    old.forward = types.MethodType(old_backbone_forward, old)
    for m in old.modules():
        if isinstance(m, SpatialFusionModule):
            m.forward = types.MethodType(old_fusion_forward, m)
        elif isinstance(m, GlobalContext):
            m.forward = types.MethodType(old_global_context_forward, m)
    return old


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bicsnet_48")
    ap.add_argument("--img-size", type=int, default=640)
    ap.add_argument("--iters", type=int, default=9)
    ap.add_argument("--train-batch", type=int, default=1)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    torch.manual_seed(0)
    new = bicsnet.create_model(args.model, "backbone").eval()
    for m in new.modules():  # a fresh global-context conv is zero (identity); make the check see it
        if isinstance(m, GlobalContext):
            torch.nn.init.normal_(m.conv.weight, std=0.01)
    old = make_old(new)
    x = torch.rand(1, 3, args.img_size, args.img_size)
    with torch.inference_mode():
        a, b = old(x), new(x)
        # Pooling + linear sums in another order than mean + conv: equal to rounding.
        assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a), "outputs differ"
        for m in (old, new):
            m(x)
        ts = {"before": [], "after": []}
        for i in range(args.iters):
            for name, m in ((("before", old), ("after", new)) if i % 2 == 0 else (("after", new), ("before", old))):
                t = time.perf_counter()
                m(x)
                ts[name].append(time.perf_counter() - t)
    dev = torch.device("cpu")
    res = {"model": args.model, "img_size": args.img_size, "threads": torch.get_num_threads(), "loadavg_1m": round(os.getloadavg()[0], 2)}
    for name, m in (("before", old), ("after", new)):
        res[f"{name}_ms"] = round(statistics.median(ts[name]) * 1e3, 1)
        with torch.inference_mode():
            res[f"{name}_infer_peak_mb"] = peak_memory_mb(lambda m=m: m(x), dev)
        m.train()
        xb = torch.rand(args.train_batch, 3, args.img_size, args.img_size)

        def step(m=m, xb=xb):
            out = m(xb)
            sum(v.float().mean() for v in out.values()).backward()

        step()
        for p in m.parameters():
            p.grad = None
        res[f"{name}_train_peak_mb"] = peak_memory_mb(step, dev)
        if name == "after":  # the same step with the fusions recomputed in backward
            m.set_grad_checkpointing(True)
            step()
            for p in m.parameters():
                p.grad = None
            res["after_grad_checkpointing_train_peak_mb"] = peak_memory_mb(step, dev)
            m.set_grad_checkpointing(False)
        m.eval()
    print(json.dumps(res, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
