"""Where a run's data is (:class:`DataSpec`) and what was read from it (:class:`TaskData`).

Which fields a task reads is in the task table (:mod:`bicsnet.tasks`); a spec
whose task reads none of its fields means the built-in synthetic dataset.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from ..errors import ConfigError

__all__ = ["DataSpec", "TaskData", "DATA_FLAGS"]

#: The fields of :class:`DataSpec` that only some tasks read (as CLI flags: ``--train-ann`` ...): locations and their options.
DATA_FLAGS = ("train_ann", "train_images", "val_ann", "val_images", "data", "train_list",
              "images", "masks", "train_split", "val_split", "ignore_index", "class_names")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class DataSpec:
    """Where the data is: explicit paths, or none of them for the synthetic set.

    Attributes:
        train_ann, train_images, val_ann, val_images: COCO instances JSON files
            and image folders (detection, instance segmentation).
        data: a VOC root (segmentation) or a root with ``train/`` and ``val/``
            class folders (classification).
        train_list: another training list of the VOC layout (e.g. SBD's ``train_aug.txt``).
        images, masks, train_split, val_split: semantic segmentation from any mask folder
            (:class:`~bicsnet.data.masks.SegmentationFolder`): image and label-PNG folders and
            split lists of ids (or of ``<image> <mask>`` pairs).
        ignore_index: the mask value of unlabelled pixels (``None``: 255, VOC's; Stanford Background: 15).
        class_names: a text file of class names, one per line, label 0 first.
        synth_root: where the synthetic set is generated (default :meth:`default_root`).
        synth_train, synth_val, synth_size: synthetic images per split and their size in pixels.
        seed: the synthetic set's seed.
        scale_range: scale jitter of training images as ``(lo, hi)`` fractions of the input
            size; ``None``: the run's recipe's (paper: [0.5, 2.0], Section V-A1).
        max_skipped: largest share of a COCO file's annotation records that may be rejected
            (malformed, degenerate box) before loading stops with a DataError (``--max-skipped``).
    """

    train_ann: str | None = None
    train_images: str | None = None
    val_ann: str | None = None
    val_images: str | None = None
    data: str | None = None
    train_list: str | None = None
    images: str | None = None
    masks: str | None = None
    train_split: str | None = None
    val_split: str | None = None
    ignore_index: int | None = None
    class_names: str | None = None
    synth_root: str | None = None
    synth_train: int = 400
    synth_val: int = 100
    synth_size: int = 256
    seed: int = 0
    scale_range: tuple[float, float] | None = None
    max_skipped: float = 0.05

    @staticmethod
    def default_root() -> Path:
        """Where the built-in synthetic dataset is generated (``$BICSNET_DATA`` overrides)."""
        return Path(os.environ.get("BICSNET_DATA", Path.home() / ".cache" / "bicsnet" / "synthetic"))

    def is_synthetic(self, flags: tuple[str, ...]) -> bool:
        """Whether none of ``flags`` (the fields a task reads) is set."""
        return not any(getattr(self, f) for f in flags)

    def check_flags(self, flags: tuple[str, ...], task: str) -> None:
        """Refuse fields another task reads: they would be ignored, silently using other data.

        Raises:
            ConfigError: naming the foreign flags and those ``task`` reads.
        """
        given = [_flag(f) for f in DATA_FLAGS if getattr(self, f) not in (None, "") and f not in flags]
        if given:
            wanted = "/".join(_flag(f) for f in flags) or "no data flags"
            raise ConfigError(f"{', '.join(given)}: not used by task {task!r}, which reads {wanted}")

    def require(self, name: str) -> str:
        """The value of field ``name``.

        Raises:
            ConfigError: it is unset while other data flags are given.
        """
        value = getattr(self, name)
        if not value:
            raise ConfigError(f"{_flag(name)} is required when other data flags are given")
        return str(value)

    def synthetic_meta(self, root: Path) -> dict[str, Any]:
        """What a checkpoint records of the synthetic set at ``root`` (``meta["synthetic"]``)."""
        return {"root": str(Path(root).resolve()), **{key: getattr(self, f) for f, key in _SYNTH_META.items()}}

    @classmethod
    def from_synthetic_meta(cls, synthetic: dict[str, Any] | None) -> "DataSpec":
        """The spec of the synthetic set a checkpoint was trained on (:meth:`synthetic_meta`'s inverse)."""
        synthetic = synthetic or {}
        return cls(synth_root=synthetic.get("root"), **{f: synthetic[key] for f, key in _SYNTH_META.items() if key in synthetic})


#: DataSpec fields of the synthetic set and their keys in a checkpoint's ``meta["synthetic"]``.
_SYNTH_META = {"synth_train": "train", "synth_val": "val", "synth_size": "size", "seed": "seed"}


@dataclass
class TaskData:
    """Datasets and the facts about them that the model and checkpoint need.

    Attributes:
        train, val: the datasets (``train`` is ``None`` for evaluation only).
        collate: batch collation for both.
        num_classes, class_names: from the data (the model is built to match).
        extra_meta: stored in the weights file (e.g. ``cat_ids``, the synthetic set's parameters).
    """

    train: Dataset | None
    val: Dataset | None
    collate: Callable
    num_classes: int
    class_names: list[str]
    extra_meta: dict[str, Any] = field(default_factory=dict)
