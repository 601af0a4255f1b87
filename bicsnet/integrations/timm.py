"""bicsnet's models in timm's registry: ``timm.create_model("bicsnet_48", ...)``.

Registration follows timm's own families (``timm/models/byobnet.py``): one
entry point per model registered with ``timm.models.register_model``, its
pretrained configuration from ``generate_default_cfgs`` in this module's
``default_cfgs``, and the model built by ``timm.models.build_model_with_cfg``,
which loads ``pretrained`` weights and wraps ``features_only`` models. Registered:
every bicsnet model with a classifier and a pyramid backbone (tasks
``classification`` and ``backbone``), under its bicsnet name
(:func:`timm_model_names`).

* ``timm.create_model(name, num_classes=K, **options)`` is
  ``bicsnet.create_model(name, task="classification", num_classes=K, **options)``
  (``options``: bicsnet's backbone options; timm's ``drop_rate`` is the head's
  ``dropout``, ``drop_path_rate`` the backbone's stochastic depth). The model takes
  images in [0, 1] and standardises them itself (ImageNet mean / std), so its
  ``pretrained_cfg`` says mean 0, std 1: timm's data pipeline then hands it [0, 1] images.
* ``features_only=True, out_indices=...``: the pyramid levels P3..P7 (indices
  0..4, strides 8..128) as a list (:class:`BiCSNetFeatures`), with timm's ``feature_info``.
* ``pretrained=True, pretrained_cfg_overlay=dict(file=PATH)``: weights from a
  ``torch.save`` state dict or a ``.safetensors`` file, read by timm's loader. As
  for every timm model, the file's classifier is loaded when ``num_classes``
  equals the configuration's (1000, or the overlay's ``num_classes=K``) and
  dropped otherwise (fine-tuning). A bare bicsnet backbone's state dict
  (``bicsnet.create_model(name).state_dict()``) loads too (:func:`backbone_state_filter`).

When: ``import bicsnet`` registers the models at once if timm is already
imported, else right after the first ``import timm`` (a one-shot import hook,
:func:`register_when_timm_imported`): importing timm adds about 15% to
``import bicsnet``, which users who never touch timm should not pay. Where
timm is not installed nothing happens and nothing is printed. A name timm
already has (none today) keeps timm's model, and the skip is logged.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
import types
import warnings
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..models import create_model, get_entry, list_models
from ..tasks import get_task

__all__ = [
    "BiCSNetFeatures", "backbone_state_filter", "register_timm_models", "register_when_timm_imported", "timm_model_names",
]  # fmt: skip

_log = logging.getLogger(__name__)

#: What a timm model is (timm's models are classifiers) and the task its ``features_only`` form reads.
CLASSIFIER_TASK = "classification"
FEATURES_TASK = "backbone"

#: Pretrained configurations of the registered models, by name: timm's ``register_model``
#: reads the ``default_cfgs`` of the entry point's module, as in timm's own families.
default_cfgs: dict[str, Any] = {}

_PAPER = "BiCSNet: A Bidirectional Cross-Scale Backbone for Recognition and Localization (IEEE TCSVT 2022)"


def timm_model_names() -> list[str]:
    """bicsnet models that timm can build: a classifier whose backbone is a pyramid (both tasks), sorted."""
    return [n for n in list_models(task=CLASSIFIER_TASK) if FEATURES_TASK in get_entry(n).tasks]


def _pretrained_cfg(name: str) -> dict[str, Any]:
    """timm's pretrained configuration of ``name``: no weights, bicsnet's classification input and evaluation crop."""
    entry = get_entry(name)
    task = get_task(CLASSIFIER_TASK)
    size = task.default_size(entry.input_size)
    return {
        "url": "",
        "num_classes": task.default_classes,
        "input_size": (3, size, size),
        "crop_pct": 0.875,  # bicsnet's evaluation transform: short side to size * 256 / 224, centre crop
        "interpolation": "bilinear",
        # The model standardises [0, 1] images itself (bicsnet.models.heads.Normalize).
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "first_conv": "backbone.stem.0",
        "classifier": "head.fc",
        "license": "apache-2.0",
        "description": entry.description,
        "paper_name": _PAPER,
    }


def _resolve_indices(out_indices: int | Sequence[int], n: int) -> list[int]:
    """timm's ``out_indices`` (an int: the last n levels; negatives count from the end) as indices 0..n-1."""
    if isinstance(out_indices, int):
        idx = list(range(n - out_indices, n)) if 0 < out_indices <= n else []
    else:
        idx = [int(i) + n if int(i) < 0 else int(i) for i in out_indices]
    if not idx or any(not 0 <= i < n for i in idx):
        raise ConfigError(f"out_indices={out_indices!r}: the backbone has {n} levels (indices 0..{n - 1}, or -{n}..-1)")
    return idx


class BiCSNetFeatures(nn.Module):
    """timm's ``features_only`` model for bicsnet: chosen pyramid levels of a classifier's backbone, as a list.

    timm's generic wrappers take features from modules that run one after the
    other (or from ``forward_intermediates``); BiCSNet's levels are outputs of
    one block graph (Section III), so this wrapper (passed to timm as
    ``feature_cls``) runs the backbone once and returns the chosen levels.

    Args:
        model: a bicsnet classifier (``normalize``, ``backbone``); its head is dropped.
        out_indices: indices into the backbone's levels (0 = P3 .. 4 = P7, negatives
            from the end), or an int n: the last n levels.
        output_fmt: ``"NCHW"`` (the only layout).

    Shapes: ``(N, 3, H, W)`` images in [0, 1] -> a list with, for each chosen level
    of stride s, ``(N, C, ceil(H / s), ceil(W / s))``; ``feature_info.channels()`` /
    ``.reduction()`` give C and s.

    Raises:
        ConfigError: indices outside the backbone's levels, another ``output_fmt``.
    """

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] = (0, 1, 2, 3, 4), output_fmt: str = "NCHW") -> None:
        from timm.models import FeatureInfo

        super().__init__()
        if output_fmt != "NCHW":
            raise ConfigError(f"output_fmt={output_fmt!r}: bicsnet's features are NCHW only")
        # The backbone's own description (name, num_chs, reduction); "module" is timm's mandatory field.
        info = [dict(f, module="backbone") for f in model.backbone.feature_info]
        indices = _resolve_indices(out_indices, len(info))
        self.normalize = model.normalize
        self.backbone = model.backbone
        self.out_indices = tuple(indices)
        self.feature_info = FeatureInfo(info, self.out_indices)
        self._names = [info[i]["name"] for i in indices]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.backbone(self.normalize(x))
        return [feats[name] for name in self._names]


def backbone_state_filter(state_dict: Mapping[str, Any], model: nn.Module | None = None) -> dict[str, Any]:
    """timm's ``pretrained_filter_fn``: a bare backbone's state dict gets the classifier's ``backbone.`` prefix.

    Lets ``pretrained_cfg_overlay=dict(file=...)`` take the weights of
    ``bicsnet.create_model(name)`` (task ``backbone``) as well as a classifier's
    (whose keys already start ``backbone.`` / ``head.``); anything else is left alone.
    """
    if any(k.startswith("backbone.") for k in state_dict):
        return dict(state_dict)
    return {f"backbone.{k}": v for k, v in state_dict.items()}


def _build(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    global_pool: str = "avg",
    device: Any = None,
    dtype: Any = None,
    **options: Any,
) -> nn.Module:
    """timm's ``model_cls`` for ``name``: bicsnet's classifier, timm's common arguments mapped to bicsnet's options.

    Raises:
        ConfigError: ``num_classes`` < 1, ``in_chans`` other than 3, ``global_pool``
            other than ``avg``, ``drop_rate`` beside a different ``dropout``, or any
            option :func:`bicsnet.create_model` refuses.
    """
    if num_classes < 1:
        raise ConfigError(
            f"{name}: num_classes={num_classes}: a bicsnet classifier needs >= 1 class; for features use "
            "features_only=True (P3..P7) or bicsnet.create_model(name)"
        )
    if in_chans != 3:
        raise ConfigError(f"{name}: in_chans={in_chans}: the model standardises RGB images (3 channels)")
    if global_pool != "avg":
        raise ConfigError(f"{name}: global_pool={global_pool!r}: the head averages (Section IV-C); only 'avg'")
    if drop_rate:
        if options.get("dropout", drop_rate) != drop_rate:
            raise ConfigError(f"{name}: drop_rate={drop_rate} contradicts dropout={options['dropout']} (the same setting)")
        options["dropout"] = drop_rate
    model = create_model(name, CLASSIFIER_TASK, num_classes, **options)
    return model.to(device=device, dtype=dtype) if device is not None or dtype is not None else model


def _entry_point(name: str) -> Callable[..., nn.Module]:
    """timm's entry point for ``name``: ``fn(pretrained=False, **kwargs)`` through ``build_model_with_cfg``."""

    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        from timm.models import build_model_with_cfg

        return build_model_with_cfg(
            partial(_build, name), name, pretrained,
            pretrained_filter_fn=backbone_state_filter, feature_cfg={"feature_cls": BiCSNetFeatures}, **kwargs,
        )  # fmt: skip

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = (
        f"{get_entry(name).description}: bicsnet.create_model({name!r}, task={CLASSIFIER_TASK!r}, ...) "
        "in timm (bicsnet.integrations.timm)."
    )
    return entry


def register_timm_models() -> list[str]:
    """Register :func:`timm_model_names` in timm's registry; returns the names it registered now.

    Idempotent (names already registered from here are skipped). A name that
    timm already has from elsewhere keeps timm's model: it is skipped and logged.

    Raises:
        ImportError: timm is not installed.
    """
    from timm.models import generate_default_cfgs, is_model, model_entrypoint, register_model

    module = sys.modules[__name__]
    new = []
    for name in timm_model_names():
        if not is_model(name):
            new.append(name)
        elif model_entrypoint(name).__module__ != __name__:
            _log.warning("timm already has a model named %r; bicsnet's is bicsnet.create_model(%r)", name, name)
    default_cfgs.update(generate_default_cfgs({name: _pretrained_cfg(name) for name in new}))
    for name in new:
        fn = _entry_point(name)
        setattr(module, name, fn)  # as timm's families: entry points are attributes of their module
        register_model(fn)
    return new


def _register_or_warn() -> None:
    # Registration must never break ``import bicsnet`` or ``import timm`` (e.g. a future timm API change).
    try:
        register_timm_models()
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"bicsnet could not register its models with timm: {type(e).__name__}: {e}", stacklevel=3)


class _AfterTimmImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """One-shot import hook (PEP 451): runs timm's own loader, then registers bicsnet's models."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # one shot; the lookup below then finds timm's real spec
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec: Any) -> types.ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        # timm keeps its own loader (resources, reloads); only the moment after it ran is ours.
        module.__loader__ = module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _register_or_warn()


def register_when_timm_imported() -> None:
    """Register bicsnet's models with timm now if timm is imported, else right after ``import timm``.

    Where timm is not installed this does nothing. ``import bicsnet`` calls it.
    """
    if sys.modules.get("timm") is not None:
        _register_or_warn()
    elif importlib.util.find_spec("timm") is not None and not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimmImport())
