"""Training logs in the run directory: ``log.csv``, ``eval_log.jsonl``, TensorBoard.

Rows are appended and flushed one at a time, so a killed run keeps every row
written so far (a half-written last line is dropped on resume).  When a run
resumes from step ``s``, rows after ``s`` - written after the checkpoint the
run resumes from - are removed, so the logs describe exactly one trajectory.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from ..io import append_text, atomic_write_text

__all__ = ["CsvLog", "JsonlLog", "TensorBoardLog", "flatten_metrics"]


class CsvLog:
    """Append-only CSV with a fixed header chosen at the first row."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.columns: list[str] | None = None

    def reset(self) -> None:
        """Start a fresh log (new run): remove any existing file."""
        self.path.unlink(missing_ok=True)
        self.columns = None

    def truncate_after(self, step: int) -> None:
        """Keep the header and the complete rows with ``step <= step`` (resume)."""
        if not self.path.is_file():
            self.columns = None
            return
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows:
            self.columns = None
            return
        header, kept = rows[0], []
        for row in rows[1:]:
            if len(row) != len(header):
                continue  # partial line from a kill mid-write
            try:
                if int(float(row[0])) <= step:
                    kept.append(row)
            except ValueError:
                continue
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(kept)
        atomic_write_text(self.path, buf.getvalue())
        self.columns = header

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one row; the first row fixes the columns (later unknown keys are dropped)."""
        new_file = self.columns is None
        if new_file:
            self.columns = list(row)
        values = [_fmt(row.get(c, "")) for c in self.columns]  # type: ignore[union-attr]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        if new_file:
            writer.writerow(self.columns)
        writer.writerow(values)
        if new_file:  # header and first row replace whatever was there
            atomic_write_text(self.path, buf.getvalue())
        else:
            append_text(self.path, buf.getvalue())


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


class JsonlLog:
    """Append-only JSON-lines file whose records carry a ``"step"`` field."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def reset(self) -> None:
        """Start a fresh log (new run)."""
        self.path.unlink(missing_ok=True)

    def truncate_after(self, step: int) -> None:
        """Keep the complete records with ``step <= step`` (resume)."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line)["step"]) <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record and flush."""
        append_text(self.path, json.dumps(dict(record)) + "\n")


def _summary_writer() -> Callable[..., Any]:
    """``torch.utils.tensorboard.SummaryWriter``; ImportError when the ``tensorboard`` package is missing."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter


class TensorBoardLog:
    """Scalars to TensorBoard when the ``tensorboard`` package is installed; otherwise a no-op.

    Args:
        log_dir: the event files' folder (``RUN/tb``).
        enabled: ``False``: no writer, no message (evaluation-only runs, ranks other than 0).
        purge_step: drop events after this step (a resumed run, like :meth:`CsvLog.truncate_after`).
        writer_factory: builds the writer as ``writer_factory(log_dir, purge_step=...)``; default
            :class:`torch.utils.tensorboard.SummaryWriter`, imported here (it raises ImportError
            without ``tensorboard``). Tests pass their own.

    :attr:`status` is the one line a run prints about it (``None`` when disabled).
    """

    def __init__(
        self, log_dir: str | os.PathLike, enabled: bool = True, purge_step: int | None = None,
        writer_factory: Callable[..., Any] | None = None,
    ) -> None:  # fmt: skip
        self.writer = None
        self.status: str | None = None
        if not enabled:
            return
        try:
            factory = writer_factory or _summary_writer()
        except ImportError:  # optional dependency (extra "tensorboard")
            self.status = "TensorBoard: not installed (pip install tensorboard); logging to log.csv only"
            return
        self.writer = factory(str(log_dir), purge_step=purge_step)
        self.status = f"TensorBoard: logging to {log_dir}"

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "train/") -> None:
        """Log numeric values under ``prefix``."""
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(prefix + key, value, step)

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"bbox": {"AP": 0.3}}`` -> ``{"bbox/AP": 0.3}``; non-numeric leaves (lists) are dropped."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out

