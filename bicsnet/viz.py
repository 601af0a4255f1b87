"""Pictures of predictions and training curves (all written atomically)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from bicsnet.data.palette import voc_colormap
from bicsnet.io import atomic_save

__all__ = ["draw_detections", "overlay_segmentation", "plot_loss_curve", "save_image"]

_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}


def _to_uint8_chw(image: torch.Tensor | Image.Image) -> torch.Tensor:
    """Accept a PIL image or a ``3 x H x W`` tensor (float in [0, 1] or uint8); return uint8 CHW on CPU."""
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    image = image.detach().cpu()
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    if image.dtype == torch.uint8:
        return image.contiguous()
    return (image.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)


def _to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def _class_colour(label: int) -> tuple[int, int, int]:
    # VOC colours are distinct for small indices; label 0 (black) never occurs for detections.
    r, g, b = voc_colormap()[int(label) % 256]
    return int(r), int(g), int(b)


def draw_detections(
    image: torch.Tensor | Image.Image,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    class_names: Sequence[str],
    masks: torch.Tensor | None = None,
    score_thresh: float = 0.3,
) -> Image.Image:
    """Draw detections with ``score >= score_thresh`` on ``image``.

    ``boxes`` are xyxy pixels, ``labels`` are ``1..K`` (``class_names[label - 1]``)
    and ``masks`` (optional) are ``[N, 1, H, W]`` or ``[N, H, W]``
    probabilities / booleans thresholded at 0.5.
    """
    canvas = _to_uint8_chw(image)
    keep = torch.as_tensor(scores).detach().cpu() >= score_thresh
    boxes = torch.as_tensor(boxes).detach().cpu().float().reshape(-1, 4)[keep]
    labels = torch.as_tensor(labels).detach().cpu()[keep].tolist()
    kept_scores = torch.as_tensor(scores).detach().cpu()[keep].tolist()
    if not labels:
        return _to_pil(canvas)
    colours = [_class_colour(label) for label in labels]
    if masks is not None:
        m = torch.as_tensor(masks).detach().cpu()
        if m.ndim == 4:
            m = m[:, 0]
        m = m[keep]
        binary = m > 0.5 if m.is_floating_point() else m.bool()
        canvas = draw_segmentation_masks(canvas, binary, alpha=0.45, colors=colours)
    text = [
        f"{class_names[label - 1] if 1 <= label <= len(class_names) else label} {score:.2f}"
        for label, score in zip(labels, kept_scores)
    ]
    canvas = draw_bounding_boxes(canvas, boxes, labels=text, colors=colours, width=2)
    return _to_pil(canvas)


def overlay_segmentation(
    image: torch.Tensor | Image.Image, mask: torch.Tensor, num_classes: int, alpha: float = 0.5
) -> Image.Image:
    """Blend a class map (``H x W`` ints; 255 = ignore) over ``image`` using VOC colours.

    Background (0) is left uncoloured; labels outside ``[0, num_classes)``
    other than 255 are drawn in the ignore colour.
    """
    canvas = _to_uint8_chw(image).permute(1, 2, 0).numpy().astype(np.float32)
    m = torch.as_tensor(mask).detach().cpu().numpy().astype(np.int64)
    if m.shape != canvas.shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match image shape {canvas.shape[:2]}")
    m = np.where((m >= 0) & (m < num_classes), m, 255)
    colours = voc_colormap()[m].astype(np.float32)
    paint = (m != 0)[..., None]
    out = np.where(paint, (1 - alpha) * canvas + alpha * colours, canvas)
    return Image.fromarray((out + 0.5).clip(0, 255).astype(np.uint8))


def plot_loss_curve(rows: Sequence[dict[str, Any]], out_png: str | os.PathLike, keys: Sequence[str] | None = None) -> None:
    """Plot training curves from log rows like ``{"step": 10, "loss": 1.2, "lr": 1e-4}`` to a PNG.

    ``keys`` defaults to every numeric key except ``step``/``epoch``/``time``.
    Each key gets its own panel against ``step`` (row index if absent); rows
    missing a key or holding a non-finite value are skipped for that key.
    """
    # Figure + Agg canvas directly: no pyplot global state, safe off the main thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if keys is None:
        skip = {"step", "epoch", "time", "iter", "it"}
        seen: dict[str, None] = {}
        for row in rows:
            for k, v in row.items():
                if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool):
                    seen.setdefault(k, None)
        keys = list(seen)
    keys = list(keys)
    fig = Figure(figsize=(7, 2.2 * max(len(keys), 1)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(len(keys), 1), 1, sharex=True, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys):
        xs, ys = [], []
        for i, row in enumerate(rows):
            v = row.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                xs.append(row.get("step", i))
                ys.append(v)
        ax.plot(xs, ys, linewidth=1.2)
        ax.set_ylabel(key)
        if key == "lr" or (ys and min(ys) > 0 and max(ys) / min(ys) > 1e3):
            ax.set_yscale("log")  # learning rates and early losses span decades
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    atomic_save(out_png, lambda tmp: fig.savefig(tmp, format="png"))


def save_image(pil: Image.Image, path: str | os.PathLike) -> None:
    """Save a PIL image atomically; the format follows the suffix (PNG if unknown)."""
    fmt = _FORMATS.get(Path(path).suffix.lower(), "PNG")
    if fmt == "JPEG" and pil.mode not in ("RGB", "L"):
        pil = pil.convert("RGB")
    atomic_save(path, lambda tmp: pil.save(tmp, format=fmt))
