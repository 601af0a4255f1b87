"""The task table: one :class:`TaskSpec` per task, the only list of task names.

A task (``backbone``, ``detection``, ``instance``, ``segmentation``,
``classification``) is everything that differs between jobs built on the same
backbone: which head goes on it and which options that head accepts, the
paper's training recipe (Section V-A), the default input size and class
count, how its data is read, how a batch becomes losses and a loader becomes
metrics (its engine adapter), the network-only call that FLOPs, benchmarks
and export measure (backbone + head, no pre- or post-processing), what goes
into an exported graph, and how one image becomes a prediction. Every other
module looks a task up here (:func:`get_task`) instead of testing its name.

Instance segmentation is detection with masks: the same data, recipe and
adapter, with Mask R-CNN as the model.

Each trainable task has the paper's recipe and may have a small-data recipe
(:class:`Recipe`): what a from-scratch run on a few hundred to a few thousand
images needs. ``recipe: auto`` (the default) picks the small-data one below
:data:`SMALL_DATA_IMAGES` training images (:func:`choose_recipe`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from PIL import Image
from torch import Tensor, nn

from .data.spec import DataSpec, TaskData
from .data.transforms import PAPER_SCALE_RANGE
from .errors import ConfigError, DataError

__all__ = [
    "TaskSpec", "Prediction", "BenchIO", "Recipe", "TASKS", "RECIPE_CHOICES", "SMALL_DATA_IMAGES", "get_task",
    "task_names", "choose_recipe", "recipe_config",
]  # fmt: skip

#: ``recipe`` values of a run: ``auto`` picks ``small`` below :data:`SMALL_DATA_IMAGES` training images.
RECIPE_CHOICES = ("auto", "paper", "small")
#: Under ``recipe: auto``, training sets smaller than this get the task's small-data recipe.
#: The paper's recipes are made for COCO (118k images, 350 epochs) and ImageNet; a set a
#: user annotated by hand is two orders of magnitude smaller.
SMALL_DATA_IMAGES = 5000


@dataclass(frozen=True)
class Recipe:
    """Defaults a training run takes from its task, beneath every option the user sets.

    Attributes:
        name: ``paper`` or ``small``.
        summary: one line for the run's first lines of output.
        train: :class:`~bicsnet.engine.trainer.TrainConfig` keyword arguments; ``iterations`` /
            ``warmup_iterations`` (of ``lr_reference_batch`` images) become epochs in :func:`recipe_config`.
        model_options: head / backbone options the recipe sets (the user's ``model.options`` win).
        bn_momentum: PyTorch momentum of every BatchNorm (``None``: the model's own).
        scale_range: scale jitter of training images (the user's ``data.scale_range`` wins).
    """

    name: str
    summary: str
    train: Mapping[str, Any]
    model_options: Mapping[str, Any] = field(default_factory=dict)
    bn_momentum: float | None = None
    scale_range: tuple[float, float] = PAPER_SCALE_RANGE


@dataclass
class Prediction:
    """What a model says about one image: JSON-ready fields, a drawn picture, an optional label PNG, the files written."""

    record: dict[str, Any]
    picture: Image.Image | None = None
    mask: Image.Image | None = None
    files: list[Path] = field(default_factory=list)  # what bicsnet.predict wrote for it
    detections: dict[str, Tensor] | None = None  # a detector's kept boxes/scores/labels(/masks), CPU, for predictions.coco.json
    found: list[str] = field(default_factory=list)  # class names: each kept detection, the top-1 class, or each class present


@dataclass(frozen=True)
class TaskSpec:
    """Everything task-specific, as data and functions (see the module docstring).

    Attributes:
        name: the task's name (its key in :data:`TASKS`).
        description: one line for help texts.
        head_options: options of ``create_model`` that the task's head takes.
        build: ``build(backbone, num_classes, **head_options) -> model``.
        needs_classes: whether the model needs ``num_classes``.
        default_classes: class count of the paper's dataset (COCO 80, ImageNet 1000,
            VOC 21), for counting FLOPs and benchmarks.
        input_size: default input size in pixels, ``None``: the model's own (Table I).
        uses_img_size: the model resizes its input itself and takes ``img_size``.
        recipe: the paper's recipe (Section V-A).
        small_recipe: the recipe for small datasets trained from scratch, ``None``: the paper's is used.
        data_flags: the :class:`~bicsnet.data.spec.DataSpec` fields the task reads.
        build_data: ``build_data(spec, img_size, train, scale_range) -> TaskData``.
        adapter: ``adapter(num_classes, label_smoothing, ignore_index, coco_backend) -> engine adapter``.
        network: ``network(model, x)``: backbone + head on a pre-processed
            ``(B, 3, H, W)`` tensor (what FLOPs count, benchmarks time and export traces).
        export: ``export(model) -> (module, input_names, output_names)``, ``None``: not exportable.
        predict: ``predict(model, images, meta, score_thresh) -> list[Prediction]``, one per
            image, for ``(3, H, W)`` images in [0, 1] of one shape, run as one batch.
        metric: the headline metric's path in ``metrics.json`` (e.g. ``bbox.AP``).
        bench: how ``bicsnet bench`` feeds the task's models (:class:`BenchIO`), ``None``: not benchmarked.
    """

    name: str
    description: str
    head_options: frozenset[str]
    build: Callable[..., nn.Module]
    network: Callable[[nn.Module, Tensor], Any]
    needs_classes: bool = True
    default_classes: int | None = None
    input_size: int | None = None
    uses_img_size: bool = False
    recipe: Recipe | None = None
    small_recipe: Recipe | None = None
    data_flags: tuple[str, ...] = ()
    build_data: Callable[..., TaskData] | None = None
    adapter: Callable[..., Any] | None = None
    export: Callable[[nn.Module], tuple[nn.Module, list[str], list[str]]] | None = None
    predict: Callable[..., list[Prediction]] | None = None
    metric: str | None = None
    bench: BenchIO | None = None

    @property
    def trainable(self) -> bool:
        """Whether ``bicsnet train`` can train this task (it has data, an adapter and a recipe)."""
        return self.build_data is not None and self.adapter is not None and self.recipe is not None

    def default_size(self, model_input_size: int) -> int:
        """The input size a run of this task uses when none is given."""
        return self.input_size or model_input_size

    def load_data(
        self, spec: DataSpec, img_size: int, train: bool = True, scale_range: tuple[float, float] = PAPER_SCALE_RANGE
    ) -> TaskData:
        """The task's datasets from ``spec`` (``train=False``: the validation set only).

        Raises:
            ConfigError: the task cannot be trained, or ``spec`` sets flags of another task.
            DataError: unreadable or inconsistent data (naming the file).
        """
        if self.build_data is None:
            raise ConfigError(f"task {self.name!r} reads no dataset; use one of {', '.join(task_names(trainable=True))}")
        spec.check_flags(self.data_flags, self.name)
        return self.build_data(spec, img_size, train, scale_range)


# --------------------------------------------------------------------------- models


def _build_backbone_only(backbone: nn.Module, num_classes: int | None = None) -> nn.Module:
    return backbone


def _build_classifier(backbone: nn.Module, num_classes: int, **kw: Any) -> nn.Module:
    from .models.classification import BiCSNetClassifier

    return BiCSNetClassifier(backbone, num_classes, **kw)


def _build_segmenter(backbone: nn.Module, num_classes: int, **kw: Any) -> nn.Module:
    from .models.segmentation import BiCSNetSegmenter

    return BiCSNetSegmenter(backbone, num_classes, **kw)


def _build_retinanet(backbone: nn.Module, num_classes: int, head_factory: Callable[..., nn.Module] | None = None, **kw: Any) -> nn.Module:
    """RetinaNet without FPN; ``head_factory(backbone, num_classes, **kw)`` replaces the default subnets."""
    from .models.detection import BiCSNetRetinaNet

    if head_factory is not None:
        kw["head"] = head_factory(backbone, num_classes, **kw)
    return BiCSNetRetinaNet(backbone, num_classes, **kw)


def _build_mask_rcnn(backbone: nn.Module, num_classes: int, **kw: Any) -> nn.Module:
    from .models.detection import BiCSNetMaskRCNN

    return BiCSNetMaskRCNN(backbone, num_classes, **kw)


# --------------------------------------------------------------------------- network-only calls


def _whole(model: nn.Module, x: Tensor) -> Any:
    out = model(x)
    # torchvision segmenters return {"out": logits}; backbones an ordered dict of levels (kept).
    return out["out"] if isinstance(out, dict) and "out" in out else out


def _retinanet_network(model: nn.Module, x: Tensor) -> Any:
    return model.head(list(model.backbone(x).values()))


def _mask_rcnn_network(model: nn.Module, x: Tensor, proposals: int = 1000, masks: int = 100) -> Any:
    """RPN head on every level, box head on the test-time proposals (Table III: 1000), mask head on 100 detections."""
    levels = list(model.backbone(x).values())
    model.rpn.head(levels)
    c = model.backbone.out_channels
    heads = model.roi_heads
    heads.box_predictor(heads.box_head(x.new_empty((proposals, c, 7, 7))))
    return heads.mask_predictor(heads.mask_head(x.new_empty((masks, c, 14, 14))))


# --------------------------------------------------------------------------- export


def _export_levels(model: nn.Module) -> tuple[nn.Module, list[str], list[str]]:
    from .models.wrappers import NetworkOnly

    names = list(getattr(model, "out_features", [f"p{i}" for i in range(3, 8)]))
    return NetworkOnly(model, _whole), ["images"], names


def _export_logits(model: nn.Module) -> tuple[nn.Module, list[str], list[str]]:
    from .models.wrappers import NetworkOnly

    return NetworkOnly(model, _whole), ["images"], ["logits"]


def _export_retinanet(model: nn.Module) -> tuple[nn.Module, list[str], list[str]]:
    from .models.wrappers import DetectionExportModule

    return DetectionExportModule(model), ["images"], ["boxes", "scores"]


# --------------------------------------------------------------------------- data


def _synthetic(spec: DataSpec) -> dict[str, Path]:
    from .data import generate_synthetic

    root = Path(spec.synth_root) if spec.synth_root else spec.default_root()
    return generate_synthetic(root, spec.synth_train, spec.synth_val, spec.synth_size, seed=spec.seed)


def _synthetic_meta(spec: DataSpec, synth: dict[str, Path]) -> dict[str, Any]:
    """What a checkpoint records of its synthetic data, so ``bicsnet eval`` finds the same set."""
    return {"synthetic": spec.synthetic_meta(synth["root"])}


def _coco_data(masks: bool) -> Callable[..., TaskData]:
    def build(spec: DataSpec, img_size: int, train: bool = True, scale_range: tuple[float, float] = PAPER_SCALE_RANGE) -> TaskData:
        from . import data as D

        synth = _synthetic(spec) if spec.is_synthetic(COCO_FLAGS) else None
        if synth is not None:
            tr_img, tr_ann = synth["coco_train_images"], synth["coco_train_ann"]
            va_img, va_ann = synth["coco_val_images"], synth["coco_val_ann"]
        else:
            va_img, va_ann = spec.require("val_images"), spec.require("val_ann")
            tr_img = spec.require("train_images") if train else None
            tr_ann = spec.require("train_ann") if train else None
        floor = spec.max_skipped  # share of rejected annotation records that stops loading
        val = D.CocoDetection(va_img, va_ann, D.detection_eval_transforms(), with_masks=masks, max_skipped=floor)
        tr = (
            D.CocoDetection(tr_img, tr_ann, D.detection_train_transforms(img_size, scale_range), with_masks=masks,
                            max_skipped=floor)
            if train else None
        )  # fmt: skip
        if tr is not None and tr.cat_ids != val.cat_ids:
            raise DataError(f"{tr_ann} and {va_ann} have different categories ({tr.cat_ids} vs {val.cat_ids})")
        extra = {"cat_ids": list(val.cat_ids), **(_synthetic_meta(spec, synth) if synth is not None else {})}
        return TaskData(tr, val, D.detection_collate, len(val.cat_ids), list(val.class_names), extra)

    return build


def _segmentation_data(spec: DataSpec, img_size: int, train: bool = True, scale_range: tuple[float, float] = PAPER_SCALE_RANGE) -> TaskData:
    """A VOC root (``--data``; the synthetic set without data flags) or any mask folder (``--images/--masks`` + split lists).

    Masks come out as training labels, ignored pixels 255 whatever value the
    files use (:mod:`bicsnet.data.masks`); the checkpoint records that value
    (``ignore_index``) and the masks' palette (``palette``, class colours) when they have one.
    """
    from . import data as D

    synth = _synthetic(spec) if spec.is_synthetic(_SEGMENTATION_LOCATIONS) else None
    options = [f"--{f.replace('_', '-')}" for f in ("ignore_index", "class_names") if getattr(spec, f) not in (None, "")]
    if synth is not None and options:
        raise ConfigError(f"{', '.join(options)}: describe your masks; give them with --data or --images/--masks/--val-split")
    ignore = D.IGNORE_LABEL if spec.ignore_index is None else spec.ignore_index
    names = D.read_class_names(spec.class_names) if spec.class_names else None
    eval_t = D.segmentation_eval_transforms()
    train_t = D.segmentation_train_transforms(img_size, scale_range) if train else None
    folder_flags = [f"--{f.replace('_', '-')}" for f in _MASK_FOLDER_FLAGS if getattr(spec, f)]
    if synth is not None or spec.data:
        if folder_flags:
            raise ConfigError(f"{', '.join(folder_flags)}: flags of a mask folder; --data is a VOC root, give one or the other")
        root = str(synth["voc_root"]) if synth is not None else spec.require("data")
        val = D.VOCSegmentation(root, "val", eval_t, ignore_index=ignore, class_names=names)
        tr = (
            D.VOCSegmentation(root, "train", train_t, list_file=spec.train_list, ignore_index=ignore, class_names=names)
            if train else None
        )  # fmt: skip
    else:
        if spec.train_list:
            raise ConfigError("--train-list: a list of a VOC root (--data); a mask folder's are --train-split/--val-split")
        if names is None:
            raise ConfigError("--class-names FILE is required with --images/--masks: one class name per line, label 0 first")
        val = D.SegmentationFolder(spec.images, spec.masks, spec.require("val_split"), names, ignore, eval_t)
        tr = D.SegmentationFolder(spec.images, spec.masks, spec.require("train_split"), names, ignore, train_t) if train else None
    palette = val.palette
    extra = {
        "ignore_index": ignore,
        **({"palette": palette} if palette is not None else {}),
        **(_synthetic_meta(spec, synth) if synth is not None else {}),
    }
    # Training crops stack into tensors; whole validation images of different sizes stay unpadded.
    return TaskData(tr, val, D.segmentation_collate_unpadded, val.num_classes, list(val.class_names), extra)


def _classification_data(spec: DataSpec, img_size: int, train: bool = True, scale_range: tuple[float, float] = PAPER_SCALE_RANGE) -> TaskData:
    from . import data as D

    synth = _synthetic(spec) if spec.is_synthetic(CLASSIFICATION_FLAGS) else None
    if synth is not None:
        tr_dir, va_dir = synth["folder_train"], synth["folder_val"]
    else:
        root = Path(spec.require("data"))
        tr_dir, va_dir = root / "train", root / "val"
    val = D.ImageFolderDataset(va_dir, D.classification_eval_transforms(img_size))
    tr = D.ImageFolderDataset(tr_dir, D.classification_train_transforms(img_size)) if train else None
    if tr is not None and tr.classes != val.classes:
        raise DataError(f"{tr_dir} and {va_dir} have different class folders")
    extra = _synthetic_meta(spec, synth) if synth is not None else {}
    return TaskData(tr, val, D.classification_collate, val.num_classes, list(val.classes), extra)


COCO_FLAGS = ("train_ann", "train_images", "val_ann", "val_images")
#: Where segmentation data is: a VOC root (+ another training list) or a mask folder's folders and split lists.
_MASK_FOLDER_FLAGS = ("images", "masks", "train_split", "val_split")
_SEGMENTATION_LOCATIONS = ("data", "train_list", *_MASK_FOLDER_FLAGS)
#: ... and what the masks mean: the value of unlabelled pixels, the class names.
SEGMENTATION_FLAGS = (*_SEGMENTATION_LOCATIONS, "ignore_index", "class_names")
CLASSIFICATION_FLAGS = ("data",)


# --------------------------------------------------------------------------- engine adapters


def _detection_adapter(with_masks: bool) -> Callable[..., Any]:
    def make(
        num_classes: int | None = None, label_smoothing: float = 0.0, ignore_index: int = 255, coco_backend: str | None = None
    ) -> Any:
        from .engine.adapters import DetectionTask

        return DetectionTask(with_masks=with_masks, coco_backend=coco_backend)

    return make


def _segmentation_adapter(
    num_classes: int | None = None, label_smoothing: float = 0.0, ignore_index: int = 255, coco_backend: str | None = None
) -> Any:
    from .data.masks import IGNORE_LABEL
    from .engine.adapters import SegmentationTask

    # The datasets give ignored pixels as IGNORE_LABEL whatever value the files use (the checkpoint's
    # meta["ignore_index"]), and crops are padded with it: the loss and the metric skip that label.
    return SegmentationTask(num_classes=num_classes, ignore_index=IGNORE_LABEL)


def _classification_adapter(
    num_classes: int | None = None, label_smoothing: float = 0.0, ignore_index: int = 255, coco_backend: str | None = None
) -> Any:
    from .engine.adapters import ClassificationTask

    return ClassificationTask(label_smoothing=label_smoothing)


# --------------------------------------------------------------------------- prediction


def _predict_detection(
    model: nn.Module, images: Sequence[Tensor], meta: Mapping[str, Any], score_thresh: float
) -> list[Prediction]:
    """Boxes (xyxy, original pixels), scores, labels, class names and the dataset's category ids; drawn boxes (and masks).

    ``images``: ``(3, H, W)`` float 0-1 images of one shape (one forward pass; the
    detector's transform would pad mixed sizes to the largest, which changes results).
    Each prediction keeps its detections above ``score_thresh`` (CPU tensors) in ``detections``.
    """
    from .viz import draw_detections

    names = list(meta.get("class_names", []))
    cat_ids = meta.get("cat_ids")
    preds = []
    for image, det in zip(images, model(list(images))):
        keep = det["scores"] >= score_thresh
        det = {k: v[keep].cpu() for k, v in det.items()}
        record = {
            "detections": [
                {
                    "box_xyxy": [round(float(c), 2) for c in b],
                    "score": round(float(s), 4),
                    "label": int(lab),
                    "class_name": names[lab - 1] if 0 < lab <= len(names) else str(lab),
                    **({"category_id": int(cat_ids[lab - 1])} if cat_ids else {}),
                }
                for b, s, lab in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist())
            ]
        }
        pic = draw_detections(image.cpu(), det["boxes"], det["labels"], det["scores"], names, det.get("masks"), score_thresh)
        preds.append(Prediction(record, pic, detections=det, found=[d["class_name"] for d in record["detections"]]))
    return preds


def _predict_segmentation(
    model: nn.Module, images: Sequence[Tensor], meta: Mapping[str, Any], score_thresh: float
) -> list[Prediction]:
    """The class map overlaid in VOC colours, the class map as a VOC palette PNG, pixels per class.

    ``images``: ``(3, H, W)`` float 0-1 images of one shape, run as one ``(N, 3, H, W)`` batch.
    """
    from .data import voc_palette
    from .viz import overlay_segmentation

    names = list(meta.get("class_names", []))
    preds = []
    for image, pred in zip(images, model(torch.stack(list(images))).argmax(1).cpu()):
        counts = torch.bincount(pred.flatten(), minlength=len(names) or 1)
        record = {"pixels_per_class": {(names[i] if i < len(names) else str(i)): int(c) for i, c in enumerate(counts) if c}}
        pic = overlay_segmentation(image.cpu(), pred, max(len(names), int(pred.max()) + 1))
        mask = Image.fromarray(pred.to(torch.uint8).numpy())
        mask.putpalette(voc_palette())  # 'L' -> 'P': the VOC label PNG format
        preds.append(Prediction(record, pic, mask, found=list(record["pixels_per_class"])))
    return preds


def _predict_classification(
    model: nn.Module, images: Sequence[Tensor], meta: Mapping[str, Any], score_thresh: float
) -> list[Prediction]:
    """The top-5 classes with probabilities (JSON only); ``images`` of any sizes (each is resized and cropped first)."""
    from .data import classification_eval_transforms

    names = list(meta.get("class_names", []))
    transform = classification_eval_transforms(int(meta.get("img_size", 224)))
    probs = model(torch.stack([transform(image) for image in images])).softmax(-1)
    preds = []
    for p in probs:
        top = p.topk(min(5, p.numel()))
        record = {
            "top5": [
                {"label": int(i), "class_name": names[i] if i < len(names) else str(i), "prob": round(float(v), 4)}
                for v, i in zip(top.values.tolist(), top.indices.tolist())
            ]
        }
        preds.append(Prediction(record, found=[record["top5"][0]["class_name"]]))
    return preds


# --------------------------------------------------------------------------- benchmark workloads


@dataclass(frozen=True)
class BenchIO:
    """How ``bicsnet bench`` (:mod:`bicsnet.tools.bench`) feeds a model of the task.

    ``s`` is the side of the square network input in pixels, ``k`` the class
    count, ``b`` a batch size, ``g`` the :class:`torch.Generator` every random
    input is drawn from (so both models of a pair see the same data).
    ``normalize`` maps images in [0, 1] to what the model takes: the identity
    for ours (they normalise inside), ImageNet mean/std for torchvision's.

    Attributes:
        image: ``image(s, g) -> uint8 (3, H, W)``: the end-to-end input, as a camera or file gives it.
        e2e: ``e2e(model, image, s, normalize)``: pre-processing, network and post-processing of that
            image (on the model's device), predictions on the CPU.
        train_batch: ``train_batch(b, s, k, g) -> (images, targets)``: a synthetic training batch on the CPU.
        loss: ``loss(model, images, targets, normalize) -> scalar tensor``: the training loss of a batch.
        torchvision_options: ``torchvision_options(name, k, s, score_thresh) -> dict``: keyword arguments of
            ``torchvision.models.get_model(name, weights=None, ...)`` for an untrained model of the task.
    """

    image: Callable[[int, torch.Generator], Tensor]
    e2e: Callable[[nn.Module, Tensor, int, Callable[[Tensor], Tensor]], Any]
    train_batch: Callable[[int, int, int, torch.Generator], tuple[Any, Any]]
    loss: Callable[[nn.Module, Any, Any, Callable[[Tensor], Tensor]], Tensor]
    torchvision_options: Callable[[str, int, int, float | None], dict[str, Any]]


def _camera_image(s: int, g: torch.Generator) -> Tensor:
    # 4:3 landscape, long side S: the detector's transform resizes it to S; the segmenter takes it whole.
    return torch.randint(0, 256, (3, s * 3 // 4, s), dtype=torch.uint8, generator=g)


def _classification_image(s: int, g: torch.Generator) -> Tensor:
    # Short side 8S/7 > 256/224 x S: resized down, then centre-cropped, as classification_eval_transforms.
    return torch.randint(0, 256, (3, s * 8 // 7, s * 3 // 2), dtype=torch.uint8, generator=g)


def _detection_e2e(model: nn.Module, image: Tensor, s: int, normalize: Callable[[Tensor], Tensor]) -> Any:
    # The detector's own transform resizes the long side to S, normalises and pads; NMS after the head.
    return [{k: v.cpu() for k, v in d.items()} for d in model([image.float().div_(255)])]


def _segmentation_e2e(model: nn.Module, image: Tensor, s: int, normalize: Callable[[Tensor], Tensor]) -> Tensor:
    return _whole(model, normalize(image.float().div_(255)[None])).argmax(1).to(torch.uint8).cpu()


def _classification_e2e(model: nn.Module, image: Tensor, s: int, normalize: Callable[[Tensor], Tensor]) -> Tensor:
    from torchvision.transforms.v2 import functional as TF

    x = TF.center_crop(TF.resize(image, [s * 256 // 224], antialias=True), [s, s]).float().div_(255)[None]
    return _whole(model, normalize(x)).softmax(-1).topk(5)[1].cpu()


def _detection_batch(b: int, s: int, k: int, g: torch.Generator) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """``b`` images (3, S, S) in [0, 1], four boxes (xyxy pixels, 8-0.95 S wide) and labels each."""
    images = torch.rand(b, 3, s, s, generator=g)
    targets = []
    for _ in range(b):
        xy = torch.rand(4, 2, generator=g) * s * 0.6
        wh = torch.rand(4, 2, generator=g) * s * 0.35 + 8
        # 1..K-1 is valid for every detector (ours 1..K, RetinaNet < K, SSD 1..K).
        boxes = torch.cat([xy, xy + wh], 1).clamp(max=s - 1)
        targets.append({"boxes": boxes, "labels": torch.randint(1, max(2, k), (4,), generator=g)})
    return list(images), targets


def _segmentation_batch(b: int, s: int, k: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    images = torch.rand(b, 3, s, s, generator=g)
    return images, torch.randint(0, k, (b, s, s), generator=g)


def _classification_batch(b: int, s: int, k: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    images = torch.rand(b, 3, s, s, generator=g)
    return images, torch.randint(0, k, (b,), generator=g)


def _detection_loss(model: nn.Module, images: Any, targets: Any, normalize: Callable[[Tensor], Tensor]) -> Tensor:
    return sum(model(images, targets).values())  # type: ignore[return-value]


def _cross_entropy_loss(model: nn.Module, images: Any, targets: Any, normalize: Callable[[Tensor], Tensor]) -> Tensor:
    return nn.functional.cross_entropy(_whole(model, normalize(images)), targets)


def _tv_detection_options(name: str, k: int, s: int, score_thresh: float | None) -> dict[str, Any]:
    ssd = name.startswith("ssd")
    kw: dict[str, Any] = {"weights_backbone": None, "num_classes": k + 1 if ssd else k}  # SSD counts the background
    if not ssd:  # SSD(lite) has a fixed input size of its own
        kw.update(min_size=s, max_size=s)
    if score_thresh is not None:
        kw["score_thresh"] = score_thresh
    return kw


def _tv_segmentation_options(name: str, k: int, s: int, score_thresh: float | None) -> dict[str, Any]:
    return {"weights_backbone": None, "num_classes": k, "aux_loss": False}


def _tv_classification_options(name: str, k: int, s: int, score_thresh: float | None) -> dict[str, Any]:
    return {"num_classes": k}


# --------------------------------------------------------------------------- the table

#: Paper recipes (Section V-A). ``lr`` is for ``lr_reference_batch`` images; the
#: trainer scales it linearly to the run's global batch. Epoch counts are the paper's.
#: V-A1: SGD 0.9, wd 4e-5, lr 0.16 @ batch 128 after a 2-epoch linear warm-up,
#: x0.1 / x0.01 at the last 30 / 10 of 350 epochs.
_DETECTION_RECIPE = Recipe(
    name="paper",
    summary="the paper's (Section V-A1), made for COCO: 118k images, 350 epochs",
    train={"epochs": 350, "lr": 0.16, "lr_reference_batch": 128, "warmup_epochs": 2.0, "schedule": "step"},
)
#: Small data from scratch (the paper's recipe on a few hundred images reaches box AP50 0.13 on
#: strawberry/valid in 24 epochs; this one: benchmarks/real.md). Why each choice:
#: - BN momentum 0.1 and a GN head: a run of a few hundred steps leaves most of the initial
#:   running statistics with the paper's 0.01; GN has none (Wu & He 2018, and He et al. 2019
#:   "Rethinking ImageNet Pre-training": from-scratch detectors need GN or SyncBN). Chosen while
#:   the subnets shared one BN across P3-P7 (one per level since; not measured again).
#: - Cosine decay from a higher rate (0.02 at batch 8, 2x the paper's linear-scaled 0.01) after a
#:   short warm-up: the step schedule spends 91% of the run at the peak rate.
#: - EMA of the weights (decay 0.99, ~100 steps) and gradient clipping: a few hundred noisy steps.
#: - Milder scale jitter (0.75-1.5): large-scale jitter helps long runs, short ones underfit.
_SMALL_DATA_TRAIN = {
    "epochs": 50, "lr_reference_batch": 8, "warmup_max_fraction": 0.25, "schedule": "cosine", "weight_decay": 1e-4,
    "ema_decay": 0.99, "grad_clip": 10.0,
}  # fmt: skip
_DETECTION_SMALL_RECIPE = Recipe(
    name="small",
    summary=f"small-data from-scratch recipe for fewer than {SMALL_DATA_IMAGES} training images",
    train={**_SMALL_DATA_TRAIN, "lr": 0.02, "warmup_epochs": 2.0},
    model_options={"head_norm": "gn"},
    bn_momentum=0.1,
    scale_range=(0.75, 1.5),
)
_DETECTION_OPTIONS = frozenset({"img_size", "anchor_scale", "head_norm"})

_DETECTION = TaskSpec(
    name="detection",
    description="RetinaNet without FPN on P3-P7 (Section IV-A), COCO-format boxes, COCO box AP",
    head_options=_DETECTION_OPTIONS
    | {"focal_alpha", "focal_gamma", "score_thresh", "nms_thresh", "detections_per_img", "topk_candidates"},
    build=_build_retinanet,
    network=_retinanet_network,
    default_classes=80,
    uses_img_size=True,
    recipe=_DETECTION_RECIPE,
    small_recipe=_DETECTION_SMALL_RECIPE,
    data_flags=COCO_FLAGS,
    build_data=_coco_data(masks=False),
    adapter=_detection_adapter(with_masks=False),
    export=_export_retinanet,
    predict=_predict_detection,
    metric="bbox.AP",
    bench=BenchIO(_camera_image, _detection_e2e, _detection_batch, _detection_loss, _tv_detection_options),
)

#: Every task, by name: the only list of task names in the package.
TASKS: dict[str, TaskSpec] = {
    "backbone": TaskSpec(
        name="backbone",
        description="the backbone alone: an ordered dict P3-P7 (strides 8-128)",
        head_options=frozenset(),
        build=_build_backbone_only,
        network=_whole,
        needs_classes=False,
        export=_export_levels,
    ),
    "detection": _DETECTION,
    # Instance segmentation is detection with masks: the same data, recipe and predictor.
    "instance": dataclasses.replace(
        _DETECTION,
        name="instance",
        description="Mask R-CNN on P3-P7 (Section IV-A, Table III), COCO-format polygons/RLE, box and mask AP",
        head_options=_DETECTION_OPTIONS | {"rpn_post_nms_top_n_test", "box_detections_per_img", "box_score_thresh"},
        build=_build_mask_rcnn,
        network=_mask_rcnn_network,
        build_data=_coco_data(masks=True),
        adapter=_detection_adapter(with_masks=True),
        export=None,  # Mask R-CNN is not exported
        metric="segm.AP",
        bench=None,
    ),
    "segmentation": TaskSpec(
        name="segmentation",
        description="semantic segmentation head on merged P3-P7 (Section IV-B), VOC layout or any mask folder, mIoU",
        head_options=frozenset({"head_channels", "head_convs"}),
        build=_build_segmenter,
        network=_whole,
        default_classes=21,
        input_size=512,
        # V-A2: lr 0.02 @ batch 256, linear warm-up over the first 1,000 iterations, cosine,
        # 20,000 iterations. recipe_config turns iterations into epochs of the training set.
        recipe=Recipe(
            name="paper",
            summary="the paper's (Section V-A2), made for VOC train_aug: 10,582 images, 20,000 iterations",
            train={
                "iterations": 20000, "warmup_iterations": 1000, "lr": 0.02, "lr_reference_batch": 256,
                "schedule": "cosine", "warmup_max_fraction": 0.25,
            },  # fmt: skip
        ),
        # Small data from scratch: the paper's rate at batch 8 (0.000625) barely moves a
        # randomly initialised network in a few hundred steps; the rest as for detection.
        small_recipe=dataclasses.replace(
            _DETECTION_SMALL_RECIPE, train={**_SMALL_DATA_TRAIN, "lr": 0.01, "warmup_epochs": 1.0},
            model_options={}, scale_range=PAPER_SCALE_RANGE,
        ),
        data_flags=SEGMENTATION_FLAGS,
        build_data=_segmentation_data,
        adapter=_segmentation_adapter,
        export=_export_logits,
        predict=_predict_segmentation,
        metric="mIoU",
        bench=BenchIO(
            _camera_image, _segmentation_e2e, _segmentation_batch, _cross_entropy_loss, _tv_segmentation_options
        ),
    ),
    "classification": TaskSpec(
        name="classification",
        description="classification head on merged P3-P7 (Section IV-C), image folders, top-1/top-5",
        head_options=frozenset({"dropout"}),
        build=_build_classifier,
        network=_whole,
        default_classes=1000,
        input_size=224,
        # V-A3: batch 1024, cosine with a 5-epoch warm-up, 250 epochs (lr: the usual 0.1 per 256).
        recipe=Recipe(
            name="paper",
            summary="the paper's (Section V-A3), made for ImageNet: 1.28M images, 250 epochs",
            train={
                "epochs": 250, "lr": 0.4, "lr_reference_batch": 1024, "warmup_epochs": 5.0, "schedule": "cosine",
                "warmup_max_fraction": 0.25,
            },  # fmt: skip
        ),
        data_flags=CLASSIFICATION_FLAGS,
        build_data=_classification_data,
        adapter=_classification_adapter,
        export=_export_logits,
        predict=_predict_classification,
        metric="top1",
        bench=BenchIO(
            _classification_image, _classification_e2e, _classification_batch, _cross_entropy_loss,
            _tv_classification_options,
        ),
    ),
}


def task_names(trainable: bool = False) -> list[str]:
    """Task names in table order; ``trainable=True``: only those ``bicsnet train`` can run."""
    return [n for n, t in TASKS.items() if t.trainable or not trainable]


def get_task(name: str) -> TaskSpec:
    """The spec of task ``name``.

    Raises:
        ConfigError: unknown task, listing the known ones.
    """
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None


def choose_recipe(task: str, choice: str = "auto", num_train: int = 0) -> Recipe:
    """The recipe a run of ``task`` takes: ``paper``, ``small``, or ``auto`` (``small`` below
    :data:`SMALL_DATA_IMAGES` training images when the task has one, else ``paper``).

    Raises:
        ConfigError: unknown task or choice, an untrainable task, or ``small`` for a task without one.
    """
    spec = get_task(task)
    if choice not in RECIPE_CHOICES:
        raise ConfigError(f"recipe {choice!r}: choose one of {', '.join(RECIPE_CHOICES)}")
    if spec.recipe is None:
        raise ConfigError(f"task {task!r} has no training recipe; train one of {', '.join(task_names(trainable=True))}")
    if choice == "small" and spec.small_recipe is None:
        raise ConfigError(f"recipe small: task {task!r} has only the paper's recipe")
    if choice == "small" or (choice == "auto" and spec.small_recipe is not None and num_train < SMALL_DATA_IMAGES):
        return spec.small_recipe  # type: ignore[return-value]
    return spec.recipe


def recipe_config(task: str, num_train: int, choice: str = "paper") -> dict[str, Any]:
    """The training options of ``task``'s recipe (:func:`choose_recipe`) as :class:`~bicsnet.engine.trainer.TrainConfig` keyword arguments.

    A recipe given in iterations of its reference batch (segmentation: 20,000
    iterations with a 1,000-iteration warm-up at batch 256) becomes epochs and
    warm-up epochs over ``num_train`` training images, so every batch size sees
    the paper's number of images and warms up over the same fraction of them.
    ``warmup_max_fraction`` keeps short runs from being all warm-up.

    Raises:
        ConfigError: unknown or untrainable task, or an empty training set for an iteration recipe.
    """
    r = dict(choose_recipe(task, choice, num_train).train)
    iterations, warmup_iterations = r.pop("iterations", None), r.pop("warmup_iterations", None)
    if iterations is not None or warmup_iterations is not None:
        if num_train < 1:
            raise ConfigError(f"{task}: the training set is empty")
        images_per_iteration = r["lr_reference_batch"]
        if iterations is not None:
            r["epochs"] = max(1, math.ceil(iterations * images_per_iteration / num_train))
        if warmup_iterations is not None:
            r["warmup_epochs"] = warmup_iterations * images_per_iteration / num_train
    return r
