"""``bicsnet bench``: measured latency, throughput, training speed and memory vs a baseline."""
from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .common import add_device_arg, parse_override, resolve_device

if TYPE_CHECKING:
    from ..tools.bench import ModelSpec

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    from ..tools.bench import bench_task_names
    from ..tools.fastpath import FAST_OPTIONS
    from ..tools.runtimes import RUNTIMES

    p = sub.add_parser(
        "bench",
        help="measure latency/throughput/training speed/memory of a model against its baseline",
        description="Alternating runs after warm-up, medians. Pairs: retinanet-48s, retinanet-48, seg-48, cls-48, "
        "lite0..3 (when registered). Baselines 'tv:<name>' are torchvision models without weights. "
        "Wrap timing runs in 'flock /tmp/bicsnet-bench.lock' on shared machines.",
    )
    p.add_argument("--pair", help="a named pair, see --list-pairs (default: none; give --pair or --model)")
    p.add_argument("--list-pairs", action="store_true", help="list the named pairs and exit")
    p.add_argument("--model", help="registered model, instead of --pair (default: none)")
    p.add_argument("--baseline", help="registered model or tv:<torchvision builder>, e.g. tv:retinanet_resnet50_fpn "
                   "(default: the pair's; none with --model)")
    p.add_argument("--task", choices=bench_task_names(), help="with --model (default detection)")
    p.add_argument("--img-size", type=int, help="input size S (SxS network input) for both models (default: the pair's or the model's)")
    p.add_argument("--num-classes", type=int, help="classes for both models (default: the pair's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model override, e.g. width_mult=0.125; repeatable (default: none)")
    p.add_argument("--baseline-set", action="append", default=[], metavar="KEY=VALUE", help="baseline override; repeatable (default: none)")
    p.add_argument("--iters", type=int, default=10, help="timed runs per model and metric, the median is reported (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per model before timing (default: %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="batch of the throughput measurement (default: %(default)s)")
    p.add_argument("--train-batch", type=int, default=2, help="batch of the training-step measurement (default: %(default)s)")
    p.add_argument("--train-iters", type=int, help="timed training steps (default min(iters, 3))")
    p.add_argument("--fast", help=f"fast-path options to time, comma-separated: {','.join(FAST_OPTIONS)} "
                   "(deploy: bicsnet.deploy re-parameterisation) (default: none)")
    p.add_argument("--runtime", default="torch", choices=list(RUNTIMES),
                   help="also time both networks (and our detectors end to end) on this runtime: static batch-1 graphs, "
                   "ONNX simplified with onnxslim, OpenVINO at its default precision (bf16 on AMX CPUs) (default: %(default)s)")
    p.add_argument("--onnx", action="store_true", help="same as --runtime onnxruntime, with any other --runtime (default: off)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.add_argument("--score-thresh", type=float, default=0.0, help="detectors' score threshold (default 0: full NMS load)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    add_device_arg(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.add_argument("--out", help="also write the JSON result to this file (default: none, print only)")
    p.set_defaults(func=run_bench_cmd)


def _overrides(items: list[str]) -> dict[str, object]:
    return dict(parse_override(s) for s in items)


def _specs(args: argparse.Namespace) -> tuple[ModelSpec, ModelSpec | None]:
    """The (model, baseline) specs the flags describe: a pair, or --model [--baseline] with the task's defaults.

    Raises:
        ConfigError: both or neither of --pair and --model, or an unknown pair, task or model.
    """
    from ..tools.bench import ModelSpec, default_model_spec, pair_specs

    if args.pair and args.model:
        raise ConfigError("give --pair or --model, not both")
    if args.pair:
        model, baseline = pair_specs(args.pair)
        if args.baseline:
            baseline.name = args.baseline
    elif args.model:
        model = default_model_spec(args.model, args.task or "detection")
        # The baseline runs at the model's size and class count, whatever its own defaults.
        baseline = ModelSpec(args.baseline, model.task, model.img_size, model.num_classes) if args.baseline else None
    else:
        raise ConfigError("give --pair NAME or --model NAME [--baseline NAME] (bicsnet bench --list-pairs)")
    for spec in (model, baseline):
        if spec is None:
            continue
        if args.img_size and not spec.name.startswith("tv:ssd"):  # SSD(lite) has a fixed input size
            spec.img_size = args.img_size
        if args.num_classes:
            spec.num_classes = args.num_classes
    model.overrides.update(_overrides(args.set))
    if baseline is not None:
        baseline.overrides.update(_overrides(args.baseline_set))
    return model, baseline


def run_bench_cmd(args: argparse.Namespace) -> int:
    import torch

    from ..tools.bench import format_table, pair_names, pair_specs, run_bench, write_json

    if args.list_pairs:
        for name in pair_names():
            a, b = pair_specs(name)
            print(f"{name:14} {a.name} ({a.task}, {a.img_size}px) vs {b.name} ({b.img_size}px)")
        return 0
    for flag in ("iters", "warmup", "batch", "train_batch"):
        if getattr(args, flag) < (0 if flag == "warmup" else 1):
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= {0 if flag == 'warmup' else 1}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, baseline = _specs(args)
    log = (lambda s: print(f"bench: {s}", file=sys.stderr)) if not args.json else None
    res = run_bench(
        model, baseline, device=device, warmup=args.warmup, iters=args.iters, batch=args.batch,
        train_batch=args.train_batch, train_iters=args.train_iters, fast=args.fast, onnx=args.onnx, runtime=args.runtime,
        memory=not args.no_memory, score_thresh=args.score_thresh, pair=args.pair, log=log,
    )  # fmt: skip
    if args.out:
        write_json(res, args.out)
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    return 0
