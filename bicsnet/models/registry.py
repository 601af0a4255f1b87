"""The model registry: named entry points, registered by each family's own module.

As timm's ``_registry.py``: a family module (:mod:`bicsnet.models.bicsnet`,
:mod:`bicsnet.models.lite`, :mod:`bicsnet.models.baselines`) decorates one
function per model with :func:`register_model`; the decorator records the
function with what is known about the model without building it (default
input size, description, the tasks it supports, its backbone configuration
for drawing and ``bicsnet info``). This module imports no family and no task;
:mod:`bicsnet.models` imports the families, which fills the registry.

An entry point is called as ``fn(task, num_classes, **options)`` and returns
the model; :func:`bicsnet.models.create_model` is the public way in.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import nn

from ..errors import ConfigError

__all__ = ["ModelEntry", "register_model", "list_models", "get_entry", "default_input_size"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model.

    Attributes:
        name: registry name (e.g. ``bicsnet_48``).
        fn: the entry point, ``fn(task, num_classes, **options) -> nn.Module``.
        input_size: default input size in pixels (Table I; the CLI's ``--img-size``).
        description: one line for ``bicsnet info``.
        tasks: task names the entry point builds (keys of :data:`bicsnet.tasks.TASKS`).
        config: the backbone configuration (a :class:`~bicsnet.arch.backbone.BiCSNetConfig`),
            ``None`` for models that are not built from the topology tables.
        tiny: options that make the model tiny (tests and CPU smoke runs).
        family: the module that registered it.
    """

    name: str
    fn: Callable[..., nn.Module]
    input_size: int
    description: str
    tasks: tuple[str, ...]
    config: Any = None
    tiny: Mapping[str, Any] = field(default_factory=dict)
    family: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    *,
    input_size: int,
    description: str,
    tasks: tuple[str, ...],
    config: Any = None,
    tiny: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering an entry point under its function name (or ``name``).

    Raises:
        ValueError: the name is already registered.
    """

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        _REGISTRY[key] = ModelEntry(
            key, fn, input_size, description, tuple(tasks), config, dict(tiny or {}), fn.__module__.rsplit(".", 1)[-1]
        )
        return fn

    return deco


def list_models(pattern: str | None = None, task: str | None = None) -> list[str]:
    """Registered names, sorted; ``pattern`` is a shell wildcard (``"*48*"``) or a substring.

    ``task`` keeps the models that support that task.
    """
    names = sorted(_REGISTRY)
    if pattern:
        wild = any(c in pattern for c in "*?[")
        names = [n for n in names if (fnmatch.fnmatchcase(n, pattern) if wild else pattern in n)]
    if task:
        names = [n for n in names if task in _REGISTRY[n].tasks]
    return names


def get_entry(name: str) -> ModelEntry:
    """The entry for ``name``.

    Raises:
        ConfigError: unknown name, suggesting the closest registered names.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(list_models())}"
        raise ConfigError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def default_input_size(name: str) -> int:
    """The model's input size from Table I (the CLI's default ``--img-size``)."""
    return get_entry(name).input_size
