"""Argument helpers shared by the sub-commands."""
from __future__ import annotations

import argparse

import torch

__all__ = ["add_device_arg", "resolve_device", "parse_override"]


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda|cuda:N`` (default: CUDA when present)."""
    p.add_argument("--device", default=None, metavar="DEVICE", help="auto, cpu, cuda or cuda:N (default auto: cuda when available)")


def resolve_device(name: str | None) -> torch.device:
    """The torch device for ``--device``; asking for an unavailable one is a ConfigError."""
    from ..engine.distributed import resolve_device as resolve

    return resolve(name or "auto")


def parse_override(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE parsed as :func:`bicsnet.config.parse_value` does (bool, int, float, list, string)."""
    from ..config import parse_value
    from ..errors import ConfigError

    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    return key.strip(), parse_value(raw)
