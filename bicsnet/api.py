"""The library's training, evaluation and prediction calls (what the CLI runs).

Example (the same run as ``bicsnet train --task classification --model bicsnet_48_tiny ...``)::

    import bicsnet

    config = bicsnet.RunConfig(
        model={"name": "bicsnet_48_tiny", "task": "classification", "img_size": 64},
        data={"synth_train": 40, "synth_val": 10, "synth_size": 64},  # no paths: the synthetic set
        train={"epochs": 2, "batch_size": 8, "lr": 0.05, "device": "cpu", "out_dir": "runs/cls"},
    )
    result = bicsnet.train(config)            # writes runs/cls/{config.yaml, model.safetensors, metrics.json, ...}
    metrics = bicsnet.evaluate(result.weights)  # the checkpoint's own validation data
    preds = bicsnet.predict(result.weights, ["photo.jpg"], out="runs/cls/pred")
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .config import RunConfig, load_run_config
from .data.masks import IGNORE_LABEL
from .data.spec import DataSpec, TaskData
from .errors import ConfigError
from .models import create_model, get_entry, load_checkpoint_model, model_meta
from .data.transforms import PAPER_SCALE_RANGE
from .tasks import choose_recipe, get_task, recipe_config
from . import inference

__all__ = ["RunResult", "train", "evaluate", "predict", "resolve_run", "describe_recipe"]


@dataclass
class RunResult:
    """What :func:`train` leaves behind.

    Attributes:
        out_dir: the run directory.
        weights: its ``model.safetensors`` (EMA weights when EMA is on).
        metrics: the final evaluation (the content of ``metrics.json``; empty without validation data).
        config: the resolved configuration (stored as ``config.yaml``).
    """

    out_dir: Path
    weights: Path
    metrics: dict[str, Any]
    config: RunConfig


def _as_config(config: RunConfig | Mapping[str, Any] | str | os.PathLike) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, Mapping):
        return RunConfig.from_dict(config)
    return load_run_config(config)


def resolve_run(config: RunConfig | Mapping[str, Any] | str | os.PathLike) -> tuple[RunConfig, TaskData]:
    """Read the run's data and make every default explicit: ``(resolved config, data)``.

    ``train.amp: auto`` becomes the precision it means on this run's device
    (:func:`~bicsnet.engine.trainer.resolve_amp`); ``train.device`` stays as given.

    Raises:
        ConfigError: a bad model, task, size, scale range or training option (naming it).
        DataError: unreadable or inconsistent data (naming the file).
    """
    cfg = _as_config(config)
    spec = get_task(cfg.model.task)
    entry = get_entry(cfg.model.name)
    choose_recipe(spec.name, cfg.recipe)  # an unknown recipe fails before the data is read
    size = cfg.model.img_size or spec.default_size(entry.input_size)
    if size < 32:
        raise ConfigError(f"img_size {size}: must be at least 32")
    if cfg.data.scale_range is not None:
        lo, hi = cfg.data.scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"scale_range {lo} {hi}: need 0 < LO <= HI")
    if cfg.model.bn_momentum is not None and not 0 < cfg.model.bn_momentum <= 1:
        raise ConfigError(f"bn_momentum {cfg.model.bn_momentum}: must be in (0, 1]")
    _check_weights(cfg.model)
    # Bad training options, device or model options fail before the data is read.
    from .engine.distributed import resolve_device
    from .engine.trainer import resolve_amp

    first = cfg.train_config({})
    device = resolve_device(first.device, option="--device (train.device)")
    resolve_amp(first.amp, device)  # an --amp this device cannot run fails here too
    with torch.device("meta"):
        create_model(entry.name, spec.name, 1 if spec.needs_classes else None, **_model_options(cfg.model, spec, size))
    first_scale = tuple(cfg.data.scale_range or PAPER_SCALE_RANGE)
    data = spec.load_data(cfg.data, size, train=True, scale_range=first_scale)  # type: ignore[arg-type]
    recipe = choose_recipe(spec.name, cfg.recipe, len(data.train))  # type: ignore[arg-type]
    scale = tuple(cfg.data.scale_range or recipe.scale_range)
    if scale != first_scale:  # the recipe's jitter: only small sets get here, and they load fast
        data_log = logging.getLogger("bicsnet.data")
        level = data_log.level
        data_log.setLevel(logging.ERROR)  # the same files again: their report was logged above
        try:
            data = spec.load_data(cfg.data, size, train=True, scale_range=scale)  # type: ignore[arg-type]
        finally:
            data_log.setLevel(level)
    model = dataclasses.replace(
        cfg.model,
        img_size=size,
        options={**{k: v for k, v in recipe.model_options.items() if k in spec.head_options}, **cfg.model.options},
        bn_momentum=cfg.model.bn_momentum if cfg.model.bn_momentum is not None else recipe.bn_momentum,
    )
    train = cfg.train_config(recipe_config(spec.name, len(data.train), recipe.name))  # type: ignore[arg-type]
    train = dataclasses.replace(train, amp=resolve_amp(train.amp, device))  # what runs here: bf16 / fp16 / off
    resolved = RunConfig(model, dataclasses.replace(cfg.data, scale_range=scale), train.to_dict(), recipe=recipe.name)
    return resolved, data


def describe_recipe(config: RunConfig | Mapping[str, Any] | str | os.PathLike, num_train: int, chosen_by: str = "auto") -> str:
    """What a resolved run takes from its recipe, as the lines ``bicsnet train`` prints first.

    ``chosen_by``: the configured choice (``auto`` explains the pick and how to get the paper's).
    """
    cfg = _as_config(config)
    recipe = choose_recipe(cfg.model.task, cfg.recipe, num_train)
    why = ""
    if chosen_by == "auto":
        why = f" ({num_train} training images" + ("; --recipe paper for the paper's)" if recipe.name == "small" else ")")
    t = cfg.train_config({})
    lines = [f"recipe {recipe.name}: {recipe.summary}{why}"]
    parts = [
        f"{t.epochs} epoch{'' if t.epochs == 1 else 's'}", f"lr {t.lr:g} ({t.schedule})"
        + (f" for batch {t.lr_reference_batch}, scaled linearly" if t.lr_reference_batch else ""),
        f"warm-up {t.warmup_epochs:g} epoch{'' if t.warmup_epochs == 1 else 's'}", f"weight decay {t.weight_decay:g}",
        f"EMA {t.ema_decay:g}" if t.ema_decay else "no EMA",
        f"grad clip {t.grad_clip:g}" if t.grad_clip else "no grad clip",
        f"BN momentum {cfg.model.bn_momentum:g}" if cfg.model.bn_momentum is not None else "the model's BN momentum",
        *(f"{k} {v}" for k, v in cfg.model.options.items() if k in recipe.model_options),
    ]
    if cfg.data.scale_range is not None and tuple(cfg.data.scale_range) != PAPER_SCALE_RANGE:
        lo, hi = cfg.data.scale_range  # only where it departs from the paper's (classification ignores it)
        parts.append(f"scale jitter {lo:g}-{hi:g}")
    lines.append("  " + ", ".join(parts))
    return "\n".join(lines)


def train(
    config: RunConfig | Mapping[str, Any] | str | os.PathLike, *, resume: bool | str = False, hooks: Sequence[Any] = ()
) -> RunResult:
    """Train the run ``config`` describes (a :class:`RunConfig`, its dict, or a YAML file).

    Writes into ``train.out_dir``: ``config.yaml`` (resolved), ``log.csv``,
    ``loss_curve.png``, checkpoints, ``model.safetensors``, ``metrics.json``
    and evaluation artifacts. ``resume``: continue from the run's last
    checkpoint (``"auto"``: if there is one). ``hooks``: extra trainer hooks.

    Raises:
        ConfigError, DataError, CheckpointError: bad configuration, data or weights (naming the option or file).
    """
    from .weights import load_backbone_weights, load_weights
    from .engine.seeding import seed_everything
    from .engine.trainer import Trainer

    chosen_by = _as_config(config).recipe
    cfg, data = resolve_run(config)
    task = cfg.model.task
    if os.environ.get("RANK", "0") == "0":  # the recipe, then what the run reads (bicsnet data check has the full report)
        from .data.check import summarize

        print(describe_recipe(cfg, len(data.train), chosen_by), flush=True)  # type: ignore[arg-type]
        print(summarize(data, task).format(brief=True), flush=True)
    train_cfg = cfg.train_config({})
    seed_everything(train_cfg.seed)  # the initial weights follow the seed too (the same on every rank)
    model = create_model(cfg.model.name, task, data.num_classes, **_model_options(cfg.model, get_task(task), cfg.model.img_size))
    report = None
    if cfg.model.weights:  # the whole model, from a file trained elsewhere
        report = load_weights(model, cfg.model.weights, strict=cfg.model.strict_weights)
    elif cfg.model.backbone_weights:  # the backbone alone, from a checkpoint of any task
        report = load_backbone_weights(model, cfg.model.backbone_weights)
    if report is not None and os.environ.get("RANK", "0") == "0":
        print(f"{'weights' if cfg.model.weights else 'backbone_weights'} {report.source}: {report.summary()}", flush=True)
    if cfg.model.bn_momentum is not None:
        _set_bn_momentum(model, cfg.model.bn_momentum)
    meta = model_meta(model, task, int(cfg.model.img_size or 0), data)
    trainer = Trainer(model, task, data.train, data.val, train_cfg, data.collate, meta=meta, resume=resume, hooks=list(hooks))
    out = Path(train_cfg.out_dir)
    if trainer.is_main:
        cfg.save(out / "config.yaml")
    _warn_short_bn(model, trainer)
    metrics = trainer.fit()
    if trainer.is_main:
        _warn_skipped(data)
        _plot_log(out)
    return RunResult(out, out / "model.safetensors", metrics, cfg)


def evaluate(
    checkpoint: str | os.PathLike,
    data: DataSpec | Mapping[str, Any] | None = None,
    *,
    out: str | os.PathLike | None = None,
    batch_size: int = 4,
    workers: int = 2,
    device: str = "auto",
    coco_backend: str | None = None,
) -> dict[str, Any]:
    """Evaluate a weights file (or run directory) on ``data`` (default: the synthetic set it was trained on).

    Writes into ``out`` when given: ``metrics.json``; for detectors also
    ``detections.json``, ``pr_curves.json`` and ``pr_curve_<iou type>.png``;
    for classification and segmentation ``confusion_matrix.png``
    (:func:`bicsnet.metrics.write_eval_plots`). ``coco_backend``: how detectors
    are scored (:data:`bicsnet.metrics.COCO_BACKENDS`; ``None``: pycocotools).

    Raises:
        ConfigError: the data's classes or category ids differ from the model's; an unknown or uninstalled coco_backend.
        CheckpointError, DataError: unreadable weights or data (naming the file).
    """
    from .engine.distributed import resolve_device
    from .engine.trainer import TrainConfig, Trainer, write_eval_outputs
    from .metrics.coco import DEFAULT_COCO_BACKEND, resolve_coco_backend
    from .metrics.report import write_eval_plots

    backend = resolve_coco_backend(coco_backend or DEFAULT_COCO_BACKEND)  # a missing package fails before any work
    dev = resolve_device(device)
    model, meta = load_checkpoint_model(checkpoint, dev)
    spec = get_task(meta["task"])
    if data is None:
        data = DataSpec.from_synthetic_meta(meta.get("synthetic"))
    elif isinstance(data, Mapping):
        data = DataSpec(**data)
    if data.ignore_index is None and meta.get("ignore_index", IGNORE_LABEL) != IGNORE_LABEL:
        data = dataclasses.replace(data, ignore_index=meta["ignore_index"])  # the masks' own unknown value, as trained
    task_data = spec.load_data(data, int(meta.get("img_size", 224)), train=False)
    if task_data.num_classes != meta.get("num_classes"):
        raise ConfigError(f"{checkpoint}: model has {meta.get('num_classes')} classes, the evaluation data {task_data.num_classes}")
    if "cat_ids" in meta and task_data.extra_meta.get("cat_ids") != meta["cat_ids"]:
        raise ConfigError(f"{checkpoint}: category ids {meta['cat_ids']} differ from the data's {task_data.extra_meta.get('cat_ids')}")
    cfg = TrainConfig(batch_size=batch_size, num_workers=workers, device=str(dev), out_dir=str(out or "."), tensorboard=False)
    if spec.adapter is None:
        raise ConfigError(f"{checkpoint}: task {spec.name!r} cannot be evaluated")
    adapter = spec.adapter(num_classes=meta.get("num_classes"), coco_backend=backend)
    trainer = Trainer(model, adapter, None, task_data.val, cfg, task_data.collate, meta=meta)
    result = trainer.evaluate()
    if trainer.is_main:
        _warn_skipped(task_data)
        if out is not None:
            write_eval_outputs(out, result)
            write_eval_plots(out, result.metrics, result.artifacts)
    return result.metrics


# The public ``bicsnet.predict``: files, folders, glob patterns and videos, streamed in batches
# (its description, the files' layout and the errors raised are in its docstring).
predict = inference.predict


def _check_weights(model: Any) -> None:
    """Weights options of a run's ``model`` section that cannot work fail before the data is read.

    Raises:
        ConfigError: both ``weights`` and ``backbone_weights``, a ``strict_weights`` that is not a bool,
            or ``strict_weights`` without ``weights``.
        CheckpointError: a weights file that does not exist (naming it).
    """
    from .weights import weights_path

    if model.weights and model.backbone_weights:
        raise ConfigError("--weights (model.weights) and --backbone-weights (model.backbone_weights): give one; "
                          "--weights initialises the whole model, --backbone-weights only its backbone")  # fmt: skip
    if not isinstance(model.strict_weights, bool):
        raise ConfigError(f"model.strict_weights={model.strict_weights!r}: expected true or false")
    if model.strict_weights and not model.weights:
        raise ConfigError("--strict (model.strict_weights) applies to --weights (model.weights), which is not given")
    for path in (model.weights, model.backbone_weights):
        if path:
            weights_path(path)


def _model_options(model: Any, spec: Any, size: int | None) -> dict[str, Any]:
    """``create_model`` options of a run: the configured ones, and the input size for models that resize themselves."""
    options = dict(model.options)
    if spec.uses_img_size:
        options.setdefault("img_size", size)
    return options


def _warn_skipped(data: TaskData) -> None:
    """Repeat at the end of a run the counts of bad records skipped when the data was loaded."""
    for ds in (data.train, data.val):
        skipped, dropped = getattr(ds, "skipped", None) or [], getattr(ds, "dropped_boxes", None) or []
        if skipped or dropped:
            logging.getLogger("bicsnet.data").warning(
                "%s: skipped %d bad annotation record(s) and dropped %d degenerate box(es), named when it was loaded",
                getattr(ds, "ann_file", "dataset"), len(skipped), len(dropped),
            )


def _set_bn_momentum(model: torch.nn.Module, momentum: float) -> None:
    from torch.nn.modules.batchnorm import _BatchNorm

    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.momentum = momentum


def _warn_short_bn(model: torch.nn.Module, trainer: Any) -> None:
    """Say so when the run is too short for the BN running statistics to forget their initial values."""
    from torch.nn.modules.batchnorm import _BatchNorm

    momenta = [m.momentum for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats and m.momentum]
    if trainer.is_main and momenta and trainer.total_steps:
        left = (1 - min(momenta)) ** trainer.total_steps  # weight of the initial statistics at the end
        if left > 0.05:
            print(
                f"warning: BatchNorm momentum {min(momenta):g} over {trainer.total_steps} steps leaves "
                f"{left:.0%} of the initial running statistics, so evaluation will be poor; train for more steps, "
                f"or pass --bn-momentum {min(1.0, max(0.1, round(3 / trainer.total_steps, 2))):g} to bicsnet train "
                "(model.bn_momentum) for a short run",
                flush=True,
            )


def _plot_log(out: Path) -> None:
    from .viz import plot_loss_curve

    log = out / "log.csv"
    if not log.exists():
        return
    with open(log, newline="") as f:
        rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
    if rows:
        plot_loss_curve(rows, out / "loss_curve.png")
