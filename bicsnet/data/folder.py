"""Image classification from a ``<split>/<class_name>/<image>`` folder tree."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from bicsnet.data.image import DEFAULT_DECODER, IMAGE_EXTENSIONS, Decoder, check_decoder, read_image, to_float_image
from bicsnet.errors import DataError

__all__ = ["ImageFolderDataset"]


class ImageFolderDataset(Dataset):
    """One class per sub-folder of ``root_split_dir`` (sorted by name, label = index).

    Items are ``(image, label)``: float32 ``3 x H x W`` in [0, 1] (after
    ``transforms(image)`` if given, which receives the uint8 tensor, float32
    [0, 1] for 16-bit grayscale files; ``decode`` picks the decoder, see
    :func:`~bicsnet.data.image.read_image`) and an int. Hidden files/folders are
    ignored. An empty class folder, or no class folders at all, raises
    :class:`DataError` naming the folder; an unreadable image raises it naming
    the file when loaded.
    """

    def __init__(
        self,
        root_split_dir: str | os.PathLike,
        transforms: Callable[[torch.Tensor], torch.Tensor] | None = None,
        decode: Decoder = DEFAULT_DECODER,
    ) -> None:
        self.root = Path(root_split_dir)
        self.decode = check_decoder(decode)
        self.transforms = transforms
        if not self.root.is_dir():
            raise DataError(f"{self.root}: image folder not found")
        class_dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise DataError(f"{self.root}: no class sub-folders found")
        self.classes: list[str] = [p.name for p in class_dirs]
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        self.num_classes = len(self.classes)
        self.samples: list[tuple[Path, int]] = []
        for label, d in enumerate(class_dirs):
            files = sorted(
                p for p in d.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
            )
            if not files:
                raise DataError(f"{d}: class folder contains no images ({', '.join(IMAGE_EXTENSIONS)})")
            self.samples.extend((f, label) for f in files)
        self.targets: list[int] = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = read_image(path, self.decode)  # uint8 until the transforms' last step
        if self.transforms is not None:
            image = self.transforms(image).as_subclass(torch.Tensor)
        return to_float_image(image), label
