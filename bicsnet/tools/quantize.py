"""INT8 post-training quantization of exported networks: NNCF for OpenVINO, onnxruntime's static QDQ.

Both calibrate on real images pre-processed exactly as the exported graph
takes them (:func:`calibration_inputs`; what goes into each task's graph is
described in :mod:`bicsnet.tools.export`):

* a detector's graph takes *pre-processed* images: resized so the long side is
  ``img_size``, normalised with the model's mean/std, zero-padded after
  normalisation to the static input (sides rounded up to ``size_divisible``,
  128), as :class:`~bicsnet.models.detection.DetectionTransform` and
  :class:`~bicsnet.tools.export.OnnxDetector` make them;
* the other tasks' graphs take images in [0, 1] (normalisation inside): here
  each image is resized (shorter side ``img_size * 256 / 224``) and
  centre-cropped to ``img_size`` x ``img_size``, as
  :func:`~bicsnet.data.transforms.classification_eval_transforms` does.

Which of the two a task takes is the task table's ``uses_img_size`` (the model
resizes its input itself), not its name.

Only the network is quantized: a detector's NMS stays outside the graph in
float (:func:`~bicsnet.tools.export.postprocess_detections`), and the box
decoding and sigmoid after the head stay in float too (:func:`quantize_openvino`,
:func:`quantize_onnx`): INT8 box coordinates of a 256-1024 px image would be
off by up to several pixels, and the 0.05 score threshold sits at the very
bottom of the sigmoid's [0, 1] range.

nncf, openvino and onnxruntime are optional (extra ``deploy`` / ``export``);
each function that needs one raises :class:`~bicsnet.errors.ConfigError`
naming the pip package when it is missing.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..io import atomic_save
from ..tasks import get_task
from .signal_stack import keep_signal_stack

if TYPE_CHECKING:  # pragma: no cover - optional runtimes
    import openvino

__all__ = ["calibration_inputs", "images_from", "quantize_openvino", "quantize_onnx", "DEFAULT_CALIBRATION_COUNT", "ACTIVATION_RANGES"]

#: Calibration images used unless told otherwise (NNCF's default ``subset_size``).
DEFAULT_CALIBRATION_COUNT = 300

#: ONNX op types onnxruntime quantizes (see :func:`quantize_onnx` for why only these).
_ONNX_QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


def _require(module: str, package: str) -> Any:
    """Import an optional dependency of INT8 quantization (:func:`bicsnet.tools.runtimes.require`)."""
    from .runtimes import require

    return require(module, package, "INT8 quantization")


# --------------------------------------------------------------------------- calibration data


def images_from(path: str | os.PathLike) -> list[Path]:
    """The image files of a folder (its direct children with an image suffix) or of a COCO JSON file, sorted.

    A COCO file's ``images[].file_name`` are resolved against the file's folder
    (a Roboflow / CVAT export keeps them there); whether each exists is checked
    when it is read (:func:`calibration_inputs`).

    Raises:
        DataError: naming ``path``: it does not exist, is not a folder or a
            COCO JSON file, or lists no images.
    """
    from ..data.coco import load_coco_json
    from ..data.image import IMAGE_EXTENSIONS

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    elif path.is_file():
        if path.suffix.lower() != ".json":
            raise DataError(f"{path}: calibration images come from a folder or a COCO JSON file, not a {path.suffix or 'suffix-less'} file")
        data = load_coco_json(path)
        names = [img.get("file_name") for img in data["images"] if isinstance(img, dict)]
        if any(not isinstance(n, str) or not n for n in names):
            raise DataError(f"{path}: an images[] record has no file_name")
        files = sorted(path.parent / n for n in names)
    else:
        raise DataError(f"{path}: image folder or COCO file not found")
    if not files:
        raise DataError(f"{path}: no calibration images (suffixes {', '.join(IMAGE_EXTENSIONS)})")
    return files


def _detection_settings(img_size: int, meta: Mapping[str, Any] | None) -> tuple[int, int, list[float], list[float], tuple[int, int]]:
    """``img_size``, ``size_divisible``, mean, std and the static (H, W) input a detector graph takes.

    ``meta`` is an export's metadata (:func:`~bicsnet.tools.export.detection_metadata`
    plus ``input_size``); without it, :class:`~bicsnet.models.detection.DetectionTransform`'s defaults.
    """
    from ..models.detection import DetectionTransform

    meta = dict(meta or {})
    size = int(meta.get("img_size", img_size))
    default = DetectionTransform(size)
    divisible = int(meta.get("size_divisible", default.size_divisible))
    mean = [float(v) for v in meta.get("image_mean", default.image_mean)]
    std = [float(v) for v in meta.get("image_std", default.image_std)]
    padded = -(-size // divisible) * divisible
    h, w = (int(v) for v in meta.get("input_size", (padded, padded)))
    return size, divisible, mean, std, (h, w)


def calibration_inputs(
    task: str,
    images: Sequence[Path],
    img_size: int,
    meta: Mapping[str, Any] | None,
    count: int = DEFAULT_CALIBRATION_COUNT,
) -> list[np.ndarray]:
    """Network inputs for calibration, exactly as ``task``'s exported graph takes them.

    The first ``count`` of ``images`` in sorted order are read with
    :func:`~bicsnet.data.image.read_image` and pre-processed as described in the
    module docstring. ``meta`` (an export's metadata, e.g. ``OnnxModel.meta``)
    gives a detector's ``img_size``, ``size_divisible``, ``image_mean`` /
    ``image_std`` and static ``input_size``; without it ``img_size`` and
    :class:`~bicsnet.models.detection.DetectionTransform`'s defaults are used.

    Returns:
        One float32 array of shape (1, 3, H, W) per image: a detector's
        (H, W) is the static input (``img_size`` rounded up to 128 unless
        ``meta`` says otherwise), the others' ``img_size`` x ``img_size``.

    Raises:
        ConfigError: an unknown or unexportable task, ``count`` < 1 or ``img_size`` < 1.
        DataError: no images, or an image file that is missing or unreadable (naming it).
    """
    from torch.nn import functional as F

    from ..data.image import read_image, to_float_image

    spec = get_task(task)
    if spec.export is None:
        raise ConfigError(f"task {task!r} is not exported, so it has no graph to calibrate")
    if count < 1 or img_size < 1:
        raise ConfigError(f"calibration needs count >= 1 and img_size >= 1, got count={count}, img_size={img_size}")
    if not images:
        raise DataError("no calibration images given")
    paths = sorted(Path(p) for p in images)[:count]
    out: list[np.ndarray] = []
    if spec.uses_img_size:  # the graph takes what the model's own DetectionTransform makes
        from ..models.detection import DetectionTransform

        size, divisible, mean, std, (h, w) = _detection_settings(img_size, meta)
        transform = DetectionTransform(size, divisible)
        transform.image_mean, transform.image_std = mean, std
        transform.eval()
        with torch.no_grad():
            for p in paths:
                x = transform([to_float_image(read_image(p))])[0].tensors
                if x.shape[-2] > h or x.shape[-1] > w:
                    raise ConfigError(f"{p}: pre-processed to {tuple(x.shape[-2:])}, larger than the graph's input {(h, w)}")
                # Zero padding after normalisation, as the eager transform and OnnxDetector pad.
                x = F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))
                out.append(x.contiguous().numpy().astype(np.float32, copy=False))
    else:
        from ..data.transforms import classification_eval_transforms

        transform = classification_eval_transforms(img_size)
        for p in paths:
            x = transform(read_image(p))
            out.append(x[None].contiguous().numpy().astype(np.float32, copy=False))
    return out


def _check_calibration(calibration: Sequence[np.ndarray]) -> None:
    if len(calibration) == 0:
        raise DataError("no calibration inputs: give at least one image")


# --------------------------------------------------------------------------- OpenVINO (NNCF)


def _float_tail(model: Any) -> list[str]:
    """Names of the OpenVINO ops after the last convolutions: a detector's box decoding and sigmoid.

    Walks back from every result through ops that are not convolutions; the
    convolutions (the head's last layers) are quantized, everything after them
    stays float.
    """
    names: list[str] = []
    seen: set[str] = set()
    stack = [r.input_value(0).get_node() for r in model.get_results()]
    while stack:
        node = stack.pop()
        name = node.get_friendly_name()
        if name in seen or node.get_type_name() in ("Convolution", "GroupConvolution", "MatMul", "Parameter", "Constant"):
            continue
        seen.add(name)
        names.append(name)
        stack.extend(v.get_node() for v in node.input_values())
    return names


#: Activation range estimators of :func:`quantize_openvino`, by name: NNCF's ``RangeEstimatorParametersSet``
#: members; ``"nncf_default"`` passes none (NNCF's own choice per quantizer).
ACTIVATION_RANGES: dict[str, str | None] = {"histogram": "HISTOGRAM", "minmax": "MINMAX", "nncf_default": None}


def quantize_openvino(
    model: "openvino.Model",
    calibration: Sequence[np.ndarray],
    *,
    ranges: str = "histogram",
    bias_correction: bool = False,
) -> "openvino.Model":
    """INT8 post-training quantization of an OpenVINO model with NNCF.

    ``nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration))``
    (NNCF's "Basic quantization flow") with, for a CNN:

    * ``preset=MIXED``: symmetric INT8 weights (per output channel) and
      asymmetric activations, NNCF's advice for activations that are not
      ReLU outputs (the normalised input image, GroupNorm outputs of the
      detection head, swish variants);
    * activation ranges (``ranges``) from NNCF's histogram estimator
      (``"histogram"``, ``RangeEstimatorParametersSet.HISTOGRAM``, PyTorch's
      ``HistogramObserver``: the range that minimises the 8-bit quantization
      error over a histogram of all calibration values) instead of NNCF's
      default (``"nncf_default"``: for per-tensor quantizers the mean over
      images of each image's min and max, for per-channel ones the extremes);
      ``"minmax"`` takes the extremes over all images, as onnxruntime's
      MinMax calibration does;
    * no bias correction (``bias_correction=False``, NNCF's
      ``disable_bias_correction``): NNCF's fast bias correction (``True``)
      shifts each convolution's bias by the mean output error it measures on
      the calibration images.

    The two defaults are measured (``benchmarks/deploy.md``, 2026-12-07, Zen 4
    with VNNI): on BiCSNet-48S trained on the strawberry photos, NNCF's
    defaults lost 1.3 points of box AP on the validation split (1.04 on the
    training images), the histogram ranges alone 0.2 (0.71), the two changes
    together nothing (0.1015 -> 0.1018; 0.06 on the training images); on
    lite0 neither setting lost more than 0.13 point. Also:

    * an ignored scope for everything after the last convolutions (a
      detector's anchor decoding and sigmoid; :func:`_float_tail`), which NNCF
      would otherwise quantize as element-wise ops.

    ``calibration`` is what :func:`calibration_inputs` returns: (1, 3, H, W)
    float32 arrays of the model's input shape.

    Returns:
        The quantized model (FakeQuantize ops before the INT8 layers;
        OpenVINO runs them as INT8 kernels).

    Raises:
        ConfigError: nncf or openvino is not installed, or ``ranges`` is not
            one of :data:`ACTIVATION_RANGES`.
        DataError: ``calibration`` is empty.
    """
    if ranges not in ACTIVATION_RANGES:
        raise ConfigError(f"ranges: choose from {', '.join(ACTIVATION_RANGES)}, not {ranges!r}")
    nncf = _require("nncf", "nncf")
    _require("openvino", "openvino")
    _check_calibration(calibration)
    tail = _float_tail(model)
    ignored = nncf.IgnoredScope(names=tail, validate=False) if tail else None
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParameters, RangeEstimatorParametersSet

    estimator = ACTIVATION_RANGES[ranges]
    advanced = AdvancedQuantizationParameters(
        # An empty RangeEstimatorParameters is NNCF's "choose per quantizer".
        activations_range_estimator_params=RangeEstimatorParameters() if estimator is None else getattr(RangeEstimatorParametersSet, estimator),
        disable_bias_correction=not bias_correction,
    )
    # NNCF logs one INFO line per op of the ignored scope; keep its warnings only.
    log = logging.getLogger("nncf")
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        with keep_signal_stack():  # NNCF compiles the model on its own openvino.Core
            return nncf.quantize(
                model,
                nncf.Dataset(list(calibration)),
                subset_size=len(calibration),
                preset=nncf.QuantizationPreset.MIXED,
                fast_bias_correction=True,  # the faster of NNCF's two, when bias_correction=True
                ignored_scope=ignored,
                advanced_parameters=advanced,
            )
    finally:
        log.setLevel(level)


# --------------------------------------------------------------------------- onnxruntime


class _Reader:
    """onnxruntime's ``CalibrationDataReader`` protocol over a list of inputs (``get_next`` -> feed dict or None)."""

    def __init__(self, input_name: str, calibration: Sequence[np.ndarray]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter([{input_name: np.ascontiguousarray(x, np.float32)} for x in calibration])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_onnx(src: Path, dst: Path, calibration: Sequence[np.ndarray]) -> None:
    """INT8 static quantization of the ONNX file ``src`` into ``dst`` with onnxruntime.

    ``onnxruntime.quantization.quant_pre_process`` (symbolic shape inference and
    graph optimisation, onnxruntime's advised first step), then ``quantize_static``
    in QDQ format with per-channel INT8 weights and UINT8 activations (U8S8,
    onnxruntime's default for x86 CPUs), MinMax calibration over ``calibration``
    (:func:`calibration_inputs`). Only ``Conv`` / ``MatMul`` / ``Gemm`` are
    quantized: onnxruntime would also quantize ``Add`` / ``Mul`` / ``Sigmoid``,
    which here are residual sums and a detector's anchor decoding and scores
    (see the module docstring); its QDQ fusion turns each DQ-Conv-Q into an
    INT8 convolution. ``src``'s ``bicsnet.*`` metadata is kept, so
    :func:`~bicsnet.tools.export.load_onnx` runs ``dst`` as it runs ``src``.
    ``dst`` is written atomically.

    Raises:
        ConfigError: onnxruntime or onnx is not installed, or ``src`` does not exist.
        DataError: ``calibration`` is empty.
    """
    _require("onnx", "onnx")
    quant = _require("onnxruntime.quantization", "onnxruntime")
    import onnx

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ConfigError(f"{src}: no such ONNX file")
    _check_calibration(calibration)
    proto = onnx.load(str(src), load_external_data=False)
    input_name = proto.graph.input[0].name
    metadata = {p.key: p.value for p in proto.metadata_props}
    with tempfile.TemporaryDirectory(prefix="bicsnet-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant.quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)

        def write(path: str) -> None:
            quant.quantize_static(
                str(prepared),
                path,
                _Reader(input_name, calibration),
                quant_format=quant.QuantFormat.QDQ,
                op_types_to_quantize=list(_ONNX_QUANTIZED_OPS),
                per_channel=True,
                activation_type=quant.QuantType.QUInt8,
                weight_type=quant.QuantType.QInt8,
                calibrate_method=quant.CalibrationMethod.MinMax,
            )
            out = onnx.load(path)
            del out.metadata_props[:]
            for k, v in metadata.items():
                out.metadata_props.add(key=k, value=v)
            onnx.save(out, path)

        atomic_save(dst, write)
