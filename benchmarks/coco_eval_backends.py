"""Time COCO evaluation with pycocotools and faster-coco-eval on one synthetic set; print a Markdown table.

Each timing is one :func:`bicsnet.metrics.evaluate_coco` call, what ``bicsnet eval``
runs after inference (results loaded, evaluated, accumulated, summarised, per-class
numbers and PR curves); the two backends alternate (A B, B A, A B, ...) and the
table shows the median of ``--repeats`` runs each, and the largest difference
between their numbers (every stat and per-class value).

    flock /tmp/bicsnet-bench.lock .venv/bin/python benchmarks/coco_eval_backends.py \
        --images 500 --detections 20000 --classes 20
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from importlib.metadata import version
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

from bicsnet.data import make_coco
from bicsnet.metrics import evaluate_coco


def _rle(mask: np.ndarray) -> dict[str, Any]:
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}


def _ellipse(h: int, w: int, box: tuple[float, float, float, float]) -> np.ndarray:
    x, y, bw, bh = box
    yy, xx = np.ogrid[0:h, 0:w]
    return ((xx + 0.5 - x - bw / 2) / max(bw / 2, 1)) ** 2 + ((yy + 0.5 - y - bh / 2) / max(bh / 2, 1)) ** 2 <= 1


def synthetic_set(
    images: int, detections: int, classes: int, size: int, seed: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ground truth (~8 objects an image, small to large, 5% crowd, ellipse masks) and ``detections`` results.

    About half the results are jittered copies of ground truth, the rest false
    positives; scores are uniform. Every record has an RLE mask.
    """
    rng = np.random.default_rng(seed)
    cats = [{"id": c + 1, "name": f"class{c + 1}"} for c in range(classes)]
    imgs = [{"id": i + 1, "width": size, "height": size, "file_name": f"{i + 1}.png"} for i in range(images)]
    anns: list[dict[str, Any]] = []
    boxes: dict[int, list[tuple[int, tuple[float, float, float, float]]]] = {}
    for img in range(1, images + 1):
        for _ in range(int(rng.integers(4, 13))):
            side = float(rng.choice([rng.uniform(8, 30), rng.uniform(34, 94), rng.uniform(100, size * 0.8)]))
            bw, bh = side, float(np.clip(side * rng.uniform(0.6, 1.4), 6, size - 2))
            box = (float(rng.uniform(0, size - bw)), float(rng.uniform(0, size - bh)), bw, bh)
            cat = int(rng.integers(1, classes + 1))
            mask = _ellipse(size, size, box)
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": cat, "bbox": list(box),
                         "area": float(mask.sum()), "iscrowd": int(rng.random() < 0.05),
                         "segmentation": _rle(mask)})  # fmt: skip
            boxes.setdefault(img, []).append((cat, box))
    results: list[dict[str, Any]] = []
    for _ in range(detections):
        img = int(rng.integers(1, images + 1))
        if rng.random() < 0.5 and boxes.get(img):
            cat, (x, y, bw, bh) = boxes[img][int(rng.integers(len(boxes[img])))]
            x, y = x + rng.normal(0, 0.1 * bw), y + rng.normal(0, 0.1 * bh)
            bw, bh = bw * rng.uniform(0.85, 1.15), bh * rng.uniform(0.85, 1.15)
        else:
            cat, bw, bh = int(rng.integers(1, classes + 1)), float(rng.uniform(6, size / 3)), float(rng.uniform(6, size / 3))
            x, y = rng.uniform(0, size - bw), rng.uniform(0, size - bh)
        box = (float(np.clip(x, 0, size - 4)), float(np.clip(y, 0, size - 4)), float(bw), float(bh))
        results.append({"image_id": img, "category_id": cat, "bbox": list(box), "score": float(rng.random()),
                        "segmentation": _rle(_ellipse(size, size, box))})  # fmt: skip
    return {"images": imgs, "annotations": anns, "categories": cats}, results


def _largest_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    worst = 0.0
    for iou_type, section in a.items():
        for key, value in section.items():
            if key == "per_class":
                for ra, rb in zip(value, b[iou_type]["per_class"]):
                    worst = max(worst, *(abs(ra[k] - rb[k]) for k in ("AP", "AP50", "AP75", "AR100")))
            else:
                worst = max(worst, abs(value - b[iou_type][key]))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=500, help="images (default 500)")
    ap.add_argument("--detections", type=int, default=20000, help="results, over all images (default 20000)")
    ap.add_argument("--classes", type=int, default=20, help="categories (default 20)")
    ap.add_argument("--size", type=int, default=320, help="image side in pixels (default 320)")
    ap.add_argument("--iou-types", nargs="+", default=["bbox", "segm"], choices=["bbox", "segm"], help="default: both")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per backend and iou type (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="default 0")
    args = ap.parse_args()

    t0 = time.perf_counter()
    dataset, results = synthetic_set(args.images, args.detections, args.classes, args.size, args.seed)
    print(f"set: {args.images} images, {len(dataset['annotations'])} annotations, {len(results)} results, "
          f"{args.classes} classes, {args.size} px (built in {time.perf_counter() - t0:.1f} s)")  # fmt: skip
    gt = make_coco(dataset)
    backends = ["pycocotools", "faster-coco-eval"]
    rows = []
    load = [os.getloadavg()[0]]
    for iou_type in args.iou_types:
        times: dict[str, list[float]] = {b: [] for b in backends}
        metrics: dict[str, Any] = {}
        for rep in range(args.repeats):
            for backend in backends if rep % 2 == 0 else backends[::-1]:  # alternate: drift hits both alike
                start = time.perf_counter()
                metrics[backend] = evaluate_coco(gt, results, (iou_type,), backend=backend)
                times[backend].append(time.perf_counter() - start)
        ref, fast = (statistics.median(times[b]) for b in backends)
        diff = _largest_difference(metrics["pycocotools"], metrics["faster-coco-eval"])
        rows.append(f"| {iou_type} | {ref:.2f} | {fast:.2f} | {ref / fast:.1f}x | {diff:.1e} | "
                    f"{metrics['pycocotools'][iou_type]['AP']:.4f} |")  # fmt: skip
    load.append(os.getloadavg()[0])
    print(f"\nmedian of {args.repeats} alternating runs; Python {platform.python_version()}, pycocotools "
          f"{version('pycocotools')}, faster-coco-eval {version('faster-coco-eval')}, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} before, {load[1]:.2f} after\n")  # fmt: skip
    print("| iou type | pycocotools (s) | faster-coco-eval (s) | speed-up | largest difference | AP |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
