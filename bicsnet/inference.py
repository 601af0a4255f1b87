"""Prediction on what users have: image files, folders, glob patterns and videos, streamed in batches.

:func:`predict` (:func:`bicsnet.predict` and ``bicsnet predict`` run it) expands
its inputs (:func:`expand_inputs`), decodes them as the model goes (images in
DataLoader worker processes a few ahead, videos frame by frame with PyAV; never
all of them first), runs the task's predictor (``TaskSpec.predict`` in :mod:`bicsnet.tasks`) on
batches of ``batch_size`` images, and writes under ``out``:

* per image: ``<stem>.json``, the drawn ``<stem>.png`` and, for segmentation,
  the label mask ``<stem>_mask.png``, in the inputs' folders below their common
  folder (a named folder or a pattern's literal folder counts as an input's
  folder), so ``cam1/frame.jpg`` and ``cam2/frame.jpg`` keep one result each;
* per video ``<stem>.mp4``: the drawn frames as an H.264 MP4 at the input's frame
  rate, and ``<stem>/NNNNNN.json`` (and ``NNNNNN_mask.png``) per frame, numbered from 0;
* for the whole run: ``predictions.coco.json`` for detectors (COCO results
  with an image index, layout in :func:`predict`) or ``predictions.csv`` for
  classifiers.

Everything is written into a hidden staging folder inside ``out`` and moved
into place only when every input has been predicted, so a bad input found
half-way leaves ``out`` as it was.

The task table's predictors (:attr:`bicsnet.tasks.TaskSpec.predict`) take a
batch of same-shape images; :func:`_predict_batch` groups each loaded batch by
shape. Only same-shape inputs are batched: a detector pads a batch to its
largest image and the Spatial Fusion Module's global context averages over the
padded map, so mixing sizes would change the predictions.
"""
from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from .data.image import IMAGE_EXTENSIONS, load_image, to_float_image
from .errors import ConfigError, DataError
from .io import atomic_open, atomic_write_json, atomic_write_text
from .tasks import Prediction, TaskSpec, get_task

__all__ = [
    "predict", "expand_inputs", "PredictInput", "PredictionRun", "VIDEO_EXTENSIONS", "COCO_RESULTS_FILE",
    "CLASSIFICATION_CSV_FILE", "DEFAULT_BATCH_SIZE", "DEFAULT_WORKERS",
]  # fmt: skip

#: File suffixes read as videos (frame by frame, with PyAV).
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
#: The run's COCO results (detection and instance models), in ``out``.
COCO_RESULTS_FILE = "predictions.coco.json"
#: The run's top-5 classes of every input (classification models), in ``out``.
CLASSIFICATION_CSV_FILE = "predictions.csv"
#: Images per forward pass: fills a GPU with BiCSNet-48 at 640 px in a few GB, costs nothing on a CPU.
DEFAULT_BATCH_SIZE = 8
#: DataLoader processes decoding images ahead of the model (as ``bicsnet eval --workers``).
DEFAULT_WORKERS = 2

_GLOB_MAGIC = re.compile(r"[*?[]")


@dataclass(frozen=True)
class PredictInput:
    """One input file after :func:`expand_inputs`.

    Attributes:
        path: the file, as named (a folder's or pattern's files joined to what was named).
        anchor: the folder its result's path is taken relative to (with the other inputs'):
            the named folder, a pattern's literal leading folder, or the file's own folder.
        video: read frame by frame (suffix in :data:`VIDEO_EXTENSIONS`).
        fps: a video's frame rate (frames per second), ``None`` for an image.
        frames: the frame count a video's container declares (``None``: unknown, or an image).
    """

    path: Path
    anchor: Path
    video: bool = False
    fps: Fraction | None = None
    frames: int | None = None


class PredictionRun(list):
    """``list[Prediction]`` in input order (a video's frames in order), plus the run's own files.

    Attributes:
        run_files: files written for the run rather than one image: annotated videos,
            ``predictions.coco.json`` / ``predictions.csv`` (empty without ``out``).
    """

    def __init__(self, predictions: Sequence[Prediction] = (), run_files: Sequence[Path] = ()) -> None:
        super().__init__(predictions)
        self.run_files = list(run_files)

    def summary(self) -> str:
        """One line: how many images (video frames count one each) and what was found, most frequent class first.

        ``"3 image(s): strawberry x5, flower x1; nothing found in 1"``: a detector's
        kept detections, a classifier's top-1 classes, a segmenter's images per class
        present (:attr:`~bicsnet.tasks.Prediction.found`); ``"3 image(s): nothing found"``.
        """
        counts = Counter(name for p in self for name in p.found)
        found = ", ".join(f"{name} x{n}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        empty = sum(1 for p in self if not p.found)
        if not found:
            return f"{len(self)} image(s): nothing found"
        return f"{len(self)} image(s): {found}" + (f"; nothing found in {empty}" if empty else "")


# --------------------------------------------------------------------------- inputs


def expand_inputs(inputs: Sequence[str | os.PathLike], exclude: str | os.PathLike | None = None) -> list[PredictInput]:
    """Files, folders, glob patterns and videos as a list of input files, each once, in the order named.

    A folder gives every image below it (suffixes in
    :data:`~bicsnet.data.image.IMAGE_EXTENSIONS`, any case; hidden files and
    folders skipped), sorted by path. A path that does not exist and holds
    ``*``, ``?`` or ``[`` is a pattern for :func:`glob.glob` with
    ``recursive=True`` (``**`` spans folders); it gives the image and video files
    it matches, sorted. Files a folder or pattern finds below ``exclude`` (the
    output folder: a second run must not read the first one's drawings) are
    skipped. A named file is read as a video if its suffix is in
    :data:`VIDEO_EXTENSIONS`, else as an image. A video's container is opened
    here, so an unreadable one fails before any model runs.

    Raises:
        DataError: a named file that does not exist, a folder without images, a
            pattern matching no image or video file, or an unreadable video (naming it).
        ConfigError: a video given without PyAV installed.
    """
    found: dict[Path, PredictInput] = {}
    skip = Path(exclude).resolve() if exclude is not None else None
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS and not _hidden(p.relative_to(path)) and p.is_file()
                and not _below(p, skip)
            )  # fmt: skip
            if not files:
                inside = skip is not None and _below(path.resolve() / "_", skip)
                why = f"; it is inside --out {exclude}, whose files are results, never inputs: choose another --out" if inside else ""
                raise DataError(f"{path}: no images ({' '.join(IMAGE_EXTENSIONS)}) in this folder or below it{why}")
            anchor = path
        elif path.exists() or not _GLOB_MAGIC.search(text):
            if not path.exists():
                raise DataError(f"{path}: {'video' if _is_video(path) else 'image'} file not found")
            files, anchor = [path], path.parent
        else:
            wanted = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
            files = sorted(
                Path(p) for p in glob.glob(text, recursive=True)
                if Path(p).suffix.lower() in wanted and Path(p).is_file() and not _below(Path(p), skip)
            )  # fmt: skip
            if not files:
                raise DataError(f"{text}: the pattern matches no image or video files ({' '.join(wanted)})")
            anchor = _literal_folder(text)
        for file in files:
            key = file.resolve()
            if key not in found:  # the same file twice is one input
                fps, frames = _probe_video(file) if _is_video(file) else (None, None)
                found[key] = PredictInput(file, anchor, _is_video(file), fps, frames)
    return list(found.values())


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _below(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _literal_folder(pattern: str) -> Path:
    """The folder a glob pattern starts in: its leading parts without wildcards (``data/**/*.jpg`` -> ``data``)."""
    parts = Path(pattern).parts
    first_wild = next(i for i, part in enumerate(parts) if _GLOB_MAGIC.search(part))
    return Path(*parts[:first_wild]) if first_wild else Path(".")


def _output_stems(sources: Sequence[PredictInput]) -> dict[Path, Path]:
    """Each input's result path without suffix, relative to ``out``: its folder below the common folder of the inputs' anchors, and its stem.

    Raises:
        ConfigError: two inputs would write the same file (e.g. ``frame.jpg`` and
            ``frame.png`` in one folder), or an input's results would land in a
            video's frame folder.
    """
    if not sources:
        return {}
    root = _common_root(sources)
    stems = {s.path: s.path.resolve().parent.relative_to(root) / s.path.stem for s in sources}
    owner: dict[str, Path] = {}  # result file (posix, relative to out) -> the input writing it
    for name in (COCO_RESULTS_FILE, CLASSIFICATION_CSV_FILE):
        owner[name] = Path(f"the run's {name}")
    for s in sources:
        for name in _planned_files(stems[s.path], s.video):
            if name in owner:
                raise ConfigError(f"{owner[name]} and {s.path} would both write {name}; rename one or predict them in separate runs")
            owner[name] = s.path
    frame_folders = {stems[s.path].as_posix(): s.path for s in sources if s.video}
    for name, path in owner.items():
        for parent in Path(name).parents:
            if parent.as_posix() in frame_folders and frame_folders[parent.as_posix()] != path:
                raise ConfigError(f"{path} would write {name} into the frame folder of {frame_folders[parent.as_posix()]}; "
                                  "rename one or predict them in separate runs")  # fmt: skip
    return stems


def _common_root(sources: Sequence[PredictInput]) -> Path:
    """The folder results mirror from: the common folder of the inputs' anchors."""
    return Path(os.path.commonpath([s.anchor.resolve() for s in sources]))


def _planned_files(stem: Path, video: bool) -> list[str]:
    """What one input may write (relative to ``out``); a video also owns the folder ``<stem>/`` of its frames."""
    if video:
        return [f"{stem.as_posix()}.mp4"]
    return [p.as_posix() for p in _result_files(Path(), stem)]


def _result_files(out: Path, stem: Path) -> tuple[Path, Path, Path]:
    """The JSON, drawn picture and label-mask files of one result."""
    base = out / stem
    return base.with_name(base.name + ".json"), base.with_name(base.name + ".png"), base.with_name(base.name + "_mask.png")


def _existing_results(out: Path, sources: Sequence[PredictInput], stems: Mapping[Path, Path]) -> list[str]:
    """Results of these inputs already in ``out`` (a video's non-empty frame folder counts as one)."""
    found = [str(out / name) for name in (COCO_RESULTS_FILE, CLASSIFICATION_CSV_FILE) if (out / name).exists()]
    for s in sources:
        found += [str(out / name) for name in _planned_files(stems[s.path], s.video) if (out / name).exists()]
        frames = out / stems[s.path]
        if s.video and frames.is_dir() and any(frames.iterdir()):
            found.append(f"{frames}/")
    return found


def _lower_score_floor(model: torch.nn.Module, score_thresh: float) -> None:
    """Let ``score_thresh`` below the detector's own floor take effect.

    torchvision's detectors drop candidates under their ``score_thresh``
    (RetinaNet) / ``roi_heads.score_thresh`` (R-CNNs), 0.05 by default, before the
    predictor sees them; a lower ``--score-thresh`` lowers that floor too.
    """
    for owner in (model, getattr(model, "roi_heads", None)):
        floor = getattr(owner, "score_thresh", None)
        if isinstance(floor, float) and score_thresh < floor:
            owner.score_thresh = score_thresh


def _refuse_overwriting_inputs(out: Path, sources: Sequence[PredictInput], stems: Mapping[Path, Path]) -> None:
    """An input that a result would replace (``--out`` on the inputs' own folder) is refused, ``--overwrite`` or not.

    Raises:
        ConfigError: naming the input and the result that would replace it.
    """
    inputs = {s.path.resolve() for s in sources}
    for s in sources:
        for name in _planned_files(stems[s.path], s.video):
            target = (out / name).resolve()
            if target in inputs:
                raise ConfigError(f"--out {out}: the result {out / name} would replace the input {target}; "
                                  "choose another --out")  # fmt: skip


# --------------------------------------------------------------------------- videos (PyAV)


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise ConfigError("reading and writing videos needs PyAV: pip install 'bicsnet[video]' (or pip install av)") from None
    return av


def _probe_video(path: Path) -> tuple[Fraction, int | None]:
    """``(frame rate, declared frame count or None)`` of a video's first video stream.

    Raises:
        DataError: the file cannot be opened as a video or has no video stream.
    """
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path}: no video stream in the file")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            return Fraction(rate) if rate else Fraction(25), (int(stream.frames) or None)
    except av.error.FFmpegError as e:
        raise DataError(f"{path}: cannot read video ({e})") from None


def _video_frames(path: Path, fps: Fraction) -> Iterator[tuple[Tensor, float]]:
    """``(3 x H x W float image in [0, 1], time in seconds)`` of every frame, in order (PyAV decodes with FFmpeg's threads).

    Raises:
        DataError: the file cannot be decoded, or holds no frame.
    """
    av = _av()
    count = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # FFmpeg's frame/slice threads: decoding keeps up with a GPU
            for frame in container.decode(stream):
                # x / 255 as for image files, contiguous C, H, W (the HWC frame's permuted view is slow downstream).
                rgb = to_float_image(torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1))
                yield rgb, float(frame.time) if frame.time is not None else count / fps
                count += 1
    except av.error.FFmpegError as e:
        raise DataError(f"{path}: cannot decode video frame {count} ({e})") from None
    if count == 0:
        raise DataError(f"{path}: the video holds no frames")


class _VideoWriter:
    """An H.264 MP4 (MPEG-4 Part 2 where FFmpeg lacks libx264) of drawn frames at ``fps``, written through :func:`bicsnet.io.atomic_open`.

    YUV 4:2:0 needs even sides, so odd-sized frames get one edge pixel repeated at the right / bottom.
    """

    def __init__(self, path: Path, fps: Fraction) -> None:
        self.path, self.fps = path, fps
        self._stack = contextlib.ExitStack()
        self._container: Any = None
        self._stream: Any = None

    def write(self, picture: Any) -> None:
        """Append one PIL image (every frame has the first one's size)."""
        av = _av()
        rgb = np.asarray(picture.convert("RGB"))
        rgb = np.pad(rgb, ((0, rgb.shape[0] % 2), (0, rgb.shape[1] % 2), (0, 0)), mode="edge")
        if self._container is None:
            f = self._stack.enter_context(atomic_open(self.path, "wb"))
            self._container = av.open(f, mode="w", format="mp4")
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            self._stream = self._container.add_stream(codec, rate=self.fps)
            self._stream.height, self._stream.width = rgb.shape[:2]
            self._stream.pix_fmt = "yuv420p"
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
            self._container.mux(packet)

    def close(self) -> None:
        """Flush the encoder and move the file into place."""
        if self._container is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
        self._stack.close()

    def abort(self) -> None:
        """Drop the file (the temporary file is removed, nothing is moved)."""
        with contextlib.suppress(Exception):
            if self._container is not None:
                self._container.close()
        with contextlib.suppress(_Aborted):
            self._stack.__exit__(_Aborted, _Aborted(), None)


class _Aborted(Exception):
    """Raised into a video's atomic_open so that it removes its temporary file."""


# --------------------------------------------------------------------------- decoding


@dataclass
class _Item:
    """One image to predict: ``source`` indexes the inputs, ``frame`` is a video frame's number (``None``: an image)."""

    source: int
    image: Tensor
    frame: int | None = None
    time_s: float | None = None


class _ImageFiles(torch.utils.data.Dataset):
    """Image files decoded by DataLoader workers; an unreadable file comes back as its DataError, raised in the caller."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor | DataError:
        try:
            return load_image(self.paths[i])
        except DataError as e:  # returned, not raised: a worker's exception would arrive wrapped in its traceback
            return e


def _as_is(x: Any) -> Any:
    return x


def _decoded(sources: Sequence[PredictInput], workers: int) -> Iterator[_Item]:
    """Every image and video frame of ``sources`` in order, decoded ahead of the caller."""
    i = 0
    while i < len(sources):
        if sources[i].video:
            for n, (image, t) in enumerate(_video_frames(sources[i].path, sources[i].fps or Fraction(25))):
                yield _Item(i, image, n, t)
            i += 1
            continue
        j = i
        while j < len(sources) and not sources[j].video:
            j += 1
        files = _ImageFiles([s.path for s in sources[i:j]])
        loader = torch.utils.data.DataLoader(files, batch_size=None, num_workers=min(workers, len(files)), collate_fn=_as_is)
        for k, image in enumerate(loader, start=i):
            if isinstance(image, DataError):
                raise image
            yield _Item(k, image)
        i = j


def _batches(items: Iterator[_Item], size: int) -> Iterator[list[_Item]]:
    batch: list[_Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# --------------------------------------------------------------------------- batching the task's predictor


def _predict_batch(
    spec: TaskSpec, model: torch.nn.Module, images: Sequence[Tensor], meta: Mapping[str, Any], score_thresh: float
) -> list[Prediction]:
    """``spec.predict`` of each image, in order: images of one shape go through the model as one batch.

    Only same-shape images share a forward pass: a detector pads a batch to its
    largest image and the Spatial Fusion Module's global context averages over the
    padded map, so mixing sizes would change the predictions.
    """
    assert spec.predict is not None
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    results: list[Prediction | None] = [None] * len(images)
    for members in groups.values():
        for i, pred in zip(members, spec.predict(model, [images[i] for i in members], meta, score_thresh)):
            results[i] = pred
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------- run-level files


class _CocoResults:
    """``predictions.coco.json``: every detection of the run as COCO results, with an image index (layout in :func:`predict`)."""

    name = COCO_RESULTS_FILE

    def __init__(self, meta: Mapping[str, Any], score_thresh: float) -> None:
        names = list(meta.get("class_names", []))
        k = int(meta.get("num_classes") or len(names))
        self.cat_ids = [int(c) for c in meta.get("cat_ids") or range(1, k + 1)]
        self.categories = [{"id": c, "name": names[i] if i < len(names) else str(c)} for i, c in enumerate(self.cat_ids)]
        self.score_thresh = score_thresh
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add(self, image: dict[str, Any], pred: Prediction) -> bool:
        """Add one image's detections; ``False`` if ``pred`` is not a detector's (no ``detections``)."""
        from .metrics.coco import detections_to_coco_results

        det = pred.detections
        if det is None:
            return False
        records = detections_to_coco_results([det], [image["id"]], self.cat_ids, with_masks="masks" in det)
        for rec in records:
            self.annotations.append({"id": len(self.annotations) + 1, "image_id": rec.pop("image_id"),
                                     "file_name": image["file_name"], **rec})  # fmt: skip
        self.images.append(image)
        return True

    def content(self, info: dict[str, Any]) -> str:
        return json.dumps({"info": info, "images": self.images, "categories": self.categories, "annotations": self.annotations})


class _ClassificationCsv:
    """``predictions.csv``: one row per input and rank of its top 5 (``image_id,file_name,rank,label,class_name,prob``)."""

    name = CLASSIFICATION_CSV_FILE

    def __init__(self, meta: Mapping[str, Any], score_thresh: float) -> None:
        self.rows: list[list[Any]] = []

    def add(self, image: dict[str, Any], pred: Prediction) -> bool:
        """Add one input's top-5 rows; ``False`` if its record has no ``top5`` (not a classifier's)."""
        if "top5" not in pred.record:
            return False
        for rank, entry in enumerate(pred.record["top5"], start=1):
            self.rows.append([image["id"], image["file_name"], rank, entry["label"], entry["class_name"], entry["prob"]])
        return True

    def content(self, info: dict[str, Any]) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["image_id", "file_name", "rank", "label", "class_name", "prob"])
        writer.writerows(self.rows)
        return buf.getvalue()


_RUN_FILES: tuple[Callable[[Mapping[str, Any], float], Any], ...] = (_CocoResults, _ClassificationCsv)


# --------------------------------------------------------------------------- output staging


class _Staging:
    """A hidden folder in ``out`` that results are written into, moved into ``out`` only when the run succeeds."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.created_out = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix=".predict-", dir=out))

    def path(self, relative: str | Path) -> Path:
        return self.root / relative

    def commit(self, written: Sequence[Path], replace_folders: Sequence[Path]) -> None:
        """Move ``written`` (relative paths) into ``out``; each of ``replace_folders`` is emptied first (a video's old frames)."""
        for folder in replace_folders:
            if (self.out / folder).is_dir():
                shutil.rmtree(self.out / folder)
        for rel in written:
            (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.root / rel, self.out / rel)  # atomic per file; the file was written whole by bicsnet.io
        shutil.rmtree(self.root)

    def abort(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        if self.created_out:
            with contextlib.suppress(OSError):
                self.out.rmdir()  # only if still empty


# --------------------------------------------------------------------------- predict


@torch.no_grad()
def predict(
    checkpoint: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    *,
    out: str | os.PathLike | None = None,
    score_thresh: float = 0.3,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool | None = None,
) -> PredictionRun:
    """Run a weights file (or run directory) on images, folders, glob patterns and videos.

    ``inputs`` are expanded by :func:`expand_inputs`; every image and video frame
    gets one :class:`~bicsnet.tasks.Prediction` (its ``record`` the task's JSON
    plus ``image`` or ``video``/``frame``/``time_s``, ``image_id``, ``height``,
    ``width`` and ``task``), returned in input order. Images are decoded by
    ``workers`` DataLoader processes (0: in this one) while the model runs on
    batches of ``batch_size`` (same-shape images share a forward pass, so the
    results equal those of batch 1 up to float rounding).

    With ``out`` it writes what the module docstring lists and each Prediction's
    ``files`` names its files; the drawn pictures and masks are then not kept in
    memory (``picture`` / ``mask`` are ``None``; a long video would not fit).
    Without ``out`` nothing is written and no video is encoded.

    ``predictions.coco.json`` (detection and instance models) is a JSON object::

        {"info": {"checkpoint", "task", "score_thresh"},
         "images": [{"id", "file_name", "path", "height", "width", "result",
                     "frame", "time_s"}, ...],           # frame, time_s: video frames only
         "categories": [{"id", "name"}, ...],
         "annotations": [{"id", "image_id", "file_name", "category_id", "bbox", "score",
                          "segmentation"}, ...]}        # segmentation: instance models only

    ``file_name`` is the input's path below the inputs' common folder (a video
    frame's: ``clip.mp4#frame=N``), ``path`` the input as named, ``result`` its
    JSON below ``out``; ``bbox`` is ``[x, y, w, h]`` in the image's pixels,
    ``category_id`` the training data's own category id, ``segmentation`` a
    compressed RLE with string counts. The annotations are COCO results
    (:func:`bicsnet.metrics.coco.detections_to_coco_results`, unrounded; the
    per-image JSONs round), so ``pycocotools.coco.COCO(file)`` opens the file and
    ``COCO.loadRes(annotations)`` takes them once ``image_id`` is mapped to a
    ground truth's ids by ``file_name``. Classifiers write ``predictions.csv``
    (:class:`_ClassificationCsv`).

    Raises:
        ConfigError: a bad ``batch_size`` / ``workers``, two inputs that would write the
            same result, results already in ``out`` without ``overwrite``, a task with no
            predictor, or videos without PyAV.
        DataError: a missing file, a folder without images, a pattern matching nothing, an
            unreadable image or video (naming it). ``out`` is then left as it was.
        CheckpointError: unreadable weights.
    """
    from .engine.distributed import resolve_device
    from .models import load_checkpoint_model

    if batch_size < 1:
        raise ConfigError(f"batch_size {batch_size}: must be at least 1")
    if workers < 0:
        raise ConfigError(f"workers {workers}: must be 0 or more")
    out_dir = Path(out) if out is not None else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: exists and is not a folder")
    sources = expand_inputs(inputs, exclude=out_dir)
    stems = _output_stems(sources)
    if out_dir is not None:
        _refuse_overwriting_inputs(out_dir, sources, stems)
    if out_dir is not None and not overwrite:
        existing = _existing_results(out_dir, sources, stems)
        if existing:
            more = " ..." if len(existing) > 3 else ""
            raise ConfigError(f"--out {out_dir}: {', '.join(existing[:3])}{more} already exist(s); pass --overwrite to replace")
    dev = resolve_device(device)
    model, meta = load_checkpoint_model(checkpoint, dev)
    _lower_score_floor(model, score_thresh)
    spec = get_task(meta["task"])
    if spec.predict is None:
        raise ConfigError(f"task {spec.name!r} has no predictor")
    if not sources:
        return PredictionRun()
    staging = _Staging(out_dir) if out_dir is not None else None
    run = _Run(spec, meta, sources, stems, staging, score_thresh)
    frames = [s.frames for s in sources if s.video]
    total = None if None in frames else len(sources) - len(frames) + sum(frames)  # type: ignore[arg-type]
    show = sys.stderr.isatty() if progress is None else progress  # as the trainer's bar: only on a terminal
    try:
        with tqdm(total=total, desc="predict", unit="image", dynamic_ncols=True, disable=not show) as bar:
            for batch in _batches(_decoded(sources, workers), batch_size):
                run.add(batch, _predict_batch(spec, model, [item.image.to(dev) for item in batch], meta, score_thresh))
                bar.update(len(batch))
        return run.finish(checkpoint)
    except BaseException:
        run.abort()
        if staging is not None:
            staging.abort()
        raise


@dataclass
class _Run:
    """The state of one prediction run: its results so far, the open video, the run-level files."""

    spec: TaskSpec
    meta: Mapping[str, Any]
    sources: Sequence[PredictInput]
    stems: Mapping[Path, Path]
    staging: _Staging | None
    score_thresh: float
    predictions: list[tuple[Prediction, list[Path]]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    run_written: list[Path] = field(default_factory=list)
    video: _VideoWriter | None = None
    video_source: int | None = None

    def __post_init__(self) -> None:
        root = _common_root(self.sources)
        self.file_names = [s.path.resolve().relative_to(root).as_posix() for s in self.sources]
        self.summaries = [make(self.meta, self.score_thresh) for make in _RUN_FILES]
        self.used = [False] * len(self.summaries)

    def add(self, items: Sequence[_Item], results: Sequence[Prediction]) -> None:
        """Record, write and summarise one batch's predictions."""
        for item, pred in zip(items, results):
            source = self.sources[item.source]
            stem = self.stems[source.path]
            image_id = len(self.predictions) + 1
            h, w = item.image.shape[-2:]
            where: dict[str, Any] = {"image": str(source.path)}
            file_name, rel = self.file_names[item.source], stem
            if item.frame is not None:
                where = {"video": str(source.path), "frame": item.frame, "time_s": round(float(item.time_s or 0.0), 6)}
                file_name, rel = f"{file_name}#frame={item.frame}", stem / f"{item.frame:06d}"
            pred.record = {**where, "image_id": image_id, "height": int(h), "width": int(w), "task": self.spec.name, **pred.record}
            files = self._write(pred, rel, item) if self.staging is not None else []
            entry = {"id": image_id, "file_name": file_name, "path": str(source.path), "height": int(h), "width": int(w),
                     "result": f"{rel.as_posix()}.json"}  # fmt: skip
            if item.frame is not None:
                entry.update(frame=where["frame"], time_s=where["time_s"])
            for i, summary in enumerate(self.summaries):
                self.used[i] |= summary.add(entry, pred)
            if self.staging is not None:  # written: a long video's pictures would not fit in memory
                pred.picture, pred.mask, pred.detections = None, None, None
            self.predictions.append((pred, files))

    def _write(self, pred: Prediction, rel: Path, item: _Item) -> list[Path]:
        """Write one result into the staging folder; its files, relative to ``out``."""
        from .viz import save_image

        assert self.staging is not None
        json_file, picture_file, mask_file = _result_files(Path(), rel)
        files = []
        if pred.mask is not None:
            pred.record["mask_png"] = mask_file.name
            save_image(pred.mask, self.staging.path(mask_file))
            files.append(mask_file)
        atomic_write_json(self.staging.path(json_file), pred.record)
        files.append(json_file)
        if pred.picture is not None:
            if item.frame is None:
                save_image(pred.picture, self.staging.path(picture_file))
                files.append(picture_file)
            else:
                self._video_frame(item, pred.picture)
        self.written += files
        return files

    def _video_frame(self, item: _Item, picture: Any) -> None:
        if self.video_source != item.source:
            self._close_video()
            source = self.sources[item.source]
            rel = Path(f"{self.stems[source.path].as_posix()}.mp4")
            self.video = _VideoWriter(self.staging.path(rel), source.fps or Fraction(25))  # type: ignore[union-attr]
            self.video_source = item.source
            self.run_written.append(rel)
        self.video.write(picture)  # type: ignore[union-attr]

    def _close_video(self) -> None:
        if self.video is not None:
            self.video.close()
            self.video = None

    def abort(self) -> None:
        if self.video is not None:
            self.video.abort()
            self.video = None

    def finish(self, checkpoint: str | os.PathLike) -> PredictionRun:
        """Close the video, write the run-level files, move everything into ``out``; the run's predictions."""
        self._close_video()
        if self.staging is None:
            return PredictionRun([p for p, _ in self.predictions])
        info = {"checkpoint": str(checkpoint), "task": self.spec.name, "score_thresh": self.score_thresh}
        for summary, used in zip(self.summaries, self.used):
            if used:
                atomic_write_text(self.staging.path(summary.name), summary.content(info))
                self.run_written.append(Path(summary.name))
        frame_folders = [self.stems[s.path] for s in self.sources if s.video]
        self.staging.commit(self.written + self.run_written, frame_folders)
        out = self.staging.out
        for pred, files in self.predictions:
            pred.files = [out / f for f in files]
        return PredictionRun([p for p, _ in self.predictions], [out / f for f in self.run_written])
