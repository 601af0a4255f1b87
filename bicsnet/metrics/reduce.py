"""Summing (and taking maxima of) metric state across torch.distributed processes."""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_reduce_sum", "all_reduce_max"]


def _all_reduce(t: torch.Tensor, op: dist.ReduceOp.RedOpType) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()):
        return t
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        # NCCL only reduces CUDA tensors, so CPU tensors visit the current GPU for the call.
        buf = t.to(f"cuda:{torch.cuda.current_device()}")
        dist.all_reduce(buf, op=op)
        return buf.to(t.device)
    dist.all_reduce(t, op=op)
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all processes when torch.distributed is initialised; return the result.

    NCCL only reduces CUDA tensors, so CPU tensors visit the current GPU for the call.
    """
    return _all_reduce(t, dist.ReduceOp.SUM)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``t`` over all processes (``t`` itself without torch.distributed)."""
    return _all_reduce(t, dist.ReduceOp.MAX)
