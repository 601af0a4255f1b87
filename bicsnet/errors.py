"""User-facing errors.

Anything the user can fix (a bad file, record or option) raises
:class:`BicsnetError` with one line naming what is wrong; the CLI prints that
line and exits with status 2 instead of a traceback.
"""
from __future__ import annotations

__all__ = ["BicsnetError", "DataError", "ConfigError", "CheckpointError"]


class BicsnetError(Exception):
    """Base class for errors caused by user input, reported in one line."""


class DataError(BicsnetError):
    """A dataset file or record is missing or malformed."""


class ConfigError(BicsnetError, ValueError):
    """An option or configuration value is invalid or inconsistent."""


class CheckpointError(BicsnetError):
    """A checkpoint is malformed, truncated, unsafe, or does not fit the model."""
