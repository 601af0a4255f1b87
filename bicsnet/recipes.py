"""Where command-line options become datasets, models and training configs.

The paper's recipes (Section V-A) live here as data, one per task, so the CLI
and the demo map onto the library's plain constructors in exactly one place.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn
from torch.utils.data import Dataset

from .errors import CheckpointError, ConfigError, DataError

__all__ = [
    "RECIPES",
    "recipe_config",
    "DataSpec",
    "TaskData",
    "default_data_root",
    "build_task_data",
    "model_meta",
    "load_checkpoint_model",
]

#: Paper recipes (Section V-A) as TrainConfig defaults per task. ``lr`` is for
#: ``lr_reference_batch`` images; the trainer scales it linearly to the run's
#: global batch. Epoch counts are the paper's; CLI flags shorten them.
RECIPES: dict[str, dict[str, Any]] = {
    # V-A1: SGD 0.9, wd 4e-5, lr 0.16 @ batch 128 after a 2-epoch linear warm-up,
    # x0.1 / x0.01 at the last 30 / 10 of 350 epochs.
    "detection": {"epochs": 350, "lr": 0.16, "lr_reference_batch": 128, "warmup_epochs": 2.0, "schedule": "step"},
    "instance": {"epochs": 350, "lr": 0.16, "lr_reference_batch": 128, "warmup_epochs": 2.0, "schedule": "step"},
    # V-A2: lr 0.02 @ batch 256, linear warm-up over the first 1,000 iterations, cosine,
    # 20,000 iterations. Iterations are at the reference batch: recipe_config turns them
    # into epochs of the training set (the same number of images at any batch size).
    "segmentation": {
        "iterations": 20000, "warmup_iterations": 1000, "lr": 0.02, "lr_reference_batch": 256,
        "schedule": "cosine", "warmup_max_fraction": 0.25,
    },
    # V-A3: batch 1024, cosine with a 5-epoch warm-up, 250 epochs (lr: the usual 0.1 per 256).
    "classification": {
        "epochs": 250, "lr": 0.4, "lr_reference_batch": 1024, "warmup_epochs": 5.0, "schedule": "cosine",
        "warmup_max_fraction": 0.25,
    },
}  # fmt: skip


def recipe_config(task: str, num_train: int) -> dict[str, Any]:
    """``RECIPES[task]`` as :class:`~bicsnet.engine.trainer.TrainConfig` keyword arguments.

    A recipe given in iterations of its reference batch (segmentation: 20,000
    iterations with a 1,000-iteration warm-up at batch 256) becomes epochs and
    warm-up epochs over ``num_train`` training images, so every batch size sees
    the paper's number of images and warms up over the same fraction of them.
    ``warmup_max_fraction`` keeps short runs from being all warm-up.
    """
    if task not in RECIPES:
        raise ConfigError(f"--task {task!r}: use {', '.join(RECIPES)}")
    r = dict(RECIPES[task])
    iterations, warmup_iterations = r.pop("iterations", None), r.pop("warmup_iterations", None)
    if iterations is not None or warmup_iterations is not None:
        if num_train < 1:
            raise ConfigError(f"{task}: the training set is empty")
        images_per_iteration = r["lr_reference_batch"]
        if iterations is not None:
            r["epochs"] = max(1, math.ceil(iterations * images_per_iteration / num_train))
        if warmup_iterations is not None:
            r["warmup_epochs"] = warmup_iterations * images_per_iteration / num_train
    return r


def default_data_root() -> Path:
    """Where the built-in synthetic dataset is generated (``$BICSNET_DATA`` overrides)."""
    return Path(os.environ.get("BICSNET_DATA", Path.home() / ".cache" / "bicsnet" / "synthetic"))


@dataclass
class DataSpec:
    """Where the data is: explicit paths, or ``None`` for the synthetic set."""

    train_ann: str | None = None
    train_images: str | None = None
    val_ann: str | None = None
    val_images: str | None = None
    data: str | None = None  # VOC root or image-folder root
    train_list: str | None = None  # e.g. SBD's train_aug.txt for VOC
    synth_root: str | None = None
    synth_train: int = 400
    synth_val: int = 100
    synth_size: int = 256
    seed: int = 0

    def uses_synthetic(self, task: str) -> bool:
        if task in ("detection", "instance"):
            return not any((self.train_ann, self.train_images, self.val_ann, self.val_images))
        return self.data is None


@dataclass
class TaskData:
    """Datasets and facts about them that the model and checkpoint need."""

    train: Dataset | None
    val: Dataset | None
    collate: Callable
    num_classes: int
    class_names: list[str]
    extra_meta: dict[str, Any] = field(default_factory=dict)


def _synthetic(spec: DataSpec) -> dict[str, Path]:
    from .data import generate_synthetic

    root = Path(spec.synth_root) if spec.synth_root else default_data_root()
    return generate_synthetic(root, spec.synth_train, spec.synth_val, spec.synth_size, seed=spec.seed)


def _synthetic_meta(spec: DataSpec, synth: dict[str, Path]) -> dict[str, Any]:
    """What a checkpoint records of its synthetic data, so ``bicsnet eval`` finds the same set."""
    return {
        "synthetic": {
            "root": str(Path(synth["root"]).resolve()), "train": spec.synth_train, "val": spec.synth_val,
            "size": spec.synth_size, "seed": spec.seed,
        }
    }  # fmt: skip


def _check_data_flags(task: str, spec: DataSpec) -> None:
    """Refuse data flags another task reads (they would be ignored, silently using other data)."""
    coco = {"--train-ann": spec.train_ann, "--train-images": spec.train_images, "--val-ann": spec.val_ann,
            "--val-images": spec.val_images}  # fmt: skip
    if task in ("detection", "instance"):
        foreign, wanted = {"--data": spec.data, "--train-list": spec.train_list}, "--train-ann/--train-images/--val-ann/--val-images"
    elif task == "segmentation":
        foreign, wanted = coco, "--data (a VOC root) and --train-list"
    else:
        foreign, wanted = {**coco, "--train-list": spec.train_list}, "--data (a root with train/ and val/ class folders)"
    given = [flag for flag, value in foreign.items() if value]
    if given:
        raise ConfigError(f"{', '.join(given)}: not used by task {task!r}, which reads {wanted}")


def _require(path: str | None, flag: str) -> str:
    if not path:
        raise ConfigError(f"{flag} is required when other data flags are given")
    return path


def build_task_data(task: str, spec: DataSpec, img_size: int, train: bool = True, scale_range: tuple[float, float] = (0.5, 2.0)) -> TaskData:
    """Datasets for ``task``; ``train=False`` builds only the validation set."""
    from . import data as D

    _check_data_flags(task, spec)
    synth = _synthetic(spec) if spec.uses_synthetic(task) else None
    if task in ("detection", "instance"):
        masks = task == "instance"
        if synth is not None:
            tr_img, tr_ann, va_img, va_ann = synth["coco_train_images"], synth["coco_train_ann"], synth["coco_val_images"], synth["coco_val_ann"]
        else:
            va_img, va_ann = _require(spec.val_images, "--val-images"), _require(spec.val_ann, "--val-ann")
            tr_img = _require(spec.train_images, "--train-images") if train else None
            tr_ann = _require(spec.train_ann, "--train-ann") if train else None
        val = D.CocoDetection(va_img, va_ann, D.detection_eval_transforms(), with_masks=masks)
        tr = D.CocoDetection(tr_img, tr_ann, D.detection_train_transforms(img_size, scale_range), with_masks=masks) if train else None
        if tr is not None and tr.cat_ids != val.cat_ids:
            raise DataError(f"{tr_ann} and {va_ann} have different categories ({tr.cat_ids} vs {val.cat_ids})")
        extra = {"cat_ids": list(val.cat_ids), **(_synthetic_meta(spec, synth) if synth is not None else {})}
        return TaskData(tr, val, D.detection_collate, len(val.cat_ids), list(val.class_names), extra)
    extra = _synthetic_meta(spec, synth) if synth is not None else {}
    if task == "segmentation":
        root = str(synth["voc_root"]) if synth is not None else spec.data
        val = D.VOCSegmentation(root, "val", D.segmentation_eval_transforms())
        tr = D.VOCSegmentation(root, "train", D.segmentation_train_transforms(img_size, scale_range), list_file=spec.train_list) if train else None
        # Training crops stack into tensors; whole validation images of different sizes stay unpadded.
        return TaskData(tr, val, D.segmentation_collate_unpadded, val.num_classes, list(val.class_names), extra)
    if task == "classification":
        if synth is not None:
            tr_dir, va_dir = synth["folder_train"], synth["folder_val"]
        else:
            tr_dir, va_dir = Path(spec.data) / "train", Path(spec.data) / "val"
        val = D.ImageFolderDataset(va_dir, D.classification_eval_transforms(img_size))
        tr = D.ImageFolderDataset(tr_dir, D.classification_train_transforms(img_size)) if train else None
        if tr is not None and tr.classes != val.classes:
            raise DataError(f"{tr_dir} and {va_dir} have different class folders")
        return TaskData(tr, val, D.classification_collate, val.num_classes, list(val.classes), extra)
    raise ConfigError(f"--task {task!r}: use detection, instance, segmentation or classification")


def model_meta(model: nn.Module, task: str, img_size: int, data: TaskData) -> dict[str, Any]:
    """Plain-data description stored in every weights file: enough to rebuild and label."""
    return {
        "model": dict(model.bicsnet_config),
        "task": task,
        "img_size": img_size,
        "num_classes": data.num_classes,
        "class_names": data.class_names,
        **data.extra_meta,
    }


def load_checkpoint_model(path: str | os.PathLike, device: Any = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a weights file describes and load its weights."""
    from .engine.checkpoint import load_model, load_state_into
    from .models import create_model_from_config

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    state, meta = load_model(path)
    if "model" not in meta or "task" not in meta:
        raise CheckpointError(f"{path}: metadata lacks the model description ('model', 'task')")
    model = create_model_from_config(meta["model"])
    load_state_into(model, state, strict=True, source=str(path))
    return model.to(device).eval(), meta
