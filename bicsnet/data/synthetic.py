"""Deterministic synthetic "shapes" datasets in COCO, VOC and image-folder layouts.

Scenes have textured backgrounds (colour gradient, stripes, noise) and 1-8
coloured shapes from :data:`CLASSES` whose sizes span COCO's small, medium and
large ranges, with occlusion (later shapes cover earlier ones; annotations
describe what stays visible), a few ``iscrowd=1`` groups of tiny shapes and
some empty images. Colours are jittered (and sometimes random) so the shape,
not the colour, identifies the class.

All object masks are rasterised with pycocotools from the polygons written to
the annotations, so pixels and annotations agree exactly. Every image uses its
own random stream derived from ``(seed, split, index)``: the same arguments
give byte-identical files, and a larger dataset starts with the same images as
a smaller one.
"""
from __future__ import annotations

import functools
import io
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from bicsnet.data.palette import voc_palette
from bicsnet.errors import ConfigError, DataError
from bicsnet.io import atomic_write_json, atomic_write_text

__all__ = ["generate", "CLASSES", "CAT_IDS", "KINDS", "read_manifest"]

#: Shape classes; label ``i + 1`` (VOC index, contiguous detection label) is ``CLASSES[i]``.
CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
#: COCO category ids, deliberately non-contiguous to exercise id <-> label mapping.
CAT_IDS: tuple[int, ...] = (1, 3, 5, 8, 13, 21)
KINDS: tuple[str, ...] = ("coco", "voc", "folder")
FORMAT_VERSION = 1
MANIFEST = "synth.json"
_MARKER = ".bicsnet-synth-incomplete"  # present while a generation is in progress
_STAGING = ".bicsnet-synth-staging"

_BASE_COLOURS = np.array(
    [(220, 60, 60), (60, 175, 60), (60, 90, 225), (235, 200, 40), (200, 70, 200), (40, 200, 210)], dtype=np.float32
)
# Per-(split, purpose) stream ids so train/val/folder images never share randomness.
_STREAMS = {("scene", "train"): 0, ("scene", "val"): 1, ("crop", "train"): 2, ("crop", "val"): 3}


# --------------------------------------------------------------------------- geometry
def _shape_polygons(cls: int, cx: float, cy: float, r: float, rot: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Return (outer polygons, hole polygons) of shape ``cls`` as ``[n, 2]`` arrays, rounded to 0.01 px."""

    def ngon(n: int, radius: float, phase: float) -> np.ndarray:
        a = phase + 2 * np.pi * np.arange(n) / n
        return np.stack([cx + radius * np.cos(a), cy + radius * np.sin(a)], axis=1)

    name = CLASSES[cls]
    holes: list[np.ndarray] = []
    if name == "circle":
        outer = [ngon(32, r, rot)]
    elif name == "square":
        outer = [ngon(4, r, rot)]
    elif name == "triangle":
        outer = [ngon(3, r, rot)]
    elif name == "star":
        a = rot + np.pi * np.arange(10) / 5
        radius = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        outer = [np.stack([cx + radius * np.cos(a), cy + radius * np.sin(a)], axis=1)]
    elif name == "ring":
        outer, holes = [ngon(32, r, rot)], [ngon(32, 0.55 * r, rot)]
    else:  # cross
        a = 0.32
        local = np.array([(a, 1), (a, a), (1, a), (1, -a), (a, -a), (a, -1), (-a, -1), (-a, -a), (-1, -a), (-1, a), (-a, a), (-a, 1)]) * r
        c, s = math.cos(rot), math.sin(rot)
        outer = [local @ np.array([[c, s], [-s, c]]) + (cx, cy)]
    return [np.round(p, 2) for p in outer], [np.round(p, 2) for p in holes]


@functools.lru_cache(maxsize=None)
def _unit_area(cls: int) -> float:
    """Area of shape ``cls`` at circumradius 1 (shoelace formula, holes subtracted)."""

    def area(p: np.ndarray) -> float:
        x, y = p[:, 0], p[:, 1]
        return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))

    outer, holes = _shape_polygons(cls, 0.0, 0.0, 100.0, 0.0)
    return (sum(map(area, outer)) - sum(map(area, holes))) / 100.0**2


# COCO size buckets by sqrt(area): small < 32, medium 32-96, large > 96, with the mix we sample.
_SIZE_BUCKETS = ((5.0, 32.0, 0.4), (32.0, 96.0, 0.35), (96.0, float("inf"), 0.25))


def _sample_side(rng: np.random.Generator, img_size: int) -> float:
    """Sample sqrt(object area): pick a COCO size bucket, then log-uniform inside it (clipped to the image)."""
    lo_all, hi_all = max(5.0, 0.03 * img_size), 0.6 * img_size
    buckets = [(max(lo, lo_all), min(hi, hi_all), p) for lo, hi, p in _SIZE_BUCKETS if max(lo, lo_all) < min(hi, hi_all)]
    probs = np.array([p for _, _, p in buckets])
    lo, hi, _ = buckets[int(rng.choice(len(buckets), p=probs / probs.sum()))]
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _rasterize(polys: list[np.ndarray], h: int, w: int) -> np.ndarray:
    """Rasterise polygons (union) exactly as pycocotools will when reading the annotation."""
    rles = mask_util.frPyObjects([p.ravel().tolist() for p in polys], h, w)
    return np.ascontiguousarray(mask_util.decode(mask_util.merge(rles))).astype(bool)


def _dilate(m: np.ndarray) -> np.ndarray:
    p = np.pad(m, 1)
    return p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]


def _boundary(m: np.ndarray) -> np.ndarray:
    """A 2 px band on the outline of ``m`` (1 px inside, 1 px outside), like VOC's ignore border."""
    return _dilate(m) & _dilate(~m)


def _bbox(m: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
    return [float(xs[0]), float(ys[0]), float(xs[-1] - xs[0] + 1), float(ys[-1] - ys[0] + 1)]


def _uncompressed_rle(m: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE: column-major run lengths starting with a run of zeros."""
    flat = m.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": counts}


def _compressed_rle(m: np.ndarray) -> dict[str, Any]:
    rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


# --------------------------------------------------------------------------- rendering
@dataclass
class _Obj:
    cls: int
    polys: list[np.ndarray]
    holes: list[np.ndarray]
    full: np.ndarray  # rasterised shape, clipped to the frame
    visible: np.ndarray
    in_frame: bool
    colour: np.ndarray
    shade_dir: float
    cx: float
    cy: float
    r: float


def _make_obj(rng: np.random.Generator, cls: int, cx: float, cy: float, r: float, h: int, w: int) -> _Obj:
    polys, holes = _shape_polygons(cls, cx, cy, r, float(rng.uniform(0, 2 * np.pi)))
    full = _rasterize(polys, h, w)
    if holes:
        full &= ~_rasterize(holes, h, w)
    pts = np.concatenate(polys)
    in_frame = bool(pts.min() >= 0 and pts[:, 0].max() <= w and pts[:, 1].max() <= h)
    if rng.random() < 0.15:  # occasionally any colour, so colour alone cannot give the class away
        colour = rng.uniform(30, 230, 3).astype(np.float32)
    else:
        colour = np.clip(_BASE_COLOURS[cls] + rng.normal(0, 22, 3), 0, 255).astype(np.float32)
    return _Obj(cls, polys, holes, full, full.copy(), in_frame, colour, float(rng.uniform(0, 2 * np.pi)), cx, cy, r)


def _background(rng: np.random.Generator, h: int, w: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    c0, c1 = rng.uniform(20, 200, 3), rng.uniform(20, 200, 3)
    a = rng.uniform(0, 2 * np.pi)
    t = (xx * math.cos(a) + yy * math.sin(a)) / max(h, w)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    if rng.random() < 0.7:  # stripes of random orientation, period and colour
        b = rng.uniform(0, np.pi)
        period = rng.uniform(6, max(h, w) / 3)
        wave = np.sin(2 * np.pi * (xx * math.cos(b) + yy * math.sin(b)) / period + rng.uniform(0, 2 * np.pi))
        if rng.random() < 0.5:
            wave = np.sign(wave)
        img += wave[..., None] * rng.uniform(-30, 30, 3)
    return img.astype(np.float32)


def _paint(img: np.ndarray, obj: _Obj, mask: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> None:
    """Paint ``mask`` pixels with the object's colour plus a linear shading across it."""
    g = ((xx[mask] - obj.cx) * math.cos(obj.shade_dir) + (yy[mask] - obj.cy) * math.sin(obj.shade_dir)) / max(obj.r, 1.0)
    img[mask] = obj.colour * (1.0 + 0.25 * np.clip(g, -1, 1))[:, None]


def _place(objs: list[_Obj], cand: _Obj, allow_overlap: bool, min_keep: float = 0.4) -> bool:
    """Whether ``cand`` may go on top of ``objs``; if so, remove what it covers from their visible masks."""
    if cand.full.sum() < 12:
        return False
    overlaps = [o for o in objs if (o.visible & cand.full).any()]
    if overlaps and not allow_overlap:
        return False
    for o in overlaps:
        left = int((o.visible & ~cand.full).sum())
        if left < max(25, min_keep * int(o.full.sum())):
            return False
    for o in overlaps:
        o.visible &= ~cand.full
    return True


def _render_scene(rng: np.random.Generator, img_size: int, empty: bool) -> tuple[np.ndarray, list[_Obj], _Obj | None]:
    """Return (uint8 image HxWx3, objects in drawing order, crowd group or None)."""
    short = int(rng.integers(int(0.65 * img_size), img_size + 1))
    h, w = (short, img_size) if rng.random() < 0.7 else (img_size, short)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = _background(rng, h, w, yy, xx)
    objs: list[_Obj] = []
    crowd: _Obj | None = None
    if not empty:
        if rng.random() < 0.15:
            crowd = _crowd_group(rng, img, h, w, yy, xx, img_size)
        n = int(rng.integers(1, 9))
        # Big shapes first (they act as the back layer), so small ones occlude them rather than vice versa.
        for side in sorted((_sample_side(rng, img_size) for _ in range(n)), reverse=True):
            cls = int(rng.integers(len(CLASSES)))
            r = side / math.sqrt(_unit_area(cls))
            allow_overlap = rng.random() < 0.3  # occlusion present but not dominant
            for _ in range(6):  # a few positions; give the object up if none leaves the others visible
                # Mostly fully inside the frame; sometimes cut by the image border.
                m = r if rng.random() < 0.9 and 2 * r < min(h, w) else 0.2 * r
                cand = _make_obj(rng, cls, rng.uniform(m, w - m), rng.uniform(m, h - m), r, h, w)
                if _place(objs + ([crowd] if crowd is not None else []), cand, allow_overlap):
                    objs.append(cand)
                    break
        for o in objs:
            _paint(img, o, o.full, yy, xx)
        # _place already removed the objects' pixels from the crowd region's visible mask.
        if crowd is not None and crowd.visible.sum() < 25:
            crowd = None
    img += rng.normal(0, rng.uniform(2, 8), img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), objs, crowd


def _crowd_group(rng: np.random.Generator, img: np.ndarray, h: int, w: int, yy: np.ndarray, xx: np.ndarray, img_size: int) -> _Obj:
    """Paint a cluster of tiny same-class shapes; return it as one object (its union)."""
    cls = int(rng.integers(len(CLASSES)))
    gx, gy = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h)
    spread = 0.12 * img_size
    union = np.zeros((h, w), dtype=bool)
    base = None
    for _ in range(int(rng.integers(5, 13))):
        r = rng.uniform(0.012, 0.025) * img_size + 1.5
        o = _make_obj(rng, cls, gx + rng.normal(0, spread), gy + rng.normal(0, spread), r, h, w)
        _paint(img, o, o.full, yy, xx)
        union |= o.full
        if base is None:
            base = o
    assert base is not None  # the loop runs at least 5 times
    return _Obj(cls, [], [], union, union.copy(), False, base.colour, 0.0, gx, gy, spread)


def _render_crop(rng: np.random.Generator, size: int, cls: int) -> np.ndarray:
    """A ``size x size`` image centred on one shape of class ``cls`` with partial distractors around it."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = _background(rng, size, size, yy, xx)
    for _ in range(int(rng.integers(0, 3))):
        # Distractors sit on the border so the main object stays the subject.
        side = rng.integers(4)
        t = rng.uniform(0, size)
        cx, cy = [(t, 0.0), (t, float(size)), (0.0, t), (float(size), t)][side]
        o = _make_obj(rng, int(rng.integers(len(CLASSES))), cx, cy, rng.uniform(0.2, 0.35) * size, size, size)
        _paint(img, o, o.full, yy, xx)
    c = size / 2
    o = _make_obj(rng, cls, c + rng.uniform(-0.08, 0.08) * size, c + rng.uniform(-0.08, 0.08) * size, rng.uniform(0.25, 0.4) * size, size, size)
    _paint(img, o, o.full, yy, xx)
    img += rng.normal(0, rng.uniform(2, 8), img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- writers
def _write(path: Path, data: bytes) -> None:
    """Plain write into the staging folder (atomicity comes from moving the whole folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj) + "\n").encode("utf-8")


def _encode(arr: np.ndarray, fmt: str, palette: list[int] | None = None) -> bytes:
    im = Image.fromarray(arr)
    if palette is not None:
        im.putpalette(palette)  # 'L' -> 'P' with the VOC colours
    buf = io.BytesIO()
    if fmt == "JPEG":
        im.save(buf, format="JPEG", quality=90)
    else:
        im.save(buf, format="PNG")
    return buf.getvalue()


def _annotations(objs: list[_Obj], crowd: _Obj | None, image_id: int, next_id: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    anns = []
    for o in ([crowd] if crowd is not None else []) + objs:
        area = int(o.visible.sum())
        if area == 0:
            continue
        is_crowd = o is crowd
        if is_crowd:
            seg: Any = _uncompressed_rle(o.visible)  # COCO writes crowd regions as uncompressed RLE
        elif o.in_frame and not o.holes and area == int(o.full.sum()):
            seg = [[float(v) for v in p.ravel()] for p in o.polys]
        elif rng.random() < 0.5:
            seg = _compressed_rle(o.visible)
        else:
            seg = _uncompressed_rle(o.visible)
        anns.append(
            {
                "id": next_id + len(anns),
                "image_id": image_id,
                "category_id": CAT_IDS[o.cls],
                "segmentation": seg,
                "area": float(area),
                "bbox": _bbox(o.visible),
                "iscrowd": int(is_crowd),
            }
        )
    return anns


def _voc_label(shape: tuple[int, int], objs: list[_Obj], crowd: _Obj | None) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    regions = ([crowd] if crowd is not None else []) + objs
    for o in regions:
        label[o.visible] = o.cls + 1
    for o in regions:
        label[_boundary(o.visible)] = 255
    return label


def _params(num_train: int, num_val: int, img_size: int, seed: int, kinds: Iterable[str]) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "seed": int(seed),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "img_size": int(img_size),
        "kinds": sorted(set(kinds)),
    }


def _paths(root: Path, kinds: Iterable[str]) -> dict[str, Path]:
    paths = {"root": root, "manifest": root / MANIFEST}
    if "coco" in kinds:
        paths.update(
            coco_train_images=root / "coco" / "train",
            coco_val_images=root / "coco" / "val",
            coco_train_ann=root / "coco" / "annotations" / "instances_train.json",
            coco_val_ann=root / "coco" / "annotations" / "instances_val.json",
        )
    if "voc" in kinds:
        paths["voc_root"] = root / "voc"
    if "folder" in kinds:
        paths.update(folder_train=root / "folder" / "train", folder_val=root / "folder" / "val")
    return paths


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Return the manifest of a generated dataset in ``out_dir``, or None if there is none (or it is unreadable)."""
    try:
        with open(Path(out_dir) / MANIFEST, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def generate(
    out_dir: str | os.PathLike,
    num_train: int = 200,
    num_val: int = 50,
    img_size: int = 256,
    seed: int = 0,
    kinds: Iterable[str] = KINDS,
    reuse: bool = True,
) -> dict[str, Path]:
    """Write a synthetic shapes dataset under ``out_dir`` and return its paths.

    ``img_size`` is the long side of the scenes (the short side varies between
    65 % and 100 % of it). ``kinds`` selects the layouts:

    * ``"coco"``: ``coco/{train,val}/*.jpg|png`` and
      ``coco/annotations/instances_{train,val}.json``;
    * ``"voc"``: ``voc/JPEGImages``, ``voc/SegmentationClass`` (VOC palette
      PNGs, 255 on a thin border around objects), ``voc/ImageSets/Segmentation/
      {train,val}.txt`` and ``voc/classes.txt``;
    * ``"folder"``: ``folder/{train,val}/<class>/*.png`` object-centred crops
      (``max(32, img_size // 4)`` px square, about as many as scenes per split,
      at least one per class).

    The returned dict has ``root`` and ``manifest`` plus ``coco_train_images``,
    ``coco_val_images``, ``coco_train_ann``, ``coco_val_ann``, ``voc_root``,
    ``folder_train`` and ``folder_val`` for the kinds generated. With ``reuse``,
    an existing dataset whose ``synth.json`` records the same parameters is
    returned without regenerating; otherwise previously generated files are
    replaced. A directory holding ``coco``/``voc``/``folder`` folders that the
    generator did not make raises :class:`DataError` rather than being erased.

    Files are written to a hidden staging folder and each layout is moved into
    place with one rename; ``synth.json`` is written last (atomically), so a
    dataset without it is incomplete and is regenerated.
    """
    kinds = tuple(kinds)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ConfigError(f"synthetic dataset kinds must be a non-empty subset of {KINDS}, got {kinds}")
    if num_train < 1 or num_val < 1:
        raise ConfigError(f"num_train and num_val must be >= 1, got {num_train} and {num_val}")
    if img_size < 32:
        raise ConfigError(f"img_size must be >= 32, got {img_size}")
    root = Path(out_dir)
    params = _params(num_train, num_val, img_size, seed, kinds)
    paths = _paths(root, kinds)
    manifest = read_manifest(root)
    if reuse and manifest is not None and manifest.get("params") == params and all(p.exists() for p in paths.values()):
        return paths

    owned = [root / k for k in KINDS]
    if any(p.exists() for p in owned) and manifest is None and not (root / _MARKER).exists():
        raise DataError(f"{root}: contains coco/, voc/ or folder/ not made by the synthetic generator; refusing to overwrite")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / _MARKER, "generation in progress\n")
    (root / MANIFEST).unlink(missing_ok=True)

    # Write everything into a hidden staging folder, then move each layout into place:
    # readers never see a half-written dataset, and ~1000 images need no fsync each
    # (that made generation several times slower). synth.json, written last and
    # atomically, is what marks the dataset complete.
    staging = root / _STAGING
    if staging.exists():
        shutil.rmtree(staging)
    counts: dict[str, Any] = {}
    for split, num in (("train", num_train), ("val", num_val)):
        counts[split] = _write_split(staging, split, num, img_size, seed, kinds)
    if "voc" in kinds:
        _write(staging / "voc" / "classes.txt", ("\n".join(("background",) + CLASSES) + "\n").encode())
    for p in owned:
        if p.exists():
            shutil.rmtree(p)
    for kind in kinds:
        os.replace(staging / kind, root / kind)
    shutil.rmtree(staging)

    atomic_write_json(
        root / MANIFEST,
        {
            "params": params,
            "classes": list(CLASSES),
            "cat_ids": list(CAT_IDS),
            "counts": counts,
            "paths": {k: v.relative_to(root).as_posix() for k, v in paths.items() if k != "root"},
        },
    )
    (root / _MARKER).unlink(missing_ok=True)
    return paths


def _write_split(root: Path, split: str, num: int, img_size: int, seed: int, kinds: tuple[str, ...]) -> dict[str, int]:
    """Render one split into every requested layout under ``root`` (the staging folder); return counts."""
    images, anns, names = [], [], []
    n_crowd = n_empty = 0
    if "coco" in kinds or "voc" in kinds:
        for i in range(num):
            rng = np.random.default_rng([seed, _STREAMS["scene", split], i])
            empty = i % 16 == 5  # a few deterministic empty images (one per split from 6 images on)
            img, objs, crowd = _render_scene(rng, img_size, empty)
            h, w = img.shape[:2]
            name = f"{split}_{i:05d}"
            names.append(name)
            n_empty += not objs and crowd is None
            n_crowd += crowd is not None
            jpeg = _encode(img, "JPEG")
            if "coco" in kinds:
                image_id = 100 + 2 * i  # not an index, to catch code that confuses the two
                png = i % 10 == 3  # some PNGs among the JPEGs
                file_name = f"{name}.png" if png else f"{name}.jpg"
                _write(root / "coco" / split / file_name, _encode(img, "PNG") if png else jpeg)
                images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
                anns.extend(_annotations(objs, crowd, image_id, len(anns) + 1, rng))
            if "voc" in kinds:
                _write(root / "voc" / "JPEGImages" / f"{name}.jpg", jpeg)
                label = _voc_label((h, w), objs, crowd)
                _write(root / "voc" / "SegmentationClass" / f"{name}.png", _encode(label, "PNG", voc_palette()))
    if "coco" in kinds:
        categories = [{"id": c, "name": n, "supercategory": "shape"} for c, n in zip(CAT_IDS, CLASSES)]
        coco = {
            "info": {"description": "bicsnet synthetic shapes", "version": str(FORMAT_VERSION)},
            "licenses": [],
            "images": images,
            "annotations": anns,
            "categories": categories,
        }
        _write(root / "coco" / "annotations" / f"instances_{split}.json", _json_bytes(coco))
    if "voc" in kinds:
        _write(root / "voc" / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{n}\n" for n in names).encode())
    n_crops = 0
    if "folder" in kinds:
        size = max(32, img_size // 4)
        per_class = max(1, math.ceil(num / len(CLASSES)))
        for k in range(per_class * len(CLASSES)):
            cls = k % len(CLASSES)
            rng = np.random.default_rng([seed, _STREAMS["crop", split], k])
            crop = _render_crop(rng, size, cls)
            _write(root / "folder" / split / CLASSES[cls] / f"{split}_{k:05d}.png", _encode(crop, "PNG"))
            n_crops += 1
    return {"images": num, "annotations": len(anns), "crowd_images": n_crowd, "empty_images": n_empty, "folder_images": n_crops}
