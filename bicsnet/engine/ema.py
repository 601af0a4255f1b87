"""Exponential moving average of model weights."""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["ModelEma"]


class ModelEma:
    """EMA copy of a model: ``ema = d * ema + (1 - d) * weights`` after every step.

    Floating-point parameters *and* buffers (batch-norm statistics) are
    averaged; integer buffers are copied.  With ``warmup`` the effective decay
    is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (as in
    TensorFlow's ``ExponentialMovingAverage``), so short runs are not dominated
    by the random initialisation.  The averaged weights are ``self.module``
    (saved as a safetensors file); :meth:`state_dict` holds only the counter.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0

    def current_decay(self) -> float:
        """Decay used by the next :meth:`update`."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend ``model``'s current weights (same architecture, unwrapped) into the average."""
        d = self.current_decay()
        self.updates += 1
        current = model.state_dict()
        for name, avg in self.module.state_dict().items():
            value = current[name].detach()
            if avg.is_floating_point():
                avg.lerp_(value.to(avg.dtype), 1.0 - d)
            else:
                avg.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        """Counters (the weights themselves are ``self.module.state_dict()``)."""
        return {"updates": self.updates, "decay": self.decay, "warmup": self.warmup}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the update counter saved by :meth:`state_dict`."""
        self.updates = int(state["updates"])
