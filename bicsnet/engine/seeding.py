"""Reproducible randomness: global seeding, RNG snapshots, per-sample seeds.

How training stays reproducible across interruptions:

* The training order comes from
  :class:`~bicsnet.engine.distributed.ResumableDistributedSampler`, a pure
  function of ``(seed, epoch)`` that can skip the batches already consumed.
* Data augmentation draws from the global ``random`` / ``numpy`` / ``torch``
  generators, but :class:`SeededDataset` reseeds them before loading each
  sample from ``(seed, epoch, index)`` only (and restores them afterwards), so
  a sample's augmentation does not depend on which worker loads it, on the
  number of workers, or on whether the epoch was resumed half-way.
  :class:`EpochIndexSampler` supplies the ``(epoch, index)`` keys.
* Randomness inside the model (dropout, stochastic depth) uses the global
  generators of the training process, whose states are saved in every
  checkpoint with :func:`capture_rng_state` and put back with
  :func:`restore_rng_state`.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = [
    "seed_everything",
    "configure_determinism",
    "sample_seed",
    "preserve_rng",
    "capture_rng_state",
    "restore_rng_state",
    "SeededDataset",
    "EpochIndexSampler",
]


def seed_everything(seed: int) -> None:
    """Seed ``random``, ``numpy`` and ``torch`` (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def configure_determinism(deterministic: bool) -> None:
    """Ask torch for deterministic kernels, or for the fastest ones.

    Deterministic mode uses ``warn_only=True``: an operation without a
    deterministic implementation (some CUDA backward kernels) warns rather
    than aborting a long training run.
    """
    if deterministic:
        # cuBLAS needs this before its first use to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed derived only from ``(seed, epoch, index)``.

    A hash rather than arithmetic, so neighbouring samples and epochs get
    unrelated streams.
    """
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextlib.contextmanager
def preserve_rng() -> Iterator[None]:
    """Restore the ``random``, ``numpy`` and torch CPU generators on exit."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def capture_rng_state() -> dict[str, Any]:
    """Snapshot every global generator as tensors and plain Python data.

    The result contains no numpy arrays or tuples of objects, so a file
    holding it loads with ``torch.load(..., weights_only=True)``.
    """
    version, mt_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": [int(v) for v in mt_state], "gauss": gauss},
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back generator states captured by :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["gauss"])
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        # A run resumed on fewer GPUs restores the devices it has.
        for device, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


class SeededDataset(Dataset):
    """Load each sample with all global generators seeded from ``(seed, epoch, index)``.

    Indexed by ``(epoch, index)`` pairs, as produced by
    :class:`EpochIndexSampler`; a plain integer index is treated as epoch 0.
    The caller's generator states are restored after each sample, so seeding
    never disturbs the training process when ``num_workers == 0``.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        s = sample_seed(self.seed, epoch, index)
        with preserve_rng():
            random.seed(s)
            np.random.seed(s % 2**32)
            # CPU generator only: torch.manual_seed would also reseed CUDA,
            # which preserve_rng does not restore.
            torch.default_generator.manual_seed(s)
            return self.dataset[index]


class EpochIndexSampler(Sampler):
    """Turn a sampler with an ``epoch`` attribute into ``(epoch, index)`` keys."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = int(getattr(self.sampler, "epoch", 0))
        for index in self.sampler:
            yield (epoch, int(index))

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]
