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
import functools
import os

__all__ = ["keep_freed_memory", "pin_malloc_thresholds", "trim_heap"]

# mallopt(3) parameter numbers and glibc's default M_MMAP_MAX, from glibc's <malloc.h> / malloc.c.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
_MMAP_MAX_DEFAULT = 65536
_INT_MAX = 2**31 - 1  # mallopt takes a C int


def _is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):  # not a glibc system (no such name, or no confstr)
        return False


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The loaded C library with ``mallopt`` and ``malloc_trim`` typed; ``None`` where it is not glibc."""
    if not _is_glibc():
        return None
    try:
        lib = ctypes.CDLL(None)
        lib.mallopt.argtypes, lib.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        lib.malloc_trim.argtypes, lib.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return lib


def _mallopt(*settings: tuple[int, int]) -> bool:
    lib = _libc()
    return lib is not None and all(lib.mallopt(param, value) == 1 for param, value in settings)


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse instead of returning it to the kernel.

    Sets ``M_TRIM_THRESHOLD`` to 2 GiB - 1 (the heap is not shrunk after each step) and
    then ``M_MMAP_MAX`` to 0 (large blocks come from the heap, not from one ``mmap`` each),
    for the whole process until something sets them again (:func:`pin_malloc_thresholds`
    does). Peak resident memory is what the largest step needs, 9-15% above the
    default's in the demo (``benchmarks/demo.md``), and stays there.

    Returns:
        True when the settings are in force, False where the C library is not glibc
        (macOS, Windows, musl): nothing is changed there.

    Source: ``mallopt(3)``; PyTorch's performance tuning guide (CPU memory allocator).
    """
    # Trim threshold first: a heap that has grown is then never shrunk between the two calls.
    return _mallopt((M_TRIM_THRESHOLD, _INT_MAX), (M_MMAP_MAX, 0))


def pin_malloc_thresholds() -> bool:
    """Make glibc map every allocation over 64 KiB with ``mmap`` and unmap it on ``free``.

    By default glibc raises its mmap threshold after large frees and keeps freed
    tensors in the heap, so resident memory would depend on what ran before; fixed
    thresholds make it track the live tensors, which is what a memory benchmark
    wants (``bicsnet bench``). ``M_MMAP_MAX`` goes back to glibc's default, undoing
    :func:`keep_freed_memory`. Allocation gets a little slower.

    Returns:
        True when the settings are in force, False off glibc (nothing changed).
    """
    return _mallopt((M_MMAP_MAX, _MMAP_MAX_DEFAULT), (M_MMAP_THRESHOLD, 64 * 1024), (M_TRIM_THRESHOLD, 128 * 1024))


def trim_heap() -> None:
    """Return the free memory at the top of glibc's heap to the kernel (``malloc_trim(0)``); nothing off glibc."""
    lib = _libc()
    if lib is not None:
        lib.malloc_trim(0)
