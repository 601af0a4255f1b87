"""Atomic file output: nothing we write is ever left half-written.

Every artefact (checkpoints, metrics, images, JSON) goes to a temporary file in
the destination directory, is flushed and fsync'ed, then renamed over the
target with :func:`os.replace`, which is atomic on POSIX and Windows.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_save"]


@contextlib.contextmanager
def _replace_from_temp(path: Path, suffix: str) -> Iterator[tuple[int, str]]:
    """Create a temporary sibling of ``path`` and yield its ``(fd, name)``.

    The body writes (and fsyncs) the file; when it returns normally the file is
    renamed over ``path`` with :func:`os.replace`, when it raises the file is
    removed and ``path`` is untouched. The body owns ``fd`` (closes it).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        yield fd, tmp
        os.replace(tmp, path)
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
    # Make the rename itself durable.
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
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


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Serialise ``obj`` as JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


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
