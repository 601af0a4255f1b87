"""Argument helpers shared by the sub-commands."""
from __future__ import annotations

import argparse

import torch

from ..errors import ConfigError

__all__ = ["add_device_arg", "resolve_device", "parse_override"]


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """``--device cpu|cuda`` (default: CUDA when present)."""
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available, else cpu")


def resolve_device(name: str | None) -> torch.device:
    """The torch device for ``--device``; asking for CUDA without one is an error."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu)")
    return torch.device(name)


def parse_override(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE parsed as int, float, bool or string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    value: object = raw
    low = raw.lower()
    if low in ("true", "false"):
        value = low == "true"
    else:
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
    return key.strip(), value
