"""Summing metric state across torch.distributed processes."""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_reduce_sum"]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all processes when torch.distributed is initialised; return the result.

    NCCL only reduces CUDA tensors, so CPU tensors visit the current GPU for the call.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return t
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        buf = t.to(f"cuda:{torch.cuda.current_device()}")
        dist.all_reduce(buf)
        return buf.to(t.device)
    dist.all_reduce(t)
    return t
