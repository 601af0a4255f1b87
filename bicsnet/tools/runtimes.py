"""Exported networks on deployment runtimes: onnxruntime, OpenVINO, TensorRT; onnxslim; OpenVINO IR export.

One place turns a network-only module (what an export puts in the graph for
a task: the task table's ``export``, or :class:`~bicsnet.models.wrappers.NetworkOnly`)
into a callable runner on a runtime, and opens exported files:

* ``torch``: the eager module under ``torch.inference_mode``.
* ``onnxruntime``: the ONNX export (torch.export-based exporter, simplified
  with onnxslim when installed) in :class:`~bicsnet.tools.export.OnnxModel`.
* ``openvino``: OpenVINO's own PyTorch converter, ``openvino.convert_model``, on
  the module's ``torch.export`` program (OpenVINO's TorchScript-tracing route
  cannot trace the backbone's integer shape arithmetic), compiled for the CPU
  by :class:`OpenVinoModel`.
* ``tensorrt``: the ONNX graph in onnxruntime's ``TensorrtExecutionProvider``
  (CUDA), else ``torch_tensorrt`` when installed; a ConfigError without either or without CUDA.

OpenVINO IR files (``.xml`` + ``.bin``) carry the same ``bicsnet.*`` metadata as
ONNX files (:func:`~bicsnet.tools.export.encode_metadata`), in the model's
``rt_info``, so :func:`load_exported` gives an OpenVINO detector the same
pre-processing, NMS outside the graph and rescaling as :class:`~bicsnet.tools.export.OnnxDetector`.

Precision: OpenVINO's CPU plugin by default runs in bf16 on CPUs with
AMX / AVX-512-BF16 (its ``INFERENCE_PRECISION_HINT`` default there) and f32
elsewhere; ``precision="f32"`` forces f32 (exact comparisons).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import platform
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..io import atomic_save_files
from .export import (
    OnnxDetector,
    OnnxModel,
    check_input_shape,
    example_input,
    decode_metadata,
    encode_metadata,
    export_module,
    is_detector,
    quiet_stdout,
)
from .signal_stack import keep_signal_stack

if TYPE_CHECKING:
    import openvino

__all__ = [
    "require",
    "RUNTIMES",
    "PRECISIONS",
    "simplify_onnx",
    "to_openvino",
    "export_openvino",
    "OpenVinoModel",
    "tensorrt_providers",
    "network_runner",
    "load_exported",
    "matrix_units",
    "cpu_name",
]

#: Runtimes of ``bicsnet bench --runtime`` and :func:`network_runner`.
RUNTIMES = ("torch", "onnxruntime", "openvino", "tensorrt")
#: OpenVINO inference precisions: the plugin's default (bf16 on AMX CPUs), or forced f32.
PRECISIONS = ("default", "f32")


def require(module: str, package: str, purpose: str) -> Any:
    """Import an optional dependency.

    Raises:
        ConfigError: it is not installed, naming the pip package.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"{purpose} needs {package} (pip install {package}, or pip install 'bicsnet[deploy]'): {e}") from None


# --------------------------------------------------------------------------- onnxslim


def simplify_onnx(path: str | os.PathLike) -> Path:
    """Simplify an ONNX file in place with onnxslim (constant folding, dead nodes, fused patterns).

    The ``bicsnet.*`` metadata is kept; the file is replaced atomically
    (:func:`bicsnet.io.atomic_save_files`). Outputs are unchanged (onnxslim's
    rewrites are exact up to float rounding; tested to 1e-4).

    Raises:
        ConfigError: onnxslim (or onnx) is not installed, or ``path`` is not a file.
    """
    slim = require("onnxslim", "onnxslim", "ONNX simplification")
    onnx = require("onnx", "onnx", "ONNX simplification")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such ONNX file")
    proto = onnx.load(str(path))
    props = [(p.key, p.value) for p in proto.metadata_props]
    with quiet_stdout():
        simplified = slim.slim(proto)
    kept = {p.key for p in simplified.metadata_props}
    for key, value in props:  # onnxslim rebuilds the model proto: carry the metadata over
        if key not in kept:
            simplified.metadata_props.add(key=key, value=value)
    atomic_save_files(path, lambda p: onnx.save(simplified, p))
    return path


# --------------------------------------------------------------------------- OpenVINO


def to_openvino(
    module: nn.Module,
    example: Tensor,
    *,
    dynamic: bool = False,
    input_names: Sequence[str] = ("images",),
    output_names: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> "openvino.Model":
    """``module`` (one (B, 3, H, W) input) as an OpenVINO model, converted by ``openvino.convert_model``.

    The module is captured with ``torch.export`` (non-strict; ``dynamic``:
    batch, height and width are ``Dim.DYNAMIC``) and the program converted.
    Inputs and outputs get ``input_names`` / ``output_names``; ``metadata``
    goes into ``rt_info`` as ``bicsnet.<key>`` JSON strings.

    Raises:
        ConfigError: openvino is not installed.
    """
    ov = require("openvino", "openvino", "OpenVINO export")
    from torch.export import Dim

    module = module.eval()
    shapes = ({0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC},) if dynamic else None
    with warnings.catch_warnings(), torch.no_grad(), quiet_stdout():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, (example,), dynamic_shapes=shapes, strict=False)
        model = ov.convert_model(program)
    # The converter leaves the input [?, 3, ?, ?] even for a static program; shapes
    # propagated from a static input let the CPU plugin's fusions see static reshapes.
    model.reshape([-1, int(example.shape[1]), -1, -1] if dynamic else list(example.shape))
    for port, name in zip(model.inputs, input_names):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, output_names or ()):
        port.get_tensor().set_names({name})
    set_openvino_metadata(model, metadata or {})
    return model


def set_openvino_metadata(model: "openvino.Model", meta: dict[str, Any]) -> None:
    """Store ``meta`` in ``model``'s ``rt_info``, encoded as in ONNX files (:func:`~bicsnet.tools.export.encode_metadata`)."""
    for key, value in encode_metadata(meta).items():
        model.set_rt_info(value, key)


def openvino_metadata(model: "openvino.Model") -> dict[str, Any]:
    """The ``bicsnet.*`` metadata of an OpenVINO model (:func:`set_openvino_metadata`), decoded."""
    info = model.get_rt_info()
    keys = [str(k) for k in info] if not hasattr(info, "keys") else [str(k) for k in info.keys()]
    return decode_metadata((k, model.get_rt_info(k).astype(str)) for k in keys if k.startswith("bicsnet."))


def export_openvino(
    model: nn.Module,
    task: str,
    out: str | os.PathLike,
    img_size: int | tuple[int, int],
    *,
    dynamic: bool = False,
    batch: int = 1,
    metadata: dict[str, Any] | None = None,
    calibration: Sequence[np.ndarray] | None = None,
) -> Path:
    """Export ``model`` for ``task`` to OpenVINO IR: ``out`` (``.xml``) and its ``.bin`` weights.

    The same graph as :func:`~bicsnet.tools.export.export_onnx` (the task
    table's ``export`` module, same example input and shapes), FP32 weights
    (``save_model(compress_to_fp16=False)``: OpenVINO's default FP16
    compression would make FP32 comparisons inexact), and the same
    ``bicsnet.*`` metadata in ``rt_info``. With ``calibration`` (network inputs,
    :func:`~bicsnet.tools.quantize.calibration_inputs`) the model is INT8-quantized
    with NNCF (:func:`~bicsnet.tools.quantize.quantize_openvino`) before saving.
    Both files are written atomically, the ``.bin`` first.

    Raises:
        ConfigError: the task is not exportable, ``out`` does not end in ``.xml``,
            or openvino (nncf for ``calibration``) is not installed.
    """
    ov = require("openvino", "openvino", "OpenVINO export")
    out = Path(out)
    if out.suffix.lower() != ".xml":
        raise ConfigError(f"{out}: an OpenVINO model is written to a .xml file (weights beside it in .bin)")
    module, in_names, out_names = export_module(model, task)
    x = example_input(model, img_size, batch, dynamic)
    meta = {"task": task, "dynamic": dynamic, "input_size": list(x.shape[-2:]), "batch": int(x.shape[0]), **(metadata or {})}
    ov_model = to_openvino(module, x, dynamic=dynamic, input_names=in_names, output_names=out_names, metadata=meta)
    if calibration is not None:
        from .quantize import quantize_openvino

        ov_model = quantize_openvino(ov_model, calibration)
        set_openvino_metadata(ov_model, meta)  # kept by NNCF, but set again: the runner depends on it
    atomic_save_files(out, lambda p: ov.save_model(ov_model, p, compress_to_fp16=False))
    return out


class OpenVinoModel:
    """An OpenVINO model compiled for a device: ``model(x)`` -> list of tensors, like :class:`~bicsnet.tools.export.OnnxModel`.

    ``model`` is an ``.xml`` file or an ``openvino.Model``. ``precision``:
    ``"default"`` leaves ``INFERENCE_PRECISION_HINT`` to the plugin (bf16 on
    CPUs with AMX or AVX-512-BF16, f32 elsewhere), ``"f32"`` forces f32.
    ``threads``: ``INFERENCE_NUM_THREADS`` (default torch's thread count).
    ``meta`` is the ``bicsnet.*`` metadata; ``input_shape`` the input's dimensions
    (``None`` where dynamic). The model is compiled inside
    :func:`~bicsnet.tools.signal_stack.keep_signal_stack`: OpenVINO's CPU plugin can
    otherwise leave the thread's alternate signal stack at freed memory (wrap your
    own ``openvino.Core`` use in it too; ``docs/reliability.md``).

    Raises:
        ConfigError: openvino is not installed, no such file, or an unknown precision;
            on a call, an input of a shape the model does not take.
    """

    def __init__(self, model: "str | os.PathLike | openvino.Model", threads: int | None = None, precision: str = "default", device: str = "CPU") -> None:
        ov = require("openvino", "openvino", "running OpenVINO models")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision: choose from {', '.join(PRECISIONS)}, not {precision!r}")
        path = Path(model) if isinstance(model, (str, os.PathLike)) else None
        if path is not None and not path.is_file():
            raise ConfigError(f"{path}: no such OpenVINO model file")
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}
        if precision == "f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        with keep_signal_stack():  # the CPU plugin's own stack dangles once Cores go in creation order
            core = ov.Core()
            if path is not None:
                model = core.read_model(str(path))
            self.meta = openvino_metadata(model)
            self.compiled = core.compile_model(model, device, config)
        self.request = self.compiled.create_infer_request()
        self.input_name = self.compiled.inputs[0].get_any_name()
        self.input_shape = [d.get_length() if d.is_static else None for d in self.compiled.inputs[0].get_partial_shape()]
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.what = str(path) if path is not None else "OpenVINO model"

    def __call__(self, x: Tensor) -> list[Tensor]:
        """Run ``x`` (B, 3, H, W). Raises ConfigError when the model takes another shape (:func:`~bicsnet.tools.export.check_input_shape`)."""
        check_input_shape(self.input_shape, x, self.what)
        res = self.request.infer({0: x.detach().cpu().float().contiguous().numpy()})
        # The request reuses its output buffers on the next call: copy.
        return [torch.from_numpy(np.array(res[o], copy=True)) for o in self.compiled.outputs]


# --------------------------------------------------------------------------- TensorRT


def tensorrt_providers() -> list[str]:
    """onnxruntime providers for TensorRT (with CUDA as fallback for unsupported nodes).

    Raises:
        ConfigError: no CUDA device, or this onnxruntime build has no
            ``TensorrtExecutionProvider`` (install ``onnxruntime-gpu`` with TensorRT).
    """
    ort = require("onnxruntime", "onnxruntime-gpu", "TensorRT through onnxruntime")
    if not torch.cuda.is_available():
        raise ConfigError("the tensorrt runtime needs a CUDA GPU; none is available")
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        raise ConfigError("the tensorrt runtime needs onnxruntime-gpu with TensorrtExecutionProvider (pip install onnxruntime-gpu tensorrt), or torch-tensorrt")
    return ["TensorrtExecutionProvider", "CUDAExecutionProvider"]


def _torch_tensorrt_runner(module: nn.Module, example: Tensor) -> Callable[[Tensor], Any]:
    """``torch_tensorrt.compile`` of ``module`` on CUDA (FP32).

    Raises:
        ConfigError: no CUDA device or torch-tensorrt not installed.
    """
    if not torch.cuda.is_available():
        raise ConfigError("the tensorrt runtime needs a CUDA GPU; none is available")
    trt = require("torch_tensorrt", "torch-tensorrt", "the tensorrt runtime")
    compiled = trt.compile(module.eval().cuda(), inputs=[example.cuda()], enabled_precisions={torch.float32})

    def run(x: Tensor) -> Any:
        with torch.inference_mode():
            out = compiled(x.cuda())
        torch.cuda.synchronize()
        return out

    return run


# --------------------------------------------------------------------------- runners


def _export_network_onnx(module: nn.Module, example: Tensor, path: Path, simplify: bool) -> Path:
    """A network-only module to a static ONNX file (simplified with onnxslim when installed and asked)."""
    require("onnxscript", "onnxscript", "ONNX export")
    with warnings.catch_warnings(), torch.no_grad(), quiet_stdout():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), dynamo=True, verbose=False).save(str(path))
    if simplify:
        with contextlib.suppress(ConfigError):  # onnxslim not installed: the graph is valid unsimplified
            simplify_onnx(path)
    return path


def network_runner(
    module: nn.Module,
    example: Tensor,
    runtime: str,
    *,
    workdir: str | os.PathLike | None = None,
    threads: int | None = None,
    precision: str = "default",
    simplify: bool = True,
    spinning: bool = True,
) -> Callable[[Tensor], Any]:
    """``module`` (one (B, 3, H, W) input, e.g. :class:`~bicsnet.models.wrappers.NetworkOnly`) as a runner on ``runtime``.

    The graph is static at ``example``'s shape. ``workdir`` holds the
    intermediate ONNX file (default: a temporary folder, removed at once
    after the session has loaded it). ``precision`` is OpenVINO's (:class:`OpenVinoModel`);
    ``spinning`` onnxruntime's (:class:`~bicsnet.tools.export.OnnxModel`: False when
    runners are timed in turns).

    Raises:
        ConfigError: an unknown runtime, or one whose libraries (or GPU) are missing.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime: choose from {', '.join(RUNTIMES)}, not {runtime!r}")
    module = module.eval()
    if runtime == "torch":

        def run(x: Tensor) -> Any:
            with torch.inference_mode():
                return module(x)

        return run
    if runtime == "openvino":
        return OpenVinoModel(to_openvino(module, example.cpu()), threads, precision)
    if runtime == "tensorrt":
        try:
            providers = tensorrt_providers()
        except ConfigError:
            if importlib.util.find_spec("torch_tensorrt") is None:
                raise
            return _torch_tensorrt_runner(module, example)
    else:
        providers = ["CPUExecutionProvider"]
    with tempfile.TemporaryDirectory(prefix="bicsnet-runtime-", dir=workdir) as tmp:
        path = _export_network_onnx(module.cpu(), example.cpu(), Path(tmp) / "network.onnx", simplify)
        require("onnxruntime", "onnxruntime", "the onnxruntime runtime")
        return OnnxModel(path, threads, providers, spinning=spinning)


def load_exported(
    path: str | os.PathLike, runtime: str | None = None, *, threads: int | None = None, precision: str = "default"
) -> OnnxModel | OpenVinoModel | OnnxDetector:
    """Open an exported file on its runtime: a detector where it has detection metadata, else the plain network.

    ``.onnx``: onnxruntime (``runtime="tensorrt"``: its TensorRT provider);
    ``.xml``: OpenVINO (``precision`` as in :class:`OpenVinoModel`). A detector
    is an :class:`~bicsnet.tools.export.OnnxDetector` around that runner
    (pre-processing, NMS outside the graph, rescaling to the original image).

    Raises:
        ConfigError: no such file, an unknown suffix, or a runtime that does not run this format.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        if runtime not in (None, "onnxruntime", "tensorrt"):
            raise ConfigError(f"{path}: an ONNX file runs on onnxruntime or tensorrt, not {runtime}")
        providers = tensorrt_providers() if runtime == "tensorrt" else ["CPUExecutionProvider"]
        net: OnnxModel | OpenVinoModel = OnnxModel(path, threads, providers)
    elif suffix == ".xml":
        if runtime not in (None, "openvino"):
            raise ConfigError(f"{path}: an OpenVINO .xml model runs on openvino, not {runtime}")
        net = OpenVinoModel(path, threads, precision)
    else:
        raise ConfigError(f"{path}: not an exported model (.onnx or OpenVINO .xml)")
    return OnnxDetector(net) if is_detector(net.meta) else net


# --------------------------------------------------------------------------- machine


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (e.g. ``"AMD EPYC 7B13"``), else ``platform.machine()``.

    Never ``platform.processor()``: on Linux that starts a ``uname -p`` process (which
    answers only ``x86_64``) from a process whose OpenVINO, oneDNN and onnxruntime thread
    pools are running; a long pytest process crashed there (the crash has a cause
    elsewhere, ``docs/reliability.md``, but no process is needed to read one file).
    """
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.machine() or "unknown"


def matrix_units() -> dict[str, Any]:
    """The CPU's matrix / wide-vector units: AVX2, AVX-512 (and its bf16/VNNI), AMX from ``/proc/cpuinfo`` flags,
    and OpenVINO's ``OPTIMIZATION_CAPABILITIES`` for the CPU when openvino is installed (``None`` otherwise)."""
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    info: dict[str, Any] = {
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "amx": sorted(f for f in flags if f.startswith("amx")),
    }
    info["openvino_capabilities"] = None
    with contextlib.suppress(Exception):  # not installed, or a CPU plugin that cannot start: none, not a failed benchmark
        import openvino as ov

        with keep_signal_stack():
            info["openvino_capabilities"] = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return info
