"""Keep freed CPU memory in the process, so a training step does not page-fault its feature maps in again.

A training step on the CPU allocates and frees the same large tensors every step (the
demo's stem output, batch 8 at 256 px, is 33.5 MiB, and its gradient, batch-norm and
max-pool buffers as many again). glibc's ``malloc`` serves every block over its mmap
threshold (at most 32 MiB) with a fresh ``mmap`` and gives it back with ``munmap`` on
``free``, so the kernel zero-fills each of those pages again on first touch: on the 2-core
demo machines that was about 0.2 s of system time per step, and the float32 demo took
20% less time on a Zen 4 once it was gone (``benchmarks/demo.md``).
Telling ``malloc`` to keep freed blocks, as PyTorch's CPU tuning guide does by preloading
jemalloc or tcmalloc, removes it. This module does it in the C library already loaded,
through ``mallopt(3)``, the same settings as ``MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=2147483647`` in the environment at process start.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["keep_freed_memory"]

# mallopt(3) parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1  # mallopt takes a C int

_applied = False


def _is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):  # not a glibc system (no such name, or no confstr)
        return False


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse instead of returning it to the kernel.

    Sets ``M_MMAP_MAX`` to 0 (large blocks come from the heap, not from one ``mmap`` each)
    and ``M_TRIM_THRESHOLD`` to 2 GiB - 1 (the heap is not shrunk after each step), for the
    whole process and for the rest of its life (the settings cannot be read back, so
    they are not undone). Peak resident memory is what the largest step needs, 9-15%
    above the default's in the demo (``benchmarks/demo.md``), and stays there.

    Returns:
        True when the settings are in force (also on a second call), False where the C
        library is not glibc (macOS, Windows, musl): nothing is changed there.

    Source: ``mallopt(3)``; PyTorch's performance tuning guide (CPU memory allocator).
    """
    global _applied
    if _applied:
        return True
    if not _is_glibc():
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Trim threshold first: a heap that has grown is then never shrunk between the two calls.
    _applied = bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX)) and bool(mallopt(_M_MMAP_MAX, 0))
    return _applied
