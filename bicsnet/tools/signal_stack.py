"""A per-thread alternate signal stack that outlives OpenVINO's CPU plugin (Linux).

Why this exists: OpenVINO's CPU plugin (``SigAltStackSetup`` in its
``intel_cpu/src/sigstack_manager.cpp``; OpenVINO 2026.4) gives the thread that
first uses it a larger alternate signal stack (``sigaltstack(2)``, so that AMX
register state fits a signal frame). There is one plugin per ``openvino.Core``.
When a plugin is destroyed it unmaps its stack, and it puts back the stack it
replaced *only if its own is still the current one*. Two Cores destroyed in
the order they were created therefore leave the thread's alternate stack at the
first Core's unmapped memory. Python installs every signal handler it runs
(``SIGINT``, torch's ``SIGCHLD`` handler once a DataLoader has had worker
processes) with ``SA_ONSTACK``, so the next such signal writes its frame there:
a segmentation fault, or silently corrupted memory where the address was mapped
again (``docs/reliability.md``).

:func:`keep_signal_stack` wraps bicsnet's OpenVINO calls (compiling a model,
querying the CPU plugin, NNCF quantization). On leaving it, the thread's
alternate stack is bicsnet's own: allocated once per thread, never freed, and
at least as large as the plugin's. A plugin destroyed later then finds another
stack current and leaves it in place. Off Linux, or where ``sigaltstack``
cannot be called, it does nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import mmap
import sys
import threading
from typing import Iterator, NamedTuple

__all__ = ["SignalStack", "current_signal_stack", "install_signal_stack", "keep_signal_stack"]

log = logging.getLogger(__name__)

_SS_ONSTACK, _SS_DISABLE = 1, 2  # Linux's ss_flags
_AT_MINSIGSTKSZ = 51  # getauxval key: the kernel's smallest signal frame, AMX state included
_MIN_BYTES = 1 << 16


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


class SignalStack(NamedTuple):
    """A thread's alternate signal stack as ``sigaltstack(2)`` reports it: address and size in bytes, ``ss_flags``."""

    address: int
    size: int
    flags: int

    @property
    def disabled(self) -> bool:
        return bool(self.flags & _SS_DISABLE)


_lock = threading.Lock()
# Thread id -> that thread's stack. Never unmapped: the kernel may write a signal frame to it at any time.
_stacks: dict[int, tuple[mmap.mmap, ctypes.c_char]] = {}


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library with ``sigaltstack`` and ``getauxval`` typed; ``None`` off Linux or without them."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.sigaltstack.argtypes = [ctypes.POINTER(_StackT), ctypes.POINTER(_StackT)]
        lib.sigaltstack.restype = ctypes.c_int
        lib.getauxval.argtypes = [ctypes.c_ulong]
        lib.getauxval.restype = ctypes.c_ulong
    except (OSError, AttributeError):  # a libc without them: nothing to guard
        return None
    return lib


def current_signal_stack() -> SignalStack | None:
    """This thread's alternate signal stack, or ``None`` off Linux."""
    lib = _libc()
    if lib is None:
        return None
    cur = _StackT()
    if lib.sigaltstack(None, ctypes.byref(cur)) != 0:
        return None
    return SignalStack(int(cur.ss_sp or 0), int(cur.ss_size), int(cur.ss_flags))


def _stack_bytes(lib: ctypes.CDLL) -> int:
    """The plugin's size (the kernel's minimum frame + 8 KiB) doubled, at least 64 KiB, in whole pages."""
    need = max(_MIN_BYTES, 2 * (int(lib.getauxval(_AT_MINSIGSTKSZ)) + 8192))
    page = mmap.PAGESIZE
    return -(-need // page) * page


def install_signal_stack() -> SignalStack | None:
    """Make bicsnet's own stack this thread's alternate signal stack; returns it (``None`` off Linux or if refused).

    Left unchanged while a signal handler runs on the current alternate stack
    (the kernel refuses a change then). A refusal is logged, not raised: the
    guard must never turn a working OpenVINO call into a failure.
    """
    lib = _libc()
    if lib is None:
        return None
    tid = threading.get_ident()
    with _lock:
        if tid not in _stacks:
            size = _stack_bytes(lib)
            buf = mmap.mmap(-1, size)
            _stacks[tid] = (buf, ctypes.c_char.from_buffer(buf))
        buf, first = _stacks[tid]
    ours = SignalStack(ctypes.addressof(first), len(buf), 0)
    cur = current_signal_stack()
    if cur is None or cur.flags & _SS_ONSTACK:
        return None
    if cur.address == ours.address and not cur.disabled:
        return ours
    new = _StackT(ours.address, 0, ours.size)
    if lib.sigaltstack(ctypes.byref(new), None) != 0:
        log.debug("sigaltstack refused bicsnet's signal stack (errno %d)", ctypes.get_errno())
        return None
    return ours


@contextlib.contextmanager
def keep_signal_stack() -> Iterator[None]:
    """Run the block, then give this thread bicsnet's own alternate signal stack (:func:`install_signal_stack`).

    Wrap every call that may create or destroy an ``openvino.Core`` (compiling,
    querying the CPU plugin, NNCF quantization). The stack is installed also
    when the block raises.
    """
    try:
        yield
    finally:
        install_signal_stack()
