"""Max-pooling on NCHW CPU tensors: PyTorch's own kernel against oneDNN's (``OneDNNMaxPool2d``), alternating.

    .venv/bin/python benchmarks/max_pool.py [--iters 21] [--steps 40] [--precision auto|fp32|bf16] [--pairs cls-48 ...] [--out FILE]

Two tables, each measured side by side in one process, the two variants
taking turns call by call (medians):

1. **The operator**: ``nn.MaxPool2d(3, 2, 1)`` against
   :class:`bicsnet.fused_ops.OneDNNMaxPool2d` on the 64-channel stem maps the
   networks of ``benchmarks/deploy.md`` and the CPU demo pool (batch-1 inference
   at 640, 512 and 224 px; the demo's training batch of 8 at 256 px, forward +
   backward, in float32 and bfloat16).
2. **The demo's training step** (``bicsnet demo``'s CPU preset: ``bicsnet_48_tiny``
   RetinaNet, batch 8, 256 px, SGD, the precision ``bicsnet demo --precision auto``
   picks here): the model as built (oneDNN pools) against a copy with every pool
   swapped for ``nn.MaxPool2d`` (same weights), on the same batch of random
   images with three random boxes each, steps alternating.
3. **The pairs of ``benchmarks/deploy.md`` after ``bicsnet.deploy``** (which
   gives torchvision's baselines the same pools: rewrite 8): BiCSNet and its
   baseline, each deployed with oneDNN pools and with plain ones, four
   networks taking turns (``--pairs``; none by default, as they take minutes),
   and what the pools change in the latency ratio.
"""
from __future__ import annotations

import argparse
import copy
import time
from typing import Callable

import torch
from torch import nn

import bicsnet
from bicsnet.engine.host_memory import keep_freed_memory
from bicsnet.engine.trainer import cpu_bf16_units
from bicsnet.fused_ops import OneDNNMaxPool2d
from bicsnet.io import atomic_write_json
from bicsnet.models.wrappers import NetworkOnly
from bicsnet.tasks import TASKS
from bicsnet.tools.bench import time_alternating
from deploy_pairs import PAIRS  # benchmarks/deploy_pairs.py: the same pairs
from bicsnet.tools.runtimes import cpu_name, matrix_units

#: (what, shape, dtype, training): the stem maps of deploy.md's pairs and of the demo.
OP_CASES = [
    ("RetinaNet stem @640, inference", (1, 64, 320, 320), torch.float32, False),
    ("seg stem @512, inference", (1, 64, 256, 256), torch.float32, False),
    ("cls stem @224, inference", (1, 64, 112, 112), torch.float32, False),
    ("demo stem, training fwd+bwd", (8, 64, 128, 128), torch.float32, True),
    ("demo stem, training fwd+bwd", (8, 64, 128, 128), torch.bfloat16, True),
]


def _median_ms(ts: list[float]) -> float:
    return sorted(ts)[len(ts) // 2] * 1e3


def _alternate(fns: list[Callable[[], object]], iters: int) -> list[float]:
    """Median ms of each function, calling them in turn ``iters`` times after one warm-up call each."""
    for f in fns:
        f()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(iters):
        for f, ts in zip(fns, times):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
    return [_median_ms(ts) for ts in times]


def _plain_pools(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every OneDNNMaxPool2d replaced by nn.MaxPool2d of the same geometry."""
    out = copy.deepcopy(model)
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, OneDNNMaxPool2d):
                setattr(parent, name, nn.MaxPool2d(child.kernel_size, child.stride, child.padding, ceil_mode=child.ceil_mode))
    return out


def op_table(iters: int) -> list[dict]:
    rows = []
    for what, shape, dtype, training in OP_CASES:
        x = torch.randn(*shape).relu().to(dtype)
        plain, ours = nn.MaxPool2d(3, 2, 1), OneDNNMaxPool2d(3, 2, 1)
        if training:
            xs = [x.clone().requires_grad_(True) for _ in range(2)]
            grad = torch.randn_like(plain(x))

            def run(pool: nn.Module, inp: torch.Tensor) -> Callable[[], object]:
                return lambda: pool(inp).backward(grad)

            fns = [run(plain, xs[0]), run(ours, xs[1])]
        else:
            fns = [lambda: plain(x), lambda: ours(x)]
        with torch.set_grad_enabled(training):
            a, b = _alternate(fns, iters)
        rows.append({"what": what, "shape": list(shape), "dtype": str(dtype).removeprefix("torch."),
                     "plain_ms": round(a, 3), "onednn_ms": round(b, 3), "ratio": round(b / a, 3)})  # fmt: skip
    return rows


def step_table(steps: int, precision: str) -> dict:
    amp = precision == "bf16"
    torch.manual_seed(0)
    model = bicsnet.create_model("bicsnet_48_tiny", "detection", 6, img_size=256).train()
    models = [_plain_pools(model), model]
    opts = [torch.optim.SGD(m.parameters(), lr=0.001, momentum=0.9) for m in models]
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 256, 256, generator=g) for _ in range(8)]
    targets = []
    for _ in images:
        xy = torch.rand(3, 2, generator=g) * 180
        wh = torch.rand(3, 2, generator=g) * 60 + 16
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, 7, (3,), generator=g)})

    def step(m: nn.Module, opt: torch.optim.Optimizer) -> Callable[[], object]:
        def run() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                losses = m(images, targets)
            sum(losses.values()).backward()
            opt.step()

        return run

    a, b = _alternate([step(m, o) for m, o in zip(models, opts)], steps)
    return {"precision": precision, "steps": steps, "plain_ms": round(a, 1), "onednn_ms": round(b, 1), "ratio": round(b / a, 3)}


def pair_table(pairs: list[str], iters: int) -> list[dict]:
    rows = []
    for pair in pairs:
        name, base, task, size, k = PAIRS[pair]
        torch.manual_seed(0)
        x = torch.rand(1, 3, size, size)
        labels, fns = [], []
        for n in (name, base):
            deployed = bicsnet.deploy(bicsnet.create_model(n, task, k).eval())
            for pools, net in (("plain", _plain_pools(deployed)), ("onednn", deployed)):
                wrapped = NetworkOnly(net, TASKS[task].network)
                labels.append((n, pools))
                fns.append(lambda wrapped=wrapped: wrapped(x))
        with torch.inference_mode():
            times = time_alternating(fns, 2, iters, torch.device("cpu"))
        ms = {lab: _median_ms(t) for lab, t in zip(labels, times)}
        row = {"pair": pair}
        for pools in ("plain", "onednn"):
            row[pools] = {"model_ms": round(ms[(name, pools)], 1), "baseline_ms": round(ms[(base, pools)], 1),
                          "ratio": round(ms[(name, pools)] / ms[(base, pools)], 3)}  # fmt: skip
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=21, help="alternating calls per operator case (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=40, help="alternating training steps per model (default: %(default)s)")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="the step's precision; auto = bf16 autocast where the CPU has bf16 units, as the demo (default: %(default)s)")  # fmt: skip
    ap.add_argument("--pairs", nargs="*", default=[], choices=list(PAIRS), help="deployed pairs to time (default: none)")
    ap.add_argument("--pair-iters", type=int, default=9, help="alternating calls per deployed network (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the trainer does on the CPU
    precision = args.precision if args.precision != "auto" else ("bf16" if cpu_bf16_units() else "fp32")
    units = ", ".join(k for k, v in matrix_units().items() if v is True) or "none"
    print(f"# {cpu_name()}; {units}; {args.threads} threads; torch {torch.__version__}")
    print("| max-pool 3x3/2 | shape | dtype | nn.MaxPool2d (ms) | OneDNNMaxPool2d (ms) | ratio |")
    print("|---|---|---|---:|---:|---:|")
    ops = op_table(args.iters)
    for r in ops:
        print(f"| {r['what']} | {tuple(r['shape'])} | {r['dtype']} | {r['plain_ms']:.2f} | {r['onednn_ms']:.2f} | {r['ratio']:.3f} |")
    step = step_table(args.steps, precision)
    print(f"\n| demo training step ({precision}, medians of {step['steps']}) | plain pools (ms) | oneDNN pools (ms) | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| bicsnet_48_tiny RetinaNet, batch 8, 256 px | {step['plain_ms']:.1f} | {step['onednn_ms']:.1f} | {step['ratio']:.3f} |")
    pairs = pair_table(args.pairs, args.pair_iters)
    if pairs:
        print(f"\n| deployed pair (medians of {args.pair_iters}) | plain pools: BiCSNet / baseline (ms) | ratio "
              "| oneDNN pools: BiCSNet / baseline (ms) | ratio |")
        print("|---|---:|---:|---:|---:|")
        for r in pairs:
            p, o = r["plain"], r["onednn"]
            print(f"| {r['pair']} | {p['model_ms']} / {p['baseline_ms']} | {p['ratio']:.3f} "
                  f"| {o['model_ms']} / {o['baseline_ms']} | {o['ratio']:.3f} |")
    if args.out:
        atomic_write_json(args.out, {"cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__,
                                     "operator": ops, "training_step": step, "pairs": pairs})  # fmt: skip


if __name__ == "__main__":
    main()
