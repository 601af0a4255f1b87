"""``create_model``: a registered model for a task, and the pieces families build with.

A family's entry point (see :mod:`bicsnet.models.registry`) usually has a
pyramid backbone and lets the task table put the head on it:
:func:`pyramid_model` splits the caller's options into backbone-config fields
and the task head's options (:data:`bicsnet.tasks.TASKS`), refusing any other,
and :func:`task_model` builds the head on a backbone.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import nn

from ..dataclass_checks import closest
from ..errors import CheckpointError, ConfigError
from ..tasks import TASKS, get_task
from .registry import get_entry, register_model

__all__ = ["create_model", "create_model_from_config", "pyramid_model", "register_pyramid_model", "task_model", "load_checkpoint_model", "model_meta"]


def create_model(
    name: str,
    task: str = "backbone",
    num_classes: int | None = None,
    *,
    pretrained: str | os.PathLike | None = None,
    strict_weights: bool = False,
    **options: Any,
) -> nn.Module:
    """Build registered model ``name`` for ``task``, optionally with weights trained elsewhere.

    Args:
        name: a name from :func:`~bicsnet.models.registry.list_models`.
        task: a key of :data:`bicsnet.tasks.TASKS`: ``backbone`` (ordered dict
            P3..P7), ``detection`` (RetinaNet), ``instance`` (Mask R-CNN),
            ``segmentation`` or ``classification``.
        num_classes: classes of the head (every task but ``backbone``).
        options: backbone options (any :class:`~bicsnet.arch.backbone.BiCSNetConfig`
            field, e.g. ``width_mult``, ``norm``, ``activation``, ``drop_path_rate``)
            or options of the task's head (``TASKS[task].head_options``, e.g. ``focal_gamma``).
        pretrained: a weights file to initialise the whole model from: ``.safetensors``
            (bicsnet's or any), or a ``.pth`` / ``.pt`` / ``.bin`` state dict, possibly wrapped
            or prefixed (:func:`bicsnet.weights.load_weights`; its report is logged to
            ``bicsnet.weights``). A bicsnet file of the same model and task (a run's
            ``model.safetensors``) also supplies the options it was built with (e.g.
            ``head_norm="gn"`` from the small-data recipe); ``options`` given here win.
            No published BiCSNet weights exist, so there is no ``True``
            (``False``, timm's "none", is accepted).
        strict_weights: refuse ``pretrained`` unless every tensor fits; otherwise tensors
            that do not fit (a head of another class count) are skipped and reported.

    Returns:
        The model, with ``bicsnet_config`` (name, task, num_classes, options): the
        plain data that rebuilds it, which checkpoints store.

    Raises:
        ConfigError: unknown model, task or option; a task the model does not
            support; a missing or non-positive ``num_classes``; ``pretrained`` not a path.
        CheckpointError: ``pretrained`` unreadable, or nothing (``strict_weights``: not everything) in it fits.
    """
    if pretrained is False:  # timm's spelling of "no weights"
        pretrained = None
    if pretrained is not None and not isinstance(pretrained, (str, os.PathLike)):
        raise ConfigError(f"pretrained={pretrained!r}: expected the path of a weights file (no published weights to download)")
    entry = get_entry(name)
    spec = get_task(task)
    if task not in entry.tasks:
        raise ConfigError(f"{name} supports task(s) {', '.join(entry.tasks)}, not {task!r}")
    if spec.needs_classes and (num_classes is None or int(num_classes) < 1):
        raise ConfigError(f"task {task!r} needs num_classes >= 1, got {num_classes}")
    if pretrained is not None:
        # A bicsnet weights file of this model and task describes how it was built (e.g. the
        # small-data recipe's GroupNorm head): build it that way, explicit options winning, so
        # its tensors land where they were trained (a BatchNorm head would take the GroupNorm
        # affine weights and keep fresh running statistics: a silently different model).
        built_with = _file_options(name, task, pretrained)
        options = {**built_with, **options}
        if built_with:
            logging.getLogger("bicsnet.weights").info("pretrained %s: built with the file's options %s", pretrained, built_with)
    model = entry.fn(task, None if num_classes is None else int(num_classes), **options)
    model.bicsnet_config = {"name": name, "task": task, "num_classes": num_classes, "overrides": dict(options)}
    if pretrained is not None:
        from ..weights import load_weights  # local: importing the models package does not import the engine

        report = load_weights(model, pretrained, strict=strict_weights)
        # A partial load is worth a warning: the unfilled tensors stay random.
        level = logging.WARNING if report.problems() else logging.INFO
        logging.getLogger("bicsnet.weights").log(level, "pretrained %s: %s", pretrained, report.summary())
    return model


def _file_options(name: str, task: str, path: str | os.PathLike) -> dict[str, Any]:
    """The options a bicsnet ``.safetensors`` file records for model ``name`` on ``task`` (``{}`` for other files)."""
    from ..engine.checkpoint import read_model_meta, sniff_format  # local, as in create_model
    from ..weights import weights_path

    file = weights_path(path)
    if not file.is_file() or sniff_format(file) != "safetensors":
        return {}  # a torch.save file, or a missing one: load_weights says what is wrong
    described = read_model_meta(file, require_meta=False).get("model")
    if not isinstance(described, Mapping) or described.get("name") != name or described.get("task") != task:
        return {}
    overrides = described.get("overrides") or {}
    return dict(overrides) if isinstance(overrides, Mapping) else {}


def create_model_from_config(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a model from its ``bicsnet_config`` (e.g. a checkpoint's metadata).

    Raises:
        ConfigError: the config lacks ``name`` or ``task``, or names an unknown model or option.
    """
    try:
        name, task = config["name"], config["task"]
    except (KeyError, TypeError) as e:
        raise ConfigError(f"model config needs 'name' and 'task', got {config!r}") from e
    return create_model(name, task, config.get("num_classes"), **config.get("overrides", {}))


def task_model(
    task: str, backbone: nn.Module, num_classes: int | None, options: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> nn.Module:
    """Put ``task``'s head on ``backbone``: ``defaults`` (the family's) updated by ``options`` (the caller's).

    Raises:
        ConfigError: an option the task's head does not take.
    """
    spec = get_task(task)
    unknown = sorted(set(options) - spec.head_options)
    if unknown:
        raise ConfigError(f"option(s) {', '.join(unknown)} do not apply to task {task!r}{closest(unknown[0], sorted(spec.head_options))}")
    return spec.build(backbone, num_classes, **{**(defaults or {}), **options})


def pyramid_model(
    name: str,
    task: str,
    num_classes: int | None,
    config: Any,
    options: Mapping[str, Any],
    build_backbone: Callable[[Any], nn.Module],
    head_defaults: Mapping[str, Any] | None = None,
) -> nn.Module:
    """A model on a backbone built from a config dataclass (``BiCSNetConfig``).

    ``options`` naming config fields replace them; the rest go to the task's
    head. ``head_defaults`` are the family's head settings for this task
    (e.g. anchor scale); tasks whose model resizes its input get ``img_size``
    from the model's default input size unless given.

    Raises:
        ConfigError: an option that is neither a config field nor an option of the task's head.
    """
    spec = get_task(task)
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(options) - fields - spec.head_options)
    if unknown:
        hint = closest(unknown[0], sorted(fields | spec.head_options))
        raise ConfigError(f"option(s) {', '.join(unknown)} do not apply to {name} with task {task!r}{hint}")
    bb = {k: v for k, v in options.items() if k in fields}
    head = {k: v for k, v in options.items() if k not in fields}
    backbone = build_backbone(dataclasses.replace(config, **bb) if bb else config)
    defaults = dict(head_defaults or {})
    if spec.uses_img_size:
        defaults.setdefault("img_size", get_entry(name).input_size)
    return task_model(task, backbone, num_classes, head, defaults)


def register_pyramid_model(
    name: str,
    *,
    config: Any,
    build_backbone: Callable[[Any], nn.Module],
    input_size: int,
    description: str,
    tiny: Mapping[str, Any],
    head_defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> Callable[..., nn.Module]:
    """Register entry point ``name``: ``build_backbone(config)`` for every task of the task table.

    ``head_defaults`` maps a task name to the family's head settings for it
    (e.g. ``{"detection": {"anchor_scale": 4.0}}``).
    """
    per_task = dict(head_defaults or {})

    def entry(task: str, num_classes: int | None = None, **options: Any) -> nn.Module:
        return pyramid_model(name, task, num_classes, config, options, build_backbone, per_task.get(task))

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = description
    return register_model(input_size=input_size, description=description, tasks=tuple(TASKS), config=config, tiny=tiny)(entry)


def model_meta(model: nn.Module, task: str, img_size: int, data: Any) -> dict[str, Any]:
    """Plain-data description stored in every weights file: enough to rebuild and label.

    ``data`` is the run's :class:`~bicsnet.data.spec.TaskData`.
    """
    return {
        "model": dict(model.bicsnet_config),
        "task": task,
        "img_size": img_size,
        "num_classes": data.num_classes,
        "class_names": data.class_names,
        **data.extra_meta,
    }


def load_checkpoint_model(path: str | os.PathLike, device: Any = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a weights file (or its run directory) describes and load its weights.

    Returns:
        ``(model in eval mode on device, the file's metadata)``.

    Raises:
        CheckpointError: unreadable file, metadata without the model description, or weights that do not fit.
    """
    from ..engine.checkpoint import load_model, load_state_into

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    state, meta = load_model(path)
    if "model" not in meta or "task" not in meta:
        raise CheckpointError(f"{path}: metadata lacks the model description ('model', 'task')")
    model = create_model_from_config(meta["model"])
    load_state_into(model, state, strict=True, source=str(path))
    return model.to(device).eval(), meta
