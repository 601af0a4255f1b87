"""``bicsnet info``, ``bicsnet flops`` and ``bicsnet draw``."""
from __future__ import annotations

import argparse
import json

from torch import nn

from ..errors import ConfigError
from ..models import create_model, default_input_size, get_entry, list_models
from ..tasks import TASKS, get_task
from .common import parse_override

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="list models, describe one, or compare FLOPs/params with the paper")
    p.add_argument("--paper", action="store_true", help="the paper's FLOPs and params (Tables II-VII) beside ours")
    p.add_argument("--model", help="describe one registered model (default: none, list them all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_info)

    p = sub.add_parser("flops", help="count multiply-adds and parameters of one model")
    p.add_argument("--model", required=True, help="registered model name (bicsnet info lists them)")
    p.add_argument("--task", choices=list(TASKS), help="default: detection, or the model's only task")
    p.add_argument("--img-size", type=int, nargs="+", default=None, help="N or H W (default: Table I's size)")
    p.add_argument("--num-classes", type=int, default=None, help="default: the task's paper dataset's (COCO 80, VOC 21, ImageNet 1000)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model override, e.g. width_mult=0.5; repeatable (default: none)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a line of text")
    p.set_defaults(func=run_flops)

    p = sub.add_parser("draw", help="render a model's block graph (Fig. 3d) to PNG/SVG")
    p.add_argument("--model", default="bicsnet_48", help="registered model name (default: %(default)s)")
    p.add_argument("--out", required=True, help="output file (.png, .svg or .pdf)")
    p.set_defaults(func=run_draw)


def _fmt(v: object, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:+.{nd}f}%" if nd == 1 else f"{v:.2f}"
    return str(v)


def run_info(args: argparse.Namespace) -> int:
    if args.paper:
        from ..tools.flops import paper_comparison

        rows = paper_comparison()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        head = f"{'table':5} {'model':16} {'task':14} {'input':>5} {'cls':>5} | {'paper GMACs':>11} {'ours':>8} {'diff':>7} | {'paper Mp':>8} {'ours':>7} {'diff':>7}"
        print("FLOPs = multiply-adds (torch.utils.flop_counter / 2), backbone + task head, 1 image")
        print(head)
        print("-" * len(head))
        for r in rows:
            print(
                f"{r['table']:5} {r['model']:16} {r['task']:14} {r['input']:>5} {r['classes']:>5} | "
                f"{r['paper_flops_b']:>11.2f} {r['ours_flops_b']:>8.2f} {_fmt(r['flops_diff_pct']):>7} | "
                f"{_fmt(r['paper_params_m'], 2):>8} {r['ours_params_m']:>7.2f} {_fmt(r['params_diff_pct']):>7}"
            )
        return 0
    if args.model:
        from ..tools.flops import build_meta, count_params, model_macs

        e = get_entry(args.model)
        size = e.input_size
        info: dict[str, object] = {
            "model": e.name, "description": e.description, "tasks": list(e.tasks), "input_size": size,
            "backbone": e.config.to_dict() if hasattr(e.config, "to_dict") else None,
        }  # fmt: skip
        if "backbone" in e.tasks:  # a pyramid backbone: its outputs and cost
            bb = build_meta(args.model, "backbone")
            info.update({
                "outputs": {k: {"channels": v.channels, "stride": v.stride} for k, v in bb.output_shape().items()},
                "size_divisibility": bb.size_divisibility,
                "backbone_params_m": round(count_params(bb) / 1e6, 3),
                "backbone_gmacs": round(model_macs(bb, "backbone", size) / 1e9, 3),
            })  # fmt: skip
        headed = [t for t in e.tasks if get_task(t).needs_classes]
        if headed:  # the first task with a head: its cost (RetinaNet for the BiCSNet family)
            task, spec = headed[0], get_task(headed[0])
            model = build_meta(args.model, task, spec.default_classes)
            info.update({"anchor_scale": _anchor_scale(model), f"{task}_params_m": round(count_params(model) / 1e6, 3),
                         f"{task}_gmacs": round(model_macs(model, task, spec.default_size(size)) / 1e9, 3)})  # fmt: skip
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            for k, v in info.items():
                print(f"{k:20} {v}")
        return 0
    names = list_models()
    if args.json:
        print(json.dumps([{"name": n, "input_size": default_input_size(n), "description": get_entry(n).description} for n in names], indent=2))
    else:
        for n in names:
            print(f"{n:22} {default_input_size(n):>5}  {get_entry(n).description}")
    return 0


def _anchor_scale(detector: nn.Module) -> float | None:
    """Base anchor size of the finest level over its stride (V-A1: 3, or 4 for BiCSNet-140); ``None`` without anchors."""
    generator = getattr(detector, "anchor_generator", None)
    strides = getattr(getattr(detector, "backbone", None), "strides", None)
    if generator is None or not strides:
        return None
    return generator.sizes[0][0] / strides[detector.backbone.out_features[0]]


def run_flops(args: argparse.Namespace) -> int:
    from ..tools.flops import count_params, model_macs
    import torch

    overrides = dict(parse_override(s) for s in args.set)
    size = args.img_size or [default_input_size(args.model)]
    if len(size) not in (1, 2) or min(size) < 1:
        raise ConfigError(f"--img-size expects N or H W with positive values, got {size}")
    hw = (size[0], size[0]) if len(size) == 1 else (size[0], size[1])
    tasks = get_entry(args.model).tasks
    args.task = args.task or ("detection" if "detection" in tasks else tasks[0])
    task = get_task(args.task)
    if "num_classes" in overrides:
        raise ConfigError("--set num_classes: use --num-classes")
    nc = args.num_classes if args.num_classes is not None else task.default_classes
    if task.uses_img_size:  # the model resizes its input: make it keep the counted size
        overrides.setdefault("img_size", max(hw))
    with torch.device("meta"):
        model = create_model(args.model, args.task, nc, **overrides)
    macs = model_macs(model, args.task, hw)
    out = {"model": args.model, "task": args.task, "input": list(hw), "num_classes": nc, "gmacs": round(macs / 1e9, 3), "params_m": round(count_params(model) / 1e6, 3)}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.model} {args.task} {hw[0]}x{hw[1]}: {out['gmacs']} GMACs (multiply-adds), {out['params_m']} M params")
    return 0


def run_draw(args: argparse.Namespace) -> int:
    from ..tools.draw import draw_topology

    e = get_entry(args.model)
    if not hasattr(e.config, "specs"):  # baselines: not built from the topology tables
        raise ConfigError(f"--model {args.model}: no drawable topology table")
    path = draw_topology(e.config, args.out, f"{e.name}: {e.description}")
    print(f"wrote {path}")
    return 0
