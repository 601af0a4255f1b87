"""One registry of named models and the ``create_model`` entry point.

A registered name is a backbone configuration (a topology table plus a row of
the scaling table, with ablation switches) and a default input size. Tasks
are heads put on it. Every model carries ``bicsnet_config``: the plain-data
recipe (name, task, num_classes, overrides) that rebuilds it exactly, which is
what checkpoints store.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..arch.backbone import BiCSNet, BiCSNetConfig
from ..errors import ConfigError
from ..arch.specs import SCALING

__all__ = ["ModelEntry", "register_model", "list_models", "get_entry", "create_model", "create_model_from_config", "default_input_size", "TASKS", "is_baseline"]

TASKS = ("backbone", "classification", "segmentation", "detection", "instance")


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: backbone config, input size, anchor scale, provenance."""

    name: str
    backbone: BiCSNetConfig
    input_size: int
    anchor_scale: float = 3.0
    description: str = ""
    builder: Callable[..., nn.Module] | None = None  # custom backbone builder (lite models)
    extra: dict[str, Any] = field(default_factory=dict)
    #: Whole-model builders by task for baselines that are not BiCSNet backbones.
    task_builders: dict[str, Callable[..., nn.Module]] | None = None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add ``entry`` to the registry (names are unique)."""
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a substring."""
    return sorted(n for n in _REGISTRY if pattern is None or pattern in n)


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``, or a ConfigError suggesting the closest names."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(list_models())}"
        raise ConfigError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def default_input_size(name: str) -> int:
    """The model's input size from Table I (the CLI's default ``--img-size``)."""
    return get_entry(name).input_size


_BACKBONE_FIELDS = {f.name for f in dataclasses.fields(BiCSNetConfig)}
_TASK_KWARGS = {
    "backbone": set(),
    "classification": {"dropout"},
    "segmentation": {"head_channels", "head_convs"},
    "detection": {
        "img_size", "anchor_scale", "focal_alpha", "focal_gamma", "head_norm", "score_thresh",
        "nms_thresh", "detections_per_img", "topk_candidates",
    },
    "instance": {"img_size", "anchor_scale", "rpn_post_nms_top_n_test", "box_detections_per_img", "box_score_thresh", "head_norm"},
}


def _build_backbone(entry: ModelEntry, overrides: dict[str, Any]) -> nn.Module:
    if entry.builder is not None:
        return entry.builder(**overrides)
    cfg = dataclasses.replace(entry.backbone, **overrides) if overrides else entry.backbone
    return BiCSNet(cfg)


def create_model(name: str, task: str = "backbone", num_classes: int | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model for a task.

    ``task``: ``backbone`` (P3..P7 dict), ``classification``, ``segmentation``,
    ``detection`` (RetinaNet) or ``instance`` (Mask R-CNN). ``overrides`` are
    backbone options (any :class:`~bicsnet.arch.backbone.BiCSNetConfig` field, e.g.
    ``width_mult``, ``norm``, ``activation``, ``drop_path_rate``) or options of
    the task's head (e.g. ``focal_gamma``, ``img_size``).
    """
    entry = get_entry(name)
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if entry.task_builders is not None:
        return _create_baseline(entry, task, num_classes, overrides)
    task_keys = _TASK_KWARGS[task]
    backbone_keys = set(entry.extra.get("backbone_fields", _BACKBONE_FIELDS))
    unknown = sorted(set(overrides) - backbone_keys - task_keys)
    if unknown:
        raise ConfigError(f"option(s) {', '.join(unknown)} do not apply to {name} with task {task!r}")
    if task != "backbone" and (num_classes is None or int(num_classes) < 1):
        raise ConfigError(f"task {task!r} needs num_classes >= 1, got {num_classes}")
    bb_over = {k: v for k, v in overrides.items() if k in backbone_keys}
    task_over = {k: v for k, v in overrides.items() if k in task_keys}
    backbone = _build_backbone(entry, bb_over)

    model: nn.Module
    if task == "backbone":
        model = backbone
    elif task == "classification":
        from .classification import BiCSNetClassifier

        model = BiCSNetClassifier(backbone, int(num_classes), **task_over)
    elif task == "segmentation":
        from .segmentation import BiCSNetSegmenter

        model = BiCSNetSegmenter(backbone, int(num_classes), **task_over)
    elif task == "detection":
        from .detection import BiCSNetRetinaNet

        kw = {"img_size": entry.input_size, "anchor_scale": entry.anchor_scale, **entry.extra.get("detection", {}), **task_over}
        if "detection_head" in entry.extra:  # lite models: their own (separable) subnets
            kw["head"] = entry.extra["detection_head"](backbone, int(num_classes), **kw)
        model = BiCSNetRetinaNet(backbone, int(num_classes), **kw)
    else:
        from .detection import BiCSNetMaskRCNN

        kw = {"img_size": entry.input_size, **task_over}
        model = BiCSNetMaskRCNN(backbone, int(num_classes), **kw)
    model.bicsnet_config = {"name": name, "task": task, "num_classes": num_classes, "overrides": dict(overrides)}
    return model


def _create_baseline(entry: ModelEntry, task: str, num_classes: int | None, overrides: dict[str, Any]) -> nn.Module:
    builders = entry.task_builders or {}
    if task not in builders:
        raise ConfigError(f"baseline {entry.name} supports task(s) {', '.join(builders)}, not {task!r}")
    if num_classes is None or int(num_classes) < 1:
        raise ConfigError(f"task {task!r} needs num_classes >= 1, got {num_classes}")
    allowed = _TASK_KWARGS[task] if task == "detection" else set()
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ConfigError(f"option(s) {', '.join(unknown)} do not apply to baseline {entry.name}")
    kw = {"img_size": entry.input_size, **overrides} if task == "detection" else {}
    model = builders[task](int(num_classes), **kw)
    model.bicsnet_config = {"name": entry.name, "task": task, "num_classes": num_classes, "overrides": dict(overrides)}
    return model


def create_model_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its ``bicsnet_config`` (e.g. a checkpoint's metadata)."""
    try:
        name, task = config["name"], config["task"]
    except (KeyError, TypeError) as e:
        raise ConfigError(f"model config needs 'name' and 'task', got {config!r}") from e
    return create_model(name, task, config.get("num_classes"), **config.get("overrides", {}))


def _register_family() -> None:
    # Table I: BiCSNet-48S/48/48L/94/140. Anchor scale 3 up to 94, 4 for 140 (V-A1).
    for key, s in SCALING.items():
        cfg = BiCSNetConfig(
            depth_repeat=s.depth_repeat, sfm_ratio=s.sfm_ratio, width_mult=s.width_mult, endpoint_channels=s.endpoint_channels
        )
        register_model(
            ModelEntry(f"bicsnet_{key}", cfg, s.input_size, 4.0 if key == "140" else 3.0, f"BiCSNet-{key.upper()} (Table I)")
        )
    base = get_entry("bicsnet_48")
    # Ablations of Tables IX and X: switches on BiCSNet-48's builder.
    ablations = {
        "bicsnet_48_no_gac": ({"gap_connection": False}, "BiCSNet-48 without Gap-Connection (Table X)"),
        "bicsnet_48_no_skc": ({"skip_connection": False}, "BiCSNet-48 without Skip-Connection (Table X)"),
        "bicsnet_48_no_lrgac": ({"long_range_gap_connection": False}, "BiCSNet-48 without Long-Range Gap-Connection (Table X)"),
        "bicsnet_48_no_sfm": ({"spatial_fusion": False}, "BiCSNet-48 with plain resampling instead of SFM (Table X)"),
        "bicsnet_48_fpn": ({"fpn": True}, "BiCSNet-48 with an FPN attached (Table X)"),
        "csnet_48": ({"topology": "csnet"}, "CSNet-48: Up-Sampling Part replaced by a Down-Sampling Part (Table IX)"),
    }
    for name, (over, desc) in ablations.items():
        register_model(ModelEntry(name, dataclasses.replace(base.backbone, **over), base.input_size, base.anchor_scale, desc))
    # Not from the paper: a narrow BiCSNet-48 for CPU demos and quick experiments.
    register_model(
        ModelEntry(
            "bicsnet_48_tiny",
            dataclasses.replace(base.backbone, width_mult=0.25, endpoint_channels=64, sfm_ratio=0.5),
            256,
            3.0,
            "BiCSNet-48 topology at 1/4 width, 64-d outputs (CPU demos; not a paper model)",
        )
    )


_register_family()


def _register_baselines() -> None:
    from . import baselines as b

    register_model(ModelEntry(
        "retinanet_resnet50_fpn", BiCSNetConfig(), 640, 4.0,
        "baseline: torchvision ResNet-50-FPN in the same RetinaNet (no pretrained weights)",
        task_builders={"detection": b.build_retinanet_resnet50_fpn},
    ))  # fmt: skip
    register_model(ModelEntry(
        "deeplabv3_resnet50", BiCSNetConfig(), 512, 3.0, "baseline: torchvision DeepLabv3-ResNet50 (no pretrained weights)",
        task_builders={"segmentation": b.build_deeplabv3_resnet50},
    ))  # fmt: skip
    for depth in (34, 50):
        register_model(ModelEntry(
            f"resnet{depth}", BiCSNetConfig(), 224, 3.0, f"baseline: torchvision ResNet-{depth} (no pretrained weights)",
            task_builders={"classification": lambda k, d=depth: b.build_resnet(d, k)},
        ))  # fmt: skip


_register_baselines()


def is_baseline(name: str) -> bool:
    """Whether ``name`` is a torchvision baseline rather than a BiCSNet model."""
    return get_entry(name).task_builders is not None


def _register_lite() -> None:
    # Table VII: BiCSNet-lite0..3 (Section V-E), built by bicsnet/lite.py.
    from .lite import lite_model_entries

    for entry in lite_model_entries():
        register_model(entry)


_register_lite()
