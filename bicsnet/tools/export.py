"""ONNX export of trained models, and running the exported graph with NMS outside.

What goes into the graph, per task:

* ``backbone``: images (B, 3, H, W) -> ``p3`` .. ``p7``.
* ``classification``: images in [0, 1] -> ``logits`` (B, K) (normalisation inside).
* ``segmentation``: images in [0, 1] -> ``logits`` (B, K, H, W).
* ``detection`` (RetinaNet): *pre-processed* images (normalised, resized,
  zero-padded to a multiple of 128, as :class:`~bicsnet.models.detection.DetectionTransform`
  makes them) -> ``boxes`` (B, N, 4), decoded xyxy in input pixels for every
  anchor, and ``scores`` (B, N, K), sigmoid class probabilities. N is the
  anchors of all levels, finest first.

**NMS lives outside the graph.** Pre-processing (resize, pad), per-level
top-k candidate selection, score threshold, class-wise NMS and rescaling to
the original image are done in PyTorch by :func:`postprocess_detections`
(:class:`OnnxDetector` wraps it all), exactly as torchvision's RetinaNet does
after its head, so ONNX detections match the eager model's. Keeping NMS
outside keeps the graph static-shaped apart from the input and lets a
deployment use its runtime's own NMS (e.g. TensorRT's EfficientNMS) on
``boxes``/``scores``; every setting needed for it is stored in the ONNX
file's metadata (``bicsnet.*`` keys: score/NMS thresholds, top-k,
detections per image, anchors per location, levels, image size, class names).

Dynamic shapes (``dynamic=True``): batch, height and width are symbolic.
The backbone sizes level ``l`` as ``ceil(H / 2^l)`` with integer arithmetic and
skips a no-op resize only when the sizes are provably equal, so
``torch.export`` needs no shape guards and any H, W works (detection inputs
are multiples of 128 anyway). Example inputs are taken with batch 2 and sides
of at least 256 so no dimension is specialised to 1.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import boxes as box_ops

from ..errors import ConfigError
from ..io import atomic_save_files
from ..tasks import TASKS, get_task
from .quantize import DEFAULT_CALIBRATION_COUNT

__all__ = [
    "export_module",
    "export_onnx",
    "remove_export",
    "export_checkpoint",
    "postprocess_detections",
    "check_input_shape",
    "OnnxModel",
    "OnnxDetector",
    "load_onnx",
    "quiet_stdout",
    "encode_metadata",
    "decode_metadata",
    "check_export",
    "is_detector",
    "example_input",
    "FORMATS",
]

#: Output formats of :func:`export_checkpoint` and their file suffixes.
FORMATS = {"onnx": ".onnx", "openvino": ".xml"}

_META_PREFIX = "bicsnet."
#: Metadata keys :class:`OnnxDetector` reads: pre-processing, anchors, NMS (written by :func:`detection_metadata`).
_DETECTOR_KEYS = (
    "img_size", "size_divisible", "image_mean", "image_std", "anchors_per_location", "strides",
    "score_thresh", "nms_thresh", "topk_candidates", "detections_per_img",
)  # fmt: skip


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Silence the exporter's progress prints and its optimizer's per-node messages."""
    loggers = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _exporter(task: str) -> Callable[[nn.Module], tuple[nn.Module, list[str], list[str]]]:
    """The task table's ``export`` of ``task``.

    Raises:
        ConfigError: an unknown task, or one that is not exportable (Mask R-CNN).
    """
    spec = get_task(task)
    if spec.export is None:
        exportable = ", ".join(n for n, t in TASKS.items() if t.export is not None)
        raise ConfigError(f"export supports tasks {exportable}, not {task!r}")
    return spec.export


def export_module(model: nn.Module, task: str) -> tuple[nn.Module, list[str], list[str]]:
    """The module that goes into the graph for ``task`` (the task table's ``export``), with input and output names.

    Raises:
        ConfigError: the task is not exportable (Mask R-CNN).
    """
    module, inputs, outputs = _exporter(task)(model.eval())
    return module.eval(), inputs, outputs


def _input_transform(model: nn.Module) -> Any | None:
    """The model's own pre-processing (a detector's resize, normalise, pad), ``None`` for a plain network.

    Such a model is exported without it: the graph takes the transform's
    output, and the file records what re-creating it needs (:func:`detection_metadata`).
    """
    return getattr(model, "transform", None)


def example_input(model: nn.Module, img_size: int | tuple[int, int], batch: int, dynamic: bool) -> Tensor:
    """A random (B, 3, H, W) input in [0, 1] of the exported shape."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    transform = _input_transform(model)
    if transform is not None:  # the graph sees padded images: sides rounded up to size_divisible (128)
        d = int(transform.size_divisible)
        h, w = -(-h // d) * d, -(-w // d) * d
    if dynamic:  # no size 1 (it would be specialised), and no accidental equalities
        batch = max(2, batch)
        h, w = max(h, 256), max(w, 256)
    return torch.rand(batch, 3, h, w)


def remove_export(out: str | os.PathLike) -> None:
    """Delete the files an export to ``out`` wrote: the ``.onnx`` (and its ``.data`` weights) or the ``.xml`` + ``.bin``.

    ``bicsnet export`` calls it when the written model fails its check against
    PyTorch, so no unchecked model is left where a script would pick it up.
    """
    out = Path(out)
    for path in (out, out.with_suffix(".bin") if out.suffix == ".xml" else None, out.with_name(out.name + ".data")):
        if path is not None:
            path.unlink(missing_ok=True)


def export_onnx(
    model: nn.Module,
    task: str,
    out: str | os.PathLike,
    img_size: int | tuple[int, int],
    *,
    dynamic: bool = False,
    batch: int = 1,
    opset: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export ``model`` for ``task`` to ``out`` (ONNX, torch.export-based exporter).

    Static export fixes batch and size to ``batch`` x ``img_size`` (a model
    that pads its input itself, a detector: rounded up to its
    ``size_divisible``, 128); ``dynamic=True`` makes batch, height and width
    symbolic. ``metadata`` is stored as ``bicsnet.<key>`` metadata props.

    Raises:
        ConfigError: the task is not exportable, or the ``export`` extra is missing.
    """
    module, in_names, out_names = export_module(model, task)
    x = example_input(model, img_size, batch, dynamic)
    kwargs: dict[str, Any] = {"input_names": in_names, "output_names": out_names, "dynamo": True, "verbose": False}
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamic:
        from torch.export import Dim

        kwargs["dynamic_shapes"] = (
            {0: Dim("batch", min=1, max=1024), 2: Dim("height", min=32, max=8192), 3: Dim("width", min=32, max=8192)},
        )
    out = Path(out)
    with warnings.catch_warnings(), torch.no_grad(), quiet_stdout():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module, (x,), **kwargs)
        except ImportError as e:  # onnx / onnxscript missing
            raise ConfigError(f"ONNX export needs the 'export' extra (pip install 'bicsnet[export]'): {e}") from e
    meta = {"task": task, "dynamic": dynamic, "input_size": list(x.shape[-2:]), "batch": int(x.shape[0]), **(metadata or {})}

    def write(path: str) -> None:
        program.save(path)
        _write_metadata(Path(path), meta)

    # Staged under the final name, so external weights (models over 2 GB) are named after it.
    atomic_save_files(out, write)
    return out


def encode_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """``{key: value}`` -> ``{"bicsnet.<key>": json}``: how ONNX metadata props and OpenVINO ``rt_info`` store it."""
    return {_META_PREFIX + k: json.dumps(v) for k, v in meta.items()}


def decode_metadata(items: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The inverse of :func:`encode_metadata` over ``(key, json)`` pairs; keys without the prefix are skipped."""
    return {k[len(_META_PREFIX):]: json.loads(v) for k, v in items if k.startswith(_META_PREFIX)}


def _write_metadata(path: Path, meta: dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in encode_metadata(meta).items():
        if key in existing:
            existing[key].value = value
        else:
            proto.metadata_props.add(key=key, value=value)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    if external:  # big models keep their weights beside the graph; rewrite the graph only
        onnx.save(proto, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save(proto, str(path))


def detection_metadata(model: nn.Module, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """What :class:`OnnxDetector` needs to pre- and post-process like the eager model."""
    meta = dict(meta or {})
    transform = model.transform
    return {
        "img_size": int(getattr(transform, "img_size", transform.max_size)),
        "size_divisible": int(transform.size_divisible),
        "image_mean": [float(v) for v in transform.image_mean],
        "image_std": [float(v) for v in transform.image_std],
        "score_thresh": float(model.score_thresh),
        "nms_thresh": float(model.nms_thresh),
        "detections_per_img": int(model.detections_per_img),
        "topk_candidates": int(model.topk_candidates),
        "anchors_per_location": int(model.anchor_generator.num_anchors_per_location()[0]),
        "strides": [int(s) for s in model.backbone.strides.values()],
        "num_classes": int(model.num_classes),
        "label_offset": 1,  # labels are 1..K, 0 = background
        "class_names": list(meta.get("class_names", [])),
        "nms": "outside the graph: bicsnet.tools.export.postprocess_detections (torchvision RetinaNet semantics)",
    }


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str = "onnx",
    dynamic: bool = False,
    img_size: int | None = None,
    batch: int = 1,
    opset: int | None = None,
    simplify: bool = True,
    deploy: bool = False,
    int8: bool = False,
    calib_images: str | os.PathLike | None = None,
    calib_count: int = DEFAULT_CALIBRATION_COUNT,
) -> Path:
    """Rebuild a trained model from its ``model.safetensors`` and export it (ONNX, or OpenVINO IR).

    The file's metadata: the model description and class names; for a model
    that pre-processes its input itself (a detector) also :func:`detection_metadata`.

    * ``format="onnx"``: ``out`` ends in ``.onnx``; simplified with onnxslim
      when it is installed and ``simplify`` (:func:`~bicsnet.tools.runtimes.simplify_onnx`).
    * ``format="openvino"``: ``out`` ends in ``.xml``; ``out`` and its ``.bin``
      are written (:func:`~bicsnet.tools.runtimes.export_openvino`).
    * ``deploy``: export :func:`bicsnet.deploy` of the model (deploy-time re-parameterisation).
    * ``int8``: post-training INT8 quantization (:mod:`bicsnet.tools.quantize`),
      calibrated on ``calib_count`` images of ``calib_images`` (a folder or COCO
      JSON; default the training images of the checkpoint's run, ``config.yaml`` beside it).

    Raises:
        CheckpointError: an unreadable checkpoint.
        ConfigError: the task is not exportable, an unknown format or a wrong
            suffix, an optional library missing, or no calibration images for ``int8``.
        DataError: unreadable calibration images.
    """
    from ..models import load_checkpoint_model

    out = _checked_out(out, format)
    model, meta = load_checkpoint_model(checkpoint, "cpu")
    task = meta["task"]
    _exporter(task)  # refuse before reading settings an unexportable model may not have
    size = int(img_size or meta.get("img_size") or 224)
    extra: dict[str, Any] = {"model": meta.get("model"), "class_names": list(meta.get("class_names", []))}
    if _input_transform(model) is not None:
        extra.update(detection_metadata(model, meta))
        extra["img_size"] = size  # the runner resizes to the exported size, whatever the model was trained at
    extra["deployed"], extra["int8"] = bool(deploy), bool(int8)
    if deploy:
        from ..reparam import deploy as deploy_model

        model = deploy_model(model)
    calibration = None
    if int8:
        from .quantize import calibration_inputs, images_from

        images = images_from(calib_images if calib_images is not None else _training_images(checkpoint))
        shape = example_input(model, size, batch, False).shape
        calibration = calibration_inputs(task, images, size, {**extra, "input_size": list(shape[-2:])}, calib_count)
    if format == "openvino":
        from .runtimes import export_openvino

        return export_openvino(model, task, out, size, dynamic=dynamic, batch=batch, metadata=extra, calibration=calibration)
    if calibration is None:
        export_onnx(model, task, out, size, dynamic=dynamic, batch=batch, opset=opset, metadata=extra)
        if simplify:
            _simplify_if_available(out)
        return out
    import tempfile

    from .quantize import quantize_onnx

    with tempfile.TemporaryDirectory(prefix="bicsnet-export-") as tmp:
        fp32 = export_onnx(model, task, Path(tmp) / out.name, size, dynamic=dynamic, batch=batch, opset=opset, metadata=extra)
        if simplify:
            _simplify_if_available(fp32)
        quantize_onnx(fp32, out, calibration)  # writes out atomically, keeping the metadata
    return out


def _checked_out(out: str | os.PathLike, format: str) -> Path:
    """``out`` as a Path, after checking its suffix fits ``format``.

    Raises:
        ConfigError: an unknown format, or a suffix that does not match it.
    """
    if format not in FORMATS:
        raise ConfigError(f"--format: unknown format {format!r}; choose from {', '.join(FORMATS)}")
    out = Path(out)
    if out.suffix.lower() != FORMATS[format]:
        raise ConfigError(f"--out {out}: --format {format} writes a {FORMATS[format]} file, not {out.suffix or 'a suffix-less name'}")
    return out


def _simplify_if_available(path: Path) -> None:
    """onnxslim on ``path`` when it is installed (simplification is optional; the graph is valid without)."""
    try:
        import onnxslim  # noqa: F401
    except ImportError:
        return
    from .runtimes import simplify_onnx

    simplify_onnx(path)


def _training_images(checkpoint: str | os.PathLike) -> Path:
    """The training images of the run a checkpoint came from (its ``config.yaml``: ``data.train_images``).

    Raises:
        ConfigError: no run configuration beside the checkpoint, or one without
            training images that exist (asking for ``--calib-images``).
    """
    from ..config import load_run_config

    ckpt = Path(checkpoint)
    run = ckpt if ckpt.is_dir() else ckpt.parent
    config = run / "config.yaml"
    hint = "give --calib-images (a folder of images or a COCO JSON file)"
    if not config.is_file():
        raise ConfigError(f"{ckpt}: INT8 calibration needs images and there is no run config.yaml beside the checkpoint; {hint}")
    images = load_run_config(config).data.train_images
    if not images or not Path(images).exists():
        raise ConfigError(f"{config}: the run's training images ({images or 'none recorded'}) are not available; {hint}")
    return Path(images)


def check_export(
    checkpoint: str | os.PathLike,
    path: str | os.PathLike,
    tolerance: float = 1e-4,
    *,
    images: str | os.PathLike | None = None,
    count: int = 2,
    raise_on_mismatch: bool = True,
) -> list[dict[str, Any]]:
    """Compare an exported file with eager PyTorch on the same inputs; one record per input.

    Inputs: one random input of the exported shape (seeded), or the first
    ``count`` ``images`` (folder or COCO JSON) pre-processed as the graph takes
    them (:func:`~bicsnet.tools.quantize.calibration_inputs`); a dynamic export
    is checked again at a second size (the exported size + 128 px per side).
    The file runs through :func:`~bicsnet.tools.runtimes.load_exported`
    (OpenVINO in f32 precision, so the comparison is not of bf16 arithmetic).

    Each record: ``size`` (H, W), ``max_abs`` (largest ``|export - torch|``),
    ``err`` (``max_abs`` / max(1, max ``|torch|``), per output, the worst),
    ``mean_rel`` (mean ``|export - torch|`` / mean ``|torch|``, the worst output).

    Raises:
        ConfigError: ``err`` above ``tolerance`` on any input (unless
            ``raise_on_mismatch`` is false: INT8 exports cannot match to 1e-4).
        DataError: unreadable check images.
    """
    from ..models import load_checkpoint_model
    from .runtimes import load_exported

    model, meta = load_checkpoint_model(checkpoint, "cpu")
    module, _, _ = export_module(model, meta["task"])
    runner = load_exported(path, precision="f32")
    net = runner.net if isinstance(runner, OnnxDetector) else runner
    m = net.meta
    h, w = (int(v) for v in m["input_size"])
    sizes = [(h, w)] + ([(h + 128, w + 128)] if m.get("dynamic") else [])
    records = []
    for sh, sw in sizes:
        if images is None:
            b = int(m.get("batch", 1)) if not m.get("dynamic") else 2
            xs = [torch.rand(b, 3, sh, sw, generator=torch.Generator().manual_seed(0))]
        else:
            from .quantize import calibration_inputs, images_from

            img_size = int(m.get("img_size", sh)) + (sh - h)
            files = images_from(images)
            arrays = calibration_inputs(meta["task"], files, img_size, {**m, "img_size": img_size, "input_size": [sh, sw]}, count)
            xs = [torch.from_numpy(a) for a in arrays]
            if not m.get("dynamic") and int(m.get("batch", 1)) > 1:  # a static batch: fill it with copies
                xs = [x.expand(int(m["batch"]), -1, -1, -1).contiguous() for x in xs]
        for x in xs:
            with torch.no_grad():
                ref = module(x)
            got = net(x)
            rec = {
                "size": [int(v) for v in x.shape[-2:]],
                "max_abs": max(float((g - r).abs().max()) for g, r in zip(got, ref)),
                # Error relative to each output's scale (1 at least): boxes are in pixels, scores in [0, 1].
                "err": max(float((g - r).abs().max()) / max(1.0, float(r.abs().max())) for g, r in zip(got, ref)),
                "mean_rel": max(float((g - r).abs().mean()) / max(float(r.abs().mean()), 1e-12) for g, r in zip(got, ref)),
            }
            records.append(rec)
            if raise_on_mismatch and rec["err"] > tolerance:
                raise ConfigError(f"{path}: the export differs from PyTorch by {rec['err']:.2e} (> {tolerance:g}) at {rec['size'][0]}x{rec['size'][1]}")
    return records


# --------------------------------------------------------------------------- running


def postprocess_detections(
    boxes: Tensor,
    scores: Tensor,
    image_sizes: Sequence[tuple[int, int]],
    anchors_per_level: Sequence[int],
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    topk_candidates: int = 1000,
    detections_per_img: int = 100,
    label_offset: int = 1,
) -> list[dict[str, Tensor]]:
    """NMS outside the graph: torchvision RetinaNet's ``postprocess_detections``.

    ``boxes`` (B, N, 4) decoded, ``scores`` (B, N, K) probabilities, N split
    into levels by ``anchors_per_level``. Per image and level: keep scores
    above ``score_thresh``, the ``topk_candidates`` best, clip boxes to the
    image's size before padding; then class-wise NMS over all levels and the
    ``detections_per_img`` best. Labels are ``index + label_offset``.
    """
    num_classes = scores.shape[-1]
    results = []
    for b, (h, w) in enumerate(image_sizes):
        all_boxes, all_scores, all_labels = [], [], []
        for box_l, score_l in zip(boxes[b].split(list(anchors_per_level)), scores[b].split(list(anchors_per_level))):
            flat = score_l.flatten()
            keep = flat > score_thresh
            flat = flat[keep]
            idxs = torch.where(keep)[0]
            k = min(topk_candidates, idxs.numel())
            flat, order = flat.topk(k)
            idxs = idxs[order]
            anchor_idxs = torch.div(idxs, num_classes, rounding_mode="floor")
            all_boxes.append(box_ops.clip_boxes_to_image(box_l[anchor_idxs], (int(h), int(w))))
            all_scores.append(flat)
            all_labels.append(idxs % num_classes)
        bx, sc, lb = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)
        keep = box_ops.batched_nms(bx, sc, lb, nms_thresh)[:detections_per_img]
        results.append({"boxes": bx[keep], "scores": sc[keep], "labels": lb[keep] + label_offset})
    return results


def check_input_shape(expected: Sequence[int | None], x: Tensor, what: str) -> None:
    """Refuse an input whose shape an exported graph does not take, before the runtime does.

    ``expected``: the graph's input dimensions, ``None`` where it is dynamic.

    Raises:
        ConfigError: naming ``what`` (the file), the shape it takes and the shape given.
    """
    got = tuple(x.shape)
    if len(got) == len(expected) and all(e is None or e == g for e, g in zip(expected, got)):
        return
    takes = "x".join("?" if e is None else str(e) for e in expected)
    raise ConfigError(
        f"{what}: exported for input {takes}, given {'x'.join(map(str, got))}; export again at this batch size and "
        "image size, or with --dynamic (dynamic=True) for any"
    )


class OnnxModel:
    """An exported graph in onnxruntime: ``model(x)`` -> list of numpy-backed tensors.

    ``spinning=False`` stops the session's idle worker threads from busy-waiting
    after each call (onnxruntime's ``session.intra_op.allow_spinning``). Keep
    onnxruntime's default (True) for one model serving calls back to back; turn
    it off when several sessions or other work share the cores, as in an
    alternating benchmark: there, a spinning idle session took about a quarter
    of the cores from the one being timed (cls-48 and ResNet-50 on 2 cores: 101 /
    90 ms spinning, 75 / 63 ms not; ``benchmarks/deploy.md``). ``input_shape``: the
    graph's input dimensions, ``None`` where dynamic; a call with another shape
    raises ConfigError (:func:`check_input_shape`).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        *,
        spinning: bool = True,
    ) -> None:
        try:
            import onnx
            import onnxruntime as ort
        except ImportError as e:
            raise ConfigError(f"running ONNX models needs onnxruntime (pip install 'bicsnet[export]'): {e}") from e
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such ONNX file")
        opts = ort.SessionOptions()
        threads = threads or torch.get_num_threads()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), opts, providers=list(providers))
        proto = onnx.load(str(path), load_external_data=False)
        self.meta = decode_metadata((p.key, p.value) for p in proto.metadata_props)
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = [d if isinstance(d, int) else None for d in self.session.get_inputs()[0].shape]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.path = path

    def __call__(self, x: Tensor) -> list[Tensor]:
        """Run ``x`` (B, 3, H, W). Raises ConfigError when the graph takes another shape (:func:`check_input_shape`)."""
        check_input_shape(self.input_shape, x, str(self.path))
        outs = self.session.run(None, {self.input_name: x.detach().cpu().float().contiguous().numpy()})
        return [torch.from_numpy(o) for o in outs]


class OnnxDetector:
    """An exported RetinaNet run like the eager model: ``det(list_of_images)`` -> detections.

    Images are float (3, H, W) in [0, 1] of any size; pre-processing is the
    model's :class:`~bicsnet.models.detection.DetectionTransform` (rebuilt
    from the file's metadata), NMS is :func:`postprocess_detections`, and
    boxes come back in original-image pixels.

    ``path`` is an ONNX file (run in onnxruntime), or any runner with the
    same interface (``runner(x) -> [boxes, scores]`` and a ``meta`` dict of
    the file's ``bicsnet.*`` metadata), e.g. an OpenVINO model from
    :func:`bicsnet.tools.runtimes.load_exported`.

    Raises:
        ConfigError: the file has no detection metadata.
    """

    def __init__(self, path: str | os.PathLike | Any, threads: int | None = None) -> None:
        from torchvision.models.detection.transform import GeneralizedRCNNTransform

        from ..models.detection import DetectionTransform

        self.net = OnnxModel(path, threads) if isinstance(path, (str, os.PathLike)) else path
        m = self.net.meta
        if not is_detector(m):
            raise ConfigError(f"{path}: not a detection export (task {m.get('task')!r}, no detection metadata)")
        self.transform: GeneralizedRCNNTransform = DetectionTransform(int(m["img_size"]), int(m["size_divisible"]))
        self.transform.image_mean, self.transform.image_std = list(m["image_mean"]), list(m["image_std"])
        self.transform.eval()

    def anchors_per_level(self, h: int, w: int) -> list[int]:
        a = int(self.net.meta["anchors_per_location"])
        return [-(-h // s) * -(-w // s) * a for s in self.net.meta["strides"]]

    @torch.no_grad()
    def __call__(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        m = self.net.meta
        if m.get("dynamic", True):
            return self._run(images)
        # A static graph runs batches of exactly its shape: images are letterboxed into
        # it (long side resized to img_size, zero-padded after normalisation, as the
        # eager transform pads), and a short last batch is filled with blank images.
        size = int(m.get("batch", 1))
        return [d for i in range(0, len(images), size) for d in self._run(images[i : i + size])]

    def _run(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        m = self.net.meta
        original = [tuple(int(v) for v in img.shape[-2:]) for img in images]
        batch, _ = self.transform(list(images))
        x = batch.tensors
        if not m.get("dynamic", True):
            x = _letterbox(x, tuple(m["input_size"]), int(m.get("batch", 1)))
        boxes, scores = self.net(x)
        boxes, scores = boxes[: len(images)], scores[: len(images)]
        h, w = x.shape[-2:]
        dets = postprocess_detections(
            boxes, scores, batch.image_sizes, self.anchors_per_level(int(h), int(w)),
            m["score_thresh"], m["nms_thresh"], m["topk_candidates"], m["detections_per_img"], m.get("label_offset", 1),
        )  # fmt: skip
        return self.transform.postprocess(dets, batch.image_sizes, original)


def _letterbox(x: Tensor, size: tuple[int, int], batch: int) -> Tensor:
    """Zero-pad pre-processed images (N, 3, h, w) to a static graph's (batch, 3, H, W).

    Raises:
        ConfigError: an image larger than the graph's input (it was resized for another size).
    """
    (h, w), (H, W) = x.shape[-2:], size
    if h > H or w > W:
        raise ConfigError(f"pre-processed image {h}x{w} does not fit the exported input {H}x{W}; re-export with --img-size or --dynamic")
    x = torch.nn.functional.pad(x, (0, W - w, 0, H - h))
    if x.shape[0] < batch:
        x = torch.cat([x, x.new_zeros(batch - x.shape[0], *x.shape[1:])])
    return x


def is_detector(meta: dict[str, Any]) -> bool:
    """Whether a file's metadata holds what :class:`OnnxDetector` needs (:func:`detection_metadata`)."""
    return all(k in meta for k in _DETECTOR_KEYS)


def load_onnx(path: str | os.PathLike, threads: int | None = None) -> OnnxModel | OnnxDetector:
    """The right runner for an exported file: a detector where it has detection metadata, else the plain network."""
    net = OnnxModel(path, threads)
    if is_detector(net.meta):
        return OnnxDetector(path, threads)
    return net
