"""Tests of the training hooks: early stopping, best checkpoint, their resume, user hooks, configuration errors.

The runs are tiny (``nn.Linear`` on 8 samples, batch 2: 4 steps per epoch) and
their evaluation metrics are scripted by step, so every decision is known in advance.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Mapping

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from bicsnet.engine import EvalResult, Task
from bicsnet.engine.checkpoint import RunCheckpointer, load_model
from bicsnet.engine.hooks import EarlyStopping, HookBase
from bicsnet.engine.trainer import TrainConfig, Trainer
from bicsnet.errors import ConfigError

torch.set_num_threads(1)  # the test machine is small and shared

STEPS_PER_EPOCH = 4


class ScriptedTask(Task):
    """Regression with a linear model; evaluation returns the score scripted for the trainer's step."""

    name = "scripted"

    def __init__(self, scores: Mapping[int, float]) -> None:
        self.scores = dict(scores)
        self.trainer: Trainer | None = None
        self.evaluations = 0

    def losses(self, model: nn.Module, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"loss_mse": F.mse_loss(model(x.to(device)), y.to(device))}

    def evaluate(self, model: nn.Module, loader: Any, device: torch.device, dataset: Any) -> EvalResult:
        assert self.trainer is not None
        self.evaluations += 1
        score = self.scores[self.trainer.step]
        return EvalResult({"top1": score, "bbox": {"AP50": score / 2}})


def run(out: Path, scores: Mapping[int, float], hooks: tuple[HookBase, ...] = (), resume: bool = False,
        **overrides: Any) -> Trainer:  # fmt: skip
    values: dict[str, Any] = dict(
        epochs=6, batch_size=2, lr=0.05, warmup_steps=0, schedule="cosine", log_every=1, ckpt_every_steps=0,
        eval_every_epochs=1, num_workers=0, device="cpu", deterministic=True, seed=3, out_dir=str(out),
        tensorboard=False,
    )  # fmt: skip
    values.update(overrides)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g))
    task = ScriptedTask(scores)
    trainer = Trainer(nn.Linear(3, 2), task, data, data, TrainConfig(**values), meta={"model": "linear"},
                      resume=resume, hooks=hooks)  # fmt: skip
    task.trainer = trainer
    return trainer


def logged_steps(out: Path) -> list[int]:
    with open(out / "log.csv", newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


def eval_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "eval_log.jsonl").read_text().splitlines()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_model(path)[0]


def same(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Recorder(HookBase):
    """Counts the events, keeps the evaluated weights at every epoch end, and can stop at a given step."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.calls = {"before_train": 0, "after_step": 0, "after_epoch": 0, "after_train": 0}
        self.epoch_ends: list[int] = []
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def before_train(self, trainer: Trainer) -> None:
        self.calls["before_train"] += 1

    def after_step(self, trainer: Trainer) -> None:
        self.calls["after_step"] += 1
        if trainer.step == self.stop_at:
            trainer.stop_requested = True

    def after_epoch(self, trainer: Trainer) -> None:
        self.calls["after_epoch"] += 1
        self.epoch_ends.append(trainer.step)
        model = trainer.ema.module if trainer.ema is not None else trainer.model
        self.snapshots[trainer.step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def after_train(self, trainer: Trainer) -> None:
        self.calls["after_train"] += 1


class KillAt(HookBase):
    """Simulates a kill right after the step ``step`` (and its checkpoint) is done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self, trainer: Trainer) -> None:
        if trainer.step == self.step:
            raise KeyboardInterrupt("simulated kill")


# --------------------------------------------------------------------------- early stopping
def test_early_stopping_stops_when_the_metric_stalls(tmp_path):
    # Evaluations at steps 4, 8, 12, 16: 0.72 does not beat 0.7 by min_delta, 0.6 neither: 2 bad in a row.
    scores = {4: 0.5, 8: 0.7, 12: 0.72, 16: 0.6, 20: 0.9}
    trainer = run(tmp_path, scores, early_stopping_metric="top1", early_stopping_patience=2,
                  early_stopping_min_delta=0.05)  # fmt: skip
    metrics = trainer.fit()
    assert trainer.step == 16 and trainer.total_steps == 24
    assert metrics["top1"] == 0.6  # the final metrics are those of the evaluation that stopped it...
    assert trainer.task.evaluations == 4  # ...not evaluated a second time
    assert eval_steps(tmp_path) == [4, 8, 12, 16]
    assert logged_steps(tmp_path)[-1] == 16
    assert RunCheckpointer(tmp_path / "checkpoints").latest().step == 16
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert same(weights(tmp_path / "model.safetensors"), trainer.model.state_dict())


# --------------------------------------------------------------------------- best checkpoint
@pytest.mark.parametrize("mode, best_step", [("max", 8), ("min", 16)])
def test_best_checkpoint_keeps_the_weights_of_the_best_evaluation(tmp_path, mode, best_step):
    # Periodic evaluations at 4, 8, 12; the final one at 16 counts too (best with mode="min").
    scores = {4: 0.2, 8: 0.8, 12: 0.4, 16: 0.1}
    recorder = Recorder()
    trainer = run(tmp_path, scores, hooks=(recorder,), epochs=4, ema_decay=0.5, best_metric="bbox.AP50",
                  metric_mode=mode)  # fmt: skip
    trainer.fit()
    assert json.loads((tmp_path / "best.json").read_text()) == {
        "step": best_step, "metric": "bbox.AP50", "mode": mode, "value": scores[best_step] / 2,
    }  # fmt: skip
    best, best_meta = load_model(tmp_path / "model_best.safetensors")
    final, final_meta = load_model(tmp_path / "model.safetensors")
    assert best_meta == final_meta == {"model": "linear"}
    assert same(best, recorder.snapshots[best_step])  # the EMA weights of the best step
    assert same(best, final) == (best_step == 16)


# --------------------------------------------------------------------------- resume
def test_resumed_run_stops_at_the_same_step(tmp_path):
    # Uninterrupted: best 0.6 at step 8, then 3 evaluations without improvement: stop at 20.
    # The kill at 14 comes after one bad evaluation: forgetting it on resume would stop at 28,
    # and a forgotten best would make step 16 the best checkpoint.
    scores = {4: 0.5, 8: 0.6, 12: 0.6, 16: 0.6, 20: 0.6, 24: 0.6, 28: 0.6, 32: 0.6}
    options = dict(epochs=8, ckpt_every_steps=2, early_stopping_metric="top1", early_stopping_patience=3,
                   best_metric="top1")  # fmt: skip
    full = run(tmp_path / "full", scores, **options)
    full.fit()
    assert full.step == 20

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", scores, hooks=(KillAt(14),), **options).fit()
    assert RunCheckpointer(tmp_path / "cut" / "checkpoints").latest().step == 14
    resumed = run(tmp_path / "cut", scores, resume=True, **options)
    assert resumed.step == 14
    resumed.fit()
    assert resumed.step == 20
    for name in ("model.safetensors", "model_best.safetensors"):
        assert same(weights(tmp_path / "full" / name), weights(tmp_path / "cut" / name)), name
    for name in ("best.json", "metrics.json"):
        assert (tmp_path / "full" / name).read_text() == (tmp_path / "cut" / name).read_text(), name
    assert logged_steps(tmp_path / "cut") == list(range(1, 21))
    assert eval_steps(tmp_path / "cut") == eval_steps(tmp_path / "full") == [4, 8, 12, 16, 20]

    # Resuming the finished run: the stop decision is in its checkpoint, so it trains no further.
    again = run(tmp_path / "full", scores, resume=True, **options)
    again.fit()
    assert again.step == 20 and logged_steps(tmp_path / "full")[-1] == 20


# --------------------------------------------------------------------------- user hooks
def test_user_hook_is_called_and_can_stop_training(tmp_path):
    scores = {4: 0.1, 8: 0.2, 12: 0.3, 6: 0.4}
    recorder = Recorder()
    trainer = run(tmp_path / "full", scores, hooks=(recorder,), epochs=3)
    trainer.fit()
    assert trainer.hooks[-1] is recorder
    assert recorder.calls == {"before_train": 1, "after_step": 12, "after_epoch": 3, "after_train": 1}
    assert recorder.epoch_ends == [4, 8, 12]

    # Stopped mid-epoch by a hook: the partial log window, a checkpoint and the final evaluation are still written.
    stopper = Recorder(stop_at=6)
    trainer = run(tmp_path / "stopped", scores, hooks=(stopper,), epochs=3, log_every=4)
    assert trainer.fit()["top1"] == 0.4
    assert trainer.step == 6
    assert stopper.calls == {"before_train": 1, "after_step": 6, "after_epoch": 1, "after_train": 1}
    assert logged_steps(tmp_path / "stopped") == [4, 6]
    assert eval_steps(tmp_path / "stopped") == [4, 6]
    assert RunCheckpointer(tmp_path / "stopped" / "checkpoints").latest().step == 6
    assert (tmp_path / "stopped" / "model.safetensors").is_file()


# --------------------------------------------------------------------------- configuration
def test_bad_configuration_names_the_option(tmp_path):
    for key in ("early_stopping_metric", "best_metric"):
        with pytest.raises(ConfigError, match=f"{key}='top1'.*eval_every_epochs must be >= 1"):
            TrainConfig(**{key: "top1"}, eval_every_epochs=0)
    for key, value in [("early_stopping_patience", 0), ("early_stopping_min_delta", -0.1), ("metric_mode", "median")]:
        with pytest.raises(ConfigError, match=key):
            TrainConfig(**{key: value})
    cfg = TrainConfig(early_stopping_metric="bbox.AP50", early_stopping_patience=2, best_metric="top1",
                      metric_mode="min", eval_every_epochs=1)  # fmt: skip
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg

    # A metric path the evaluation does not have: refused at the first evaluation, with what there is.
    trainer = run(tmp_path / "a", {4: 0.5}, early_stopping_metric="bbox.AP75")
    with pytest.raises(ConfigError, match=r"'bbox\.AP75'.*available: top1, bbox\.AP50"):
        trainer.fit()
    assert trainer.step == STEPS_PER_EPOCH
    # A hook given directly needs evaluations during training as well.
    trainer = run(tmp_path / "b", {}, hooks=(EarlyStopping("top1", patience=2),), eval_every_epochs=0)
    with pytest.raises(ConfigError, match="EarlyStopping on 'top1' needs evaluations during training"):
        trainer.fit()
