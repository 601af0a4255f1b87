"""``bicsnet data synth``: write the built-in synthetic dataset."""
from __future__ import annotations

import argparse
import json

from ..errors import ConfigError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = dsub.add_parser("synth", help="generate the deterministic synthetic dataset (COCO, VOC and image-folder layouts)")
    s.add_argument("--out", required=True)
    s.add_argument("--num-train", type=int, default=400)
    s.add_argument("--num-val", type=int, default=100)
    s.add_argument("--img-size", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--kinds", nargs="+", default=["coco", "voc", "folder"], choices=["coco", "voc", "folder"])
    s.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    from ..data import generate_synthetic

    if args.num_train < 1 or args.num_val < 1:
        raise ConfigError("--num-train and --num-val must be at least 1")
    if args.img_size < 32:
        raise ConfigError(f"--img-size {args.img_size}: must be at least 32")
    paths = generate_synthetic(args.out, args.num_train, args.num_val, args.img_size, seed=args.seed, kinds=tuple(args.kinds))
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0
