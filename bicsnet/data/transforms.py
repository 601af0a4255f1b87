"""Training and evaluation transforms built on torchvision.transforms.v2.

Detection and segmentation transforms are called as ``t(image, target)`` and
move boxes (``tv_tensors.BoundingBoxes``) and masks (``tv_tensors.Mask``)
together with the image. Classification transforms are called as ``t(image)``.

Images come in as uint8 (:func:`~bicsnet.data.image.read_image`) and stay
uint8 through resizing, cropping, padding and flipping; :class:`ToFloatImage`
turns them into float32 in [0, 1] as the last step (torchvision's advice for
v2: uint8 kernels are faster and a quarter of the memory). They are not
normalised: the models do that. Float32 [0, 1] input (16-bit files, or a
caller's own tensors) is accepted too and stays float32 throughout.

Numerics: evaluation transforms give exactly what the float pipeline gave
(``x / 255``, then for classification the same float resize). Training
augmentation resizes uint8 with antialiasing, which rounds to whole levels:
results differ from resizing the float image by at most about one level
(1.006 / 255 measured), an accepted change in the random augmentation.
"""
from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from bicsnet.data.image import to_float_image

__all__ = [
    "PAPER_SCALE_RANGE",
    "ToFloatImage",
    "RandomCropPad",
    "ScaleJitter",
    "SanitizeDetectionTarget",
    "detection_train_transforms",
    "detection_eval_transforms",
    "segmentation_train_transforms",
    "segmentation_eval_transforms",
    "classification_train_transforms",
    "classification_eval_transforms",
]

#: Scale jitter of the paper's training recipes (Section V-A1: [0.5, 2.0] of the input size).
PAPER_SCALE_RANGE: tuple[float, float] = (0.5, 2.0)

# Per-instance keys of a detection target that must be filtered with the boxes.
_INSTANCE_KEYS = ("labels", "iscrowd", "masks", "area")


def _check_scale_range(scale_range: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in scale_range)
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < min <= max, got {scale_range}")
    return lo, hi


class ToFloatImage(v2.Transform):
    """uint8 images to float32 in [0, 1] as ``x / 255`` (:func:`~bicsnet.data.image.to_float_image`); the last step.

    Float images pass through as float32; boxes, masks and other targets are
    untouched. Unlike ``v2.ToDtype(torch.float32, scale=True)`` (which
    multiplies by ``1 / 255``, one float32 ulp away for half the values) the
    result is bit-identical to :func:`~bicsnet.data.image.load_image`, so
    evaluation inputs are exactly what they were before images stayed uint8.
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # v2 hands over images, and a plain tensor only when no Image is present (its "pure tensor" rule).
        if isinstance(inpt, tv_tensors.TVTensor) and not isinstance(inpt, tv_tensors.Image):
            return inpt
        out = to_float_image(inpt.as_subclass(torch.Tensor))
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.Image) else out


class RandomCropPad(v2.Transform):
    """Randomly crop to ``size x size``, first padding the bottom/right when the input is smaller.

    Padding uses 0 for images and ``mask_fill`` for masks (255 marks ignored
    pixels in semantic segmentation; 0 is "no instance" for instance masks).
    Boxes are shifted and clipped to the crop.
    """

    def __init__(self, size: int, mask_fill: int = 0) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"crop size must be positive, got {size}")
        self.size = int(size)
        self.mask_fill = mask_fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        top = int(torch.randint(0, max(h - self.size, 0) + 1, ()).item())
        left = int(torch.randint(0, max(w - self.size, 0) + 1, ()).item())
        return {"top": top, "left": left, "pad_bottom": max(self.size - h, 0), "pad_right": max(self.size - w, 0)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["pad_bottom"] or params["pad_right"]:
            fill = self.mask_fill if isinstance(inpt, tv_tensors.Mask) else 0
            inpt = self._call_kernel(F.pad, inpt, padding=[0, 0, params["pad_right"], params["pad_bottom"]], fill=fill)
        return self._call_kernel(F.crop, inpt, top=params["top"], left=params["left"], height=self.size, width=self.size)


class ScaleJitter(v2.ScaleJitter):
    """``v2.ScaleJitter`` that keeps at least one pixel on each side.

    For an extreme aspect ratio (say 2000 x 2 px) the short side would round
    to 0 and the resize fail deep inside torch; here it stays 1 px.
    """

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = super().make_params(flat_inputs)["size"]
        return {"size": (max(1, h), max(1, w))}


class SanitizeDetectionTarget:
    """Clip boxes to the canvas and drop those at most ``min_size`` px wide or tall.

    Called as ``(image, target) -> (image, target)``. ``labels``, ``iscrowd``,
    ``masks`` (and ``area`` if present) are filtered with ``boxes``; empty
    ``crowd_boxes`` are dropped independently.
    """

    def __init__(self, min_size: float = 1.0) -> None:
        self.min_size = min_size

    def _keep(self, boxes: tv_tensors.BoundingBoxes) -> tuple[tv_tensors.BoundingBoxes, torch.Tensor]:
        boxes = F.clamp_bounding_boxes(boxes)
        wh = boxes[:, 2:] - boxes[:, :2]
        return boxes, (wh > self.min_size).all(dim=1)

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        target = dict(target)
        boxes, keep = self._keep(target["boxes"])
        target["boxes"] = tv_tensors.wrap(boxes[keep], like=boxes)
        for key in _INSTANCE_KEYS:
            if key in target:
                value = target[key]
                target[key] = tv_tensors.wrap(value[keep], like=value) if isinstance(value, tv_tensors.TVTensor) else value[keep]
        if "crowd_boxes" in target:
            crowd, keep = self._keep(target["crowd_boxes"])
            target["crowd_boxes"] = tv_tensors.wrap(crowd[keep], like=crowd)
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_size={self.min_size})"


def _jitter_crop_flip(size: int, scale_range: tuple[float, float], hflip: float, mask_fill: int) -> list[Any]:
    """The shared training steps on the uint8 image: scale jitter, crop / pad to ``size x size``, flip, then float [0, 1].

    The long side becomes ``size * s`` (``s`` uniform in ``scale_range``); the
    bottom/right padding fills images with 0 and masks with ``mask_fill``.
    """
    lo, hi = _check_scale_range(scale_range)
    return [
        # ScaleJitter scales by min(target/h, target/w) * s: for a square target
        # that puts the long side at size * s.
        ScaleJitter(target_size=(size, size), scale_range=(lo, hi), antialias=True),
        RandomCropPad(size, mask_fill=mask_fill),
        v2.RandomHorizontalFlip(p=hflip),
        ToFloatImage(),
    ]


def detection_train_transforms(
    img_size: int, scale_range: tuple[float, float] = PAPER_SCALE_RANGE, hflip: float = 0.5
) -> v2.Compose:
    """Large-scale jitter for detection / instance segmentation training.

    Resizes so the long side becomes ``img_size * s`` with ``s`` uniform in
    ``scale_range``, randomly crops (or pads bottom/right with 0) to exactly
    ``img_size x img_size``, flips horizontally with probability ``hflip``, and
    drops boxes (with their labels and masks) left empty by the crop; the
    image stays uint8 until the float32 [0, 1] conversion after the flip.
    """
    return v2.Compose([*_jitter_crop_flip(img_size, scale_range, hflip, mask_fill=0), SanitizeDetectionTarget()])


def detection_eval_transforms() -> v2.Compose:
    """Evaluation transform for detection: only makes a float32 [0, 1] image (``x / 255``, exactly).

    The detector resizes and pads internally and returns predictions in
    original image coordinates.
    """
    return v2.Compose([ToFloatImage()])


def segmentation_train_transforms(crop: int = 512, scale_range: tuple[float, float] = PAPER_SCALE_RANGE, hflip: float = 0.5) -> v2.Compose:
    """Semantic segmentation training transform, called as ``t(image, mask)``.

    Resizes so the long side becomes ``crop * s`` (``s`` uniform in
    ``scale_range``; for VOC-sized images this is the usual 0.5-2x scaling),
    randomly crops / pads to ``crop x crop`` (image pad 0, mask pad 255 =
    ignore) and flips horizontally. Masks are resized with nearest neighbour.
    The image stays uint8 until the float32 [0, 1] conversion at the end.
    """
    return v2.Compose(_jitter_crop_flip(crop, scale_range, hflip, mask_fill=255))


def segmentation_eval_transforms() -> v2.Compose:
    """Evaluation transform for semantic segmentation: only makes a float32 [0, 1] image (``x / 255``, exactly)."""
    return v2.Compose([ToFloatImage()])


def classification_train_transforms(size: int = 224) -> v2.Compose:
    """Random-resized crop to ``size`` plus horizontal flip on the uint8 image, then float32 [0, 1]; called as ``t(image)``."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(size, antialias=True),
            v2.RandomHorizontalFlip(),
            ToFloatImage(),
        ]
    )


def classification_eval_transforms(size: int = 224) -> v2.Compose:
    """Resize the shorter side to ``size * 256 / 224`` then centre-crop ``size``; called as ``t(image)``.

    The one pipeline that converts to float32 first: resizing uint8 would round
    each pixel to a whole level (up to 1.006 / 255 away from the float result),
    and evaluation and ``bicsnet predict`` (which passes float images) must see
    the same numbers as before.
    """
    return v2.Compose(
        [
            v2.ToImage(),
            ToFloatImage(),
            v2.Resize(round(size * 256 / 224), antialias=True),
            v2.CenterCrop(size),
        ]
    )
