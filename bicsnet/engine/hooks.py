"""Training hooks: everything the training loop does besides optimisation steps.

After the design of detectron2's ``engine/hooks.py``.  :meth:`Trainer.fit
<bicsnet.engine.trainer.Trainer.fit>` is a small loop that calls its hooks::

    hook.before_train(trainer)                       # each hook, in list order
    while steps remain and not trainer.stop_requested:
        one optimisation step; trainer.step += 1     # trainer.step_result: lr, loss terms, images
        hook.after_step(trainer)
        at an epoch end (or the last step): hook.after_epoch(trainer)
    hook.after_train(trainer)                        # only when training ends without an exception

The trainer builds the default hooks from its :class:`~bicsnet.engine.trainer.TrainConfig`:
:class:`LRSchedule`, :class:`PeriodicLogger`, :class:`PeriodicEval`, then
:class:`EarlyStopping` (``early_stopping_metric``) and :class:`BestCheckpoint`
(``best_metric``) when configured, and :class:`PeriodicCheckpoint` last, so the
checkpoint of an epoch end holds that epoch's evaluation and the decisions
taken on it.  ``Trainer(..., hooks=[...])`` appends further hooks; as they run
after :class:`PeriodicCheckpoint`, what they change at a step is saved with the
next checkpoint.

A hook's :meth:`~HookBase.state_dict` is saved in every checkpoint and given
back to :meth:`~HookBase.load_state_dict` on resume, so a resumed run makes the
same decisions as an uninterrupted one.  Under ``torchrun`` every process runs
every hook; whatever a hook decides (``stop_requested``) must be the same on
every process (evaluation metrics are), and only ``trainer.is_main`` writes
files.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ConfigError
from ..io import atomic_write_json
from .checkpoint import save_model
from .distributed import is_distributed
from .runlog import flatten_metrics

#: The trainer a hook is called with (:class:`bicsnet.engine.trainer.Trainer`). Hooks read
#: its attributes rather than import it, so this module sits below the trainer (no import cycle).
Trainer = Any

__all__ = [
    "METRIC_MODES", "HookBase", "LRSchedule", "PeriodicLogger", "PeriodicEval", "PeriodicCheckpoint",
    "EarlyStopping", "BestCheckpoint", "metric_value",
]  # fmt: skip

#: Whether a larger (``"max"``) or smaller (``"min"``) metric value is better.
METRIC_MODES = ("max", "min")


class HookBase:
    """Base class of training hooks: override the events you need; each gets the trainer.

    To end training early, set ``trainer.stop_requested = True``: the loop stops
    after the current step (or epoch end) and runs ``after_train`` as at the
    last step.
    """

    def before_train(self, trainer: Trainer) -> None:
        """Before the first step (also when resuming)."""

    def after_step(self, trainer: Trainer) -> None:
        """After each optimisation step (``trainer.step`` already counts it)."""

    def after_epoch(self, trainer: Trainer) -> None:
        """After the last step of each epoch, and after the last step of training."""

    def after_train(self, trainer: Trainer) -> None:
        """After training ends normally (all steps done or ``stop_requested``); not after an exception."""

    def state_dict(self) -> dict[str, Any]:
        """State to keep in checkpoints (numbers, strings, lists, dicts); empty for stateless hooks."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (on resume, before ``before_train``)."""


class LRSchedule(HookBase):
    """Steps the learning-rate schedule after every step (skipped steps included), so it is per iteration."""

    def after_step(self, trainer: Trainer) -> None:
        trainer.scheduler.step()  # type: ignore[union-attr]


class PeriodicLogger(HookBase):
    """Logs training progress every ``every`` steps, at the last step, and at an early stop.

    Writes a row of ``OUT/log.csv`` (step, epoch, the learning rate the step used,
    the mean loss and loss terms since the previous row averaged over the
    processes, img_s, skipped steps, training seconds), the same values to
    TensorBoard under ``train/``, and the progress-bar postfix, or a console
    line when there is no progress bar (output not a terminal).
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self._sums: dict[str, float] = {}
        self._steps = self._images = 0  # steps with finite losses / images since the last row
        self._start = time.perf_counter()
        self._logged_step = 0

    def before_train(self, trainer: Trainer) -> None:
        self._start, self._logged_step = time.perf_counter(), trainer.step

    def after_step(self, trainer: Trainer) -> None:
        result = trainer.step_result
        assert result is not None
        self._images += result.images
        if result.terms is not None:
            self._steps += 1
            self._sums["loss"] = self._sums.get("loss", 0.0) + sum(result.terms.values())
            for k, v in result.terms.items():
                self._sums[k] = self._sums.get(k, 0.0) + v
        if trainer.step % self.every == 0 or trainer.step == trainer.total_steps:
            self._write(trainer, result.lr)

    def after_train(self, trainer: Trainer) -> None:
        if trainer.step > self._logged_step and trainer.step_result is not None:  # stopped between two rows
            self._write(trainer, trainer.step_result.lr)

    def _write(self, trainer: Trainer, lr: float) -> None:
        """One row; averaging over the processes is collective under torchrun."""
        now = time.perf_counter()
        images_per_s = self._images / max(now - self._start, 1e-9)
        means = {k: v / self._steps for k, v in sorted(self._sums.items())} if self._steps else {}
        self._sums, self._steps, self._images, self._start, self._logged_step = {}, 0, 0, now, trainer.step
        if is_distributed() and means:
            # Skips are decided jointly, so every rank has the same keys here.
            values = torch.tensor(list(means.values()), dtype=torch.float64, device=trainer.device)
            torch.distributed.all_reduce(values)
            means = dict(zip(means, (values / trainer.world_size).tolist()))
        if not trainer.is_main:
            return
        if "loss" in means:
            means = {"loss": means.pop("loss"), **means}
        epoch = round(trainer.step / trainer.steps_per_epoch, 4)
        row: dict[str, Any] = {"step": trainer.step, "epoch": epoch, "lr": lr}
        row.update(means)
        row.update({"img_s": images_per_s, "skipped": trainer.skipped_steps, "time": trainer.training_seconds()})
        trainer.csv_log.append(row)
        trainer.tb.scalars({k: v for k, v in row.items() if k not in ("step", "epoch")}, trainer.step)
        loss_text = f"{means['loss']:.4f}" if "loss" in means else "n/a"
        bar = trainer.progress_bar
        assert bar is not None
        bar.set_postfix(loss=loss_text, lr=f"{lr:.3g}", img_s=f"{images_per_s:.1f}")
        if bar.disable:
            terms = " ".join(f"{k} {v:.4f}" for k, v in means.items() if k != "loss")
            print(
                f"step {trainer.step}/{trainer.total_steps} epoch {epoch:.2f} loss {loss_text} ({terms}) "
                f"lr {lr:.4g} {images_per_s:.1f} img/s",
                flush=True,
            )


class PeriodicEval(HookBase):
    """Evaluates on the validation set (EMA weights when EMA is on); does nothing without one.

    When: at the end of every ``every_epochs``-th epoch (0: never) before the
    last step, and once after training (re-using an evaluation made at that
    very step, as after an early stop).  Each evaluation sets
    ``trainer.eval_result`` / ``trainer.eval_step`` for the hooks after this
    one and writes a record to ``OUT/eval_log.jsonl``, TensorBoard scalars under
    ``val/`` and a console line; the final one also writes ``OUT/metrics.json``,
    the artifacts (e.g. ``detections.json``) and the pictures
    (:func:`bicsnet.metrics.write_eval_plots`: PR curves or confusion matrix),
    and prints the per-class AP table of detectors.
    """

    def __init__(self, every_epochs: int) -> None:
        self.every_epochs = every_epochs

    def after_epoch(self, trainer: Trainer) -> None:
        done_epochs = trainer.step // trainer.steps_per_epoch
        # The last step is left to the final evaluation in after_train.
        if self.every_epochs and trainer.step < trainer.total_steps and done_epochs % self.every_epochs == 0:
            self._evaluate(trainer)

    def after_train(self, trainer: Trainer) -> None:
        from ..metrics.report import format_per_class_table, write_eval_plots
        from .trainer import write_eval_outputs  # the trainer module imports this one

        if trainer.val_dataset is None:
            return
        if trainer.eval_step != trainer.step:
            self._evaluate(trainer)
        if trainer.is_main:
            result = trainer.eval_result
            write_eval_outputs(trainer.out_dir, result)  # type: ignore[arg-type]
            write_eval_plots(trainer.out_dir, result.metrics, result.artifacts)  # type: ignore[union-attr]
            table = format_per_class_table(result.metrics)  # type: ignore[union-attr]
            if table:
                trainer.log(table)

    def _evaluate(self, trainer: Trainer) -> None:
        if trainer.val_dataset is None:
            return
        result = trainer.evaluate()
        trainer.eval_result, trainer.eval_step = result, trainer.step
        if not trainer.is_main:
            return
        epoch = trainer.step / trainer.steps_per_epoch if trainer.steps_per_epoch else 0.0
        # The confusion matrix (K x K counts) stays in metrics.json: per evaluation it would swell the log.
        logged = {k: v for k, v in result.metrics.items() if k != "confusion_matrix"}
        trainer.eval_log.append({"step": trainer.step, "epoch": round(epoch, 4), "metrics": logged})
        flat = flatten_metrics(result.metrics)
        trainer.tb.scalars(flat, trainer.step, prefix="val/")
        summary = " ".join(f"{k} {v:.4f}" for k, v in flat.items() if "per_class" not in k)
        trainer.log(f"eval at step {trainer.step}: {summary}")


class PeriodicCheckpoint(HookBase):
    """Saves the run's checkpoint (``OUT/checkpoints/last.*``, every hook's state included) and the final weights.

    When: every ``every_steps`` steps (0: never within an epoch); at every
    epoch end and the last step unless that step is saved already, after the
    hooks before this one (evaluation, early stopping, best checkpoint) so the
    checkpoint holds their outcome; after training, a checkpoint of the last
    step if it has none (stopped mid-epoch), then ``OUT/model.safetensors``
    (EMA weights when EMA is on).
    """

    def __init__(self, every_steps: int) -> None:
        self.every_steps = every_steps

    def after_step(self, trainer: Trainer) -> None:
        # At an epoch end, after_epoch saves once the epoch's evaluation is done: a resume
        # from that checkpoint must not skip it.
        if self.every_steps and trainer.step % self.every_steps == 0 and not trainer.at_epoch_end():
            trainer.save_checkpoint()

    def after_epoch(self, trainer: Trainer) -> None:
        if trainer.saved_step != trainer.step:
            trainer.save_checkpoint()

    def after_train(self, trainer: Trainer) -> None:
        self.after_epoch(trainer)
        if trainer.is_main:
            save_model(trainer.out_dir / "model.safetensors", trainer.inference_model, trainer.meta)


def metric_value(metrics: Mapping[str, Any], path: str) -> float:
    """The number at a dotted ``path`` (``"bbox.AP50"``, ``"mIoU"``) of a metrics dict.

    Raises :class:`ConfigError` naming the path and the available paths.
    """
    value: Any = metrics
    for key in path.split("."):
        value = value.get(key) if isinstance(value, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        available = ", ".join(k.replace("/", ".") for k in flatten_metrics(metrics))
        raise ConfigError(f"metric {path!r} is not among the evaluation metrics (available: {available})")
    return float(value)


class _MetricHook(HookBase):
    """Follows one evaluation metric: reads each evaluation made at the current step, keeps the best value."""

    def __init__(self, metric: str, mode: str = "max", min_delta: float = 0.0) -> None:
        if mode not in METRIC_MODES:
            raise ConfigError(f"{type(self).__name__}: mode={mode!r}: must be one of {', '.join(METRIC_MODES)}")
        if not min_delta >= 0:
            raise ConfigError(f"{type(self).__name__}: min_delta={min_delta!r}: must be >= 0")
        self.metric, self.mode, self.min_delta = metric, mode, min_delta
        self.best: float | None = None

    def before_train(self, trainer: Trainer) -> None:
        if not trainer.config.eval_every_epochs or trainer.val_dataset is None:
            raise ConfigError(
                f"{type(self).__name__} on {self.metric!r} needs evaluations during training: "
                "a validation dataset and eval_every_epochs >= 1"
            )

    def _new_value(self, trainer: Trainer) -> float | None:
        """The metric of the evaluation made at this step, or ``None`` if there was none."""
        if trainer.eval_result is None or trainer.eval_step != trainer.step:
            return None
        return metric_value(trainer.eval_result.metrics, self.metric)

    def _improves(self, value: float) -> bool:
        if not math.isfinite(value):  # a NaN never becomes the best
            return False
        if self.best is None:
            return True
        return value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state["best"]


class EarlyStopping(_MetricHook):
    """Stops training when ``metric`` has not improved for ``patience`` evaluations in a row.

    ``metric`` is a dotted path into the evaluation metrics (``"bbox.AP50"``,
    ``"mIoU"``, ``"top1"``); an evaluation improves it when it beats the best so
    far by more than ``min_delta`` (higher with ``mode="max"``, lower with
    ``"min"``).  When: after each periodic evaluation (``after_epoch``).  It sets
    ``trainer.stop_requested`` and logs one line; training then ends as at its
    last step (checkpoint, ``model.safetensors``, final metrics from the
    evaluation just made).  Writes no file.
    """

    def __init__(self, metric: str, patience: int, mode: str = "max", min_delta: float = 0.0) -> None:
        super().__init__(metric, mode, min_delta)
        if patience < 1:
            raise ConfigError(f"EarlyStopping: patience={patience!r}: must be >= 1")
        self.patience = patience
        self.bad_evals = 0  # evaluations in a row without improvement
        self.stopped = False

    def before_train(self, trainer: Trainer) -> None:
        super().before_train(trainer)
        if self.stopped:  # resumed from the checkpoint written right after the decision
            trainer.stop_requested = True

    def after_epoch(self, trainer: Trainer) -> None:
        value = self._new_value(trainer)
        if value is None:
            return
        if self._improves(value):
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
        if self.bad_evals >= self.patience:
            self.stopped = trainer.stop_requested = True
            best = "none" if self.best is None else f"{self.best:.4f}"
            trainer.log(
                f"early stopping at step {trainer.step}: {self.metric} has not improved for "
                f"{self.patience} evaluation(s) (best {best})"
            )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "bad_evals": self.bad_evals, "stopped": self.stopped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.bad_evals, self.stopped = int(state["bad_evals"]), bool(state["stopped"])


class BestCheckpoint(_MetricHook):
    """Keeps the weights of the evaluation with the best ``metric`` (a dotted path, as in :class:`EarlyStopping`).

    When: after every evaluation, periodic (``after_epoch``) and final
    (``after_train``).  On an improvement, rank 0 writes
    ``OUT/model_best.safetensors`` (the format of ``model.safetensors``: EMA
    weights when EMA is on, written atomically), then ``OUT/best.json``
    (``step``, ``metric``, ``mode``, ``value``), and logs one line.  A run
    without a best value yet removes these files left by an earlier attempt.
    """

    def before_train(self, trainer: Trainer) -> None:
        super().before_train(trainer)
        if self.best is None and trainer.is_main:
            for name in ("model_best.safetensors", "best.json"):
                (trainer.out_dir / name).unlink(missing_ok=True)

    def after_epoch(self, trainer: Trainer) -> None:
        value = self._new_value(trainer)
        if value is None or not self._improves(value):
            return
        self.best = value
        if trainer.is_main:
            save_model(trainer.out_dir / "model_best.safetensors", trainer.inference_model, trainer.meta)
            record = {"step": trainer.step, "metric": self.metric, "mode": self.mode, "value": value}
            atomic_write_json(trainer.out_dir / "best.json", record)
        trainer.log(f"best {self.metric} so far: {value:.4f} at step {trainer.step} (model_best.safetensors)")

    def after_train(self, trainer: Trainer) -> None:
        self.after_epoch(trainer)  # the final evaluation counts too
