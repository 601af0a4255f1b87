"""The ``bicsnet`` command line: one sub-command per job.

Every command reports a user error (bad file, record or option) as one line
on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Sequence

from ..errors import BicsnetError

__all__ = ["build_parser", "main", "one_line"]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (sub-commands register themselves)."""
    from . import data_cmd, demo_cmd, info_cmd, run_cmd

    parser = argparse.ArgumentParser(
        prog="bicsnet",
        description="BiCSNet: bidirectional cross-scale backbone - train, evaluate, predict, count, draw.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (run_cmd, info_cmd, data_cmd, demo_cmd):
        module.register(sub)
    for extra in _optional_commands():
        extra.register(sub)
    return parser


def _optional_commands() -> list:
    # Commands from other modules (bench, export) register themselves when present.
    mods = []
    for name in ("bench_cmd", "export_cmd"):
        try:
            mods.append(__import__(f"{__package__}.{name}", fromlist=["register"]))
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{name}":
                raise
    return mods


def _version() -> str:
    from .. import __version__

    return __version__


_QUALIFIED_ERROR = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception): ")


def one_line(exc: BaseException) -> str:
    """The message of a user error on one line.

    A DataLoader worker re-raises an error as ``Caught DataError in DataLoader
    worker process 0.`` followed by the worker's traceback; only the original
    message (its last line) is what the user needs.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) == 1:
        return lines[0]
    return _QUALIFIED_ERROR.sub("", lines[-1])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bicsnet`` script."""
    logging.basicConfig(level=os.environ.get("BICSNET_LOG", "INFO"), format="%(message)s", stream=sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BicsnetError as e:
        print(f"bicsnet {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bicsnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
