"""PASCAL VOC 2012 semantic segmentation (and layouts that copy it)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from bicsnet.data.image import DEFAULT_DECODER, Decoder
from bicsnet.data.masks import IGNORE_LABEL, MaskDataset, read_class_names, read_list
from bicsnet.errors import DataError

__all__ = ["VOCSegmentation", "VOC_CLASSES", "read_class_names"]

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

#: VOC's ignore value (the object outlines in its masks).
IGNORE_INDEX = IGNORE_LABEL


class VOCSegmentation(MaskDataset):
    """Semantic segmentation in the VOC 2012 layout.

    ``root`` holds ``JPEGImages/<name>.jpg``, ``<mask_dir>/<name>.png`` (palette
    or grayscale PNGs: 0 = background, 1..K-1 = classes, 255 = ignore) and
    ``ImageSets/Segmentation/<split>.txt``. ``list_file`` replaces the split
    list, e.g. the SBD "train_aug" list; its lines are either a name or a pair
    ``<image path> <mask path>`` relative to ``root`` (the DeepLab format).

    Classes are ``class_names`` when given, else ``root/classes.txt`` (one name
    per line, background first) when present, otherwise the 21 VOC classes.
    ``ignore_index`` is the mask value of unlabelled pixels (VOC: 255).
    ``decode`` picks the image decoder (:func:`~bicsnet.data.image.read_image`).

    Items are ``(image, mask)``: float32 ``3 x H x W`` in [0, 1] and int64
    ``H x W`` (ignored pixels 255). Masks are read and checked by
    :class:`~bicsnet.data.masks.MaskDataset`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transforms: Callable[[Any, Any], tuple[Any, Any]] | None = None,
        list_file: str | os.PathLike | None = None,
        mask_dir: str = "SegmentationClass",
        ignore_index: int = IGNORE_INDEX,
        class_names: Sequence[str] | None = None,
        decode: Decoder = DEFAULT_DECODER,
    ) -> None:
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise DataError(f"{self.root}: VOC root directory not found")
        classes_file = self.root / "classes.txt"
        if class_names is None:
            class_names = read_class_names(classes_file) if classes_file.exists() else list(VOC_CLASSES)
        self.list_file = Path(list_file) if list_file is not None else self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        super().__init__(self._read_list(mask_dir), class_names, ignore_index, transforms, decode)

    def _read_list(self, mask_dir: str) -> list[tuple[Path, Path]]:
        samples = []
        for lineno, fields in read_list(self.list_file):
            if len(fields) == 1:
                image = self.root / "JPEGImages" / f"{fields[0]}.jpg"
                mask = self.root / mask_dir / f"{fields[0]}.png"
            elif len(fields) == 2:
                image, mask = (self.root / p.lstrip("/") for p in fields)
            else:
                raise DataError(f"{self.list_file}:{lineno}: expected '<name>' or '<image> <mask>', got {' '.join(fields)!r}")
            for p in (image, mask):
                if not p.is_file():
                    raise DataError(f"{p}: listed in {self.list_file.name} line {lineno} but not found")
            samples.append((image, mask))
        return samples
