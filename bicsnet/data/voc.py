"""PASCAL VOC 2012 semantic segmentation (and layouts that copy it)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from bicsnet.data.image import load_image
from bicsnet.errors import DataError

__all__ = ["VOCSegmentation", "VOC_CLASSES", "read_class_names"]

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

IGNORE_INDEX = 255


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Read one class name per non-empty line (background first); raise DataError if unusable."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read class list ({e})") from None
    if len(names) < 2:
        raise DataError(f"{path}: needs at least 2 class names (background first), found {len(names)}")
    if len(names) > IGNORE_INDEX:
        raise DataError(f"{path}: at most {IGNORE_INDEX} classes fit in a label PNG, found {len(names)}")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: duplicate class names")
    return names


class VOCSegmentation(Dataset):
    """Semantic segmentation in the VOC 2012 layout.

    ``root`` holds ``JPEGImages/<name>.jpg``, ``<mask_dir>/<name>.png`` (palette
    or grayscale PNGs: 0 = background, 1..K-1 = classes, 255 = ignore) and
    ``ImageSets/Segmentation/<split>.txt``. ``list_file`` replaces the split
    list, e.g. the SBD "train_aug" list; its lines are either a name or a pair
    ``<image path> <mask path>`` relative to ``root`` (the DeepLab format).

    Classes come from ``root/classes.txt`` (one name per line, background
    first) when present, otherwise the 21 VOC classes.

    Items are ``(image, mask)``: float32 ``3 x H x W`` in [0, 1] and int64
    ``H x W``. ``transforms(image, mask)`` receives ``tv_tensors.Image`` and
    ``tv_tensors.Mask``; plain tensors are returned.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transforms: Callable[[Any, Any], tuple[Any, Any]] | None = None,
        list_file: str | os.PathLike | None = None,
        mask_dir: str = "SegmentationClass",
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        if not self.root.is_dir():
            raise DataError(f"{self.root}: VOC root directory not found")
        classes_file = self.root / "classes.txt"
        self.class_names: list[str] = read_class_names(classes_file) if classes_file.exists() else list(VOC_CLASSES)
        self.num_classes = len(self.class_names)
        self.list_file = Path(list_file) if list_file is not None else self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        self.samples = self._read_list(mask_dir)

    def _read_list(self, mask_dir: str) -> list[tuple[Path, Path]]:
        try:
            lines = self.list_file.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise DataError(f"{self.list_file}: split list not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{self.list_file}: cannot read split list ({e})") from None
        samples = []
        for lineno, line in enumerate(lines, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) == 1:
                image = self.root / "JPEGImages" / f"{fields[0]}.jpg"
                mask = self.root / mask_dir / f"{fields[0]}.png"
            elif len(fields) == 2:
                image, mask = (self.root / p.lstrip("/") for p in fields)
            else:
                raise DataError(f"{self.list_file}:{lineno}: expected '<name>' or '<image> <mask>', got {line.strip()!r}")
            for p in (image, mask):
                if not p.is_file():
                    raise DataError(f"{p}: listed in {self.list_file.name} line {lineno} but not found")
            samples.append((image, mask))
        if not samples:
            raise DataError(f"{self.list_file}: split list is empty")
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def load_mask(self, path: Path) -> torch.Tensor:
        """Read a label PNG as int64 ``H x W``, checking its labels; DataError names the file."""
        try:
            with Image.open(path) as im:
                im.load()
                if im.mode not in ("P", "L"):
                    raise DataError(f"{path}: label image must be a palette or grayscale PNG, got mode {im.mode!r}")
                arr = np.asarray(im, dtype=np.uint8)
        except DataError:
            raise
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{path}: cannot read label image ({e})") from None
        bad = (arr >= self.num_classes) & (arr != IGNORE_INDEX)
        if bad.any():
            raise DataError(
                f"{path}: label {int(arr[bad][0])} outside [0, {self.num_classes}) and not {IGNORE_INDEX} (ignore)"
            )
        return torch.from_numpy(arr.astype(np.int64))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.samples[index]
        image = load_image(image_path)
        mask = self.load_mask(mask_path)
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            raise DataError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but image {image_path.name} "
                f"is {image.shape[2]}x{image.shape[1]}"
            )
        if self.transforms is not None:
            image, mask = self.transforms(tv_tensors.Image(image), tv_tensors.Mask(mask))
            image, mask = image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
        return image, mask
