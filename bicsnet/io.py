"""Atomic file output: nothing we write is ever left half-written.

Every artefact (checkpoints, metrics, images, JSON) goes to a temporary file in
the destination directory, is flushed and fsync'ed, then renamed over the
target with :func:`os.replace`, which is atomic on POSIX and Windows.

File modes: :func:`tempfile.mkstemp` creates its file ``0600`` whatever the
umask, so before the rename the file is given ``0o666 & ~umask``, the mode a
plain ``open(path, "w")`` would create: with the usual umask ``022`` results
are ``0644`` and can be shared, with ``077`` they stay private. The umask is
read from ``/proc/self/status`` where the kernel reports it (Linux >= 4.7);
elsewhere :func:`os.umask` is the only way to read it, and it *sets* the
process-wide mask while reading, so that read is serialised by a lock and
briefly sets the strictest mask ``077``: a file another thread creates in that
instant can come out more private than asked, never more open. Logs that grow
row by row (``log.csv``) are appended with :func:`append_text`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Callable, Iterator

__all__ = [
    "atomic_open", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_save", "atomic_save_files",
    "append_text", "current_umask", "file_mode",
]  # fmt: skip

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (e.g. ``0o022``), read without changing it where the OS allows.

    Linux reports it in ``/proc/self/status`` (``Umask:`` line). Elsewhere it is
    read with :func:`os.umask` under a lock, setting ``0o077`` for that instant
    (see the module docstring for why that is the safe value).
    """
    mask = _umask_from_proc()
    return mask if mask is not None else _umask_from_os()


def _umask_from_proc() -> int | None:
    """The ``Umask:`` line of ``/proc/self/status`` (Linux >= 4.7), ``None`` where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_from_os() -> int:
    """The umask via :func:`os.umask`, which sets it to read it: locked, ``077`` meanwhile."""
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The permission bits a newly created file gets: ``0o666 & ~umask`` (``0o644`` under umask ``022``)."""
    return 0o666 & ~current_umask()


def _publish(tmp: str | os.PathLike, path: str | os.PathLike, mode: int) -> None:
    """Give ``tmp`` ``mode`` and rename it over ``path``."""
    with contextlib.suppress(NotImplementedError):  # a file system without permissions
        os.chmod(tmp, mode)
    os.replace(tmp, path)


@contextlib.contextmanager
def _replace_from_temp(path: Path, suffix: str) -> Iterator[tuple[int, str]]:
    """Create a temporary sibling of ``path`` and yield its ``(fd, name)``.

    The body writes (and fsyncs) the file; when it returns normally the file is
    given the umask's mode (:func:`file_mode`; ``mkstemp`` made it ``0600``) and
    renamed over ``path`` with :func:`os.replace`; when it raises the file is
    removed and ``path`` is untouched. The body owns ``fd`` (closes it).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        yield fd, tmp
        _publish(tmp, path, file_mode())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path``; on success rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports 'w' and 'wb', not {mode!r}")
    path = Path(path)
    with _replace_from_temp(path, ".tmp") as (fd, _):
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make renames into ``directory`` durable (where the OS can open a directory)."""
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


# An innermost JSON list of numbers (no brackets, braces or quotes inside it).
_NUMBER_LIST = re.compile(r"\[[\s\d.eE+\-,]*\]")


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Serialise ``obj`` as JSON to ``path`` atomically.

    With ``indent``, each innermost list of numbers stays on one line, so a
    1000-class confusion matrix is 1000 lines, not a million.
    """
    text = json.dumps(obj, indent=indent)
    if indent is not None:
        text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(0)[1:-1].split(",") if v.strip()) + "]", text)
    atomic_write_text(path, text + "\n")


def atomic_save(path: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Atomically produce ``path`` with a library writer that takes a file name.

    ``writer(tmp_path)`` must write the complete file (e.g. ``PIL.Image.save``,
    ``safetensors.torch.save_file``, ``torch.save``); the result is renamed over
    ``path`` only if it returns normally.
    """
    path = Path(path)
    with _replace_from_temp(path, path.suffix or ".tmp") as (fd, tmp):
        os.close(fd)
        writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())


def atomic_save_files(path: str | os.PathLike, writer: Callable[[str], None]) -> list[Path]:
    """Like :func:`atomic_save`, for a writer that may also write sidecar files next to its target.

    ``writer(staged_path)`` gets a path with ``path``'s own file name inside a
    private staging folder beside ``path``, so files it names after it (ONNX
    external weights ``model.onnx.data``, referenced *by name* from the graph)
    carry the right names. When it returns normally every file it wrote is
    given the umask's mode and renamed into ``path``'s folder, ``path`` itself
    last; when it raises nothing is moved. Each file is replaced atomically;
    the set is not (a reader may briefly see a new sidecar beside the old file).

    Returns:
        The published files, ``path`` last.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        staged = staging / path.name
        writer(str(staged))
        if not staged.is_file():
            raise FileNotFoundError(f"{path}: the writer did not write it")
        files = sorted((p for p in staging.iterdir() if p.is_file() and p != staged), key=lambda p: p.name) + [staged]
        mode = file_mode()
        published = []
        for f in files:
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
            target = path.parent / f.name
            _publish(f, target, mode)
            published.append(target)
        _fsync_dir(path.parent)
        return published
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` (UTF-8) to ``path`` and flush; create it (umask's mode) if missing.

    For logs that grow one row at a time (``log.csv``, ``eval_log.jsonl``):
    rewriting them atomically per row would cost O(rows^2). A kill can leave
    at most a partial last line, which the readers drop (:mod:`bicsnet.engine.runlog`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
