"""COCO-format instance annotations as a torch Dataset for detection / instance segmentation."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors

from bicsnet.data.image import DEFAULT_DECODER, Decoder, check_decoder, read_image, to_float_image
from bicsnet.errors import ConfigError, DataError

__all__ = ["CocoDetection", "load_coco_json", "make_coco"]

logger = logging.getLogger("bicsnet.data")

# A box narrower or shorter than this (pixels, after clipping) cannot be learned from.
MIN_BOX_SIZE = 1.0
#: Largest share of a file's annotation records that may be rejected before loading stops.
DEFAULT_MAX_SKIPPED = 0.05

Transforms = Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]]


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _first(items: list[Any], n: int = 5) -> str:
    shown = "; ".join(str(i) for i in items[:n])
    return shown + (f"; ... (+{len(items) - n} more)" if len(items) > n else "")


def load_coco_json(ann_file: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO JSON file and check its top-level structure.

    Raises :class:`DataError` naming the file when it is missing, not JSON, or
    lacks the ``images``/``annotations``/``categories`` lists.
    """
    ann_file = Path(ann_file)
    try:
        with open(ann_file, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{ann_file}: annotation file not found") from None
    except IsADirectoryError:
        raise DataError(f"{ann_file}: is a directory, expected a COCO JSON file") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{ann_file}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise DataError(f"{ann_file}: not valid JSON (not UTF-8 text)") from None
    if not isinstance(data, dict):
        raise DataError(f"{ann_file}: top level must be a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"{ann_file}: missing top-level key {key!r}")
        if not isinstance(data[key], list):
            raise DataError(f"{ann_file}: {key!r} must be a list, got {type(data[key]).__name__}")
    return data


def make_coco(dataset: dict[str, Any]) -> COCO:
    """Build a pycocotools :class:`COCO` index from an in-memory dataset dict (quietly)."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


def _rle_string_counts(text: str) -> list[int] | None:
    """Decode COCO's compressed RLE string (pycocotools' ``rleFrString``); ``None`` if malformed."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text):
                return None
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            return None
        counts.append(x)
    return counts


def _check_segmentation(seg: Any, height: int, width: int) -> tuple[Any, str | None]:
    """Validate a COCO segmentation; return (cleaned segmentation, error or None)."""
    if isinstance(seg, list):
        if not seg:
            return None, "empty 'segmentation' (no mask)"
        parts = []
        for part in seg:
            if not isinstance(part, list):
                return None, "polygon segmentation must be a list of coordinate lists"
            try:
                arr = np.asarray(part, dtype=np.float64)
            except (TypeError, ValueError):
                return None, "polygon has non-numeric coordinates"
            if arr.ndim != 1 or not np.isfinite(arr).all():
                return None, "polygon has non-numeric coordinates"
            if arr.size % 2:
                return None, "polygon has an odd number of coordinates"
            # Fewer than 3 points has no area (and 4 numbers would be read as a box by pycocotools).
            if arr.size >= 6:
                parts.append(part)
        if not parts:
            return None, "polygon segmentation has no polygon with 3 or more points"
        return parts, None
    if isinstance(seg, dict):
        counts, size = seg.get("counts"), seg.get("size")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(s) for s in size)):
            return None, "RLE segmentation needs 'size': [height, width]"
        if list(size) != [height, width]:
            return None, f"RLE size {size} does not match image size [{height}, {width}]"
        if isinstance(counts, list):
            if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != height * width:
                return None, "uncompressed RLE counts must be non-negative ints summing to height*width"
        elif not isinstance(counts, str):
            return None, "RLE 'counts' must be a string or a list of ints"
        else:
            decoded = _rle_string_counts(counts)
            # pycocotools decodes without bounds checks: a bad string would overrun the mask buffer.
            if decoded is None or sum(decoded) != height * width:
                return None, "compressed RLE 'counts' is not a valid COCO RLE string covering height*width pixels"
        return seg, None
    return None, f"segmentation must be a polygon list or an RLE dict, got {type(seg).__name__}"


def _segmentation_kind(err: str) -> str:
    """The reason kind (summary and floor) of a :func:`_check_segmentation` error."""
    if "no mask" in err:
        return "no mask"
    if err.startswith("polygon"):
        return "bad polygon"
    if "RLE" in err:
        return "bad RLE"
    return "bad segmentation"


@dataclass
class _ImageTargets:
    """Pre-validated, pre-clipped targets of one image (computed once at load time)."""

    boxes: np.ndarray  # float32 [N, 4] xyxy
    labels: np.ndarray  # int64 [N]
    ann_ids: list[int] = field(default_factory=list)  # annotations behind boxes, for masks
    crowd_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))


class CocoDetection(Dataset):
    """Images and instance targets from a COCO ``instances_*.json`` file.

    Categories are mapped to contiguous labels ``1..K`` in order of their sorted
    COCO ids (``cat_ids[label - 1]`` is the COCO id); 0 is background.

    Each item is ``(image, target)``: ``image`` is float32 ``3 x H x W`` in [0, 1];
    ``target`` has ``boxes`` (float32 ``[N, 4]`` xyxy pixels), ``labels``
    (int64 ``[N]``), ``image_id`` (int), ``orig_size`` (int64 ``[H, W]``),
    ``iscrowd`` (int64 zeros ``[N]``), ``crowd_boxes`` (float32 ``[M, 4]`` xyxy of
    ``iscrowd=1`` regions, which are not in ``boxes``) and, with
    ``with_masks``, ``masks`` (uint8 ``[N, H, W]``).

    Boxes are clipped to the image; boxes whose width or height is at most
    1 px after clipping are dropped (one summary line is logged to
    ``bicsnet.data``). Annotation records that are malformed or refer to an
    unknown image/category are skipped with a logged count when ``skip_bad``
    is true, and raise :class:`DataError` otherwise. Duplicate ids and broken
    image/category records always raise :class:`DataError`.

    Only what the task reads is checked: without ``with_masks`` the
    ``segmentation`` field is ignored (box-only exports write ``[]`` there);
    with ``with_masks`` an annotation without a usable polygon or RLE is
    rejected as ``no mask``. A missing or invalid ``area`` (read only by COCO
    evaluation, for its small/medium/large split) becomes the box area.
    Categories that no annotation uses (a tool's placeholder/supercategory
    entry) keep their place in :attr:`cat_ids` and are listed in
    :attr:`empty_categories`. Image and category ids may start at 0;
    ``file_name`` may name a file in a sub-folder of ``root_images``.

    The floor: when more than ``max_skipped`` (a fraction) of the file's
    annotation records are rejected (bad records plus degenerate boxes), or
    none is usable, one :class:`DataError` names the file, the counts and the
    top reasons; ``max_skipped=None`` keeps only the "none usable" rule.

    After loading, :attr:`num_annotations` (records in the file),
    :attr:`num_used`, :attr:`rejected_reasons` (kind -> count),
    :attr:`per_category` (dataset category id -> annotations used, crowd
    regions included) and :attr:`empty_categories` describe what was read.

    An image file that is missing, corrupt, or whose size differs from its
    record raises :class:`DataError` naming the file when it is loaded
    (silently substituting another sample would skew training and evaluation).

    ``transforms(image, target)`` receives ``image`` as a uint8
    ``tv_tensors.Image`` (float32 [0, 1] for 16-bit grayscale files; see
    :func:`~bicsnet.data.image.read_image`), ``boxes``/``crowd_boxes`` as
    ``tv_tensors.BoundingBoxes`` and ``masks`` as ``tv_tensors.Mask`` so
    torchvision v2 transforms move them together; the outputs are returned as
    plain tensors, the image as float32 in [0, 1] whatever the transforms
    returned. ``decode`` picks the image decoder (``"torchvision"`` or ``"pil"``).
    """

    def __init__(
        self,
        root_images: str | os.PathLike,
        ann_file: str | os.PathLike,
        transforms: Transforms | None = None,
        with_masks: bool = False,
        skip_bad: bool = True,
        max_skipped: float | None = DEFAULT_MAX_SKIPPED,
        decode: Decoder = DEFAULT_DECODER,
    ) -> None:
        if max_skipped is not None and not (_is_num(max_skipped) and 0 <= max_skipped <= 1):
            raise ConfigError(f"--max-skipped {max_skipped!r}: must be a fraction in [0, 1]")
        self.root = Path(root_images)
        self.ann_file = Path(ann_file)
        self.transforms = transforms
        self.with_masks = with_masks
        self.skip_bad = skip_bad
        self.max_skipped = max_skipped
        self.decode = check_decoder(decode)
        data = load_coco_json(self.ann_file)
        #: Annotation records in the file (before any is rejected).
        self.num_annotations: int = len(data["annotations"])
        cleaned = self._validate(data)
        self.coco = make_coco(cleaned)
        self.cat_ids: list[int] = sorted(self.coco.cats)
        self.class_names: list[str] = [self.coco.cats[c]["name"] for c in self.cat_ids]
        self.cat_id_to_label: dict[int, int] = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.ids: list[int] = sorted(self.coco.imgs)
        self._n_clipped = 0
        self._n_degenerate = 0
        #: Annotation ids whose boxes were dropped as degenerate (<= MIN_BOX_SIZE after clipping).
        self.dropped_boxes: list[int] = []
        self._targets = [self._prepare(i) for i in self.ids]
        #: Annotations used per dataset category id (every category, 0 for those without any).
        self.per_category: dict[int, int] = {c: 0 for c in self.cat_ids}
        for ann in self.coco.anns.values():
            self.per_category[ann["category_id"]] += 1
        for aid in self.dropped_boxes:
            self.per_category[self.coco.anns[aid]["category_id"]] -= 1
        #: Category ids that no usable annotation refers to (kept in ``cat_ids``; labels do not shift).
        self.empty_categories: list[int] = [c for c in self.cat_ids if not self.per_category[c]]
        #: Annotations that reach the model (boxes and crowd regions).
        self.num_used: int = sum(self.per_category.values())
        #: Why records were rejected: kind -> count (bad records and degenerate boxes).
        self.rejected_reasons: dict[str, int] = dict(self._n_bad)
        if self._n_degenerate:
            self.rejected_reasons["degenerate box"] = self._n_degenerate
        self._check_floor()  # before the summary: a stop is one line
        self._log_summary()

    # ------------------------------------------------------------------ loading
    @property
    def num_rejected(self) -> int:
        """Annotation records not used: malformed ones and degenerate boxes."""
        return self.num_annotations - self.num_used

    def _bad(self, ann: Any, index: int, reason: str, kind: str | None = None) -> None:
        """Count a bad annotation record, or raise when bad records are not tolerated.

        ``kind`` groups the summary and the floor's reasons (default: ``reason`` up to its first colon).
        """
        aid = ann.get("id") if isinstance(ann, dict) else None
        where = f"annotation id {aid}" if _is_int(aid) else f"annotations[{index}]"
        if not self.skip_bad:
            raise DataError(f"{self.ann_file}: {where}: {reason}")
        kind = kind or reason.split(":")[0]  # group the summary by kind, not by offending value
        self._n_bad[kind] = self._n_bad.get(kind, 0) + 1
        self.skipped.append(f"{where}: {reason}")

    def _validate(self, data: dict[str, Any]) -> dict[str, Any]:
        """Check records, fill pycocotools defaults, and return a cleaned dataset dict."""
        f = self.ann_file
        self._n_bad: dict[str, int] = {}
        #: Every annotation record skipped as malformed, as "annotation id N: reason".
        self.skipped: list[str] = []
        #: Annotation ids whose invalid 'area' was replaced by the box area.
        self.area_replaced: list[int] = []
        images: dict[int, dict[str, Any]] = {}
        for i, im in enumerate(data["images"]):
            if not isinstance(im, dict) or not _is_int(im.get("id")):
                raise DataError(f"{f}: images[{i}] must be an object with an integer 'id'")
            iid = im["id"]
            if iid in images:
                raise DataError(f"{f}: duplicate image id {iid}")
            if not isinstance(im.get("file_name"), str) or not im["file_name"]:
                raise DataError(f"{f}: image id {iid}: missing or non-string 'file_name'")
            for key in ("height", "width"):
                if not _is_int(im.get(key)) or im[key] <= 0:
                    raise DataError(f"{f}: image id {iid}: '{key}' must be a positive integer")
            images[iid] = im

        categories: dict[int, dict[str, Any]] = {}
        for i, cat in enumerate(data["categories"]):
            if not isinstance(cat, dict) or not _is_int(cat.get("id")):
                raise DataError(f"{f}: categories[{i}] must be an object with an integer 'id'")
            if cat["id"] in categories:
                raise DataError(f"{f}: duplicate category id {cat['id']}")
            if not isinstance(cat.get("name"), str):
                raise DataError(f"{f}: category id {cat['id']}: missing or non-string 'name'")
            categories[cat["id"]] = cat
        if not categories:
            raise DataError(f"{f}: 'categories' is empty")

        anns: list[dict[str, Any]] = []
        seen: set[int] = set()
        for i, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict):
                self._bad(ann, i, "not an object")
                continue
            aid = ann.get("id")
            if not _is_int(aid):
                self._bad(ann, i, "missing or non-integer 'id'")
                continue
            if aid in seen:
                raise DataError(f"{f}: duplicate annotation id {aid}")
            seen.add(aid)
            if not _is_int(ann.get("image_id")) or ann["image_id"] not in images:
                self._bad(ann, i, f"unknown image_id: {ann.get('image_id')!r}")
                continue
            if not _is_int(ann.get("category_id")) or ann["category_id"] not in categories:
                self._bad(ann, i, f"unknown category_id: {ann.get('category_id')!r}")
                continue
            bbox = ann.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_num(v) for v in bbox)):
                self._bad(ann, i, "'bbox' must be a list of 4 finite numbers [x, y, w, h]", "bad bbox")
                continue
            if bbox[2] < 0 or bbox[3] < 0:
                self._bad(ann, i, "negative bbox width or height")
                continue
            iscrowd = ann.get("iscrowd", 0)
            if iscrowd not in (0, 1):  # also accepts True/False
                self._bad(ann, i, f"'iscrowd' must be 0 or 1: got {iscrowd!r}", "bad iscrowd")
                continue
            # Only COCO evaluation reads 'area' (its small/medium/large split): a missing or
            # invalid one is not worth a record, the box area stands in (as pycocotools' loadRes).
            area = ann.get("area")
            if not (_is_num(area) and area >= 0):
                if "area" in ann:
                    self.area_replaced.append(aid)
                area = bbox[2] * bbox[3]
            clean = dict(ann, iscrowd=int(iscrowd), area=float(area))
            # The segmentation is read only for masks: box-only exports write [] (or nothing) there.
            clean.pop("segmentation", None)
            if self.with_masks:
                if "segmentation" not in ann:
                    self._bad(ann, i, "missing 'segmentation' (no mask)", "no mask")
                    continue
                img = images[ann["image_id"]]
                seg, err = _check_segmentation(ann["segmentation"], img["height"], img["width"])
                if err is not None:
                    self._bad(ann, i, f"bad segmentation: {err}", _segmentation_kind(err))
                    continue
                clean["segmentation"] = seg
            anns.append(clean)

        out = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
        out.update(images=list(images.values()), annotations=anns, categories=list(categories.values()))
        return out

    def _prepare(self, image_id: int) -> _ImageTargets:
        """Clip boxes, drop degenerate ones, split crowd regions off, map categories to labels."""
        img = self.coco.imgs[image_id]
        h, w = img["height"], img["width"]
        boxes, labels, ann_ids, crowd = [], [], [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            x, y, bw, bh = ann["bbox"]
            x1, y1 = min(max(x, 0.0), w), min(max(y, 0.0), h)
            x2, y2 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
            if (x1, y1, x2, y2) != (x, y, x + bw, y + bh):
                self._n_clipped += 1
            if x2 - x1 <= MIN_BOX_SIZE or y2 - y1 <= MIN_BOX_SIZE:
                self._n_degenerate += 1
                self.dropped_boxes.append(ann["id"])
                continue
            if ann["iscrowd"]:
                crowd.append((x1, y1, x2, y2))
            else:
                boxes.append((x1, y1, x2, y2))
                labels.append(self.cat_id_to_label[ann["category_id"]])
                ann_ids.append(ann["id"])
        return _ImageTargets(
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64),
            ann_ids=ann_ids,
            crowd_boxes=np.asarray(crowd, dtype=np.float32).reshape(-1, 4),
        )

    def _log_summary(self) -> None:
        n_ann = len(self.coco.anns)
        n_crowd = sum(len(t.crowd_boxes) for t in self._targets)
        msg = (
            f"{self.ann_file}: {len(self.ids)} images, {len(self.cat_ids)} categories, "
            f"{n_ann} annotations ({n_crowd} crowd); clipped {self._n_clipped} boxes to the image, "
            f"dropped {self._n_degenerate} degenerate boxes (<= {MIN_BOX_SIZE:g} px)"
        )
        if self._n_degenerate:
            msg += f" (annotation ids {_first(self.dropped_boxes)})"
        if self._n_bad:
            detail = ", ".join(f"{n} {reason}" for reason, n in sorted(self._n_bad.items()))
            msg += f", skipped {sum(self._n_bad.values())} bad annotation records ({detail}: {_first(self.skipped)})"
        if self.area_replaced:
            n, ids = len(self.area_replaced), _first(self.area_replaced)
            msg += f", replaced {n} invalid 'area' value(s) by the box area (annotation ids {ids})"
        if self.empty_categories:
            names = [f"{c} {self.coco.cats[c]['name']!r}" for c in self.empty_categories]
            msg += f"; categories with no annotations (kept, ids unchanged): {_first(names)}"
        level = logging.WARNING if (self._n_bad or self._n_degenerate) else logging.INFO
        logger.log(level, msg)

    def _check_floor(self) -> None:
        """Stop when more than ``max_skipped`` of the records were rejected, or none is usable."""
        total, rejected = self.num_annotations, self.num_rejected
        reasons = ", ".join(f"{k} ({n})" for k, n in sorted(self.rejected_reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:3])
        if self.num_used and not any(len(t.labels) for t in self._targets):
            raise DataError(f"{self.ann_file}: no usable annotation: the {self.num_used} used are all crowd regions (iscrowd=1)")
        if self.num_used == 0:
            if total == 0:
                raise DataError(f"{self.ann_file}: no annotations (images: {len(self.ids)}); nothing to train or evaluate on")
            hint = ""
            if self.with_masks and self.rejected_reasons.get("no mask", 0) == rejected:
                hint = " - box-only data? use --task detection"
            raise DataError(f"{self.ann_file}: no usable annotation: all {total} rejected: {reasons}{hint}")
        if self.max_skipped is not None and rejected > self.max_skipped * total:
            raise DataError(
                f"{self.ann_file}: {rejected} of {total} annotations ({100 * rejected / total:.3g}%) rejected, "
                f"more than --max-skipped {100 * self.max_skipped:.3g}%: {reasons}"
            )

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        """Path of the image file of sample ``index``."""
        return self.root / self.coco.imgs[self.ids[index]]["file_name"]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_path(index)
        image = read_image(path, self.decode)  # uint8 until the transforms' last step
        h, w = image.shape[-2:]
        if (h, w) != (info["height"], info["width"]):
            raise DataError(
                f"{path}: image is {w}x{h} (after EXIF orientation) but {self.ann_file.name} "
                f"says {info['width']}x{info['height']}"
            )
        t = self._targets[index]
        n = len(t.labels)
        target: dict[str, Any] = {
            "boxes": torch.from_numpy(t.boxes.copy()),
            "labels": torch.from_numpy(t.labels.copy()),
            "image_id": image_id,
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
            "iscrowd": torch.zeros(n, dtype=torch.int64),
            "crowd_boxes": torch.from_numpy(t.crowd_boxes.copy()),
        }
        if self.with_masks:
            if n:
                masks = np.stack([self.coco.annToMask(self.coco.anns[a]) for a in t.ann_ids])
            else:
                masks = np.zeros((0, h, w), dtype=np.uint8)
            target["masks"] = torch.from_numpy(masks.astype(np.uint8, copy=False))
        if self.transforms is not None:
            image, target = self._apply_transforms(image, target)
        return to_float_image(image), target

    def _apply_transforms(self, image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        size = tuple(image.shape[-2:])
        target = dict(target)
        for key in ("boxes", "crowd_boxes"):
            target[key] = tv_tensors.BoundingBoxes(target[key], format="XYXY", canvas_size=size)
        if "masks" in target:
            target["masks"] = tv_tensors.Mask(target["masks"])
        image, target = self.transforms(tv_tensors.Image(image), target)
        # Hand plain tensors to the model: tv_tensor subclasses leak into autograd otherwise.
        image = image.as_subclass(torch.Tensor)
        target = {k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in target.items()}
        return image, target
