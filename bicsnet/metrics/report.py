"""What people read after an evaluation: the per-class AP table and the pictures beside ``metrics.json``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from bicsnet.metrics.coco import PR_CURVES_ARTIFACT

__all__ = ["format_per_class_table", "write_eval_plots", "CONFUSION_MATRIX_PNG", "pr_curve_png"]

#: The confusion-matrix picture written beside ``metrics.json`` (classification, segmentation).
CONFUSION_MATRIX_PNG = "confusion_matrix.png"
#: The per-class columns of the table, as named in ``metrics.json``'s ``per_class`` records.
_COLUMNS = ("AP", "AP50", "AP75", "AR100")


def pr_curve_png(iou_type: str) -> str:
    """The precision-recall picture of one iou type (``pr_curve_bbox.png``, ``pr_curve_segm.png``)."""
    return f"pr_curve_{iou_type}.png"


def _number(value: float) -> str:
    # pycocotools' -1 (no ground truth to score against) is not a score: print it as "-".
    return "-" if value <= -1 else f"{value:.3f}"


def format_per_class_table(metrics: Mapping[str, Any]) -> str:
    """The per-class COCO table of a ``metrics.json`` dict, one block per iou type; ``""`` when it has none.

    Columns: class name, instances (non-crowd ground truth), AP (IoU
    0.50:0.95), AP50, AP75, AR100, area "all", 100 detections, as
    :func:`bicsnet.metrics.coco.evaluate_coco` stores them, to three decimals
    as pycocotools prints them; -1 (no ground truth) shows as ``-``. The last
    row, ``all``, holds the overall numbers and the total of instances.
    """
    blocks = []
    for iou_type, section in metrics.items():
        if not (isinstance(section, Mapping) and isinstance(section.get("per_class"), list)):
            continue
        rows = list(section["per_class"])
        total = sum(int(r.get("instances", 0)) for r in rows)
        table = [("class", "instances", *_COLUMNS)]
        table += [(str(r["name"]), str(r.get("instances", "?")), *(_number(r[c]) for c in _COLUMNS)) for r in rows]
        table.append(("all", str(total), *(_number(section[c]) for c in _COLUMNS)))
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        lines = [f"{iou_type} per class (area all, 100 detections; - = no ground truth):"]
        for row in table:
            lines.append("  ".join([row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def write_eval_plots(
    out_dir: str | os.PathLike, metrics: Mapping[str, Any], artifacts: Mapping[str, Any] | None = None
) -> list[Path]:
    """Draw an evaluation's pictures into ``out_dir`` (beside its ``metrics.json``); return the files written.

    ``confusion_matrix.png`` from ``metrics["confusion_matrix"]`` (classification,
    segmentation; :func:`bicsnet.viz.plot_confusion_matrix`), and
    ``pr_curve_<iou type>.png`` for each iou type of the ``pr_curves.json``
    artifact (detection, instance; :func:`bicsnet.viz.plot_pr_curves`).
    An evaluation with neither writes nothing.
    """
    from bicsnet.viz import plot_confusion_matrix, plot_pr_curves

    out = Path(out_dir)
    written: list[Path] = []
    confusion = metrics.get("confusion_matrix")
    if isinstance(confusion, Mapping) and confusion.get("classes"):  # an empty evaluation has no matrix to draw
        path = out / CONFUSION_MATRIX_PNG
        plot_confusion_matrix(confusion["counts"], confusion["classes"], path)
        written.append(path)
    for iou_type, curves in ((artifacts or {}).get(PR_CURVES_ARTIFACT) or {}).items():
        path = out / pr_curve_png(iou_type)
        plot_pr_curves(curves, path, title=f"{iou_type} precision-recall")
        written.append(path)
    return written
