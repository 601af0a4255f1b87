"""What a dataset holds, as a task reads it: ``bicsnet data check`` and the summary ``bicsnet train`` prints.

:func:`check_data` loads a task's data through the task table
(:meth:`bicsnet.tasks.TaskSpec.load_data`, the same call ``bicsnet train``
makes, so the same flags, layouts and the ``--max-skipped`` floor apply) and
:func:`summarize` describes the loaded datasets from their attributes, so a
new layout of a task is described as soon as the task's data builder returns
it:

* COCO (:class:`~bicsnet.data.coco.CocoDetection`): ``coco``, ``ann_file``,
  ``num_annotations``, ``per_category``, ``rejected_reasons`` ...;
* segmentation: ``samples`` as ``(image path, mask path)`` pairs, ``class_names``,
  ``load_mask(path)`` (used to count the classes in each mask);
* classification: ``samples`` as ``(image path, label)`` pairs, ``classes``.

Per split the report gives the images, the annotations used per category,
the rejected records with their reasons, an image-size histogram, the
categories without samples and duplicate images (the same file listed twice,
or different files with the same content). ``deep=True`` (``data check``)
also reads every file: content hashes, sizes of image-folder and mask-folder
images, classes per mask, and files that would stop training.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from bicsnet.errors import BicsnetError, DataError
from bicsnet.data.transforms import PAPER_SCALE_RANGE

__all__ = ["SplitReport", "DataReport", "check_data", "summarize", "raise_if_errors"]

#: Label value of unlabelled pixels in segmentation masks (not a class).
_IGNORE = 255


@dataclass
class SplitReport:
    """One split (``train`` / ``val``) as the task reads it.

    Attributes:
        split: ``train`` or ``val``.
        source: the annotation file, split list or folder it was read from.
        layout: ``coco``, ``segmentation``, ``classification`` (or the dataset's class name).
        images: images in the split.
        annotations: annotation records in the source (COCO); label masks (segmentation);
            labelled images (classification).
        annotations_used: those the model sees.
        annotations_rejected: those left out (COCO: malformed records and degenerate boxes).
        rejected_reasons: reason -> count.
        rejected_examples: the first few rejected records, ``annotation id N: reason``.
        categories: dataset category id (COCO) or class index -> name.
        per_category: dataset category id / class index -> annotations used (segmentation:
            masks that contain the class; empty when masks were not read).
        empty_categories: ids of :attr:`categories` with no sample.
        image_sizes: ``"WxH"`` -> images (COCO: from the records; other layouts only when read).
        duplicates: groups of image files that are the same image: one file listed twice, or
            different files with the same content (``deep`` only).
        errors: ``path: problem`` for files that would stop training (``deep`` only).
        notes: other remarks (e.g. invalid ``area`` values replaced by the box area).
    """

    split: str
    source: str
    layout: str
    images: int
    annotations: int
    annotations_used: int
    annotations_rejected: int = 0
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    rejected_examples: list[str] = field(default_factory=list)
    categories: dict[int, str] = field(default_factory=dict)
    per_category: dict[int, int] = field(default_factory=dict)
    empty_categories: list[int] = field(default_factory=list)
    image_sizes: dict[str, int] = field(default_factory=dict)
    duplicates: list[list[str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _hashes: dict[str, str] = field(default_factory=dict, repr=False)  # path -> content hash (deep)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_hashes")
        return d


@dataclass
class DataReport:
    """Every split of a task's data (:func:`check_data`, :func:`summarize`).

    Attributes:
        task: the task the data was read for.
        splits: ``train`` / ``val`` -> :class:`SplitReport`.
        shared_images: ``"path (split) = path (other split)"`` for each image whose content is in two
            splits (the same photo trained and evaluated on; ``deep`` only).
    """

    task: str
    splits: dict[str, SplitReport]
    shared_images: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No file that would stop training (the ``--max-skipped`` floor stops loading before a report)."""
        return not any(s.errors for s in self.splits.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what ``data check --json`` prints)."""
        return {
            "task": self.task,
            "ok": self.ok,
            "splits": {name: s.to_dict() for name, s in self.splits.items()},
            "shared_images": list(self.shared_images),
        }

    def format(self, brief: bool = False) -> str:
        """A human-readable table; ``brief``: a few lines per split (what ``train`` prints)."""
        return "\n".join(_brief_lines(self) if brief else _table_lines(self))


# --------------------------------------------------------------------------- entry points


def check_data(task: str, spec: Any, img_size: int | None = None, deep: bool = True) -> DataReport:
    """Load ``task``'s data from ``spec`` (a :class:`~bicsnet.data.spec.DataSpec`) as training would, and describe it.

    A spec with only validation flags (``val_ann``/``val_images``) is read as ``bicsnet eval`` reads it.

    Raises:
        ConfigError: unknown or untrainable task, flags of another task.
        DataError: unreadable data, or a split past the ``max_skipped`` floor (one line naming the file).
    """
    from bicsnet.tasks import get_task

    t = get_task(task)
    given = [f for f in t.data_flags if getattr(spec, f, None)]
    # Only evaluation data given (--val-ann/--val-images): check that, as 'bicsnet eval' reads it.
    train = not given or any(not f.startswith("val_") for f in given)
    data = t.load_data(spec, int(img_size or t.input_size or 256), train=train, scale_range=tuple(spec.scale_range or PAPER_SCALE_RANGE))
    return summarize(data, task, deep=deep)


def summarize(data: Any, task: str, deep: bool = False) -> DataReport:
    """Describe the datasets of a :class:`~bicsnet.data.spec.TaskData` (``train`` and ``val``).

    Without ``deep`` only what is in memory is used (cheap enough for the start of every run).
    """
    splits: dict[str, SplitReport] = {}
    for name, ds in (("train", getattr(data, "train", None)), ("val", getattr(data, "val", None))):
        if ds is not None:
            splits[name] = _describe(name, ds, deep)
    report = DataReport(task, splits)
    if deep:
        report.shared_images = _shared(splits)
    return report


# --------------------------------------------------------------------------- per layout


def _describe(split: str, ds: Any, deep: bool) -> SplitReport:
    if hasattr(ds, "coco") and hasattr(ds, "ann_file"):
        return _coco_split(split, ds, deep)
    samples = getattr(ds, "samples", None)
    if isinstance(samples, Sequence) and samples and isinstance(samples[0], tuple) and len(samples[0]) == 2:
        if isinstance(samples[0][1], (str, os.PathLike)):
            return _segmentation_split(split, ds, deep)
        if isinstance(samples[0][1], (int, np.integer)):
            return _classification_split(split, ds, deep)
    n = len(ds)
    return SplitReport(split, str(getattr(ds, "root", "")), type(ds).__name__, n, n, n)


def _coco_split(split: str, ds: Any, deep: bool) -> SplitReport:
    imgs = [ds.coco.imgs[i] for i in ds.ids]
    examples = list(ds.skipped[:5]) + [f"annotation id {a}: degenerate box" for a in ds.dropped_boxes[: max(0, 5 - len(ds.skipped))]]
    notes = []
    if getattr(ds, "area_replaced", None):
        notes.append(f"{len(ds.area_replaced)} invalid 'area' value(s) replaced by the box area")
    crowd = sum(len(t.crowd_boxes) for t in ds._targets)
    if crowd:
        notes.append(f"{crowd} crowd region(s) (ignored in training and evaluation, counted as used)")
    rep = SplitReport(
        split=split,
        source=str(ds.ann_file),
        layout="coco",
        images=len(imgs),
        annotations=ds.num_annotations,
        annotations_used=ds.num_used,
        annotations_rejected=ds.num_rejected,
        rejected_reasons=dict(sorted(ds.rejected_reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        rejected_examples=examples,
        categories={c: ds.coco.cats[c]["name"] for c in ds.cat_ids},
        per_category=dict(ds.per_category),
        empty_categories=list(ds.empty_categories),
        image_sizes=_histogram(f"{im['width']}x{im['height']}" for im in imgs),
        notes=notes,
    )
    by_name: dict[str, list[int]] = {}
    for im in imgs:
        by_name.setdefault(os.path.normpath(im["file_name"]), []).append(im["id"])
    listed_twice = [[str(Path(ds.root) / name) for _ in ids] for name, ids in by_name.items() if len(ids) > 1]
    paths = [Path(ds.root) / name for name in by_name]
    _files(rep, paths, listed_twice, deep, sizes=False)
    return rep


def _segmentation_split(split: str, ds: Any, deep: bool) -> SplitReport:
    samples = [(Path(i), Path(m)) for i, m in ds.samples]
    names = list(getattr(ds, "class_names", []) or [])
    rep = SplitReport(
        split=split,
        source=str(getattr(ds, "list_file", None) or getattr(ds, "root", "")),
        layout="segmentation",
        images=len(samples),
        annotations=len(samples),
        annotations_used=len(samples),
        categories=dict(enumerate(names)),
    )
    _files(rep, [i for i, _ in samples], _listed_twice(i for i, _ in samples), deep, sizes=deep)
    if deep:
        per = Counter()
        bad: Counter = Counter()
        load = getattr(ds, "load_mask", None)
        for image, mask in samples:
            try:
                arr = np.asarray(load(mask)) if load is not None else _read_mask(mask)
            except (BicsnetError, OSError, ValueError) as e:
                rep.errors.append(str(e) if str(mask) in str(e) else f"{mask}: {e}")
                bad["unreadable or invalid mask"] += 1
                continue
            per.update(int(v) for v in np.unique(arr) if v != _IGNORE)
        rep.per_category = {i: per.get(i, 0) for i in range(len(names))} if names else dict(sorted(per.items()))
        rep.empty_categories = [i for i, n in rep.per_category.items() if not n]
        rep.annotations_rejected = sum(bad.values())
        rep.annotations_used = len(samples) - rep.annotations_rejected
        rep.rejected_reasons = dict(bad)
    return rep


def _classification_split(split: str, ds: Any, deep: bool) -> SplitReport:
    samples = [(Path(p), int(label)) for p, label in ds.samples]
    names = list(getattr(ds, "classes", []) or getattr(ds, "class_names", []) or [])
    per = Counter(label for _, label in samples)
    per_category = {i: per.get(i, 0) for i in range(len(names))} if names else dict(sorted(per.items()))
    rep = SplitReport(
        split=split,
        source=str(getattr(ds, "root", "")),
        layout="classification",
        images=len(samples),
        annotations=len(samples),
        annotations_used=len(samples),
        categories=dict(enumerate(names)),
        per_category=per_category,
        empty_categories=[i for i, n in per_category.items() if not n],
    )
    _files(rep, [p for p, _ in samples], _listed_twice(p for p, _ in samples), deep, sizes=deep)
    return rep


# --------------------------------------------------------------------------- files


def _histogram(keys: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(keys).items(), key=lambda kv: (-kv[1], kv[0])))


def _listed_twice(paths: Iterable[Path]) -> list[list[str]]:
    seen: dict[str, int] = Counter(os.path.normpath(p) for p in paths)
    return [[p] * n for p, n in seen.items() if n > 1]


def _files(rep: SplitReport, paths: list[Path], listed_twice: list[list[str]], deep: bool, sizes: bool) -> None:
    """Duplicates (listed twice; same content when ``deep``), missing files and, with ``sizes``, the size histogram."""
    rep.duplicates = list(listed_twice)
    if not deep:
        return
    by_hash: dict[str, list[str]] = {}
    shapes: list[str] = []
    for p in dict.fromkeys(os.path.normpath(p) for p in paths):
        try:
            digest = _hash_file(p)
        except FileNotFoundError:
            rep.errors.append(f"{p}: image file not found")
            continue
        except OSError as e:
            rep.errors.append(f"{p}: cannot read image file ({e.strerror or e})")
            continue
        rep._hashes[p] = digest
        by_hash.setdefault(digest, []).append(p)
        if sizes:
            shape = _image_size(p)
            if shape is None:
                rep.errors.append(f"{p}: not a recognised image file")
            else:
                shapes.append(shape)
    rep.duplicates += [sorted(group) for group in by_hash.values() if len(group) > 1]
    if sizes:
        rep.image_sizes = _histogram(shapes)


def _hash_file(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _image_size(path: str) -> str | None:
    """``"WxH"`` from the header (EXIF orientation applied), without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 degrees on display
                w, h = h, w
            return f"{w}x{h}"
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def _shared(splits: dict[str, SplitReport]) -> list[str]:
    """Files whose content is also a file of another split (the same photo in training and evaluation)."""
    owner: dict[str, tuple[str, str]] = {}
    shared: list[str] = []
    for name, rep in splits.items():
        for path, digest in rep._hashes.items():
            other, other_path = owner.setdefault(digest, (name, path))
            if other != name:
                shared.append(f"{path} ({name}) = {other_path} ({other})")
    return shared


# --------------------------------------------------------------------------- text


def _category(rep: SplitReport, cid: int) -> str:
    name = rep.categories.get(cid)
    return f"{cid} {name}" if name is not None and name != str(cid) else str(cid)


def _reasons(rep: SplitReport) -> str:
    return ", ".join(f"{k} ({n})" for k, n in rep.rejected_reasons.items()) or "-"


def _brief_lines(report: DataReport) -> list[str]:
    lines = []
    for name, rep in report.splits.items():
        used = f"{rep.annotations_used} annotations used" if rep.layout == "coco" else f"{rep.annotations_used} samples"
        head = f"data {name}: {rep.images} images, {used}"
        if rep.layout == "coco":
            head += f", {rep.annotations_rejected} rejected"
            if rep.annotations_rejected:
                head += f" ({_reasons(rep)})"
        lines.append(f"{head} - {rep.source}")
        if 0 < len(rep.per_category) <= 12:
            lines.append("  per category: " + ", ".join(f"{_category(rep, c)}: {n}" for c, n in rep.per_category.items()))
        elif rep.per_category:
            counts = sorted(rep.per_category.values())
            lines.append(f"  per category: {len(counts)} categories, {counts[0]}..{counts[-1]} each (median {counts[len(counts) // 2]})")
        if rep.empty_categories:
            empty = [_category(rep, c) for c in rep.empty_categories]
            more = f", ... (+{len(empty) - 8} more)" if len(empty) > 8 else ""
            lines.append("  no samples (kept, ids unchanged): " + ", ".join(empty[:8]) + more)
        if rep.duplicates:
            lines.append(f"  duplicate images: {len(rep.duplicates)} group(s), e.g. {', '.join(rep.duplicates[0][:2])}")
    return lines


def _table_lines(report: DataReport) -> list[str]:
    splits = list(report.splits.values())
    rows = [("split", "images", "annotations", "used", "rejected", "source")]
    rows += [(s.split, str(s.images), str(s.annotations), str(s.annotations_used), str(s.annotations_rejected), s.source) for s in splits]
    lines = [f"task {report.task}", *_columns(rows), ""]

    ids = list(dict.fromkeys(c for s in splits for c in (s.categories or s.per_category)))
    if ids and any(s.per_category for s in splits):
        ref = next((s for s in splits if s.categories), splits[0])
        rows = [("category", *(s.split for s in splits), "")]
        for c in ids:
            counts = [s.per_category.get(c) for s in splits]
            empty = [s.split for s in splits if c in s.empty_categories]
            rows.append((_category(ref, c), *("-" if n is None else str(n) for n in counts),
                         f"no samples in {', '.join(empty)}" if empty else ""))  # fmt: skip
        what = "masks containing the class" if splits[0].layout == "segmentation" else "annotations used"
        lines += [f"per category ({what}):", *_columns(rows), ""]

    for s in splits:
        lines.append(f"{s.split}:")
        sizes = ", ".join(f"{k} x{n}" for k, n in list(s.image_sizes.items())[:8])
        more = f", ... ({len(s.image_sizes) - 8} more sizes)" if len(s.image_sizes) > 8 else ""
        lines.append(f"  image sizes: {sizes + more if sizes else '- (not read)'}")
        lines.append(f"  rejected: {_reasons(s)}")
        for ex in s.rejected_examples:
            lines.append(f"    {ex}")
        if s.empty_categories:
            lines.append("  no samples: " + ", ".join(_category(s, c) for c in s.empty_categories))
        if s.duplicates:
            lines.append(f"  duplicate images: {len(s.duplicates)} group(s)")
            for group in s.duplicates[:5]:
                kind = "listed twice" if len(set(group)) == 1 else "same content"
                lines.append(f"    {kind}: {', '.join(sorted(set(group)))}")
        else:
            lines.append("  duplicate images: none")
        for note in s.notes:
            lines.append(f"  note: {note}")
        for err in s.errors[:5]:
            lines.append(f"  error: {err}")
        if len(s.errors) > 5:
            lines.append(f"  ... (+{len(s.errors) - 5} more errors)")
    if report.shared_images:
        lines.append(f"images whose content is in more than one split: {len(report.shared_images)}, e.g. {report.shared_images[0]}")
    return lines


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.ljust(w) if i == 0 or i == len(r) - 1 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  ".join(cells).rstrip())
    return out


def raise_if_errors(report: DataReport) -> None:
    """One :class:`DataError` line when a file would stop training (``data check`` exits 2)."""
    errors = [e for s in report.splits.values() for e in s.errors]
    if errors:
        raise DataError(f"{len(errors)} file(s) would stop training, first: {errors[0]}")
