"""Semantic segmentation from label PNGs: the one reader and checker of masks, for every layout.

A mask is a palette (``P``), grayscale (``L``) or 1-bit PNG of class indices
``0..K-1``, the size of its image, with one more value for pixels that are not
labelled (``ignore_index``: VOC's 255, Stanford Background's 15). Masks come
out of every dataset here as training labels: the class indices as they are
and **255 for every ignored pixel**, whatever value the files use. The rest of
the pipeline (crop padding, collation, the loss, the metric, drawing) knows
one ignore label, :data:`IGNORE_LABEL`; the value the files use is recorded in
the checkpoint (``meta["ignore_index"]``).

Layouts:

* :class:`SegmentationFolder`: an image folder, a mask folder and a list of
  ids (``images/<id>.<jpg|png|...>``, ``masks/<id>.png``), or a list of
  ``<image> <mask>`` pairs;
* :class:`~bicsnet.data.voc.VOCSegmentation`: the PASCAL VOC 2012 layout.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from bicsnet.data.image import DEFAULT_DECODER, IMAGE_EXTENSIONS, Decoder, check_decoder, read_image, to_float_image
from bicsnet.errors import ConfigError, DataError

__all__ = [
    "IGNORE_LABEL",
    "MaskDataset",
    "SegmentationFolder",
    "check_ignore_index",
    "read_class_names",
    "read_label_png",
]

#: The ignore label of the training pipeline: masks are padded with it, the loss and the metric skip it.
IGNORE_LABEL = 255


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Read one class name per non-empty line, in label order (line 1 = label 0); raise DataError if unusable."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read class list ({e})") from None
    if len(names) < 2:
        raise DataError(f"{path}: needs at least 2 class names (one per line, label 0 first), found {len(names)}")
    if len(names) > IGNORE_LABEL:
        raise DataError(f"{path}: at most {IGNORE_LABEL} classes fit in a label PNG, found {len(names)}")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{path}: duplicate class name {dup!r}")
    return names


def check_ignore_index(ignore_index: int, num_classes: int) -> int:
    """``ignore_index`` if it can mark unlabelled pixels of masks with ``num_classes`` classes.

    Raises:
        ConfigError: it is not a value of an 8-bit PNG (0..255) or it is a class index.
    """
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or not 0 <= ignore_index <= 255:
        raise ConfigError(f"--ignore-index {ignore_index!r}: must be an integer in 0..255 (a value of an 8-bit label PNG)")
    if ignore_index < num_classes:
        raise ConfigError(
            f"--ignore-index {ignore_index}: that is a class index (the data has {num_classes} classes, 0..{num_classes - 1})"
        )
    return ignore_index


def _open_label_png(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("P", "L", "1"):
                raise DataError(f"{path}: label image must be a palette or grayscale PNG, got mode {im.mode!r}")
            return im.copy()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: label image not found") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read label image ({e})") from None


def read_label_png(path: str | os.PathLike, num_classes: int, ignore_index: int = IGNORE_LABEL) -> np.ndarray:
    """A label PNG as training labels: ``uint8 H x W``, classes ``0..num_classes-1``, ignored pixels 255.

    Raises:
        DataError: naming the file: unreadable, not a palette / grayscale PNG, or
            holding a value outside ``[0, num_classes)`` other than ``ignore_index``.
    """
    path = Path(path)
    arr = np.array(_open_label_png(path), dtype=np.uint8)
    bad = (arr >= num_classes) & (arr != ignore_index)
    if bad.any():
        values = np.unique(arr[bad])
        shown = ", ".join(str(int(v)) for v in values[:5]) + (", ..." if len(values) > 5 else "")
        raise DataError(
            f"{path}: label {shown} outside [0, {num_classes}) and not {ignore_index} (ignore)"
            + ("" if ignore_index != IGNORE_LABEL else "; pass --ignore-index N if the masks mark unlabelled pixels with N")
        )
    if ignore_index != IGNORE_LABEL:
        arr[arr == ignore_index] = IGNORE_LABEL
    return arr


def read_palette(path: str | os.PathLike, num_classes: int) -> list[list[int]] | None:
    """The RGB colour of each class from a palette PNG (``None`` for a grayscale mask).

    Classes beyond the palette's entries get the VOC colours.
    """
    from bicsnet.data.palette import voc_colormap

    im = _open_label_png(Path(path))
    if im.mode != "P" or not im.getpalette():
        return None
    flat = im.getpalette()
    colours = [flat[i : i + 3] for i in range(0, len(flat) - 2, 3)]
    return [list(map(int, colours[i] if i < len(colours) else voc_colormap()[i])) for i in range(num_classes)]


class MaskDataset(Dataset):
    """``(image, mask)`` pairs read from files: float32 ``3 x H x W`` in [0, 1] and int64 ``H x W``.

    Masks are training labels (see the module docstring): class indices and
    255 for ignored pixels. A mask of another size than its image, or with a
    value that is neither a class index nor ``ignore_index``, raises a
    :class:`DataError` naming the mask when the pair is read.
    ``transforms(image, mask)`` receives a uint8 ``tv_tensors.Image`` (float32
    [0, 1] for 16-bit grayscale files) and a ``tv_tensors.Mask``; plain tensors
    are returned, the image as float32 in [0, 1] whatever the transforms
    returned. ``decode`` picks the image decoder (:func:`~bicsnet.data.image.read_image`).

    Attributes:
        samples: ``(image path, mask path)`` pairs.
        class_names, num_classes: the classes, label 0 first.
        ignore_index: the value that marks ignored pixels in the files.
    """

    samples: list[tuple[Path, Path]]

    def __init__(
        self,
        samples: Sequence[tuple[Path, Path]],
        class_names: Sequence[str],
        ignore_index: int = IGNORE_LABEL,
        transforms: Callable[[Any, Any], tuple[Any, Any]] | None = None,
        decode: Decoder = DEFAULT_DECODER,
    ) -> None:
        self.samples = list(samples)
        self.decode = check_decoder(decode)
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = check_ignore_index(ignore_index, self.num_classes)
        self.transforms = transforms

    @property
    def palette(self) -> list[list[int]] | None:
        """Class colours from the first mask's palette (``None``: grayscale masks or no samples)."""
        return read_palette(self.samples[0][1], self.num_classes) if self.samples else None

    def __len__(self) -> int:
        return len(self.samples)

    def load_mask(self, path: str | os.PathLike) -> torch.Tensor:
        """Read a label PNG as int64 ``H x W`` training labels, checking its values; DataError names the file."""
        return torch.from_numpy(read_label_png(path, self.num_classes, self.ignore_index).astype(np.int64))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.samples[index]
        image = read_image(image_path, self.decode)  # uint8 until the transforms' last step
        mask = self.load_mask(mask_path)
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            raise DataError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but image {Path(image_path).name} "
                f"is {image.shape[2]}x{image.shape[1]}"
            )
        if self.transforms is not None:
            image, mask = self.transforms(tv_tensors.Image(image), tv_tensors.Mask(mask))
            image, mask = image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
        return to_float_image(image), mask


def read_list(path: Path) -> list[tuple[int, list[str]]]:
    """The non-empty lines of a list file as ``(line number, fields)``; DataError if missing, unreadable or empty."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: split list not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read split list ({e})") from None
    entries = [(n, line.split()) for n, line in enumerate(lines, 1) if line.split()]
    if not entries:
        raise DataError(f"{path}: split list is empty")
    return entries


def _find_image(images: Path, name: str, where: str) -> Path:
    """The one image ``images/<name>.<ext>``; DataError if there is none or more than one."""
    found: dict[tuple[int, int], Path] = {}
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        p = images / f"{name}{ext}"
        if p.is_file():
            st = p.stat()
            found.setdefault((st.st_dev, st.st_ino), p)  # one file under two spellings (case-insensitive file systems)
    paths = list(found.values())
    if not paths:
        raise DataError(f"{images / name}.*: listed in {where} but no image with that name ({', '.join(IMAGE_EXTENSIONS)})")
    if len(paths) > 1:
        names = ", ".join(p.name for p in paths)
        raise DataError(f"{images / name}.*: listed in {where}, several images have that name ({names})")
    return paths[0]


class SegmentationFolder(MaskDataset):
    """Semantic segmentation from a list file and label PNGs in any layout.

    Each non-empty line of ``list_file`` is either

    * an id: the image ``images/<id>.<ext>`` (any of
      :data:`~bicsnet.data.image.IMAGE_EXTENSIONS`) and the mask ``masks/<id>.png``; or
    * a pair ``<image> <mask>`` of paths, absolute or relative to the list file's folder.

    Args:
        images, masks: the image and mask folders (needed for id lines).
        list_file: the split list.
        class_names: the classes, label 0 first.
        ignore_index: the mask value of unlabelled pixels (read as 255, see the module docstring).
        transforms: ``transforms(image, mask)``.
        decode: the image decoder, ``"torchvision"`` or ``"pil"`` (:func:`~bicsnet.data.image.read_image`).
    """

    def __init__(
        self,
        images: str | os.PathLike | None,
        masks: str | os.PathLike | None,
        list_file: str | os.PathLike,
        class_names: Sequence[str],
        ignore_index: int = IGNORE_LABEL,
        transforms: Callable[[Any, Any], tuple[Any, Any]] | None = None,
        decode: Decoder = DEFAULT_DECODER,
    ) -> None:
        self.images = Path(images) if images is not None else None
        self.masks = Path(masks) if masks is not None else None
        self.list_file = Path(list_file)
        for flag, folder in (("--images", self.images), ("--masks", self.masks)):
            if folder is not None and not folder.is_dir():
                raise DataError(f"{folder}: {flag} folder not found")
        super().__init__(self._read(), class_names, ignore_index, transforms, decode)

    def _read(self) -> list[tuple[Path, Path]]:
        samples = []
        for lineno, fields in read_list(self.list_file):
            where = f"{self.list_file.name} line {lineno}"
            if len(fields) == 1:
                if self.images is None or self.masks is None:
                    raise DataError(f"{self.list_file}:{lineno}: an id line needs the --images and --masks folders")
                image = _find_image(self.images, fields[0], where)
                mask = self.masks / f"{fields[0]}.png"
            elif len(fields) == 2:
                image, mask = (self.list_file.parent / p for p in fields)
                if not image.is_file():
                    raise DataError(f"{image}: listed in {where} but not found")
            else:
                raise DataError(f"{self.list_file}:{lineno}: expected '<id>' or '<image> <mask>', got {' '.join(fields)!r}")
            if not mask.is_file():
                raise DataError(f"{mask}: listed in {where} but not found")
            samples.append((image, mask))
        return samples
