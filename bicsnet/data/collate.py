"""Batch collation for the three task types."""
from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["detection_collate", "segmentation_collate", "segmentation_collate_unpadded", "classification_collate"]


def detection_collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Keep images and targets as lists: detectors take variable-size images."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


def segmentation_collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]], image_fill: float = 0.0, ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad images (with ``image_fill``) and masks (with ``ignore_index``) bottom/right to the batch max, then stack.

    Returns ``(images [B, C, H, W], masks [B, H, W] int64)``.
    """
    if not batch:
        raise ValueError("segmentation_collate got an empty batch")
    h = max(image.shape[-2] for image, _ in batch)
    w = max(image.shape[-1] for image, _ in batch)
    first = batch[0][0]
    images = first.new_full((len(batch), first.shape[0], h, w), image_fill)
    masks = torch.full((len(batch), h, w), ignore_index, dtype=torch.int64)
    for i, (image, mask) in enumerate(batch):
        if tuple(mask.shape[-2:]) != tuple(image.shape[-2:]):
            raise ValueError(f"sample {i}: mask shape {tuple(mask.shape)} does not match image shape {tuple(image.shape)}")
        ih, iw = image.shape[-2:]
        images[i, :, :ih, :iw] = image
        masks[i, :ih, :iw] = mask
    return images, masks


def segmentation_collate_unpadded(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Stack same-size samples; keep samples of different sizes as two lists, unpadded.

    Training crops all have the crop size and become ``[B, C, H, W]`` / ``[B, H, W]``
    tensors. Whole evaluation images (VOC's vary in size) stay lists, so the model sees
    each image as it is and the metric does not depend on the batch size (padding
    would change the predictions near the padded borders).
    """
    if not batch:
        raise ValueError("segmentation_collate_unpadded got an empty batch")
    for i, (image, mask) in enumerate(batch):
        if tuple(mask.shape[-2:]) != tuple(image.shape[-2:]):
            raise ValueError(f"sample {i}: mask shape {tuple(mask.shape)} does not match image shape {tuple(image.shape)}")
    if len({tuple(image.shape) for image, _ in batch}) == 1:
        return torch.stack([image for image, _ in batch]), torch.stack([mask.long() for _, mask in batch])
    return [image for image, _ in batch], [mask.long() for _, mask in batch]


def classification_collate(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack same-size images and turn labels into an int64 tensor."""
    images = torch.stack([image for image, _ in batch])
    labels = torch.as_tensor([int(label) for _, label in batch], dtype=torch.int64)
    return images, labels
