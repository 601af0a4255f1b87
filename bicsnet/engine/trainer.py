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
``batch_size x world_size``.  By the linear scaling rule (Goyal et al., 2017)
the rate should grow in proportion to the global batch: set
``lr_reference_batch`` to the global batch ``lr`` was tuned for and the
trainer uses ``lr x global_batch / lr_reference_batch``.

Reproducibility and resume: see :mod:`bicsnet.engine.seeding`.  A resumed run
continues from the newest complete checkpoint in ``OUT/checkpoints`` with the
same data order, RNG states, optimiser, scheduler, scaler and EMA; on CPU with
``deterministic=True`` and the same configuration its final weights equal an
uninterrupted run's bit for bit.

Outputs in ``OUT`` (rank 0 only): ``config.json``, ``log.csv`` (one row every
``log_every`` steps), ``eval_log.jsonl`` (periodic evaluations),
``checkpoints/`` (see :mod:`bicsnet.engine.checkpoint`), and at the end
``model.safetensors`` (EMA weights when EMA is on), ``metrics.json`` and any
evaluation artifacts such as ``detections.json``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..errors import BicsnetError, CheckpointError, ConfigError
from ..io import atomic_write_json
from .checkpoint import RunCheckpointer, load_model, load_state_into, load_training_state, save_model
from .distributed import (
    ResumableDistributedSampler,
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
from .runlog import CsvLog, JsonlLog, TensorBoardLog, flatten_metrics
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
from .tasks import EvalResult, Task, build_task

__all__ = ["TrainConfig", "Trainer", "parameter_groups", "evaluate_model", "evaluation_loader", "write_eval_outputs"]

NAN_POLICIES = ("stop", "skip")
AMP_DTYPES = ("bfloat16", "float16")
# Options whose change on resume alters the trajectory (others are operational).
_TRAJECTORY_KEYS = (
    "epochs", "batch_size", "lr", "lr_reference_batch", "momentum", "weight_decay", "warmup_epochs",
    "warmup_steps", "warmup_max_fraction", "schedule", "step_milestones", "step_gamma", "min_lr_ratio", "grad_clip", "amp",
    "amp_dtype", "ema_decay", "seed", "max_steps", "label_smoothing",
)  # fmt: skip


@dataclass
class TrainConfig:
    """Training options; :meth:`to_dict` / :meth:`from_dict` round-trip losslessly.

    Attributes:
        epochs: passes over the training set.
        batch_size: images per process per step.
        lr: base learning rate for the global batch (see ``lr_reference_batch``).
        lr_reference_batch: if set, the rate actually used is
            ``lr * batch_size * world_size / lr_reference_batch`` (linear scaling rule).
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
        amp: mixed precision (CUDA only; ignored on CPU).
        amp_dtype: ``"bfloat16"`` or ``"float16"`` (float16 uses a GradScaler).
        ema_decay: EMA decay of the weights (e.g. 0.9998) or ``None`` for no EMA.
        log_every: steps between log rows / console lines.
        ckpt_every_steps: steps between checkpoints (0: only at epoch ends).
        eval_every_epochs: epochs between evaluations (0: only at the end).
        seed: seed of weights-independent randomness (data order, augmentation, dropout).
        deterministic: deterministic kernels (slower on CUDA).
        nan_policy: on a non-finite loss, ``"stop"`` (raise, keeping the last
            checkpoint) or ``"skip"`` (drop the step and count it).
        num_workers: data-loading worker processes per training process.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:K"``.
        out_dir: run directory.
        max_steps: hard cap on the number of steps (the schedule then spans it).
        label_smoothing: classification label smoothing.
        tensorboard: also log to ``OUT/tb`` if TensorBoard is installed.
        find_unused_parameters: DDP option for models with branches unused in some steps.
    """

    epochs: int = 350
    batch_size: int = 16
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
    amp: bool = False
    amp_dtype: str = "bfloat16"
    ema_decay: float | None = None
    log_every: int = 20
    ckpt_every_steps: int = 1000
    eval_every_epochs: int = 1
    seed: int = 0
    deterministic: bool = False
    nan_policy: str = "stop"
    num_workers: int = 2
    device: str = "auto"
    out_dir: str = "runs/train"
    max_steps: int | None = None
    label_smoothing: float = 0.0
    tensorboard: bool = True
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        self._check_types()
        checks = [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
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
            ("amp_dtype", self.amp_dtype in AMP_DTYPES, f"must be one of {', '.join(AMP_DTYPES)}"),
            ("ema_decay", self.ema_decay is None or 0 < self.ema_decay < 1, "must be in (0, 1) (or None)"),
            ("log_every", self.log_every >= 1, "must be >= 1"),
            ("ckpt_every_steps", self.ckpt_every_steps >= 0, "must be >= 0"),
            ("eval_every_epochs", self.eval_every_epochs >= 0, "must be >= 0"),
            ("nan_policy", self.nan_policy in NAN_POLICIES, f"must be one of {', '.join(NAN_POLICIES)}"),
            ("num_workers", self.num_workers >= 0, "must be >= 0"),
            ("max_steps", self.max_steps is None or self.max_steps >= 1, "must be >= 1 (or None)"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "must be in [0, 1)"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ConfigError(f"training option {name}={getattr(self, name)!r}: {why}")

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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
        values = dict(data)
        if "step_milestones" in values:
            values["step_milestones"] = tuple(values["step_milestones"])
        return cls(**values)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two SGD groups: decayed weights (ndim >= 2) and undecayed biases / norm parameters (ndim <= 1)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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
    ) -> None:
        self.config = config
        self.meta = dict(meta or {})
        try:  # fail now rather than at the first checkpoint, hours later
            json.dumps(self.meta)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"Trainer meta must be JSON-serialisable plain data: {exc}") from None
        self.device = init_distributed(config.device)
        self.rank, self.world_size = get_rank(), get_world_size()
        self.is_main = self.rank == 0
        self.out_dir = Path(config.out_dir)
        self.task = task if isinstance(task, Task) else build_task(
            task, num_classes=self.meta.get("num_classes"), label_smoothing=config.label_smoothing
        )
        self.train_dataset, self.val_dataset, self.collate_fn = train_dataset, val_dataset, collate_fn

        configure_determinism(config.deterministic)
        seed_everything(config.seed + self.rank)

        self.ddp_model = wrap_ddp(model.to(self.device), self.device, config.find_unused_parameters)
        self.model = unwrap_model(self.ddp_model)
        global_batch = config.batch_size * self.world_size
        self.lr = config.lr * (global_batch / config.lr_reference_batch if config.lr_reference_batch else 1.0)
        self.optimizer = torch.optim.SGD(
            parameter_groups(self.model, config.weight_decay), lr=self.lr, momentum=config.momentum
        )

        self.use_amp = config.amp and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if config.amp_dtype == "bfloat16" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
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
        self._saved_step = -1  # step of the newest checkpoint on disk
        self._start_time = time.perf_counter()
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

    # ------------------------------------------------------------------ setup
    def _build_training(self, dataset: Dataset) -> None:
        cfg = self.config
        self.train_sampler = ResumableDistributedSampler(len(dataset), shuffle=True, seed=cfg.seed)  # type: ignore[arg-type]
        self.steps_per_epoch = self.train_sampler.num_samples // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"batch_size={cfg.batch_size} is larger than the {self.train_sampler.num_samples} training "
                f"images per process (dataset of {len(dataset)} on {self.world_size} process(es))"  # type: ignore[arg-type]
            )
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_epochs * self.steps_per_epoch)
        self.warmup_steps = min(warmup, int(cfg.warmup_max_fraction * self.total_steps))
        if self.warmup_steps < warmup and self.is_main:
            self._log(
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

    def _log(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message, file=sys.stdout)

    # ------------------------------------------------------------ checkpoints
    def _training_state(self) -> dict[str, Any]:
        rng = all_gather_objects(capture_rng_state())  # every rank's generators, by rank
        return {
            "format": 1,
            "step": self.step,
            "sampler": {
                "epoch": self.step // self.steps_per_epoch,
                "position": self.step % self.steps_per_epoch,
                "batch_size": self.config.batch_size,
                "world_size": self.world_size,
                "seed": self.config.seed,
            },
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),  # type: ignore[union-attr]
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "rng": rng,
            "skipped_steps": self.skipped_steps,
            "elapsed": self.elapsed + (time.perf_counter() - self._start_time),
            "config": self.config.to_dict(),
        }

    def save_checkpoint(self) -> None:
        """Write ``OUT/checkpoints/last.*`` for the current step (collective under torchrun)."""
        state = self._training_state()  # collective: every rank takes part
        if self.is_main:
            saved = self.checkpointer.save(
                self.step, self.model, self.meta, state, self.ema.module if self.ema else None
            )
            self.last_checkpoint = saved.weights
        self._saved_step = self.step
        barrier()

    def _resume(self) -> None:
        ckpt = self.checkpointer.latest()
        for problem in self.checkpointer.problems:
            self._log(f"warning: skipped unreadable checkpoint file {problem}")
        if ckpt is None:
            problems = self.checkpointer.problems
            unreadable = f"; {len(problems)} unreadable file(s) skipped, e.g. {problems[0]}" if problems else ""
            raise ConfigError(f"{self.checkpointer.directory}: nothing to resume (no complete checkpoint{unreadable})")
        weights, _ = load_model(ckpt.weights)
        load_state_into(self.model, weights, strict=True, source=str(ckpt.weights))
        state = load_training_state(ckpt.state)
        if state.get("checkpoint", {}).get("save_id") != ckpt.save_id:
            raise CheckpointError(f"{ckpt.state}: does not belong to {ckpt.weights} (different save id)")
        if self.ema is not None:
            if ckpt.ema is None or state.get("ema") is None:
                raise CheckpointError(f"{ckpt.state}: EMA is on but the checkpoint has no EMA weights")
            ema_weights, _ = load_model(ckpt.ema)
            load_state_into(self.ema.module, ema_weights, strict=True, source=str(ckpt.ema))
            self.ema.load_state_dict(state["ema"])

        saved_config = state.get("config", {})
        current = self.config.to_dict()
        changed = [k for k in _TRAJECTORY_KEYS if k in saved_config and saved_config[k] != current[k]]
        if changed:
            self._log(
                "warning: resuming with changed options "
                + ", ".join(f"{k}: {saved_config[k]!r} -> {current[k]!r}" for k in changed)
                + " (the result will differ from an uninterrupted run)"
            )
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.elapsed = float(state.get("elapsed", 0.0))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
            self._apply_config_hparams()
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

        rng = state.get("rng") or []
        if len(rng) == self.world_size:
            restore_rng_state(rng[self.rank])
        else:
            self._log(f"warning: checkpoint has RNG states of {len(rng)} process(es), not {self.world_size}; reseeding")
            seed_everything(self.config.seed + self.rank + 1_000_003 * self.step)
        sampler_state = state.get("sampler", {})
        if sampler_state.get("world_size", self.world_size) != self.world_size or sampler_state.get(
            "batch_size", self.config.batch_size
        ) != self.config.batch_size:
            self._log("warning: world size or batch size changed since the checkpoint; the data order differs")
        if self.is_main:
            self.csv_log.truncate_after(self.step)
            self.eval_log.truncate_after(self.step)
        self.last_checkpoint = ckpt.weights
        self._saved_step = self.step
        self._log(f"resumed from {ckpt.weights} at step {self.step}")

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
        self._log(f"warning: skipped step {self.step + 1} (epoch {epoch}): non-finite {what}: {detail}")

    def _train_step(self, batch: Any) -> dict[str, float] | None:
        """One optimisation step; returns the loss terms, or ``None`` if the step was skipped."""
        self.ddp_model.train()
        losses = self._forward_losses(batch)
        total = sum(losses.values())
        terms = {k: float(v.detach()) for k, v in losses.items()}
        if not self._all_finite(total):
            self.optimizer.zero_grad(set_to_none=True)
            self._bad_step("loss", terms)
            return None
        self.scaler.scale(total).backward()
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
        """Train to the end (or ``max_steps``), save ``model.safetensors``, evaluate; return the final metrics."""
        if self.train_loader is None or self.train_sampler is None or self.scheduler is None:
            raise ConfigError("fit() needs a training dataset")
        cfg = self.config
        self._start_time = time.perf_counter()
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out_dir / "config.json", {"train": cfg.to_dict(), "meta": self.meta})
        self._log(
            f"training {self.total_steps} steps ({self.steps_per_epoch}/epoch) on {self.world_size} process(es), "
            f"device {self.device}, global batch {cfg.batch_size * self.world_size}, lr {self.lr:g}"
        )
        bar = tqdm(
            total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
            disable=not (self.is_main and sys.stderr.isatty()),
        )  # fmt: skip
        window: dict[str, float] = {}
        window_steps, window_images, window_start = 0, 0, time.perf_counter()
        try:
            while self.step < self.total_steps:
                epoch, position = divmod(self.step, self.steps_per_epoch)
                self.train_sampler.set_epoch(epoch)
                self.train_sampler.set_start_index(position * cfg.batch_size)
                for batch in self.train_loader:
                    lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
                    terms = self._train_step(batch)
                    self.scheduler.step()
                    self.step += 1
                    bar.update(1)
                    window_images += self.task.batch_size(batch) * self.world_size
                    if terms is not None:
                        window_steps += 1
                        window["loss"] = window.get("loss", 0.0) + sum(terms.values())
                        for k, v in terms.items():
                            window[k] = window.get(k, 0.0) + v
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        now = time.perf_counter()
                        self._write_log_row(window, window_steps, window_images / max(now - window_start, 1e-9), lr, bar)
                        window, window_steps, window_images, window_start = {}, 0, 0, now
                    if cfg.ckpt_every_steps and self.step % cfg.ckpt_every_steps == 0:
                        self.save_checkpoint()
                    if self.step >= self.total_steps:
                        break
                if self.step % self.steps_per_epoch == 0 or self.step >= self.total_steps:
                    if self._saved_step != self.step:
                        self.save_checkpoint()
                    done_epochs = self.step // self.steps_per_epoch
                    if (
                        cfg.eval_every_epochs
                        and self.val_dataset is not None
                        and self.step < self.total_steps
                        and done_epochs % cfg.eval_every_epochs == 0
                    ):
                        result = self.evaluate()
                        self._record_eval(result, final=False)
        finally:
            bar.close()
        if self._saved_step != self.step:
            self.save_checkpoint()

        final_model = self.ema.module if self.ema is not None else self.model
        if self.is_main:
            save_model(self.out_dir / "model.safetensors", final_model, self.meta)
        metrics: dict[str, Any] = {}
        if self.val_dataset is not None:
            result = self.evaluate()
            self._record_eval(result, final=True)
            metrics = result.metrics
        self.tb.close()
        barrier()
        return metrics

    def _write_log_row(
        self, window: Mapping[str, float], steps: int, images_per_s: float, lr: float, bar: tqdm
    ) -> None:
        """Log the window's mean loss terms (averaged over ranks: collective under torchrun)."""
        means = {k: v / steps for k, v in sorted(window.items())} if steps else {}
        if is_distributed() and means:
            # Skips are decided jointly, so every rank has the same keys here.
            values = torch.tensor(list(means.values()), dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(values)
            means = dict(zip(means, (values / self.world_size).tolist()))
        if not self.is_main:
            return
        if "loss" in means:
            means = {"loss": means.pop("loss"), **means}
        row: dict[str, Any] = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4), "lr": lr}
        row.update(means)
        row.update({"img_s": images_per_s, "skipped": self.skipped_steps,
                    "time": self.elapsed + time.perf_counter() - self._start_time})  # fmt: skip
        self.csv_log.append(row)
        self.tb.scalars({k: v for k, v in row.items() if k not in ("step", "epoch")}, self.step)
        loss_text = f"{means['loss']:.4f}" if "loss" in means else "n/a"
        bar.set_postfix(loss=loss_text, lr=f"{lr:.3g}", img_s=f"{images_per_s:.1f}")
        if bar.disable:
            terms = " ".join(f"{k} {v:.4f}" for k, v in means.items() if k != "loss")
            print(
                f"step {self.step}/{self.total_steps} epoch {row['epoch']:.2f} loss {loss_text} ({terms}) "
                f"lr {lr:.4g} {images_per_s:.1f} img/s",
                flush=True,
            )

    # ------------------------------------------------------------- evaluation
    def evaluate(self) -> EvalResult:
        """Evaluate on the validation set (EMA weights when EMA is on); every rank gets the metrics.

        The global RNG states are preserved, so evaluating never changes the
        training trajectory.
        """
        if self.val_dataset is None:
            raise ConfigError("evaluate() needs a validation dataset")
        model = self.ema.module if self.ema is not None else self.model
        with preserve_rng():
            return evaluate_model(
                model, self.task, self.val_dataset, self.config.batch_size, self.collate_fn,
                self.config.num_workers, self.device,
            )  # fmt: skip

    def _record_eval(self, result: EvalResult, final: bool) -> None:
        if not self.is_main:
            return
        epoch = self.step / self.steps_per_epoch if self.steps_per_epoch else 0.0
        self.eval_log.append({"step": self.step, "epoch": round(epoch, 4), "metrics": result.metrics})
        self.tb.scalars(flatten_metrics(result.metrics), self.step, prefix="val/")
        summary = " ".join(f"{k} {v:.4f}" for k, v in flatten_metrics(result.metrics).items() if "per_class" not in k)
        self._log(f"eval at step {self.step}: {summary}")
        if final:
            write_eval_outputs(self.out_dir, result)


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
        task = build_task(task, num_classes=num_classes)
    model = unwrap_model(model).to(device)
    loader = evaluation_loader(dataset, batch_size, collate_fn, num_workers, pin_memory=device.type == "cuda")
    return task.evaluate(model, loader, device, dataset)


def write_eval_outputs(out_dir: str | Path, result: EvalResult) -> None:
    """Write ``metrics.json`` and each artifact (e.g. ``detections.json``) into ``out_dir``."""
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "metrics.json", result.metrics)
    for name, content in result.artifacts.items():
        atomic_write_json(out_dir / name, content, indent=None)

