"""``bicsnet train``, ``bicsnet eval`` and ``bicsnet predict`` for every task."""
from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..models import default_input_size
from .common import add_device_arg, parse_override, resolve_device

__all__ = ["register", "add_data_args", "data_spec", "train_from_args"]

TASK_CHOICES = ["detection", "instance", "segmentation", "classification"]
DEFAULT_SIZES = {"segmentation": 512, "classification": 224}


def add_data_args(p: argparse.ArgumentParser, train: bool = True) -> None:
    """Data flags shared by train and eval; none of them means the synthetic set."""
    g = p.add_argument_group("data (default: the built-in synthetic dataset)")
    if train:
        g.add_argument("--train-ann", help="COCO instances JSON for training (detection/instance)")
        g.add_argument("--train-images", help="training image folder (detection/instance)")
        g.add_argument("--train-list", help="segmentation: another list of the VOC layout, e.g. SBD train_aug.txt")
    g.add_argument("--val-ann", help="COCO instances JSON for evaluation (detection/instance)")
    g.add_argument("--val-images", help="evaluation image folder (detection/instance)")
    g.add_argument("--data", help="segmentation: VOC root; classification: root with train/ and val/ class folders")
    g.add_argument("--synth-dir", help="where to generate the synthetic dataset (default ~/.cache/bicsnet/synthetic)")
    # Unset synthetic flags: eval takes the ones the checkpoint was trained with, else 400/100/256.
    g.add_argument("--synth-train", type=int, help="synthetic training images (default 400)")
    g.add_argument("--synth-val", type=int, help="synthetic validation images (default 100)")
    g.add_argument("--synth-size", type=int, help="synthetic image size, long side (default 256)")


def data_spec(args: argparse.Namespace, synthetic: dict[str, Any] | None = None):
    """The :class:`~bicsnet.recipes.DataSpec` the data flags describe.

    ``synthetic`` (a checkpoint's ``meta["synthetic"]``) fills the synthetic-set
    flags left unset, so ``bicsnet eval`` finds the set the model was trained on.
    """
    from ..recipes import DataSpec

    synthetic = synthetic or {}

    def pick(value: Any, key: str, default: Any) -> Any:
        return value if value is not None else synthetic.get(key, default)

    return DataSpec(
        train_ann=getattr(args, "train_ann", None),
        train_images=getattr(args, "train_images", None),
        val_ann=args.val_ann,
        val_images=args.val_images,
        data=args.data,
        train_list=getattr(args, "train_list", None),
        synth_root=pick(args.synth_dir, "root", None),
        synth_train=pick(args.synth_train, "train", 400),
        synth_val=pick(args.synth_val, "val", 100),
        synth_size=pick(args.synth_size, "size", 256),
        seed=pick(getattr(args, "data_seed", None), "seed", 0),
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a BiCSNet model (any task) with the paper's recipe")
    p.add_argument("--task", default="detection", choices=TASK_CHOICES)
    p.add_argument("--model", default="bicsnet_48", help="registered model name (bicsnet info lists them)")
    add_data_args(p)
    p.add_argument("--img-size", type=int, help="input size (default: Table I's for detection, 512 segmentation, 224 classification)")
    p.add_argument("--scale-range", type=float, nargs=2, default=(0.5, 2.0), metavar=("LO", "HI"), help="scale jitter range")
    p.add_argument("--epochs", type=int, help="default: the paper's (350 detection, 250 classification)")
    p.add_argument("--batch-size", type=int, default=8, help="images per process per step")
    p.add_argument("--lr", type=float, help="learning rate for the global batch (default: the paper's, scaled linearly)")
    p.add_argument("--schedule", choices=["step", "cosine"], help="default: step for detection, cosine otherwise")
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--warmup-max-fraction", type=float, help="cap the warm-up at this fraction of the run (recipe: 0.25)")
    p.add_argument("--activation", choices=["relu", "swish"], help="swish = training strategy B")
    p.add_argument("--drop-path", type=float, help="stochastic depth rate (strategy B)")
    p.add_argument("--norm", choices=["bn", "syncbn", "gn", "frozenbn"], help="backbone norm (BN is made SyncBN under torchrun)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model override, e.g. focal_gamma=2.0")
    p.add_argument(
        "--bn-momentum", type=float, metavar="M",
        help="PyTorch momentum of every BatchNorm (default: the model's; BiCSNet 0.01 = the paper's TF 0.99). "
        "Short runs need ~0.1, or the running statistics used in evaluation stay near their initial values",
    )  # fmt: skip
    p.add_argument("--backbone-weights", help="initialise the backbone from a checkpoint of any task")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    p.add_argument("--ema", type=float, default=None, metavar="DECAY", help="keep an EMA of the weights, e.g. 0.9998")
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--nan-policy", choices=["stop", "skip"], default="stop")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--ckpt-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--eval-every", type=int, default=0, help="epochs between evaluations (0: at the end)")
    p.add_argument("--log-every", type=int, default=20)
    add_device_arg(p)
    p.add_argument("--out", default="runs/train", help="run directory")
    p.add_argument(
        "--resume", nargs="?", const=True, default=False, choices=[True, "auto"], type=_resume_mode, metavar="auto",
        help="continue the run in --out from its last checkpoint; '--resume auto': resume if there is one, else "
        "start afresh (for torchrun --max-restarts and requeued jobs)",
    )  # fmt: skip
    p.set_defaults(func=run_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint: metrics.json (+ detections.json)")
    p.add_argument("--checkpoint", required=True, help="model.safetensors (or its run directory)")
    add_data_args(p, train=False)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    add_device_arg(p)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace existing results in --out")
    p.set_defaults(func=run_eval)

    p = sub.add_parser("predict", help="run a checkpoint on images: JSON + drawn PNG per image")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--score-thresh", type=float, default=0.3)
    add_device_arg(p)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_predict)


def _resume_mode(text: str) -> str:
    if text != "auto":
        raise argparse.ArgumentTypeError(f"expected 'auto' or nothing, got {text!r}")
    return text


def _img_size(args: argparse.Namespace) -> int:
    if args.img_size:
        if args.img_size < 32:
            raise ConfigError(f"--img-size {args.img_size}: must be at least 32")
        return args.img_size
    return DEFAULT_SIZES.get(args.task) or default_input_size(args.model)


def train_config(args: argparse.Namespace, device: str, num_train: int = 0):
    """TrainConfig from the recipe of ``args.task`` and the flags that override it.

    ``num_train`` (training images) turns recipes given in iterations into epochs.
    """
    from ..engine.trainer import TrainConfig
    from ..recipes import recipe_config

    r = recipe_config(args.task, num_train)
    if args.lr is not None:
        r["lr"], r["lr_reference_batch"] = args.lr, None
    for flag, key in [
        ("epochs", "epochs"), ("schedule", "schedule"), ("warmup_epochs", "warmup_epochs"), ("warmup_steps", "warmup_steps"),
        ("warmup_max_fraction", "warmup_max_fraction"),
    ]:  # fmt: skip
        if getattr(args, flag) is not None:
            r[key] = getattr(args, flag)
    if args.warmup_epochs is not None and args.warmup_steps is None:
        r.pop("warmup_steps", None)
    return TrainConfig(
        **r,
        batch_size=args.batch_size,
        amp=args.amp,
        ema_decay=args.ema,
        grad_clip=args.grad_clip,
        label_smoothing=args.label_smoothing,
        num_workers=args.workers,
        seed=args.seed,
        deterministic=args.deterministic,
        nan_policy=args.nan_policy,
        max_steps=args.max_steps,
        ckpt_every_steps=args.ckpt_every,
        eval_every_epochs=args.eval_every,
        log_every=args.log_every,
        device=device,
        out_dir=args.out,
    )


def train_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Build data, model and trainer from parsed ``train`` flags and run it."""
    from ..engine.checkpoint import load_backbone_weights
    from ..engine.seeding import seed_everything
    from ..engine.trainer import Trainer
    from ..models import create_model
    from ..recipes import build_task_data, model_meta

    device = resolve_device(args.device)
    size = _img_size(args)
    lo, hi = args.scale_range
    if not 0 < lo <= hi:
        raise ConfigError(f"--scale-range {lo} {hi}: need 0 < LO <= HI")
    data = build_task_data(args.task, data_spec(args), size, train=True, scale_range=(lo, hi))
    overrides = dict(parse_override(s) for s in args.set)
    for flag, key in [("activation", "activation"), ("drop_path", "drop_path_rate"), ("norm", "norm")]:
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    if args.task in ("detection", "instance"):
        overrides.setdefault("img_size", size)
    seed_everything(args.seed)  # the initial weights follow --seed too (the same on every rank)
    model = create_model(args.model, args.task, data.num_classes, **overrides)
    if args.backbone_weights:
        report = load_backbone_weights(model, args.backbone_weights)
        print(f"--backbone-weights: {report.summary()}")
    if args.bn_momentum is not None:
        _set_bn_momentum(model, args.bn_momentum)
    trainer = Trainer(
        model, args.task, data.train, data.val, train_config(args, str(device), len(data.train)), data.collate,
        meta=model_meta(model, args.task, size, data), resume=args.resume,
    )  # fmt: skip
    _warn_short_bn(model, trainer)
    metrics = trainer.fit()
    if trainer.is_main:
        _warn_skipped(data)
    if trainer.is_main:
        _plot_log(Path(args.out))
        print(json.dumps({"out": args.out, "metrics": _headline(metrics)}, indent=2))
    return metrics


def _warn_skipped(data: Any) -> None:
    """Repeat at the end of a run the counts of bad records skipped when the data was loaded."""
    for ds in (data.train, data.val):
        skipped, dropped = getattr(ds, "skipped", None) or [], getattr(ds, "dropped_boxes", None) or []
        if skipped or dropped:
            logging.getLogger("bicsnet.data").warning(
                "%s: skipped %d bad annotation record(s) and dropped %d degenerate box(es), named when it was loaded",
                getattr(ds, "ann_file", "dataset"), len(skipped), len(dropped),
            )


def _set_bn_momentum(model: Any, momentum: float) -> None:
    if not 0 < momentum <= 1:
        raise ConfigError(f"--bn-momentum {momentum}: must be in (0, 1]")
    from torch.nn.modules.batchnorm import _BatchNorm

    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.momentum = momentum


def _warn_short_bn(model: Any, trainer: Any) -> None:
    """Say so when the run is too short for the BN running statistics to forget their initial values."""
    from torch.nn.modules.batchnorm import _BatchNorm

    momenta = [m.momentum for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats and m.momentum]
    if trainer.is_main and momenta and trainer.total_steps:
        left = (1 - min(momenta)) ** trainer.total_steps  # weight of the initial statistics at the end
        if left > 0.05:
            print(
                f"warning: BatchNorm momentum {min(momenta):g} over {trainer.total_steps} steps leaves "
                f"{left:.0%} of the initial running statistics, so evaluation will be poor; "
                f"pass --bn-momentum {min(1.0, max(0.1, round(3 / trainer.total_steps, 2))):g} for a short run",
                flush=True,
            )


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "per_class_iou"}


def _plot_log(out: Path) -> None:
    from ..viz import plot_loss_curve

    log = out / "log.csv"
    if not log.exists():
        return
    with open(log, newline="") as f:
        rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
    if rows:
        plot_loss_curve(rows, out / "loss_curve.png")


def run_train(args: argparse.Namespace) -> int:
    train_from_args(args)
    return 0


def _check_out(out: Path, names: list[str], overwrite: bool) -> None:
    existing = [n for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise ConfigError(f"--out {out}: {', '.join(existing)} already exist(s); pass --overwrite to replace")


def evaluate_checkpoint(checkpoint: str, args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the data flags in ``args``; writes into ``args.out``."""
    from ..engine.trainer import TrainConfig, Trainer, write_eval_outputs
    from ..recipes import build_task_data, load_checkpoint_model

    device = resolve_device(args.device)
    model, meta = load_checkpoint_model(checkpoint, device)
    task = meta["task"]
    data = build_task_data(task, data_spec(args, meta.get("synthetic")), int(meta.get("img_size", 224)), train=False)
    if data.num_classes != meta.get("num_classes"):
        raise ConfigError(
            f"--checkpoint {checkpoint}: model has {meta.get('num_classes')} classes, the evaluation data {data.num_classes}"
        )
    if "cat_ids" in meta and data.extra_meta.get("cat_ids") != meta["cat_ids"]:
        raise ConfigError(f"--checkpoint {checkpoint}: category ids {meta['cat_ids']} differ from the data's {data.extra_meta.get('cat_ids')}")
    cfg = TrainConfig(batch_size=args.batch_size, num_workers=args.workers, device=str(device), out_dir=args.out, tensorboard=False)
    trainer = Trainer(model, task, None, data.val, cfg, data.collate, meta=meta)
    result = trainer.evaluate()
    if trainer.is_main:
        _warn_skipped(data)
    if trainer.is_main:
        write_eval_outputs(args.out, result)
    return result.metrics


def run_eval(args: argparse.Namespace) -> int:
    out = Path(args.out)
    _check_out(out, ["metrics.json", "detections.json"], args.overwrite)
    metrics = evaluate_checkpoint(args.checkpoint, args)
    print(json.dumps(_headline(metrics), indent=2))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..predict import predict_images

    out = Path(args.out)
    stems = [Path(p).stem for p in args.images]
    _check_out(out, [f"{s}{ext}" for s in stems for ext in (".json", ".png", "_mask.png")], args.overwrite)
    written = predict_images(args.checkpoint, args.images, out, resolve_device(args.device), args.score_thresh)
    for w in written:
        print(w)
    return 0
