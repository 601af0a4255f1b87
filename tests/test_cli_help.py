"""Every flag of every ``bicsnet`` sub-command has a help text, and that text states its default."""
from __future__ import annotations

import argparse
from typing import Any, Iterator

import pytest

from bicsnet.cli.main import build_parser

#: Actions argparse adds itself (their help is its own), and sub-command containers.
_BUILTIN = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every sub-command's parser, depth first (``bicsnet data synth`` too)."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield from _parsers(sub)


def _actions() -> list[tuple[str, argparse.ArgumentParser, argparse.Action]]:
    out = []
    for parser in _parsers(build_parser()):
        for action in parser._actions:
            if not isinstance(action, _BUILTIN):
                out.append((f"{parser.prog} {'/'.join(action.option_strings) or action.dest}", parser, action))
    return out


ACTIONS = _actions()


def _expanded_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help line as ``--help`` prints it: ``%(default)s`` and friends filled in, as argparse's formatter does."""
    params: dict[str, Any] = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    params["prog"] = parser.prog
    for key, value in list(params.items()):
        if hasattr(value, "__name__"):
            params[key] = value.__name__
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(c) for c in params["choices"])
    return (action.help or "") % params


def _shows_default(action: argparse.Action) -> bool:
    """Whether the default is a value the help text must print (not unset, off or an empty list)."""
    default = action.default
    if default is None or default is False or default is argparse.SUPPRESS:
        return False
    return not (isinstance(default, (list, tuple)) and not default)


def _forms(value: Any) -> set[str]:
    """How a help text may print a default: as argparse's %(default)s does, or a float as ``:g`` (0.0 as 0)."""
    forms = {str(value)}
    if isinstance(value, float):
        forms.add(f"{value:g}")
    return forms


def test_the_walk_sees_every_command() -> None:
    progs = {parser.prog for parser in _parsers(build_parser())}
    for command in ("train", "eval", "predict", "info", "flops", "draw", "data synth", "data check", "demo", "bench", "export"):
        assert f"bicsnet {command}" in progs
    assert len(ACTIONS) > 100


@pytest.mark.parametrize("name, parser, action", ACTIONS, ids=[a[0] for a in ACTIONS])
def test_flag_has_help_that_shows_its_default(name: str, parser: argparse.ArgumentParser, action: argparse.Action) -> None:
    assert action.help and action.help.strip(), f"{name}: no help text"
    text = _expanded_help(parser, action)
    if _shows_default(action):
        values = action.default if isinstance(action.default, (list, tuple)) else [action.default]
        missing = [str(v) for v in values if not any(form in text for form in _forms(v))]
        assert not missing, f"{name}: help {text!r} does not show its default {action.default!r}"
    elif action.option_strings and not action.required and action.nargs != 0:
        # Unset (None) defaults mean "the recipe's", "the model's", "none": the text must say which.
        assert "default" in text.lower(), f"{name}: help {text!r} does not say what happens when the flag is left out"


def test_help_renders_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    # A stray '%' in a help text only fails when --help formats it.
    for parser in _parsers(build_parser()):
        assert parser.format_help()
    capsys.readouterr()
