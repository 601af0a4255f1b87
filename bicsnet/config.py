"""A training run as one typed configuration: model, data and train sections.

:class:`RunConfig` is what ``bicsnet train`` runs and what every run directory
stores as ``config.yaml`` (resolved: every training option explicit), so
``bicsnet train --config RUN/config.yaml --out NEW`` repeats a run. Defaults
have one source each: the model's and task's in the registry and the task
table (input size, the paper's Section V-A recipe or the small-data one), the rest in the dataclasses here and in
:class:`~bicsnet.engine.trainer.TrainConfig`. Command-line flags only override.

YAML layout::

    recipe: auto   # or paper / small (bicsnet.tasks.choose_recipe)
    model: {name: bicsnet_48s, task: detection, img_size: 640, options: {focal_gamma: 1.5}}
    data:  {train_ann: ..., train_images: ..., val_ann: ..., val_images: ...}
    train: {epochs: 72, batch_size: 8, lr: 0.08}

Overrides are ``SECTION.KEY=VALUE`` (``train.lr=0.02``, ``data.synth_train=100``,
``model.options.focal_gamma=2``); a bare ``KEY=VALUE`` is a model option.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .data.spec import DataSpec
from .engine.trainer import TrainConfig
from .dataclass_checks import closest
from .errors import ConfigError
from .io import atomic_write_text

__all__ = ["ModelConfig", "RunConfig", "parse_value", "load_run_config"]


@dataclass
class ModelConfig:
    """What to train.

    Attributes:
        name: a registered model (``bicsnet info`` lists them).
        task: a key of :data:`bicsnet.tasks.TASKS`.
        img_size: input size in pixels; ``None``: the task's default, else the model's (Table I).
        options: ``create_model`` options: backbone-config fields or the task head's options.
        weights: initialise the whole model from a weights file trained elsewhere (``.safetensors``,
            ``.pth`` / ``.pt`` / ``.bin``; :func:`bicsnet.weights.load_weights`); tensors that do
            not fit are skipped and reported unless ``strict_weights``.
        strict_weights: refuse ``weights`` unless every tensor fits the model exactly.
        backbone_weights: initialise only the backbone from a weights file of any task
            (:func:`bicsnet.weights.load_backbone_weights`); every backbone tensor must fit.
        bn_momentum: PyTorch momentum of every BatchNorm (``None``: the model's; short runs need ~0.1).
    """

    name: str = "bicsnet_48"
    task: str = "detection"
    img_size: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    strict_weights: bool = False
    backbone_weights: str | None = None
    bn_momentum: float | None = None


#: The sections of a run configuration and the dataclass that types each.
SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataSpec, "train": TrainConfig}
#: Top-level scalar keys beside the sections.
SCALARS = ("recipe",)


@dataclass
class RunConfig:
    """One training run: the ``recipe`` and ``model``, ``data`` and ``train`` sections.

    ``recipe`` names which of the task's recipes fills in what the sections
    leave unset: ``auto`` (the small-data recipe below
    :data:`~bicsnet.tasks.SMALL_DATA_IMAGES` training images, else the
    paper's), ``paper`` or ``small``; a resolved configuration names the one used.
    ``train`` holds the training options set explicitly (validated against
    :class:`~bicsnet.engine.trainer.TrainConfig`'s fields); the rest come from
    the task's recipe and :class:`TrainConfig`'s defaults when the run starts
    (:meth:`train_config`).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataSpec = field(default_factory=DataSpec)
    train: dict[str, Any] = field(default_factory=dict)
    recipe: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.model, Mapping):
            self.model = _build(ModelConfig, self.model, "model")
        if isinstance(self.data, Mapping):
            self.data = _build(DataSpec, self.data, "data")
        self.train = TrainConfig.upgrade_legacy(self.train or {})  # e.g. an older config.yaml's amp_dtype
        _check_keys(self.train, _field_names(TrainConfig), "train")

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        """From plain data (a parsed YAML file).

        Raises:
            ConfigError: an unknown section or key, naming it and the closest valid one.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"a run configuration is a mapping with sections {', '.join(SECTIONS)}, got {type(d).__name__}")
        _check_keys(d, [*SCALARS, *SECTIONS], "")
        return cls(model=d.get("model") or {}, data=d.get("data") or {}, train=d.get("train") or {},
                   recipe=str(d.get("recipe") or "auto"))  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples become lists), the inverse of :meth:`from_dict`."""
        data = dataclasses.asdict(self.data)
        return {
            "recipe": self.recipe,
            "model": dataclasses.asdict(self.model),
            "data": {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()},
            "train": {k: list(v) if isinstance(v, tuple) else v for k, v in self.train.items()},
        }

    def to_yaml(self) -> str:
        """The configuration as YAML text."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_yaml` to ``path`` atomically."""
        path = Path(path)
        atomic_write_text(path, self.to_yaml())
        return path

    # ------------------------------------------------------------ overrides
    def override(self, assignments: Sequence[str]) -> "RunConfig":
        """A copy with ``SECTION.KEY=VALUE`` assignments applied (bare ``KEY=VALUE``: a model option).

        Raises:
            ConfigError: malformed assignment, or an unknown section or key (naming the closest valid one).
        """
        d = self.to_dict()
        for text in assignments:
            if "=" not in text:
                raise ConfigError(f"--set {text!r}: expected KEY=VALUE")
            key, raw = (s.strip() for s in text.split("=", 1))
            if key in SCALARS:
                d[key] = parse_value(raw)
                continue
            path = key.split(".")
            if len(path) > 1 and path[0] not in SECTIONS:
                _unknown(path[0], [*SCALARS, *SECTIONS], "")
            if path[0] not in SECTIONS:  # a bare key is a model option (--set focal_gamma=2)
                owner = next((name for name in ("train", "data") if path[0] in _field_names(SECTIONS[name])), None)
                if owner is not None:  # no model option shares a train or data key's name
                    raise ConfigError(f"--set {text!r}: a bare KEY is a model option, but {path[0]} is a key of "
                                      f"section {owner}: write --set {owner}.{key}={raw}")
                path = ["model", "options", *path]
            section = path[0]
            if len(path) == 1:
                raise ConfigError(f"--set {text!r}: name a key of section {section!r}")
            target = d[section]
            for part in path[1:-1]:
                if part not in target and section != "model":
                    _unknown(part, list(target), section)
                target = target.setdefault(part, {})
                if not isinstance(target, dict):
                    raise ConfigError(f"--set {text!r}: {part!r} is not a section")
            leaf = path[-1]
            if path[:2] != ["model", "options"]:
                allowed = _field_names(SECTIONS[section]) if section == "train" else list(d[section])
                if len(path) == 2 and leaf not in allowed:
                    _unknown(leaf, allowed, section)
            target[leaf] = parse_value(raw)
        keys = {text.split("=", 1)[0].strip() for text in assignments}
        if "train.lr" in keys and "train.lr_reference_batch" not in keys:
            d["train"]["lr_reference_batch"] = None  # a rate set here is the rate for the global batch
        return RunConfig.from_dict(d)

    # ----------------------------------------------------------- resolution
    def train_config(self, recipe: Mapping[str, Any]) -> TrainConfig:
        """The :class:`TrainConfig` of this run: ``recipe`` (the task's), then the explicit ``train`` options.

        Setting ``lr`` alone means the rate for the run's global batch (the
        recipe's reference batch is dropped), as does ``warmup_epochs`` for
        the recipe's ``warmup_steps``.

        Raises:
            ConfigError: a bad training option (naming it).
        """
        values = dict(recipe)
        if "lr" in self.train and "lr_reference_batch" not in self.train:
            values["lr_reference_batch"] = None
        if "warmup_epochs" in self.train and "warmup_steps" not in self.train:
            values.pop("warmup_steps", None)
        values.update(self.train)
        return TrainConfig.from_dict(values)


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _unknown(key: str, valid: Sequence[str], section: str) -> None:
    where = f"{section}." if section else ""
    if section and key in SCALARS:
        raise ConfigError(f"unknown key {where}{key}: {key} is a top-level key ({key}: ... beside the sections; --set {key}=...)")
    raise ConfigError(f"unknown key {where}{key}{closest(key, valid, where)}")


def _check_keys(d: Mapping[str, Any], valid: Sequence[str], section: str) -> None:
    for key in d:
        if key not in valid:
            _unknown(str(key), valid, section)


def _build(cls: type, d: Mapping[str, Any], section: str) -> Any:
    _check_keys(d, _field_names(cls), section)
    values = dict(d)
    if "scale_range" in values and isinstance(values["scale_range"], list):
        values["scale_range"] = tuple(values["scale_range"])
    return cls(**values)


def parse_value(raw: str) -> Any:
    """A command-line value: ``true``/``false`` -> bool, then int, float, a YAML list/mapping (``[0.5, 2]``), else the string."""
    low = raw.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none"):
        return None
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    if raw.strip()[:1] in ("[", "{"):
        import yaml

        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError:
            pass
    return raw


def load_run_config(path: str | os.PathLike) -> RunConfig:
    """Read a run configuration from a YAML (or JSON) file.

    Raises:
        ConfigError: the file is missing or not valid YAML, or has unknown keys (naming the file).
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"--config {path}: not a readable YAML file ({str(e).splitlines()[0]})") from None
    try:
        return RunConfig.from_dict(data or {})
    except ConfigError as e:
        raise ConfigError(f"--config {path}: {e}") from None
