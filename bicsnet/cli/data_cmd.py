"""``bicsnet data synth``: write the built-in synthetic dataset; ``bicsnet data check``: what a dataset holds."""
from __future__ import annotations

import argparse
import json

from ..errors import ConfigError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    from ..data.synthetic import KINDS
    from ..tasks import task_names
    from .run_cmd import add_data_args

    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = dsub.add_parser("synth", help="generate the deterministic synthetic dataset (COCO, VOC and image-folder layouts)")
    s.add_argument("--out", required=True, help="folder to write the dataset into")
    s.add_argument("--num-train", type=int, default=400, help="training images (default: %(default)s)")
    s.add_argument("--num-val", type=int, default=100, help="validation images (default: %(default)s)")
    s.add_argument("--img-size", type=int, default=256, help="long side of the images in pixels (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="generator seed: the same seed gives the same files (default: %(default)s)")
    s.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS,
                   help=f"layouts to write (default: {' '.join(KINDS)})")
    s.set_defaults(func=run_synth)

    c = dsub.add_parser(
        "check", help="read a dataset as 'bicsnet train' would and report it per split",
        description="Loads the data with the same flags and checks as 'bicsnet train' (including --max-skipped) and "
        "reports per split: images, annotations used per category, rejected records and why, image sizes, "
        "categories without samples and duplicate images. Exit 2 (one error line) when the data would stop a run.",
    )  # fmt: skip
    c.add_argument("--task", required=True, choices=task_names(trainable=True), help="the task that will read the data")
    add_data_args(c)
    c.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    c.add_argument("--no-hash", action="store_true", help="do not read the image files (no content duplicates, missing files or sizes)")
    c.set_defaults(func=run_check)


def run_synth(args: argparse.Namespace) -> int:
    from ..data import generate_synthetic

    if args.num_train < 1 or args.num_val < 1:
        raise ConfigError("--num-train and --num-val must be at least 1")
    if args.img_size < 32:
        raise ConfigError(f"--img-size {args.img_size}: must be at least 32")
    paths = generate_synthetic(args.out, args.num_train, args.num_val, args.img_size, seed=args.seed, kinds=tuple(args.kinds))
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


def run_check(args: argparse.Namespace) -> int:
    from ..data.check import check_data, raise_if_errors
    from .run_cmd import data_spec

    report = check_data(args.task, data_spec(args), deep=not args.no_hash)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format(), flush=True)
    raise_if_errors(report)
    return 0
