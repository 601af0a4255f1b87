"""The training engine shared by every task.

Typical use (what ``bicsnet train`` does)::

    config = TrainConfig(epochs=12, batch_size=8, lr=0.08, out_dir="runs/det")
    trainer = Trainer(model, "detection", train_set, val_set, config,
                      collate_fn=detection_collate, meta=model_meta, resume=args.resume)
    metrics = trainer.fit()

Run it under ``torchrun --nproc_per_node N`` for data-parallel training.

Optimisation: SGD with momentum; weight decay applies only to weights with
two or more dimensions (conv and linear kernels) - biases and normalisation
parameters (every 1-D parameter) get none.  The learning rate follows
:mod:`bicsnet.engine.schedule`, stepped per iteration.

Learning rate and batch size: ``lr`` is the rate for the *global* batch
``batch_size x accumulate x world_size``.  By the linear scaling rule (Goyal et
al., 2017) the rate should grow in proportion to the global batch: set
``lr_reference_batch`` to the global batch ``lr`` was tuned for and the
trainer uses ``lr x global_batch / lr_reference_batch``.

Gradient accumulation (``accumulate`` N): a step runs N batches forward and
backward, each loss divided by N (under DDP the gradients are all-reduced only
in the last backward, the others in ``no_sync()``), then unscales (fp16),
clips, and steps the optimiser once.  Everything counted in steps (the LR
schedule, warm-up, ``max_steps``, logging, checkpoints, ``StepResult``) counts
optimiser steps.  An epoch has ``samples_per_process // batch_size // N`` steps:
the last batches that do not make a whole group are left out, so every step
takes exactly the samples one batch of ``batch_size x N`` would.

Mixed precision (``amp``): see :func:`resolve_amp`.  bf16 autocasts the
forward pass and the losses; fp16 also scales the loss with
:class:`torch.amp.GradScaler`, whose state goes into every checkpoint.

Reproducibility and resume: see :mod:`bicsnet.engine.seeding`.  A resumed run
continues from the newest complete checkpoint in ``OUT/checkpoints`` with the
same data order, RNG states, optimiser, scheduler, scaler and EMA; on CPU with
``deterministic=True`` and the same configuration its final weights equal an
uninterrupted run's bit for bit.

Outputs in ``OUT`` (rank 0 only): ``config.json``, ``log.csv`` (one row every
``log_every`` steps), ``eval_log.jsonl`` (periodic evaluations),
``checkpoints/`` (see :mod:`bicsnet.engine.checkpoint`), and at the end
``model.safetensors`` (EMA weights when EMA is on), ``metrics.json`` and any
evaluation artifacts such as ``detections.json``; with ``best_metric``,
``model_best.safetensors`` and ``best.json``.

The loop itself only runs optimisation steps; logging, the LR schedule,
evaluation, checkpoints, early stopping and best-model tracking are hooks
(:mod:`bicsnet.engine.hooks`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..dataclass_checks import reject_unknown_fields
from ..errors import BicsnetError, CheckpointError, ConfigError
from ..io import atomic_write_json
from ..metrics.coco import COCO_BACKENDS, DEFAULT_COCO_BACKEND, resolve_coco_backend
from .checkpoint import RunCheckpointer, load_model, load_state_into, load_training_state
from .distributed import (
    ResumableDistributedSampler,
    parse_device,
    all_gather_objects,
    barrier,
    broadcast_object,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    unwrap_model,
    wrap_ddp,
)
from .ema import ModelEma
from .host_memory import keep_freed_memory
from .hooks import (
    METRIC_MODES,
    BestCheckpoint,
    EarlyStopping,
    HookBase,
    LRSchedule,
    PeriodicCheckpoint,
    PeriodicEval,
    PeriodicLogger,
)
from .runlog import CsvLog, JsonlLog, TensorBoardLog
from .schedule import PAPER_STEP_MILESTONES, SCHEDULES, build_scheduler
from .seeding import (
    EpochIndexSampler,
    SeededDataset,
    capture_rng_state,
    configure_determinism,
    preserve_rng,
    restore_rng_state,
    seed_everything,
)
from .adapters import EvalResult, Task

__all__ = [
    "TrainConfig", "Trainer", "StepResult", "parameter_groups", "evaluate_model", "evaluation_loader",
    "write_eval_outputs", "cpu_bf16_units",
]  # fmt: skip

NAN_POLICIES = ("stop", "skip")
#: ``TrainConfig.amp``: off, auto (see :func:`resolve_amp`), bf16 (autocast) or fp16 (autocast + GradScaler).
AMP_MODES = ("off", "auto", "bf16", "fp16")
_AMP_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Options whose change on resume alters the trajectory (others are operational).
_TRAJECTORY_KEYS = (
    "epochs", "batch_size", "accumulate", "lr", "lr_reference_batch", "momentum", "weight_decay", "warmup_epochs",
    "warmup_steps", "warmup_max_fraction", "schedule", "step_milestones", "step_gamma", "min_lr_ratio", "grad_clip", "amp",
    "ema_decay", "seed", "max_steps", "label_smoothing", "early_stopping_metric",
    "early_stopping_patience", "early_stopping_min_delta",
)  # fmt: skip


@dataclass
class TrainConfig:
    """Training options; :meth:`to_dict` / :meth:`from_dict` round-trip losslessly.

    Attributes:
        epochs: passes over the training set.
        batch_size: images per process per forward pass (a micro-batch when ``accumulate`` > 1).
        accumulate: gradient accumulation: the optimiser steps once every
            ``accumulate`` batches, so a step sees ``batch_size * accumulate *
            world_size`` images (the *global batch*).  Steps, not batches, are
            what ``max_steps``, warm-up, the schedule, logging and checkpoints count.
        lr: base learning rate for the global batch (see ``lr_reference_batch``).
        lr_reference_batch: if set, the rate actually used is
            ``lr * batch_size * accumulate * world_size / lr_reference_batch`` (linear scaling rule).
        momentum: SGD momentum.
        weight_decay: L2 penalty on conv/linear weights (not on biases or norms).
        warmup_epochs: linear warm-up length in epochs (may be fractional).
        warmup_steps: warm-up length in steps; overrides ``warmup_epochs``.
        warmup_max_fraction: the warm-up never takes more than this fraction of
            the run's steps (short runs of a recipe made for long ones would
            otherwise be all warm-up and never decay); 1.0 only caps at the run.
        schedule: ``"step"`` (paper: x0.1, x0.01 at ``step_milestones``) or ``"cosine"``.
        step_milestones: fractions of training where the step schedule decays.
        step_gamma: decay factor of the step schedule.
        min_lr_ratio: final learning-rate fraction of the cosine schedule.
        grad_clip: max global gradient norm, or ``None`` for no clipping.
        amp: mixed precision: ``"off"``, ``"bf16"`` (autocast to bfloat16),
            ``"fp16"`` (autocast to float16 with a gradient scaler) or ``"auto"``
            (:func:`resolve_amp`: bf16 on the CPU and on GPUs with native
            bfloat16, else fp16).  ``True`` / ``False`` (and an old
            configuration's ``amp_dtype: float16``) are read as ``"auto"`` /
            ``"off"`` (``"fp16"``); see :meth:`upgrade_legacy`.
        channels_last: train (and evaluate) with 4-d weights and feature maps in
            channels-last (NHWC) memory format, as timm's ``--channels-last``: the
            same function, rounded differently; faster convolutions on CPUs
            (oneDNN) and on GPUs with tensor cores (``benchmarks/demo.md``).
            Checkpoints and ``model.safetensors`` are stored contiguous as usual,
            so a run trained either way loads into the other.
        keep_freed_memory: on the CPU, make glibc's ``malloc`` keep freed memory
            for reuse (:func:`bicsnet.engine.host_memory.keep_freed_memory`), so each
            step's large feature maps are not page-faulted and zero-filled again;
            process-wide, for the rest of the process. No effect on a GPU or off glibc.
        ema_decay: EMA decay of the weights (e.g. 0.9998) or ``None`` for no EMA.
        log_every: steps between log rows / console lines.
        ckpt_every_steps: steps between checkpoints (0: only at epoch ends).
        eval_every_epochs: epochs between evaluations (0: only at the end).
        seed: seed of weights-independent randomness (data order, augmentation, dropout).
        deterministic: deterministic kernels (slower on CUDA).
        nan_policy: on a non-finite loss, ``"stop"`` (raise, keeping the last
            checkpoint) or ``"skip"`` (drop the step and count it).
        num_workers: data-loading worker processes per training process.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:K"`` or ``"mps"``
            (:func:`~bicsnet.engine.distributed.resolve_device`).
        out_dir: run directory.
        max_steps: hard cap on the number of steps (the schedule then spans it).
        label_smoothing: classification label smoothing.
        coco_backend: how detection / instance evaluations are scored
            (:data:`~bicsnet.metrics.coco.COCO_BACKENDS`: pycocotools, what papers
            report, or faster-coco-eval, the same numbers faster); one not installed is a ConfigError.
        tensorboard: also log to ``OUT/tb`` if TensorBoard is installed.
        find_unused_parameters: DDP option for models with branches unused in some steps.
        early_stopping_metric: stop when this evaluation metric (a dotted path
            such as ``"bbox.AP50"``, ``"mIoU"`` or ``"top1"``) has not improved for
            ``early_stopping_patience`` evaluations (``None``: never stop early).
        early_stopping_patience: evaluations without improvement before stopping.
        early_stopping_min_delta: an improvement must exceed this.
        best_metric: keep the weights of the best evaluation by this metric in
            ``OUT/model_best.safetensors`` (``None``: off).
        metric_mode: ``"max"`` or ``"min"``: which way the two metrics above improve.
    """

    epochs: int = 350
    batch_size: int = 8
    accumulate: int = 1
    lr: float = 0.08
    lr_reference_batch: int | None = None
    momentum: float = 0.9
    weight_decay: float = 4e-5
    warmup_epochs: float = 1.0
    warmup_steps: int | None = None
    warmup_max_fraction: float = 1.0
    schedule: str = "step"
    step_milestones: tuple[float, ...] = PAPER_STEP_MILESTONES
    step_gamma: float = 0.1
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None
    amp: str = "off"
    channels_last: bool = False
    keep_freed_memory: bool = True
    ema_decay: float | None = None
    log_every: int = 20
    ckpt_every_steps: int = 500
    eval_every_epochs: int = 0
    seed: int = 0
    deterministic: bool = False
    nan_policy: str = "stop"
    num_workers: int = 2
    device: str = "auto"
    out_dir: str = "runs/train"
    max_steps: int | None = None
    label_smoothing: float = 0.0
    coco_backend: str = DEFAULT_COCO_BACKEND
    tensorboard: bool = True
    find_unused_parameters: bool = False
    early_stopping_metric: str | None = None
    early_stopping_patience: int = 5
    early_stopping_min_delta: float = 0.0
    best_metric: str | None = None
    metric_mode: str = "max"

    def __post_init__(self) -> None:
        if isinstance(self.amp, bool) or self.amp is None:  # the boolean of earlier versions
            self.amp = "auto" if self.amp else "off"
        self._check_types()
        parse_device(self.device, option="training option device (--device)")
        checks = [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("accumulate", self.accumulate >= 1, "must be >= 1"),
            ("lr", self.lr > 0, "must be > 0"),
            ("lr_reference_batch", self.lr_reference_batch is None or self.lr_reference_batch >= 1, "must be >= 1"),
            ("momentum", 0 <= self.momentum < 1, "must be in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("warmup_epochs", self.warmup_epochs >= 0, "must be >= 0"),
            ("warmup_steps", self.warmup_steps is None or self.warmup_steps >= 0, "must be >= 0"),
            ("warmup_max_fraction", 0 <= self.warmup_max_fraction <= 1, "must be in [0, 1]"),
            ("schedule", self.schedule in SCHEDULES, f"must be one of {', '.join(SCHEDULES)}"),
            (
                "step_milestones",
                list(self.step_milestones) == sorted(self.step_milestones)
                and all(0 <= m <= 1 for m in self.step_milestones),
                "must be increasing fractions in [0, 1]",
            ),
            ("step_gamma", self.step_gamma > 0, "must be > 0"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "must be in [0, 1]"),
            ("grad_clip", self.grad_clip is None or self.grad_clip > 0, "must be > 0 (or None)"),
            ("amp", self.amp in AMP_MODES, f"must be one of {', '.join(AMP_MODES)}"),
            ("ema_decay", self.ema_decay is None or 0 < self.ema_decay < 1, "must be in (0, 1) (or None)"),
            ("log_every", self.log_every >= 1, "must be >= 1"),
            ("ckpt_every_steps", self.ckpt_every_steps >= 0, "must be >= 0"),
            ("eval_every_epochs", self.eval_every_epochs >= 0, "must be >= 0"),
            ("nan_policy", self.nan_policy in NAN_POLICIES, f"must be one of {', '.join(NAN_POLICIES)}"),
            ("num_workers", self.num_workers >= 0, "must be >= 0"),
            ("max_steps", self.max_steps is None or self.max_steps >= 1, "must be >= 1 (or None)"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "must be in [0, 1)"),
            ("coco_backend", self.coco_backend in COCO_BACKENDS, f"must be one of {', '.join(COCO_BACKENDS)}"),
            ("early_stopping_patience", self.early_stopping_patience >= 1, "must be >= 1"),
            ("early_stopping_min_delta", self.early_stopping_min_delta >= 0, "must be >= 0"),
            ("metric_mode", self.metric_mode in METRIC_MODES, f"must be one of {', '.join(METRIC_MODES)}"),
        ]
        checks += [
            (name, getattr(self, name) is None or self.eval_every_epochs >= 1,
             "needs evaluations during training: eval_every_epochs must be >= 1 (it is 0)")
            for name in ("early_stopping_metric", "best_metric")
        ]  # fmt: skip
        for name, ok, why in checks:
            if not ok:
                raise ConfigError(f"training option {name}={getattr(self, name)!r}: {why}")
        resolve_coco_backend(self.coco_backend)  # one not installed fails here, before any data is read

    def _check_types(self) -> None:
        """Refuse wrongly typed values (e.g. from a JSON file) with :class:`ConfigError`; ints become floats."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            args = typing.get_args(hint)
            optional = type(None) in args
            base = next((a for a in args if a is not type(None)), hint) if optional else hint
            if value is None and optional:
                continue
            if f.name == "out_dir" and isinstance(value, os.PathLike):
                value = os.fspath(value)
            origin = typing.get_origin(base)
            if origin is tuple:
                if isinstance(value, (list, tuple)) and all(_is_number(v) for v in value):
                    setattr(self, f.name, tuple(float(v) for v in value))
                    continue
            elif base is float and _is_number(value):
                setattr(self, f.name, float(value))
                continue
            elif base is int and isinstance(value, int) and not isinstance(value, bool):
                continue
            elif base in (bool, str) and isinstance(value, base):
                setattr(self, f.name, value)
                continue
            want = getattr(base, "__name__", str(base)) + (" or None" if optional else "")
            raise ConfigError(f"training option {f.name}={value!r}: expected {want}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["step_milestones"] = list(self.step_milestones)
        return out

    @staticmethod
    def upgrade_legacy(data: Mapping[str, Any]) -> dict[str, Any]:
        """Training options written by earlier versions, in today's terms (a new dict).

        Before ``amp`` took a precision it was a boolean plus ``amp_dtype``
        (``"bfloat16"`` by default, which every resolved ``config.yaml`` spelled
        out): ``amp: true`` becomes ``"auto"`` (``"fp16"`` with
        ``amp_dtype: float16``), ``amp: false`` ``"off"``; ``amp_dtype`` goes.
        """
        values = dict(data)
        dtype = values.pop("amp_dtype", None)
        amp = values.get("amp")
        if isinstance(amp, bool):
            values["amp"] = ("fp16" if dtype == "float16" else "auto") if amp else "off"
        return values

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict` (earlier versions' keys read by :meth:`upgrade_legacy`).

        Raises:
            ConfigError: an unknown key or a bad value, naming it.
        """
        data = cls.upgrade_legacy(data)
        reject_unknown_fields(cls, data, "training option")
        values = dict(data)
        if "step_milestones" in values:
            values["step_milestones"] = tuple(values["step_milestones"])
        return cls(**values)


def resolve_amp(amp: str, device: torch.device) -> str:
    """The precision ``amp`` means on ``device``: ``"off"``, ``"bf16"`` or ``"fp16"``.

    ``auto`` (what a bare ``--amp`` and an old ``amp: true`` mean) is bf16 on
    the CPU (PyTorch autocasts convolutions and matrix products to bfloat16
    there) and on GPUs with native bfloat16 (compute capability 8.0 and up:
    A100, H100, RTX 30xx and later), and fp16 on GPUs without it (T4, V100:
    ``torch.cuda.is_bf16_supported(including_emulation=False)`` is false),
    where bfloat16 would be emulated and slow.  bf16 needs no gradient scaler
    (its exponent range is float32's); fp16 runs with one.  fp16 on the CPU is
    allowed (the trainer warns: it is usually slower than float32 there).

    Raises:
        ConfigError: mixed precision on MPS (not supported by this trainer), or
            ``bf16`` on a GPU that cannot run bfloat16 at all.
    """
    if amp not in AMP_MODES:
        raise ConfigError(f"--amp {amp!r}: must be one of {', '.join(AMP_MODES)}")
    if amp == "off":
        return amp
    if device.type == "mps":
        raise ConfigError(
            f"--amp {amp}: mixed precision on mps is not supported here; train in float32 (no --amp) or on cuda"
        )
    if device.type != "cuda":
        return "bf16" if amp == "auto" else amp
    if amp == "auto":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch: no emulation argument, and it means native support
            native = torch.cuda.is_bf16_supported()
        return "bf16" if native else "fp16"
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--amp bf16: this GPU ({device}) cannot run bfloat16; use --amp fp16")
    return amp


#: /proc/cpuinfo flags of CPU matrix / dot-product units for bfloat16: Intel AMX (Sapphire Rapids and
#: later) and AVX-512 BF16 (Cooper Lake, AMD Zen 4 and later). oneDNN runs bf16 convolutions on them.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_units(cpuinfo: str | None = None) -> list[str]:
    """The bfloat16 units of this CPU named in :data:`CPU_BF16_FLAGS` (empty: none, or not Linux).

    ``cpuinfo``: the text of ``/proc/cpuinfo`` (read when ``None``; an
    unreadable file counts as none). Without these units PyTorch emulates
    bfloat16 on the CPU and autocast is slower than float32, so callers
    choose bf16 only when this list is non-empty (``bicsnet demo`` does).
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return [flag for flag in CPU_BF16_FLAGS if flag in flags]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two SGD groups: decayed weights (ndim >= 2) and undecayed biases / norm parameters (ndim <= 1)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _adapter(task: str, num_classes: int | None = None, label_smoothing: float = 0.0, coco_backend: str | None = None) -> Task:
    """The engine adapter of a task named in the task table (:mod:`bicsnet.tasks`)."""
    from ..tasks import get_task  # the table sits above the engine

    spec = get_task(task)
    if spec.adapter is None:
        raise ConfigError(f"task {task!r} cannot be trained or evaluated")
    return spec.adapter(num_classes=num_classes, label_smoothing=label_smoothing, coco_backend=coco_backend)


@dataclass
class StepResult:
    """What one optimisation step did, for the hooks (``Trainer.step_result``)."""

    lr: float  # the learning rate the step used
    terms: dict[str, float] | None  # loss terms, None if the step was skipped (nan_policy="skip")
    images: int  # images in the global batch


class Trainer:
    """Train and evaluate a model for one task, with checkpoints and exact resume.

    Args:
        model: the model, freshly built (its weights are the starting point
            unless ``resume``).  It is moved to the device; under ``torchrun``
            its batch norms are synchronised and it is wrapped in DDP.
        task: a :class:`~bicsnet.engine.tasks.Task` or one of
            ``detection``, ``instance``, ``classification``, ``segmentation``.
        train_dataset: map-style dataset of training samples.
        val_dataset: evaluation dataset or ``None``.  Detection needs ``.coco``
            and ``.cat_ids``.
        config: :class:`TrainConfig`.
        collate_fn: batch collation (``None``: PyTorch's default).
        meta: JSON-serialisable model description stored in every weights file
            (name, task, num_classes, overrides, img_size, class_names, cat_ids...).
        resume: continue from ``OUT/checkpoints`` (error if there is nothing);
            ``"auto"``: resume if there is a checkpoint, else start afresh (for
            jobs restarted with the same command, e.g. ``torchrun --max-restarts``).
            Without it an existing checkpoint, ``model.safetensors`` or
            ``metrics.json`` in ``OUT`` is an error, so a run is never
            overwritten by accident (logs of a run that died before its first
            checkpoint are replaced).
        hooks: extra :class:`~bicsnet.engine.hooks.HookBase` hooks, called after
            the default ones (built from ``config``, see :mod:`bicsnet.engine.hooks`).

    Attributes read by hooks: ``step``, ``total_steps``, ``steps_per_epoch``,
    ``step_result`` (the last :class:`StepResult`), ``eval_result`` /
    ``eval_step`` (the newest evaluation and its step), ``saved_step`` (the step
    of the newest checkpoint), ``stop_requested`` (set it to end training).
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task | str,
        train_dataset: Dataset | None,
        val_dataset: Dataset | None,
        config: TrainConfig,
        collate_fn: Callable | None = None,
        meta: Mapping[str, Any] | None = None,
        resume: bool | str = False,
        hooks: Sequence[HookBase] = (),
    ) -> None:
        self.meta = dict(meta or {})
        try:  # fail now rather than at the first checkpoint, hours later
            json.dumps(self.meta)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"Trainer meta must be JSON-serialisable plain data: {exc}") from None
        self.device = init_distributed(config.device, option="--device (train.device)")
        # The precision actually used, recorded as such in config.json and the checkpoints.
        self.config = config = dataclasses.replace(config, amp=resolve_amp(config.amp, self.device))
        self.rank, self.world_size = get_rank(), get_world_size()
        self.is_main = self.rank == 0
        self.out_dir = Path(config.out_dir)
        self.task = task if isinstance(task, Task) else _adapter(
            task, num_classes=self.meta.get("num_classes"), label_smoothing=config.label_smoothing,
            coco_backend=config.coco_backend,
        )  # fmt: skip
        self.train_dataset, self.val_dataset, self.collate_fn = train_dataset, val_dataset, collate_fn

        configure_determinism(config.deterministic)
        seed_everything(config.seed + self.rank)

        if config.keep_freed_memory and self.device.type == "cpu":
            keep_freed_memory()
        model = model.to(self.device)
        if config.channels_last:  # before DDP and the EMA copy, so both share the layout
            model = model.to(memory_format=torch.channels_last)
        self.ddp_model = wrap_ddp(model, self.device, config.find_unused_parameters)
        self.model = unwrap_model(self.ddp_model)
        global_batch = config.batch_size * config.accumulate * self.world_size
        self.lr = config.lr * (global_batch / config.lr_reference_batch if config.lr_reference_batch else 1.0)
        self.optimizer = torch.optim.SGD(
            parameter_groups(self.model, config.weight_decay), lr=self.lr, momentum=config.momentum
        )

        self.use_amp = config.amp != "off"
        self.amp_dtype = _AMP_TORCH_DTYPES.get(config.amp, torch.float32)
        # fp16's narrow exponent range needs loss scaling; bf16 has float32's range and needs none.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        if config.amp == "fp16" and self.device.type == "cpu":
            self.log("warning: --amp fp16 on the CPU: float16 is usually slower than float32 there; --amp bf16 is the CPU's")
        self.ema = ModelEma(self.model, config.ema_decay) if config.ema_decay else None

        self.step = 0
        self.skipped_steps = 0
        self.elapsed = 0.0  # training seconds before this process (resume)
        self.steps_per_epoch = 0
        self.total_steps = 0
        self.scheduler = None
        self.train_sampler: ResumableDistributedSampler | None = None
        self.train_loader: DataLoader | None = None
        if train_dataset is not None:
            self._build_training(train_dataset)

        self.checkpointer = RunCheckpointer(self.out_dir / "checkpoints")
        self.last_checkpoint: Path | None = None
        self.saved_step = -1  # step of the newest checkpoint on disk
        self._start_time = time.perf_counter()
        self.stop_requested = False
        self.step_result: StepResult | None = None
        self.eval_result: EvalResult | None = None
        self.eval_step = -1
        self.progress_bar: tqdm | None = None
        self.hooks: list[HookBase] = self._default_hooks() + list(hooks)
        self.csv_log = CsvLog(self.out_dir / "log.csv")
        self.eval_log = JsonlLog(self.out_dir / "eval_log.jsonl")
        if resume == "auto":
            # Resume when there is a checkpoint, else start afresh: what a job restarted
            # by `torchrun --max-restarts` or a scheduler needs (same command every time).
            resume = bool(broadcast_object(self.checkpointer.latest() is not None if self.is_main else None))
        elif resume not in (True, False):
            raise ConfigError(f"resume={resume!r}: expected True, False or 'auto'")
        if resume:
            self._resume()
        elif train_dataset is not None:
            problem = None
            if self.is_main:
                existing = self.checkpointer.latest()
                finished = [n for n in ("model.safetensors", "metrics.json") if (self.out_dir / n).exists()]
                if existing is not None:
                    problem = (
                        f"{self.checkpointer.directory}: already holds a checkpoint (step {existing.step}); "
                        "resume it or choose another output directory"
                    )
                elif finished:
                    problem = (
                        f"{self.out_dir}: already holds the results of a run ({', '.join(finished)}); "
                        "choose another output directory or remove them"
                    )
                else:
                    self.csv_log.reset()
                    self.eval_log.reset()
            problem = broadcast_object(problem)  # every rank stops, or none does
            if problem:
                raise ConfigError(problem)
        self.tb = TensorBoardLog(
            self.out_dir / "tb", enabled=config.tensorboard and self.is_main and train_dataset is not None,
            purge_step=self.step + 1 if resume else None,
        )  # fmt: skip
        if self.tb.status:  # set on the main process of a training run only
            self.log(self.tb.status)

    # ------------------------------------------------------------------ setup
    def _build_training(self, dataset: Dataset) -> None:
        cfg = self.config
        self.train_sampler = ResumableDistributedSampler(len(dataset), shuffle=True, seed=cfg.seed)  # type: ignore[arg-type]
        # An epoch is as many whole steps as fit: the batches of a last, incomplete
        # accumulation group are left out, as drop_last leaves out a last, short batch.
        # Either way a step takes the same images as one batch of batch_size x accumulate.
        self.steps_per_epoch = self.train_sampler.num_samples // cfg.batch_size // cfg.accumulate
        if self.steps_per_epoch == 0:
            per_step = f"batch_size={cfg.batch_size}" + (f" x accumulate={cfg.accumulate}" if cfg.accumulate > 1 else "")
            raise ConfigError(
                f"{per_step} is larger than the {self.train_sampler.num_samples} training "
                f"images per process (dataset of {len(dataset)} on {self.world_size} process(es))"  # type: ignore[arg-type]
            )
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_epochs * self.steps_per_epoch)
        self.warmup_steps = min(warmup, int(cfg.warmup_max_fraction * self.total_steps))
        if self.warmup_steps < warmup and self.is_main:
            self.log(
                f"warm-up of {warmup} steps capped to {self.warmup_steps} "
                f"(warmup_max_fraction={cfg.warmup_max_fraction:g} of {self.total_steps} steps)"
            )
        self.scheduler = build_scheduler(
            self.optimizer, self.total_steps, self.warmup_steps, cfg.schedule,
            cfg.step_milestones, cfg.step_gamma, cfg.min_lr_ratio,
        )  # fmt: skip
        # Own generator: the DataLoader draws a worker base seed per epoch, which
        # must not consume the global RNG (it would differ after a resume).
        # Augmentation randomness comes from SeededDataset instead.
        self.train_loader = DataLoader(
            SeededDataset(dataset, cfg.seed),
            batch_size=cfg.batch_size,
            sampler=EpochIndexSampler(self.train_sampler),
            collate_fn=self.collate_fn,
            num_workers=cfg.num_workers,
            drop_last=True,  # equal batches: BN never sees a batch of one
            pin_memory=self.device.type == "cuda",
            persistent_workers=cfg.num_workers > 0,
            generator=torch.Generator().manual_seed(cfg.seed),
        )

    def _default_hooks(self) -> list[HookBase]:
        cfg = self.config
        hooks: list[HookBase] = [LRSchedule(), PeriodicLogger(cfg.log_every), PeriodicEval(cfg.eval_every_epochs)]
        if cfg.early_stopping_metric is not None:
            hooks.append(EarlyStopping(cfg.early_stopping_metric, cfg.early_stopping_patience, cfg.metric_mode,
                                       cfg.early_stopping_min_delta))  # fmt: skip
        if cfg.best_metric is not None:
            hooks.append(BestCheckpoint(cfg.best_metric, cfg.metric_mode))
        # Last: the checkpoint of an epoch end then holds what the hooks above made of it.
        return hooks + [PeriodicCheckpoint(cfg.ckpt_every_steps)]

    def _named_hooks(self) -> list[tuple[str, HookBase]]:
        """Hooks by class name (numbered when repeated): stable when other hooks are added or removed on resume."""
        seen: dict[str, int] = {}
        named = []
        for hook in self.hooks:
            name = type(hook).__name__
            seen[name] = seen.get(name, 0) + 1
            named.append((name if seen[name] == 1 else f"{name}#{seen[name]}", hook))
        return named

    def _call_hooks(self, event: str) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self)

    def log(self, message: str) -> None:
        """Print a line on the main process (above the progress bar)."""
        if self.is_main:
            tqdm.write(message, file=sys.stdout)

    def training_seconds(self) -> float:
        """Seconds spent training, over every resumed part of the run."""
        return self.elapsed + (time.perf_counter() - self._start_time)

    def at_epoch_end(self) -> bool:
        """Whether ``step`` ends an epoch or the training."""
        return self.step % self.steps_per_epoch == 0 or self.step >= self.total_steps

    @property
    def inference_model(self) -> nn.Module:
        """The weights that are evaluated and exported: the EMA copy when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    # ------------------------------------------------------------ checkpoints
    def _training_state(self) -> dict[str, Any]:
        rng = all_gather_objects(capture_rng_state())  # every rank's generators, by rank
        return {
            "format": 1,
            "step": self.step,
            "sampler": {
                "epoch": self.step // self.steps_per_epoch,
                "position": self.step % self.steps_per_epoch,  # in steps, each of batch_size x accumulate samples
                "batch_size": self.config.batch_size,
                "accumulate": self.config.accumulate,
                "world_size": self.world_size,
                "seed": self.config.seed,
            },
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),  # type: ignore[union-attr]
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "rng": rng,
            "skipped_steps": self.skipped_steps,
            "elapsed": self.training_seconds(),
            "config": self.config.to_dict(),
            "hooks": {name: state for name, hook in self._named_hooks() if (state := hook.state_dict())},
        }

    def save_checkpoint(self) -> None:
        """Write ``OUT/checkpoints/last.*`` for the current step (collective under torchrun)."""
        state = self._training_state()  # collective: every rank takes part
        if self.is_main:
            saved = self.checkpointer.save(
                self.step, self.model, self.meta, state, self.ema.module if self.ema else None
            )
            self.last_checkpoint = saved.weights
        self.saved_step = self.step
        barrier()

    def _check_same_global_batch(self, state: Mapping[str, Any], source: Path) -> None:
        """Refuse a resume whose global batch differs from the checkpoint's.

        Progress is counted in steps of the global batch: with another batch
        the saved step would stand for another number of images, and the run
        would end having seen more or fewer samples than its epochs ask for.
        """
        sampler = state.get("sampler", {})
        batch, world = int(sampler.get("batch_size", self.config.batch_size)), int(sampler.get("world_size", self.world_size))
        accumulate = int(sampler.get("accumulate", 1))  # checkpoints before gradient accumulation: 1
        old, step = batch * accumulate * world, int(state["step"])
        new = self.config.batch_size * self.config.accumulate * self.world_size
        if old != new:
            raise ConfigError(
                f"{source}: step {step} was trained with a global batch of {old} (batch_size {batch} x accumulate "
                f"{accumulate} x {world} process(es)), this run has {new}; resuming would count its {step} steps as "
                f"{step * new} images instead of {step * old}. Resume with batch_size x accumulate x processes = {old}, "
                "or start a new run"
            )

    def _resume(self) -> None:
        ckpt = self.checkpointer.latest()
        for problem in self.checkpointer.problems:
            self.log(f"warning: skipped unreadable checkpoint file {problem}")
        if ckpt is None:
            problems = self.checkpointer.problems
            unreadable = f"; {len(problems)} unreadable file(s) skipped, e.g. {problems[0]}" if problems else ""
            raise ConfigError(f"{self.checkpointer.directory}: nothing to resume (no complete checkpoint{unreadable})")
        weights, _ = load_model(ckpt.weights)
        load_state_into(self.model, weights, strict=True, source=str(ckpt.weights))
        state = load_training_state(ckpt.state)
        if state.get("checkpoint", {}).get("save_id") != ckpt.save_id:
            raise CheckpointError(f"{ckpt.state}: does not belong to {ckpt.weights} (different save id)")
        self._check_same_global_batch(state, ckpt.state)
        if self.ema is not None:
            if ckpt.ema is None or state.get("ema") is None:
                raise CheckpointError(f"{ckpt.state}: EMA is on but the checkpoint has no EMA weights")
            ema_weights, _ = load_model(ckpt.ema)
            load_state_into(self.ema.module, ema_weights, strict=True, source=str(ckpt.ema))
            self.ema.load_state_dict(state["ema"])

        saved_config = TrainConfig.upgrade_legacy(state.get("config", {}))
        current = self.config.to_dict()
        # metric_mode only changes the trajectory through early stopping.
        keys = _TRAJECTORY_KEYS + (("metric_mode",) if current["early_stopping_metric"] is not None else ())
        changed = [k for k in keys if k in saved_config and saved_config[k] != current[k]]
        if changed:
            self.log(
                "warning: resuming with changed options "
                + ", ".join(f"{k}: {saved_config[k]!r} -> {current[k]!r}" for k in changed)
                + " (the result will differ from an uninterrupted run)"
            )
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.elapsed = float(state.get("elapsed", 0.0))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:  # another number or size of parameter groups than the model's
            raise CheckpointError(
                f"{ckpt.state}: its optimizer state does not fit this model ({exc}); the run was started with "
                "another layout of the model (e.g. a RetinaNet run started while its subnets shared one norm layer "
                "across pyramid levels): start a new run from its weights (model.weights / --weights)"
            ) from None
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
            self._apply_config_hparams()
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        hook_states = state.get("hooks", {})
        for name, hook in self._named_hooks():
            if name in hook_states:  # a hook added since the checkpoint starts afresh
                hook.load_state_dict(hook_states[name])

        rng = state.get("rng") or []
        if len(rng) == self.world_size:
            restore_rng_state(rng[self.rank])
        else:
            self.log(f"warning: checkpoint has RNG states of {len(rng)} process(es), not {self.world_size}; reseeding")
            seed_everything(self.config.seed + self.rank + 1_000_003 * self.step)
        sampler_state = state.get("sampler", {})
        # The order of samples depends on the world size and on the samples per process per step.
        saved_per_step = sampler_state.get("batch_size", self.config.batch_size) * sampler_state.get("accumulate", 1)
        if sampler_state.get("world_size", self.world_size) != self.world_size or (
            saved_per_step != self.config.batch_size * self.config.accumulate
        ):
            self.log("warning: world size or batch size changed since the checkpoint; the data order differs")
        if self.is_main:
            self.csv_log.truncate_after(self.step)
            self.eval_log.truncate_after(self.step)
        self.last_checkpoint = ckpt.weights
        self.saved_step = self.step
        self.log(f"resumed from {ckpt.weights} at step {self.step}")

    def _apply_config_hparams(self) -> None:
        """Make the current config win over values restored from the optimiser state.

        With an unchanged config this rewrites identical values.
        """
        assert self.scheduler is not None
        self.scheduler.base_lrs = [self.lr for _ in self.optimizer.param_groups]
        factor = self.scheduler.lr_lambdas[0](self.step)
        for group, wd in zip(self.optimizer.param_groups, (self.config.weight_decay, 0.0)):
            group["initial_lr"] = self.lr
            group["lr"] = self.lr * factor
            group["momentum"] = self.config.momentum
            group["weight_decay"] = wd

    # --------------------------------------------------------------- training
    def _forward_losses(self, batch: Any) -> dict[str, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            return self.task.losses(self.ddp_model, batch, self.device)

    def _all_finite(self, value: torch.Tensor) -> bool:
        ok = torch.isfinite(value.detach()).all().to(torch.int32).reshape(1)
        if is_distributed():
            # Every rank must take the same decision, or DDP's collectives hang.
            torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        return bool(ok.item())

    def _bad_step(self, what: str, terms: Mapping[str, float]) -> None:
        epoch = self.step // self.steps_per_epoch + 1
        detail = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
        if self.config.nan_policy == "stop":
            kept = f"last good checkpoint: {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint written yet"
            raise BicsnetError(
                f"training stopped: non-finite {what} at step {self.step + 1} (epoch {epoch}): {detail}; "
                f"{kept} (nan_policy='skip' skips such steps)"
            )
        self.skipped_steps += 1
        self.log(f"warning: skipped step {self.step + 1} (epoch {epoch}): non-finite {what}: {detail}")

    def _train_step(self, batches: Sequence[Any]) -> dict[str, float] | None:
        """One optimisation step over ``accumulate`` batches; returns the loss terms, or ``None`` if skipped.

        Each batch's loss is divided by the number of batches before its
        backward pass, so the accumulated gradient is that of the mean of their
        losses: with a loss averaged over samples (classification,
        segmentation), the gradient of one batch of ``batch_size x accumulate``.
        (Detection losses are normalised by the foreground anchors of each
        batch, so there the two differ a little.)  Under DDP the gradients are
        all-reduced once, in the last backward pass: the others run in
        ``no_sync()``.  The terms returned are the means over the batches.
        With fp16 the gradients are unscaled before clipping.
        """
        self.ddp_model.train()
        n = len(batches)
        terms: dict[str, float] = {}
        for i, batch in enumerate(batches):
            last = i == n - 1
            sync = contextlib.nullcontext() if last or not isinstance(self.ddp_model, DistributedDataParallel) else (
                self.ddp_model.no_sync()
            )  # fmt: skip
            with sync:  # no_sync must cover the forward pass too
                losses = self._forward_losses(batch)
                total = sum(losses.values())
                values = {k: float(v.detach()) for k, v in losses.items()}
                if not self._all_finite(total):
                    self.optimizer.zero_grad(set_to_none=True)
                    self._bad_step("loss" if n == 1 else f"loss in batch {i + 1} of {n}", values)
                    return None
                for k, v in values.items():
                    terms[k] = terms.get(k, 0.0) + v / n
                self.scaler.scale(total / n if n > 1 else total).backward()
        if self.config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            # With a GradScaler, inf gradients are expected now and then: it skips those steps itself.
            if not self.scaler.is_enabled() and not self._all_finite(norm):
                self.optimizer.zero_grad(set_to_none=True)
                self._bad_step("gradient norm", terms)
                return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        return terms

    def fit(self) -> dict[str, Any]:
        """Train to the end (or ``max_steps``, or until a hook stops it); return the final metrics.

        The loop runs the optimisation steps and calls the hooks (see
        :mod:`bicsnet.engine.hooks`), which log, step the LR schedule, evaluate,
        checkpoint, and at the end save ``model.safetensors`` and evaluate.
        """
        if self.train_loader is None or self.train_sampler is None or self.scheduler is None:
            raise ConfigError("fit() needs a training dataset")
        cfg = self.config
        self._start_time = time.perf_counter()
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out_dir / "config.json", {"train": cfg.to_dict(), "meta": self.meta})
        accumulate = f" x accumulate {cfg.accumulate}" if cfg.accumulate > 1 else ""
        self.log(
            f"training {self.total_steps} steps ({self.steps_per_epoch}/epoch) on {self.world_size} process(es), "
            f"device {self.device}, global batch {cfg.batch_size * cfg.accumulate * self.world_size} "
            f"(batch {cfg.batch_size}{accumulate} x {self.world_size}), "
            f"precision {'float32' if cfg.amp == 'off' else cfg.amp + ' autocast'}"
            f"{', channels-last' if cfg.channels_last else ''}, lr {self.lr:g}"
        )
        self.progress_bar = tqdm(
            total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
            disable=not (self.is_main and sys.stderr.isatty()),
        )  # fmt: skip
        try:
            self._call_hooks("before_train")
            while self.step < self.total_steps and not self.stop_requested:
                epoch, position = divmod(self.step, self.steps_per_epoch)
                self.train_sampler.set_epoch(epoch)
                self.train_sampler.set_start_index(position * cfg.batch_size * cfg.accumulate)
                group: list[Any] = []
                for batch in self.train_loader:
                    group.append(batch)
                    if len(group) < cfg.accumulate:
                        continue
                    lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
                    terms = self._train_step(group)
                    images = sum(self.task.batch_size(b) for b in group) * self.world_size
                    group = []
                    self.step += 1
                    self.progress_bar.update(1)
                    self.step_result = StepResult(lr, terms, images)
                    self._call_hooks("after_step")
                    # At the epoch's last step: the batches left (fewer than accumulate) are not used.
                    if self.step >= self.total_steps or self.stop_requested or self.step % self.steps_per_epoch == 0:
                        break
                if self.at_epoch_end():
                    self._call_hooks("after_epoch")
            self._call_hooks("after_train")
        finally:
            self.progress_bar.close()
        self.tb.close()
        barrier()
        return self.eval_result.metrics if self.eval_result is not None else {}

    # ------------------------------------------------------------- evaluation
    def evaluate(self) -> EvalResult:
        """Evaluate on the validation set (EMA weights when EMA is on); every rank gets the metrics.

        The global RNG states are preserved, so evaluating never changes the
        training trajectory.
        """
        if self.val_dataset is None:
            raise ConfigError("evaluate() needs a validation dataset")
        with preserve_rng():
            return evaluate_model(
                self.inference_model, self.task, self.val_dataset, self.config.batch_size, self.collate_fn,
                self.config.num_workers, self.device,
            )  # fmt: skip


def evaluation_loader(
    dataset: Dataset, batch_size: int, collate_fn: Callable | None = None, num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:  # fmt: skip
    """Loader giving each sample to exactly one rank, in order (no padding duplicates)."""
    sampler = ResumableDistributedSampler(len(dataset), shuffle=False, pad=False)  # type: ignore[arg-type]
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
        pin_memory=pin_memory, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip


def evaluate_model(
    model: nn.Module,
    task: Task | str,
    dataset: Dataset,
    batch_size: int,
    collate_fn: Callable | None = None,
    num_workers: int = 0,
    device: torch.device | str = "auto",
    num_classes: int | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``dataset`` (what ``bicsnet eval`` needs), with or without ``torchrun``.

    The model (unwrapped, not DDP) is moved to the device; under ``torchrun``
    each rank evaluates its shard and every rank returns the same metrics
    (artifacts only on rank 0: write them with :func:`write_eval_outputs`
    there).
    """
    device = init_distributed(device) if isinstance(device, str) else device
    if not isinstance(task, Task):
        task = _adapter(task, num_classes=num_classes)
    model = unwrap_model(model).to(device)
    loader = evaluation_loader(dataset, batch_size, collate_fn, num_workers, pin_memory=device.type == "cuda")
    # A bar over the batches on rank 0 when stderr is a terminal (tqdm's disable=None); it clears itself when done.
    batches = tqdm(loader, desc="eval", unit="batch", leave=False, dynamic_ncols=True, disable=None if get_rank() == 0 else True)
    return task.evaluate(model, batches, device, dataset)


def write_eval_outputs(out_dir: str | Path, result: EvalResult) -> None:
    """Write ``metrics.json`` and each artifact (e.g. ``detections.json``) into ``out_dir``."""
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "metrics.json", result.metrics)
    for name, content in result.artifacts.items():
        atomic_write_json(out_dir / name, content, indent=None)

