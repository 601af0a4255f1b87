"""Pictures of predictions and training curves (all written atomically)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from bicsnet.data.palette import voc_colormap
from bicsnet.io import atomic_save

__all__ = [
    "draw_detections", "overlay_segmentation", "plot_loss_curve", "plot_pr_curves", "plot_confusion_matrix", "save_image",
]

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
        # Learning rates and early losses span decades; a log axis needs a positive value
        # (a one-step run logs lr 0 at the start of its warm-up).
        if (key == "lr" and any(y > 0 for y in ys)) or (ys and min(ys) > 0 and max(ys) / min(ys) > 1e3):
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    atomic_save(out_png, lambda tmp: fig.savefig(tmp, format="png"))


#: Above this many classes a plot drops per-class labels (legend entries, tick labels): they would overlap.
_MAX_LEGEND_CLASSES = 20
_MAX_TICK_CLASSES = 30


def plot_pr_curves(curves: Mapping[str, Any], out_png: str | os.PathLike, title: str = "") -> None:
    """Draw COCO precision-recall curves to a PNG: one panel per IoU setting, one line per class, the mean thick.

    ``curves`` is one iou type of :attr:`bicsnet.metrics.coco.CocoEvaluation.pr_curves`
    (the ``pr_curves.json`` evaluation artifact): ``{"recall": [R], "curves":
    [{"metric", "iou", "mean": [R], "per_class": [{"name", "precision": [R]}]}]}``,
    COCOeval's interpolated precision at its 101 recall points. Classes
    without ground truth (precision -1) have no line. With at most 20 classes
    the legend names each line with its mean precision (the AP it stands for).
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    recall = np.asarray(curves["recall"], dtype=float)
    panels = list(curves["curves"])
    fig = Figure(figsize=(5.5 * max(len(panels), 1), 5.0), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    palette = colormaps["tab20"]
    order = [*range(0, 20, 2), *range(1, 20, 2)]  # tab20's strong colours first: neighbouring classes differ
    for ax, panel in zip(axes, panels):
        classes = list(panel["per_class"])
        labelled = len(classes) <= _MAX_LEGEND_CLASSES
        for k, cls in enumerate(classes):
            precision = np.asarray(cls["precision"], dtype=float)
            if precision.size and precision.min() < 0:  # no ground truth: nothing to draw
                continue
            label = f"{cls['name']} ({precision.mean():.3f})" if labelled else None
            ax.plot(recall, precision, linewidth=1.0, alpha=0.8, color=palette(order[k % 20]), label=label)
        mean = np.asarray(panel["mean"], dtype=float)
        if mean.size and mean.min() >= 0:
            ax.plot(recall, mean, linewidth=2.5, color="black", label=f"mean ({mean.mean():.3f})")
        ax.set_title(f"IoU {panel['iou']} ({panel['metric']}), area all, 100 detections", fontsize=10)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_save(out_png, lambda tmp: fig.savefig(tmp, format="png"))


def plot_confusion_matrix(
    counts: Sequence[Sequence[int]], class_names: Sequence[str], out_png: str | os.PathLike, title: str = ""
) -> None:
    """Draw a confusion matrix (rows = ground truth, columns = prediction) normalised by row to a PNG.

    Each cell is the fraction of its ground-truth class predicted as the
    column's class (the diagonal is the per-class recall); a class with no
    sample has an empty row. Above 30 classes the tick labels are left out,
    up to 12 the cells carry their fractions.

    Raises:
        ValueError: ``counts`` is not square or does not match ``class_names``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(counts, dtype=float).reshape(len(counts), -1) if len(counts) else np.zeros((0, 0))
    k = len(class_names)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix of shape {cm.shape} for {k} class names")
    rows = cm.sum(axis=1, keepdims=True)
    fraction = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = min(max(5.0, 2.5 + 0.35 * k), 20.0)
    fig = Figure(figsize=(side + 1.2, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the ground-truth row")
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if k <= _MAX_TICK_CLASSES:
        ax.set_xticks(range(k), labels=list(class_names), rotation=90, fontsize=8)
        ax.set_yticks(range(k), labels=list(class_names), fontsize=8)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if k <= 12:
        for (i, j), value in np.ndenumerate(fraction):
            if cm[i, j]:
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value > 0.5 else "black")  # fmt: skip
    ax.set_title(title or f"confusion matrix ({k} classes, {int(cm.sum())} samples)", fontsize=10)
    fig.tight_layout()
    atomic_save(out_png, lambda tmp: fig.savefig(tmp, format="png"))


def save_image(pil: Image.Image, path: str | os.PathLike) -> None:
    """Save a PIL image atomically; the format follows the suffix (PNG if unknown)."""
    fmt = _FORMATS.get(Path(path).suffix.lower(), "PNG")
    if fmt == "JPEG" and pil.mode not in ("RGB", "L"):
        pil = pil.convert("RGB")
    atomic_save(path, lambda tmp: pil.save(tmp, format=fmt))
