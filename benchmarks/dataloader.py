"""Data-loader throughput, before / after images stayed uint8 until the end of the transforms.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dataloader.py ../shared/data

DATA_ROOT holds ``strawberry/train`` (a Roboflow COCO export: images and
``_annotations.coco.json``) and ``stanford_background`` (``images/``,
``labels/`` label PNGs, ``splits/train_backup.txt``; unlabelled pixels 15).

Three pipelines, each a ``DataLoader`` (``num_workers=0``, the library's
collate functions) over the same first ``--images`` samples with the same
random augmentation (the torch seed is reset before each):

* ``before``: PIL decodes and the image is float32 from the first transform
  on (the code before this change, re-created: ``decode="pil"`` and
  ``v2.ToDtype(torch.float32, scale=True)`` in front of today's transforms,
  which makes every later step run on float; the final ``ToFloatImage`` is then a no-op);
* ``pil-uint8``: PIL decodes, the transforms run on uint8 (the transform change alone);
* ``after``: the library default: torchvision decodes JPEGs, transforms on uint8.

The pipelines alternate within each pass (rotating the order), ``--passes``
times; the table gives medians of images per second and the speed-up over
``before``. ``max diff`` is the largest pixel difference between ``after`` and
``before`` outputs on the first batch (levels of 255): 0 for evaluation, about
one level for training (uint8 resizing rounds), a sanity check that both
pipelines did the same work.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2

from bicsnet.tools.runtimes import cpu_name
from bicsnet.data import (
    CocoDetection,
    SegmentationFolder,
    detection_collate,
    detection_eval_transforms,
    detection_train_transforms,
    read_class_names,
    segmentation_collate_unpadded,
    segmentation_eval_transforms,
    segmentation_train_transforms,
)

PIPELINES = ("before", "pil-uint8", "after")


def _float_first(transforms: v2.Compose) -> v2.Compose:
    """The pre-change pipeline: float32 [0, 1] before the first step, so every step runs on float."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), *transforms.transforms])


def _images(batch: Any) -> list[torch.Tensor]:
    images = batch[0]
    return list(images) if isinstance(images, (list, tuple)) else list(images.unbind(0))


def _workload(name: str, make: Callable[[str, v2.Compose], Dataset], transforms: v2.Compose, collate: Callable, n: int) -> dict[str, Any]:
    datasets = {
        "before": make("pil", _float_first(transforms)),
        "pil-uint8": make("pil", transforms),
        "after": make("torchvision", transforms),
    }
    n = min(n, len(datasets["after"]))
    return {"name": name, "n": n, "collate": collate, "sets": {k: Subset(ds, range(n)) for k, ds in datasets.items()}}


def _run(work: dict[str, Any], pipeline: str, seed: int, batch_size: int) -> tuple[float, list[torch.Tensor]]:
    """Seconds for one pass of ``pipeline`` over the workload; the first batch's images."""
    loader = DataLoader(work["sets"][pipeline], batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=work["collate"])
    torch.manual_seed(seed)
    first: list[torch.Tensor] = []
    start = time.perf_counter()
    for i, batch in enumerate(loader):
        if i == 0:
            first = _images(batch)
    return time.perf_counter() - start, first


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data_root", nargs="?", default="../shared/data", help="folder holding strawberry/ and stanford_background/")
    p.add_argument("--images", type=int, default=100, help="samples per pass (the first N of each training set)")
    p.add_argument("--passes", type=int, default=5, help="passes per pipeline; medians are reported")
    p.add_argument("--img-size", type=int, default=320, help="detection training size (scale jitter + crop)")
    p.add_argument("--crop", type=int, default=256, help="segmentation training crop")
    p.add_argument("--batch-size", type=int, default=8, help="loader batch size")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (run with OMP_NUM_THREADS=1 as well)")
    p.add_argument("--tasks", default="detection,segmentation", help="comma-separated: detection, segmentation")
    p.add_argument("--eval", action="store_true", help="also time the evaluation transforms (decode + float conversion)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(args.data_root)

    works = []
    tasks = args.tasks.split(",")
    if "detection" in tasks:
        s = root / "strawberry" / "train"

        def coco(decode: str, t: v2.Compose) -> Dataset:
            return CocoDetection(s, s / "_annotations.coco.json", t, decode=decode)

        works.append(_workload(f"detection train, strawberry, {args.img_size} px", coco,
                               detection_train_transforms(args.img_size), detection_collate, args.images))  # fmt: skip
        if args.eval:
            works.append(_workload("detection eval, strawberry", coco, detection_eval_transforms(), detection_collate, args.images))
    if "segmentation" in tasks:
        b = root / "stanford_background"
        names = read_class_names(Path(__file__).parent / "stanford_background_classes.txt")

        def folder(decode: str, t: v2.Compose) -> Dataset:
            return SegmentationFolder(b / "images", b / "labels", b / "splits" / "train_backup.txt", names, 15, t, decode=decode)

        works.append(_workload(f"segmentation train, Stanford Background, {args.crop} px crop", folder,
                               segmentation_train_transforms(args.crop), segmentation_collate_unpadded, args.images))  # fmt: skip
        if args.eval:
            works.append(_workload("segmentation eval, Stanford Background", folder, segmentation_eval_transforms(),
                                   segmentation_collate_unpadded, args.images))  # fmt: skip

    load_before = os.getloadavg()
    rows = []
    for work in works:
        times: dict[str, list[float]] = {k: [] for k in PIPELINES}
        _run(work, "after", 0, args.batch_size)  # warm-up: file cache, lazy imports
        diff = 0.0
        for i in range(args.passes):
            order = PIPELINES[i % 3 :] + PIPELINES[: i % 3]
            firsts = {}
            for pipeline in order:
                seconds, firsts[pipeline] = _run(work, pipeline, seed=i, batch_size=args.batch_size)
                times[pipeline].append(seconds)
            diff = max(diff, max(float((a - b).abs().max()) for a, b in zip(firsts["after"], firsts["before"])) * 255)
        rate = {k: work["n"] / statistics.median(v) for k, v in times.items()}
        rows.append((work, rate, diff, times))
    load_after = os.getloadavg()

    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")  # fmt: skip
    print(f"load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f}; "
          f"{args.passes} passes, batch {args.batch_size}, workers 0\n")  # fmt: skip
    print("| workload | images | before (img/s) | pil-uint8 (img/s) | after (img/s) | after / before | max diff (levels) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for work, rate, diff, _ in rows:
        print(f"| {work['name']} | {work['n']} | {rate['before']:.1f} | {rate['pil-uint8']:.1f} | {rate['after']:.1f} "
              f"| {rate['after'] / rate['before']:.2f}x | {diff:.2f} |")  # fmt: skip
    print("\nseconds per pass:")
    for work, _, _, times in rows:
        print(f"  {work['name']}: " + "; ".join(f"{k} " + " ".join(f"{t:.2f}" for t in v) for k, v in times.items()))


if __name__ == "__main__":
    main()
