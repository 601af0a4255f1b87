"""Multi-process training helpers for ``torchrun``.

``torchrun --nproc_per_node N -m bicsnet.cli.main train ...`` sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` turns them into a
process group (NCCL on CUDA, Gloo on CPU).  Without those variables every
helper here degrades to the single-process case, so the same code path runs
with and without ``torchrun``.

It also provides the pieces that make data-parallel training match a single
process on the global batch: :func:`convert_sync_batchnorm` (torch's
``SyncBatchNorm`` on CUDA, :class:`CPUSyncBatchNorm` on CPU/Gloo, where
torch's refuses to run), :func:`wrap_ddp`, and
:class:`ResumableDistributedSampler`, a deterministic per-``(seed, epoch)``
sharded sampler that can resume in the middle of an epoch.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterator, Sized

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from ..errors import ConfigError
from .seeding import sample_seed

__all__ = [
    "DEVICE_CHOICES",
    "parse_device",
    "resolve_device",
    "init_distributed",
    "shutdown_distributed",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "all_gather_objects",
    "broadcast_object",
    "CPUSyncBatchNorm",
    "differentiable_all_reduce",
    "convert_sync_batchnorm",
    "wrap_ddp",
    "unwrap_model",
    "ResumableDistributedSampler",
]


#: What ``--device`` / ``train.device`` accepts, for messages and help texts.
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def _launched_world_size() -> int:
    """Processes ``torchrun`` launched (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def parse_device(text: str, option: str = "--device") -> torch.device | None:
    """Check the spelling of a device without touching the hardware; ``None`` for ``"auto"``.

    Accepts ``auto``, ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` (PyTorch's
    device strings, :class:`torch.device`).

    Raises:
        ConfigError: anything else, naming ``option``.
    """
    if text == "auto":
        return None
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{option} {text!r}: not a device (use {DEVICE_CHOICES})") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{option} {text!r}: unsupported device type {dev.type!r} (use {DEVICE_CHOICES})")
    if dev.type == "mps" and dev.index not in (None, 0):
        raise ConfigError(f"{option} {text!r}: there is one MPS device, 'mps'")
    return dev


def resolve_device(device: str = "auto", option: str = "--device") -> torch.device:
    """The torch device of ``--device`` (``auto|cpu|cuda|cuda:N|mps``), checked against this machine.

    ``auto`` takes CUDA if available, else Apple's MPS
    (``torch.backends.mps.is_available()``), else the CPU.  Under ``torchrun``
    (``WORLD_SIZE`` > 1) each process drives the GPU of its ``LOCAL_RANK``:
    ``cuda`` (and ``auto`` on a CUDA machine) becomes ``cuda:LOCAL_RANK``, and
    ``cuda:N`` is accepted only when ``N`` is that rank (any other ``N`` would
    put several processes on one GPU; choose GPUs with ``CUDA_VISIBLE_DEVICES``).
    MPS has no process-group backend, so it is refused under ``torchrun``.

    Raises:
        ConfigError: a malformed or unsupported device, or one this machine
            does not have (naming ``option``).
    """
    text = str(device)
    dev = parse_device(text, option)
    if dev is None:  # auto
        if torch.cuda.is_available():
            dev = torch.device("cuda")
        elif torch.backends.mps.is_available():
            dev = torch.device("mps")
        else:
            dev = torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{option} {text!r}: CUDA is not available (no GPU visible, or a CPU-only PyTorch build); use auto or cpu"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"{option} {text!r}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"{option} {text!r}: MPS is not available (it needs an Apple-silicon Mac and a PyTorch built with MPS); "
            "use auto, cpu or cuda"
        )
    if _launched_world_size() > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if dev.type == "mps":
            raise ConfigError(f"{option} {text!r}: torchrun needs cpu or cuda (there is no process-group backend for MPS)")
        if dev.type == "cuda":
            if dev.index is not None and dev.index != local_rank:
                raise ConfigError(
                    f"{option} {text!r}: under torchrun each process uses the GPU of its LOCAL_RANK ({local_rank} here); "
                    "pass --device cuda and choose the GPUs with CUDA_VISIBLE_DEVICES"
                )
            if local_rank >= torch.cuda.device_count():
                raise ConfigError(
                    f"{option} {text!r}: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) visible"
                )
            dev = torch.device("cuda", local_rank)
    return dev


def init_distributed(device: str = "auto", option: str = "--device") -> torch.device:
    """Join the ``torchrun`` process group if there is one; return this process's device.

    The device is :func:`resolve_device`'s (under ``torchrun`` a CUDA device is
    always ``cuda:LOCAL_RANK``); the backend is NCCL for CUDA and Gloo for CPU.
    Without ``torchrun`` (``WORLD_SIZE`` unset or 1) no process group is created.

    Raises:
        ConfigError: see :func:`resolve_device`.
    """
    dev = resolve_device(device, option)
    world_size = _launched_world_size()
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size <= 1:
        return dev
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        store = _elastic_attempt_store(world_size)
        if store is None:
            dist.init_process_group(backend=backend, init_method="env://")
        else:
            dist.init_process_group(backend=backend, store=store, rank=int(os.environ["RANK"]), world_size=world_size)
    return dev


def _elastic_attempt_store(world_size: int) -> Any:
    """torchrun's store with every key under a per-attempt prefix, or ``None`` outside torchrun.

    When ``torchrun --max-restarts N`` restarts a failed worker group, the new
    workers meet in the same store the agent served to the old ones (torch
    shares it between rendezvous rounds), which still holds the old attempt's
    keys: Gloo would read the addresses of the dead workers and fail with
    "Connection refused".  Prefixing the keys with ``TORCHELASTIC_RESTART_COUNT``
    keeps the attempts apart.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from torch.distributed.constants import default_pg_timeout

    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False,
        timeout=default_pg_timeout,
    )  # fmt: skip
    return dist.PrefixStore(f"bicsnet/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def shutdown_distributed() -> None:
    """Destroy the process group if one was created."""
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank of this process (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0, the only rank that writes files and prints."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed() and get_world_size() > 1:
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Collect one picklable object from every rank, in rank order."""
    if not is_distributed() or get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return rank ``src``'s ``obj`` on every rank."""
    if not is_distributed() or get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class _DifferentiableAllReduce(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum of the ranks' gradients.

    (``torch.distributed.nn.functional.all_reduce`` does this but is deprecated.)
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def differentiable_all_reduce(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """All-reduce (sum) that autograd can differentiate through."""
    return _DifferentiableAllReduce.apply(tensor, group or dist.group.WORLD)


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """Synchronised batch norm for CPU tensors (Gloo process groups).

    ``torch.nn.SyncBatchNorm`` only accepts accelerator tensors, and DDP
    refuses it in CPU modules.  This layer computes the batch statistics from
    two autograd-aware all-reduces (per-channel sum and count, then the centred
    sum of squares), so forward outputs, gradients and running statistics equal
    those of ``BatchNorm`` on the concatenated global batch.  It accepts any
    ``[N, C, *]`` input (it also replaces ``BatchNorm1d/3d``); outside training
    or outside a process group it is an ordinary batch norm.  State-dict keys
    are those of ``BatchNorm``.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's name
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")
        factor = 0.0
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        if not (self.training and is_distributed()):
            use_batch_stats = self.training or self.running_mean is None
            track = not self.training or self.track_running_stats
            return F.batch_norm(
                input,
                self.running_mean if track else None,
                self.running_var if track else None,
                self.weight,
                self.bias,
                use_batch_stats,
                factor,
                self.eps,
            )
        group = self.process_group or dist.group.WORLD
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, channels] + [1] * (input.dim() - 2)
        x = input if input.dtype == torch.float64 else input.float()  # statistics in at least float32

        count = torch.full((1,), x.numel() // channels, dtype=x.dtype, device=x.device)
        totals = differentiable_all_reduce(torch.cat([x.sum(dims), count]), group)
        n = totals[-1]
        mean = totals[:channels] / n
        centred = x - mean.view(shape)
        var = differentiable_all_reduce((centred * centred).sum(dims), group) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)

        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                unbiased = var * (n / (n - 1).clamp(min=1))
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), factor)
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device, process_group: Any = None) -> nn.Module:
    """Replace every ``BatchNorm1d/2d/3d`` in ``module`` with a synchronised batch norm.

    On CUDA this is :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`; on
    CPU the layers (and any ``torch.nn.SyncBatchNorm``) become
    :class:`CPUSyncBatchNorm`, with parameters, buffers
    and ``requires_grad`` carried over.  Returns the (possibly replaced) module.
    """
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    out = module
    # torch's SyncBatchNorm (e.g. a model built with norm="syncbn") is converted too: DDP refuses it on CPU.
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    if isinstance(module, norms) and not isinstance(module, CPUSyncBatchNorm):
        ref = next(iter([*module.parameters(), *module.buffers()]), None)
        out = CPUSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats, process_group
        )
        if ref is not None:
            out = out.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if module.affine:
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
                out.weight.requires_grad_(module.weight.requires_grad)
                out.bias.requires_grad_(module.bias.requires_grad)
            if module.track_running_stats:
                out.running_mean.copy_(module.running_mean)
                out.running_var.copy_(module.running_var)
                out.num_batches_tracked.copy_(module.num_batches_tracked)
        out.train(module.training)
    for name, child in module.named_children():
        new_child = convert_sync_batchnorm(child, device, process_group)
        if new_child is not child:
            out.add_module(name, new_child)
    return out


def wrap_ddp(model: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """Synchronise batch norms (:func:`convert_sync_batchnorm`) and wrap in DDP when world size > 1.

    Returns ``model`` unchanged in a single process.
    """
    if get_world_size() <= 1:
        return model
    model = convert_sync_batchnorm(model, device).to(device)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


class ResumableDistributedSampler(Sampler[int]):
    """Deterministic, sharded, resumable sampler.

    The epoch's order depends only on ``(seed, epoch)``: a seeded permutation
    (or ``range(n)`` without shuffling).  Rank ``r`` of ``W`` takes positions
    ``r, r + W, ...`` of that order, so all ranks together cover one global
    order.  Three ways of handling ``n % W != 0``:

    * default (``pad=True``): repeat the first indices so each rank gets
      ``ceil(n / W)`` samples (what :class:`~torch.utils.data.DistributedSampler` does);
    * ``drop_last=True``: drop the tail so each rank gets ``n // W``;
    * ``pad=False``: uneven shards, every sample exactly once - for evaluation.

    :meth:`set_start_index` skips the first ``k`` samples of this rank's shard
    for the current epoch (resuming after ``k / batch_size`` batches);
    :meth:`set_epoch` resets it to 0.
    """

    def __init__(
        self,
        dataset: Sized | int,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        pad: bool = True,
    ) -> None:
        self.num_items = dataset if isinstance(dataset, int) else len(dataset)
        self.num_replicas = get_world_size() if num_replicas is None else num_replicas
        self.rank = get_rank() if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} outside [0, {self.num_replicas})")
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.pad = pad
        self.epoch = 0
        self.start_index = 0

    @property
    def num_samples(self) -> int:
        """Length of this rank's shard for a whole epoch."""
        n, w = self.num_items, self.num_replicas
        if self.drop_last:
            return n // w
        if self.pad:
            return math.ceil(n / w)
        return len(range(self.rank, n, w))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (its order) and restart from its first sample."""
        self.epoch = epoch
        self.start_index = 0

    def set_start_index(self, start_index: int) -> None:
        """Skip the first ``start_index`` samples of this rank's shard this epoch."""
        if not 0 <= start_index <= self.num_samples:
            raise ValueError(f"start index {start_index} outside [0, {self.num_samples}]")
        self.start_index = start_index

    def global_order(self) -> list[int]:
        """The epoch's order over all ranks, after padding or dropping."""
        n, w = self.num_items, self.num_replicas
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(sample_seed(self.seed, self.epoch, -1))
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        if self.drop_last:
            return order[: (n // w) * w]
        if self.pad and n > 0:
            total = math.ceil(n / w) * w
            order = (order * math.ceil(total / n))[:total]
        return order

    def __iter__(self) -> Iterator[int]:
        shard = self.global_order()[self.rank :: self.num_replicas]
        return iter(shard[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index
