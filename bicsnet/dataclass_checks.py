"""Checks shared by the option dataclasses (backbone, training and run configuration).

Low in the package (it imports only :mod:`bicsnet.errors`), so every layer
may use it.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping, Sequence

from .errors import ConfigError

__all__ = ["closest", "reject_unknown_fields"]


def closest(key: str, valid: Sequence[str], prefix: str = "") -> str:
    """``"; did you mean PREFIX+X?"`` for the valid name X closest to ``key``, else ``"; valid: ..."``."""
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"; did you mean {prefix}{match[0]}?" if match else f"; valid: {', '.join(valid)}"


def reject_unknown_fields(cls: type, data: Mapping[str, Any], what: str) -> None:
    """Refuse keys of ``data`` that are not fields of dataclass ``cls`` (a ``from_dict``'s first step).

    Raises:
        ConfigError: ``unknown {what}(s): a, b; did you mean x?`` naming them, sorted, and the
            field closest to the first.
    """
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown {what}(s): {', '.join(unknown)}{closest(unknown[0], known)}")
