"""A confusion matrix of class labels (rows = ground truth, columns = prediction), summable across processes."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from bicsnet.metrics.reduce import all_reduce_max, all_reduce_sum

__all__ = ["ConfusionMatrix"]


class ConfusionMatrix:
    """Counts ``counts[t, p]`` of samples (or pixels) with ground truth ``t`` predicted as ``p``.

    Args:
        num_classes: the matrix size ``K``; ``None``: sized by the updates
            (their ``num_classes``, else the largest label seen + 1), which is
            what a model without a class list needs.
        class_names: ``K`` names for :meth:`to_dict` (default ``"0"`` .. ``"K-1"``).
        ignore_index: target value of samples to skip (e.g. unlabelled pixels);
            ``None``: every target counts.

    Raises:
        ValueError: ``num_classes < 1``, or names that do not match it.
    """

    def __init__(
        self, num_classes: int | None = None, class_names: Sequence[str] | None = None, ignore_index: int | None = None
    ) -> None:
        if num_classes is None and class_names is not None:
            num_classes = len(class_names)
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.class_names = list(class_names) if class_names is not None else None
        self.ignore_index = ignore_index
        self.counts = torch.zeros(num_classes or 0, num_classes or 0, dtype=torch.int64)
        self._fixed = num_classes is not None

    @property
    def num_classes(self) -> int:
        """The current size ``K`` (0 for a matrix sized by its updates before the first one)."""
        return int(self.counts.shape[0])

    def reset(self) -> None:
        """Forget every count (the size stays)."""
        self.counts.zero_()

    def _grow(self, size: int) -> None:
        if size > self.num_classes:
            grown = torch.zeros(size, size, dtype=torch.int64, device=self.counts.device)
            grown[: self.num_classes, : self.num_classes] = self.counts
            self.counts = grown

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor, num_classes: int | None = None) -> None:
        """Add integer labels ``pred`` and ``target`` of the same shape (``[N]``, ``[B, H, W]``, ...).

        ``num_classes``: how many classes the predictions range over (e.g. the
        logits' width); it sizes a matrix made without ``num_classes``.

        Raises:
            ValueError: shapes differ, or a label (other than ``ignore_index``) is outside the matrix.
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        keep = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        t, p = target[keep].long(), pred[keep].long()
        if not self._fixed:
            seen = max(int(t.max()) if t.numel() else -1, int(p.max()) if p.numel() else -1) + 1
            self._grow(max(seen, num_classes or 0))
        n = self.num_classes
        ignore = f" or {self.ignore_index}" if self.ignore_index is not None else ""
        if t.numel() and (t.min() < 0 or t.max() >= n):
            raise ValueError(f"target labels must be in [0, {n}){ignore}")
        if p.numel() and (p.min() < 0 or p.max() >= n):
            raise ValueError(f"predicted labels must be in [0, {n})")
        counts = torch.bincount(t * n + p, minlength=n * n).reshape(n, n)
        if self.counts.device != counts.device:  # follow the tensors (the GPU during evaluation)
            self.counts = self.counts.to(counts.device)
        self.counts += counts

    def all_reduce(self) -> None:
        """Sum the counts over processes (no-op without torch.distributed); collective.

        A matrix sized by its updates first grows to the largest size of any
        process, so a process that saw no sample (or fewer classes) still adds up.
        """
        if not self._fixed:
            self._grow(int(all_reduce_max(torch.tensor([self.num_classes], device=self.counts.device))[0]))
        self.counts = all_reduce_sum(self.counts)

    def to_dict(self) -> dict[str, Any]:
        """``{"classes": [K names], "counts": [[K ints] x K]}``: rows = ground truth, columns = prediction."""
        names = self.class_names if self.class_names is not None else [str(i) for i in range(self.num_classes)]
        return {"classes": list(names), "counts": self.counts.cpu().tolist()}
