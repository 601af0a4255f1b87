"""``bicsnet train``, ``bicsnet eval`` and ``bicsnet predict``: flags parsed into library calls.

``train`` builds a :class:`~bicsnet.config.RunConfig` (from ``--config`` if
given, then the flags that were given, then ``--set``) and calls
:func:`bicsnet.api.train`; ``eval`` and ``predict`` call
:func:`bicsnet.api.evaluate` and :func:`bicsnet.api.predict`. Every default
lives in the library: a flag left out leaves the configuration as it is.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..inference import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS
from ..tasks import RECIPE_CHOICES, SMALL_DATA_IMAGES, task_names
from .common import add_device_arg

__all__ = ["register", "add_data_args", "data_spec", "run_config"]

#: ``train`` flags -> (section, key) of the run configuration (section ``None``: a top-level key).
_TRAIN_FLAGS = {
    "recipe": (None, "recipe"),
    "task": ("model", "task"), "model": ("model", "name"), "img_size": ("model", "img_size"),
    "weights": ("model", "weights"), "strict": ("model", "strict_weights"),
    "backbone_weights": ("model", "backbone_weights"), "bn_momentum": ("model", "bn_momentum"),
    "activation": ("options", "activation"), "drop_path": ("options", "drop_path_rate"), "norm": ("options", "norm"),
    "scale_range": ("data", "scale_range"), "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"),
    "lr": ("train", "lr"), "schedule": ("train", "schedule"), "warmup_epochs": ("train", "warmup_epochs"),
    "warmup_steps": ("train", "warmup_steps"), "warmup_max_fraction": ("train", "warmup_max_fraction"),
    "amp": ("train", "amp"), "channels_last": ("train", "channels_last"), "accumulate": ("train", "accumulate"), "ema": ("train", "ema_decay"), "grad_clip": ("train", "grad_clip"),
    "label_smoothing": ("train", "label_smoothing"), "coco_backend": ("train", "coco_backend"),
    "workers": ("train", "num_workers"), "seed": ("train", "seed"),
    "deterministic": ("train", "deterministic"), "nan_policy": ("train", "nan_policy"), "max_steps": ("train", "max_steps"),
    "ckpt_every": ("train", "ckpt_every_steps"), "eval_every": ("train", "eval_every_epochs"),
    "log_every": ("train", "log_every"), "device": ("train", "device"), "out": ("train", "out_dir"),
}  # fmt: skip
#: Data flags -> DataSpec fields (``--synth-dir`` is ``synth_root``).
_DATA_FLAGS = {
    "train_ann": "train_ann", "train_images": "train_images", "train_list": "train_list", "val_ann": "val_ann",
    "val_images": "val_images", "data": "data", "synth_dir": "synth_root", "synth_train": "synth_train",
    "synth_val": "synth_val", "synth_size": "synth_size", "max_skipped": "max_skipped",
    "images": "images", "masks": "masks", "train_split": "train_split", "val_split": "val_split",
    "ignore_index": "ignore_index", "class_names": "class_names",
}  # fmt: skip


def add_data_args(p: argparse.ArgumentParser, train: bool = True) -> None:
    """Data flags shared by train and eval; none of them means the synthetic set."""
    g = p.add_argument_group("data (default: the built-in synthetic dataset)")
    if train:
        g.add_argument("--train-ann", help="COCO instances JSON for training (detection/instance; default: none, the synthetic set)")
        g.add_argument("--train-images", help="training image folder (detection/instance; default: none, the synthetic set)")
        g.add_argument("--train-list", help="segmentation: another list of the VOC layout, e.g. SBD train_aug.txt "
                       "(default: none, the root's ImageSets/Segmentation/train.txt)")
        g.add_argument("--train-split", metavar="FILE",
                       help="segmentation, mask folder: training list, one id (or '<image> <mask>' pair) per line "
                       "(no default: required with --masks)")
    g.add_argument("--val-ann", help="COCO instances JSON for evaluation (detection/instance; default: none, the synthetic set)")
    g.add_argument("--val-images", help="evaluation image folder (detection/instance; default: none, the synthetic set)")
    g.add_argument("--data", help="segmentation: VOC root; classification: root with train/ and val/ class folders (default: none, the synthetic set)")
    g.add_argument("--images", metavar="DIR", help="segmentation, mask folder: the images (<id>.jpg, .png, ...; default: none, the synthetic set)")
    g.add_argument("--masks", metavar="DIR", help="segmentation, mask folder: the label PNGs of class indices (<id>.png; default: none, the synthetic set)")
    g.add_argument("--val-split", metavar="FILE",
                   help="segmentation, mask folder: validation list, one id (or '<image> <mask>' pair) per line "
                   "(no default: required with --masks)")
    g.add_argument("--class-names", metavar="FILE",
                   help="segmentation: class names, one per line, label 0 first (required with --masks; default for a VOC "
                   "root: its classes.txt, else the 21 VOC classes)")
    g.add_argument("--ignore-index", type=int, metavar="N",
                   help="segmentation: the mask value of unlabelled pixels, skipped by loss and mIoU (default 255)")
    # Unset synthetic flags: eval takes the ones the checkpoint was trained with, else these.
    then = "" if train else "the checkpoint's, else "
    g.add_argument("--synth-dir", help=f"where to generate the synthetic dataset (default {then}~/.cache/bicsnet/synthetic)")
    g.add_argument("--synth-train", type=int, help=f"synthetic training images (default {then}400)")
    g.add_argument("--synth-val", type=int, help=f"synthetic validation images (default {then}100)")
    g.add_argument("--synth-size", type=int, help=f"synthetic image size, long side (default {then}256)")
    g.add_argument(
        "--max-skipped", type=_fraction, metavar="FRACTION",
        help="COCO: stop when more than this share of a file's annotations is rejected as malformed (default 0.05)",
    )  # fmt: skip


def _add_coco_backend_arg(p: argparse.ArgumentParser, default: str | None) -> None:
    """``--coco-backend`` (train: its evaluations; eval), with the choices and help of one place."""
    from ..metrics.coco import COCO_BACKENDS, DEFAULT_COCO_BACKEND

    p.add_argument(
        "--coco-backend", choices=COCO_BACKENDS, default=default,
        help=f"how detection/instance evaluations are scored (default {DEFAULT_COCO_BACKEND}: COCO's reference "
        "implementation, what papers report); faster-coco-eval: its C++ re-implementation, the same numbers "
        "(to 1e-6 in the tests) 3-8x faster (benchmarks/coco_eval_backends.md), if installed "
        "(pip install faster-coco-eval); auto: faster-coco-eval when installed",
    )  # fmt: skip


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}")
    return value


def data_spec(args: argparse.Namespace, base: Any = None) -> Any:
    """The :class:`~bicsnet.data.spec.DataSpec` of ``base`` (default: an empty one) with the data flags given applied."""
    import dataclasses

    from ..data.spec import DataSpec

    given = {field: getattr(args, flag) for flag, field in _DATA_FLAGS.items() if getattr(args, flag, None) is not None}
    return dataclasses.replace(base or DataSpec(), **given)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a BiCSNet model (any task): the paper's recipe, or the small-data one for small sets",
        description="Flags override --config (a YAML run configuration, e.g. a run's config.yaml); "
        "--set SECTION.KEY=VALUE overrides both. Defaults: see bicsnet train --print-config.",
    )  # fmt: skip
    p.add_argument("--config", help="YAML run configuration (model / data / train sections), e.g. RUN/config.yaml "
                   "(default: none: the flags, then the recipe's and the library's defaults)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override one key: train.lr=0.02, data.synth_train=100, model.options.focal_gamma=2, or a bare model option "
        "(focal_gamma=2); repeatable (default: none)",
    )  # fmt: skip
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration as YAML and exit")
    p.add_argument("--task", choices=task_names(trainable=True), help="default: detection")
    p.add_argument("--model", help="registered model name (bicsnet info lists them; default bicsnet_48)")
    p.add_argument(
        "--recipe", choices=RECIPE_CHOICES,
        help=f"defaults for every option not given: paper (Section V-A), small (from scratch on small data) or "
        f"auto (default: small below {SMALL_DATA_IMAGES} training images where the task has one)",
    )  # fmt: skip
    add_data_args(p)
    p.add_argument("--img-size", type=int, help="input size (default: Table I's for detection, 512 segmentation, 224 classification)")
    p.add_argument("--scale-range", type=float, nargs=2, metavar=("LO", "HI"), help="scale jitter range (default: the recipe's; paper 0.5 2.0)")
    p.add_argument("--epochs", type=int, help="default: the recipe's (paper: 350 detection, 250 classification)")
    p.add_argument("--batch-size", type=int, help="images per process per forward pass (default 8)")
    p.add_argument(
        "--accumulate", type=int, metavar="N",
        help="gradient accumulation: one optimiser step every N batches, so a step sees batch-size x N x processes "
        "images (the global batch, which the lr scaling uses); steps, warm-up, --max-steps, logging and checkpoints "
        "count optimiser steps (default 1)",
    )  # fmt: skip
    p.add_argument("--lr", type=float, help="learning rate for the global batch (default: the recipe's, scaled linearly)")
    p.add_argument("--schedule", choices=["step", "cosine"], help="default: the recipe's (paper: step for detection, cosine otherwise)")
    p.add_argument("--warmup-epochs", type=float, help="linear warm-up in epochs (default: the recipe's)")
    p.add_argument("--warmup-steps", type=int, help="linear warm-up in steps, overrides --warmup-epochs (default: none, --warmup-epochs decides)")
    p.add_argument("--warmup-max-fraction", type=float, help="cap the warm-up at this fraction of the run (default: the recipe's)")
    p.add_argument("--activation", choices=["relu", "swish"], help="swish = training strategy B (default: the model's; BiCSNet relu)")
    p.add_argument("--drop-path", type=float, help="stochastic depth rate, strategy B (default: the model's; BiCSNet 0)")
    p.add_argument("--norm", choices=["bn", "syncbn", "gn", "frozenbn"], help="backbone norm, BN is made SyncBN under torchrun (default: the model's; BiCSNet bn)")
    p.add_argument(
        "--bn-momentum", type=float, metavar="M",
        help="PyTorch momentum of every BatchNorm (default: the recipe's, small 0.1; paper: the model's, BiCSNet 0.01 = "
        "the paper's TF 0.99). "
        "Short runs need ~0.1, or the running statistics used in evaluation stay near their initial values",
    )  # fmt: skip
    p.add_argument(
        "--weights", metavar="PATH",
        help="initialise the whole model from a weights file trained elsewhere: .safetensors, or a .pth/.pt/.bin "
        "state dict, bare or wrapped (state_dict, model, ema, ...), with or without prefixes (module., _orig_mod., "
        "backbone., ...); tensors that do not fit (e.g. a head of another class count) are skipped and reported "
        "(default: none, random initialisation). For the backbone alone use --backbone-weights",
    )  # fmt: skip
    p.add_argument("--strict", action="store_true", default=None,
                   help="with --weights: stop unless every tensor of the file and the model fits (default: off)")  # fmt: skip
    p.add_argument(
        "--backbone-weights", metavar="PATH",
        help="initialise only the backbone from a weights file of any task and format (as --weights; e.g. a detector's "
        "backbone into a segmentation model, Section V); every backbone tensor must fit, the file's head is ignored "
        "(default: none). Use --weights for a whole model",
    )  # fmt: skip
    p.add_argument(
        "--amp", nargs="?", const="auto", choices=["bf16", "fp16", "auto", "off"], metavar="bf16|fp16",
        help="mixed precision: bf16 (autocast) or fp16 (autocast + gradient scaler); a bare --amp is bf16 on the CPU "
        "and on GPUs with native bfloat16, else fp16 (T4, V100); --amp off undoes a --config's. Default off",
    )  # fmt: skip
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="weights and feature maps in channels-last (NHWC) memory: faster convolutions on CPUs and "
                   "tensor-core GPUs, the same model rounded differently (default: off; see docs/training.md)")
    p.add_argument("--ema", type=float, metavar="DECAY", help="keep an EMA of the weights, e.g. 0.9998 (default: the recipe's; paper off, small 0.99; "
                   "--set train.ema_decay=null turns it off)")
    p.add_argument("--grad-clip", type=float, help="clip the global gradient norm at this value (default: the recipe's; paper off)")
    p.add_argument("--label-smoothing", type=float, help="classification label smoothing (default 0)")
    _add_coco_backend_arg(p, None)  # None: the flag left out leaves --config's choice
    p.add_argument("--workers", type=int, help="data-loading processes per training process (default 2)")
    p.add_argument("--seed", type=int, help="seed of weights, data order and augmentation (default 0)")
    p.add_argument("--deterministic", action="store_true", default=None, help="deterministic kernels: the same weights on every CPU run")
    p.add_argument("--nan-policy", choices=["stop", "skip"], help="on a non-finite loss: stop (default) or skip the step")
    p.add_argument("--max-steps", type=int, help="stop after this many steps, the schedule spans them (default: none, every step of --epochs)")
    p.add_argument("--ckpt-every", type=int, help="steps between checkpoints (default 500; 0: epoch ends only)")
    p.add_argument("--eval-every", type=int, help="epochs between evaluations (default 0: at the end)")
    p.add_argument("--log-every", type=int, help="steps between log rows (default 20)")
    add_device_arg(p)
    p.add_argument("--out", help="run directory (default runs/train)")
    p.add_argument(
        "--resume", nargs="?", const=True, default=False, choices=[True, "auto"], type=_resume_mode, metavar="auto",
        help="continue the run in --out from its last checkpoint; '--resume auto': resume if there is one, else "
        "start afresh (for torchrun --max-restarts and requeued jobs); default: off, a new run",
    )  # fmt: skip
    p.set_defaults(func=run_train)

    from ..metrics.coco import DEFAULT_COCO_BACKEND

    p = sub.add_parser(
        "eval", help="evaluate a checkpoint: metrics.json; detectors also a per-class table and PR curves, "
        "classifiers and segmenters a confusion matrix (PNG)"
    )
    p.add_argument("--checkpoint", required=True, help="model.safetensors (or its run directory)")
    add_data_args(p, train=False)
    p.add_argument("--batch-size", type=int, default=4, help="images per step (default 4)")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes (default 2)")
    _add_coco_backend_arg(p, DEFAULT_COCO_BACKEND)
    add_device_arg(p)
    p.add_argument(
        "--out", required=True,
        help="directory for metrics.json (detectors: detections.json, pr_curves.json, pr_curve_*.png; "
        "classification / segmentation: confusion_matrix.png)",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace existing results in --out")
    p.set_defaults(func=run_eval)

    p = sub.add_parser(
        "predict", help="run a checkpoint on images, folders, glob patterns or videos: JSON per image (detectors and "
        "segmenters also a drawn PNG)",
        description="Results mirror the inputs' folders under --out: per image NAME.json and NAME.png (segmentation "
        "also NAME_mask.png), per video NAME.mp4 (drawn frames) and NAME/NNNNNN.json per frame, and for the run "
        "predictions.coco.json (detection, instance) or predictions.csv (classification).",
    )  # fmt: skip
    p.add_argument("--checkpoint", required=True, help="model.safetensors (or its run directory)")
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="image or video (.mp4 .avi .mov .mkv .webm) files, folders (every image below them) or quoted glob "
        "patterns ('data/**/*.jpg')",
    )  # fmt: skip
    p.add_argument("--score-thresh", type=float, default=0.3, help="detections below this score are dropped (default 0.3)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"images per forward pass (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                   help=f"processes decoding images ahead of the model (default {DEFAULT_WORKERS}; 0: none)")
    add_device_arg(p)
    p.add_argument("--out", required=True, help="directory for the results")
    p.add_argument("--overwrite", action="store_true", help="replace existing results in --out")
    p.set_defaults(func=run_predict)


def _resume_mode(text: str) -> str:
    if text != "auto":
        raise argparse.ArgumentTypeError(f"expected 'auto' or nothing, got {text!r}")
    return text


def run_config(args: argparse.Namespace) -> Any:
    """The :class:`~bicsnet.config.RunConfig` of parsed ``train`` flags: ``--config``, then the flags given, then ``--set``."""
    from ..config import RunConfig, load_run_config

    cfg = load_run_config(args.config) if args.config else RunConfig()
    d = cfg.to_dict()
    for flag, (section, key) in _TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if section is None:
            d[key] = value
        elif section == "options":
            d["model"]["options"][key] = value
        else:
            d[section][key] = list(value) if isinstance(value, (tuple, list)) else value
    if args.lr is not None:  # --lr is the rate for the global batch, whatever the file scaled from
        d["train"]["lr_reference_batch"] = None
    cfg = RunConfig.from_dict(d)
    cfg.data = data_spec(args, cfg.data)
    return cfg.override(args.set)


def run_train(args: argparse.Namespace) -> int:
    from .. import api

    cfg = run_config(args)
    if args.print_config:
        print(api.resolve_run(cfg)[0].to_yaml(), end="")
        return 0
    result = api.train(cfg, resume=args.resume)
    if Path(result.out_dir, "model.safetensors").exists():
        print(json.dumps({"out": str(result.out_dir), "metrics": _headline(result.metrics)}, indent=2))
    return 0


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics without per-class lists and confusion matrices (they stay in metrics.json)."""
    return {
        k: _headline(v) if isinstance(v, dict) else v
        for k, v in metrics.items()
        if not (k.startswith("per_class") or k == "confusion_matrix")
    }


def _check_out(out: Path, names: list[str], overwrite: bool) -> None:
    existing = [n for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise ConfigError(f"--out {out}: {', '.join(existing)} already exist(s); pass --overwrite to replace")


def run_eval(args: argparse.Namespace) -> int:
    from .. import api
    from ..data.spec import DataSpec
    from ..metrics.report import format_per_class_table
    from ..engine.checkpoint import read_model_meta

    out = Path(args.out)
    _check_out(out, ["metrics.json", "detections.json"], args.overwrite)
    path = Path(args.checkpoint)
    meta = read_model_meta(path / "model.safetensors" if path.is_dir() else path)
    # Unset synthetic-set flags take the values the checkpoint was trained with.
    base = DataSpec.from_synthetic_meta(meta.get("synthetic"))
    metrics = api.evaluate(args.checkpoint, data_spec(args, base), out=out, batch_size=args.batch_size, workers=args.workers,
                           device=args.device or "auto", coco_backend=args.coco_backend)  # fmt: skip
    table = format_per_class_table(metrics)
    if table:
        print(table)
    print(json.dumps(_headline(metrics), indent=2))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from .. import api

    preds = api.predict(args.checkpoint, args.inputs, out=args.out, score_thresh=args.score_thresh,
                        batch_size=args.batch_size, workers=args.workers, device=args.device or "auto",
                        overwrite=args.overwrite)  # fmt: skip
    for pred in preds:
        for path in pred.files:
            print(path)
    for path in preds.run_files:
        print(path)
    print(f"predicted {preds.summary()}")
    return 0
