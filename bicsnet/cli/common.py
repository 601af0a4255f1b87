"""Argument helpers shared by the sub-commands."""
from __future__ import annotations

import argparse

import torch

__all__ = ["DEVICE_HELP", "add_device_arg", "resolve_device", "parse_override"]

#: The ``--device`` help text (the rules are :func:`bicsnet.engine.distributed.resolve_device`'s).
DEVICE_HELP = (
    "auto, cpu, cuda, cuda:N or mps (default auto: cuda if available, else mps, else cpu; "
    "under torchrun cuda is each process's LOCAL_RANK GPU)"
)


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda|cuda:N|mps``; left out it is ``None`` (auto, or what a ``--config`` file says)."""
    p.add_argument("--device", default=None, metavar="DEVICE", help=DEVICE_HELP)


def resolve_device(name: str | None) -> torch.device:
    """The torch device for ``--device``.

    Raises:
        ConfigError: a malformed device or one this machine lacks, naming ``--device``.
    """
    from ..engine.distributed import resolve_device as resolve

    return resolve(name or "auto", option="--device")


def parse_override(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE parsed as :func:`bicsnet.config.parse_value` does (bool, int, float, list, string)."""
    from ..config import parse_value
    from ..errors import ConfigError

    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    return key.strip(), parse_value(raw)
