"""Top-k classification accuracy (the confusion matrix: :class:`bicsnet.metrics.confusion.ConfusionMatrix`)."""
from __future__ import annotations

from typing import Sequence

import torch

from bicsnet.metrics.reduce import all_reduce_sum

__all__ = ["TopKAccuracy"]


class TopKAccuracy:
    """Fraction of samples whose target is among the ``k`` highest logits, for each ``k`` in ``ks``.

    ``k`` larger than the number of classes is clipped to it (so top-5 on a
    3-class problem is 1.0); results keep the requested names (``"top5"``).
    """

    def __init__(self, ks: Sequence[int] = (1, 5)) -> None:
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"ks must be positive integers, got {ks}")
        self.ks = tuple(int(k) for k in ks)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        # counts[i] = correct at ks[i]; last entry = number of samples.
        self.counts = torch.zeros(len(self.ks) + 1, dtype=torch.int64)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch of ``logits [B, C]`` and integer ``targets [B]``."""
        if logits.ndim != 2 or targets.shape != logits.shape[:1]:
            raise ValueError(f"expected logits [B, C] and targets [B], got {tuple(logits.shape)} and {tuple(targets.shape)}")
        num_classes = logits.shape[1]
        top = logits.topk(min(max(self.ks), num_classes), dim=1).indices
        hits = top == targets.long().unsqueeze(1)
        batch = torch.tensor(
            [int(hits[:, : min(k, num_classes)].any(dim=1).sum()) for k in self.ks] + [len(targets)], dtype=torch.int64
        )
        self.counts += batch

    def all_reduce(self) -> None:
        """Sum counts over processes (no-op without torch.distributed)."""
        self.counts = all_reduce_sum(self.counts)

    def compute(self) -> dict[str, float]:
        """Return ``{"top1": ..., "top5": ...}`` as fractions (0 when nothing was added)."""
        total = int(self.counts[-1])
        return {f"top{k}": (int(c) / total if total else 0.0) for k, c in zip(self.ks, self.counts[:-1].tolist())}
