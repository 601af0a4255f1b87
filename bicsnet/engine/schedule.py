"""Per-iteration learning-rate schedules.

Every schedule is a multiplicative factor on the base learning rate, computed
by the pure function :func:`lr_factor` and applied through
:class:`torch.optim.lr_scheduler.LambdaLR`, which is stepped once per
training iteration (not per epoch).

* Warm-up: the factor rises linearly from 0 at step 0 to 1 at ``warmup``.
* ``"step"``: the paper's decay, x0.1 and x0.01 for the last 30/350 and
  10/350 of training, i.e. milestones at the fractions ``1 - 30/350`` and
  ``1 - 10/350`` of the total number of steps (configurable).
* ``"cosine"``: half-cosine from 1 after warm-up down to ``min_ratio`` at the
  last step.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..errors import ConfigError

__all__ = ["PAPER_STEP_MILESTONES", "SCHEDULES", "lr_factor", "build_scheduler"]

#: Fractions of total training at which the step schedule multiplies by gamma.
PAPER_STEP_MILESTONES: tuple[float, ...] = (1.0 - 30.0 / 350.0, 1.0 - 10.0 / 350.0)
SCHEDULES = ("step", "cosine")


def lr_factor(
    step: int,
    total: int,
    warmup: int = 0,
    kind: str = "step",
    milestones: Sequence[float] = PAPER_STEP_MILESTONES,
    gamma: float = 0.1,
    min_ratio: float = 0.0,
) -> float:
    """Return the learning-rate multiplier for iteration ``step`` (0-based).

    Args:
        step: number of optimiser steps already taken.
        total: total number of training steps.
        warmup: linear warm-up length in steps (factor ``step / warmup``).
        kind: ``"step"`` or ``"cosine"``.
        milestones: for ``"step"``, increasing fractions of ``total``; the
            factor is multiplied by ``gamma`` once each milestone is reached.
        gamma: decay multiplier of the step schedule.
        min_ratio: for ``"cosine"``, the factor reached at ``step == total``.
    """
    if kind not in SCHEDULES:
        raise ConfigError(f"schedule: unknown kind {kind!r} (choose from {', '.join(SCHEDULES)})")
    if kind == "step":
        passed = sum(1 for m in milestones if step >= round(m * total))
        decay = gamma**passed
    else:
        span = max(total - warmup, 1)
        progress = min(max(step - warmup, 0) / span, 1.0)
        decay = min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if warmup > 0 and step < warmup:
        return decay * step / warmup
    return decay


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    kind: str = "step",
    milestones: Sequence[float] = PAPER_STEP_MILESTONES,
    gamma: float = 0.1,
    min_ratio: float = 0.0,
) -> LambdaLR:
    """Build a per-iteration :class:`LambdaLR` applying :func:`lr_factor`.

    The factor function is a :func:`functools.partial`, so the scheduler's
    ``state_dict`` holds only its step counter: on resume the schedule shape
    always comes from the current configuration.
    """
    if total_steps <= 0:
        raise ConfigError(f"schedule: total number of steps must be positive, got {total_steps}")
    if warmup_steps < 0:
        raise ConfigError(f"schedule: warm-up steps must be >= 0, got {warmup_steps}")
    if list(milestones) != sorted(milestones) or any(not 0.0 <= m <= 1.0 for m in milestones):
        raise ConfigError(f"schedule: step milestones must be increasing fractions in [0, 1], got {list(milestones)}")
    lr_factor(0, total_steps, warmup_steps, kind)  # validates kind
    fn = functools.partial(
        lr_factor,
        total=total_steps,
        warmup=warmup_steps,
        kind=kind,
        milestones=tuple(milestones),
        gamma=gamma,
        min_ratio=min_ratio,
    )
    return LambdaLR(optimizer, fn)
