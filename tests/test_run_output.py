"""What a run tells the user: the TensorBoard line, and the evaluation progress bar on a terminal."""
from __future__ import annotations

import io
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from bicsnet.engine.runlog import TensorBoardLog
from bicsnet.engine.trainer import TrainConfig, Trainer, evaluate_model

torch.set_num_threads(1)  # the test machine is small and shared


class FakeWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter: records what it is given."""

    instances: list["FakeWriter"] = []

    def __init__(self, log_dir: str, purge_step: int | None = None) -> None:
        self.log_dir, self.purge_step = log_dir, purge_step
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False
        FakeWriter.instances.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def close(self) -> None:
        self.closed = True


def _train(out: Path) -> Trainer:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(8, 3, generator=g), torch.randint(0, 6, (8,), generator=g))
    cfg = TrainConfig(epochs=1, batch_size=2, lr=0.05, warmup_steps=0, log_every=1, ckpt_every_steps=0, num_workers=0,
                      device="cpu", out_dir=str(out), tensorboard=True)  # fmt: skip
    trainer = Trainer(nn.Linear(3, 6), "classification", data, None, cfg, meta={"model": "linear"})
    trainer.fit()
    return trainer


def _tb_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("TensorBoard:")]


def test_run_says_once_that_tensorboard_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` of it raises ImportError
    trainer = _train(tmp_path / "run")
    assert _tb_lines(capsys.readouterr().out) == [
        "TensorBoard: not installed (pip install tensorboard); logging to log.csv only"
    ]
    assert trainer.tb.writer is None and not (tmp_path / "run" / "tb").exists()
    assert (tmp_path / "run" / "log.csv").read_text().count("\n") == 1 + 4  # header + one row per step


def test_run_says_where_tensorboard_logs_and_logs_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    FakeWriter.instances.clear()
    _train(tmp_path / "run")
    assert _tb_lines(capsys.readouterr().out) == [f"TensorBoard: logging to {tmp_path / 'run' / 'tb'}"]
    (writer,) = FakeWriter.instances
    assert writer.log_dir == str(tmp_path / "run" / "tb") and writer.purge_step is None and writer.closed
    steps = sorted({step for tag, _, step in writer.scalars if tag == "train/loss"})
    assert steps == [1, 2, 3, 4]


def test_tensorboard_log_writer_factory_and_disabled() -> None:
    made: list[Any] = []
    log = TensorBoardLog("RUN/tb", purge_step=7, writer_factory=lambda d, purge_step: made.append((d, purge_step)) or FakeWriter(d))
    assert made == [("RUN/tb", 7)] and log.status == "TensorBoard: logging to RUN/tb"
    # Disabled (evaluation-only trainers, ranks other than 0): no writer, nothing to say.
    off = TensorBoardLog("RUN/tb", enabled=False, writer_factory=FakeWriter)
    assert off.writer is None and off.status is None


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [True, False])
def test_evaluation_shows_a_progress_bar_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch, tty: bool) -> None:
    stderr = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(10, 3, generator=g), torch.randint(0, 6, (10,), generator=g))
    result = evaluate_model(nn.Linear(3, 6), "classification", data, batch_size=4, device=torch.device("cpu"))
    assert 0 <= result.metrics["top1"] <= 1
    if tty:
        assert "eval:" in stderr.getvalue() and "0/3" in stderr.getvalue()  # 10 samples in batches of 4
    else:
        assert stderr.getvalue() == ""
