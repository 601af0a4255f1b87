"""Measured speed and memory of a model against its baseline, in one process.

``bicsnet bench`` (and :func:`run_bench`) builds a model and its baseline
(no pretrained weights anywhere), then measures, alternating the two after
warm-up and taking medians:

* ``e2e_ms``: batch 1 end to end - a uint8 image (3 x 3S/4 x S for a
  detector, as from a camera) through pre-processing (to float, resize,
  normalise / pad), the network and post-processing (box decoding + NMS for
  detectors, argmax for segmenters, softmax top-5 for classifiers);
* ``net_ms``: batch 1, the network only (backbone + task head on a
  1 x 3 x S x S tensor: exactly what the GMACs count);
* ``throughput_ips``: network images per second at ``--batch``;
* ``train_ips``: images per second of one SGD training step (forward, loss,
  backward, update) at ``--train-batch``;
* ``train_peak_mb`` / ``train_mem_per_image_mb``: peak memory of one
  training step beyond weights and optimizer state (activations, gradients,
  workspace), in total and per image; ``infer_peak_mb`` the same for the
  batch-1 network. On CPU this is the process's peak RSS (``VmHWM`` from
  ``/proc/self/status``, reset through ``/proc/self/clear_refs`` after
  returning freed heap memory with ``malloc_trim``); on CUDA
  ``torch.cuda.max_memory_allocated``.
* ``gmacs`` / ``params_m``: multiply-adds and parameters (:mod:`bicsnet.tools.flops`
  convention: backbone + head for detectors, the whole network otherwise).

``--fast deploy,fold,channels_last,compile,bf16`` adds the network latency of each
:mod:`bicsnet.tools.fastpath` option alone and of all of them together;
``--runtime onnxruntime|openvino|tensorrt`` adds the network latency of both
models on that runtime (:func:`bicsnet.tools.runtimes.network_runner`: static
graphs of the batch-1 input, ONNX simplified with onnxslim, OpenVINO at its
default precision), alternating, and for a detector that exports (ours) its
end-to-end latency there too (pre-processing and NMS in PyTorch around the
runtime, :class:`~bicsnet.tools.export.OnnxDetector`); ``--onnx`` is
``--runtime onnxruntime``. The machine record names the CPU's matrix units
(AVX-512, AMX) and OpenVINO's view of them. Ratios are model / baseline.

Detectors run with ``score_thresh`` 0 by default: randomly initialised
weights score every anchor at about 0.01, below the usual 0.05, so a
threshold would leave NMS nothing to do; at 0 both detectors post-process
their full top-k candidates, as a trained model on a busy image would.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map_only

from ..engine.host_memory import pin_malloc_thresholds, trim_heap
from ..errors import ConfigError
from ..io import atomic_write_json
from ..models.heads import IMAGENET_MEAN, IMAGENET_STD
from ..tasks import TASKS, BenchIO, TaskSpec
from .fastpath import apply_fast_path, autocast_context, parse_fast, prepare_input

__all__ = [
    "ModelSpec",
    "PAIRS",
    "TORCHVISION_INPUT_SIZE",
    "bench_task_names",
    "default_model_spec",
    "pair_names",
    "pair_specs",
    "build_model",
    "model_gmacs",
    "run_bench",
    "format_table",
    "TARGETS",
]

TV_PREFIX = "tv:"

#: Input size (pixels) of a ``tv:`` model for a task whose table entry gives
#: none (detection): COCO at 640, the size of the paper's BiCSNet-48 (Table I).
TORCHVISION_INPUT_SIZE = 640

#: Targets of the performance issue: network latency ratio <= 1.1 x FLOPs ratio,
#: training memory per image no more than the baseline's.
TARGETS = {"net_latency_vs_flops": 1.1, "train_mem_per_image": 1.0}


@dataclass
class ModelSpec:
    """What to build: a registered name, or ``tv:<torchvision builder>`` (no weights).

    ``img_size`` is the side S of the square network input in pixels;
    ``overrides`` are ``create_model`` options (``tv:``: ``get_model`` keyword arguments).
    """

    name: str
    task: str
    img_size: int
    num_classes: int
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def torchvision(self) -> bool:
        return self.name.startswith(TV_PREFIX)


def bench_task_names() -> list[str]:
    """The tasks ``bicsnet bench`` measures (those with a :class:`~bicsnet.tasks.BenchIO`), in table order."""
    return [n for n, t in TASKS.items() if t.bench is not None]


def _bench_task(name: str) -> tuple[TaskSpec, BenchIO]:
    """The task's spec and its benchmark workload.

    Raises:
        ConfigError: an unknown task, or one the benchmark does not measure.
    """
    spec = TASKS.get(name)
    if spec is None or spec.bench is None:
        raise ConfigError(f"bench supports tasks {', '.join(bench_task_names())}, not {name!r}")
    return spec, spec.bench


def default_model_spec(name: str, task: str) -> ModelSpec:
    """``name`` benchmarked for ``task`` with the task's defaults.

    Input size: the task's (segmentation 512, classification 224), else the
    model's own (Table I; :data:`TORCHVISION_INPUT_SIZE` for ``tv:`` models);
    classes: the paper's dataset's (COCO 80, VOC 21, ImageNet 1000).

    Raises:
        ConfigError: an unknown or unbenchmarked task, or an unknown registered model.
    """
    spec, _ = _bench_task(task)
    if name.startswith(TV_PREFIX):
        own = TORCHVISION_INPUT_SIZE
    else:
        from ..models import default_input_size

        own = default_input_size(name)
    return ModelSpec(name, task, spec.default_size(own), int(spec.default_classes or 1))


def _lite_names() -> list[str]:
    from ..models import list_models

    return list_models("bicsnet_lite")


def _pair(model: str, baseline: str, task: str, size: int, baseline_size: int | None = None) -> tuple[ModelSpec, ModelSpec]:
    """(model, baseline) at ``size`` (the baseline at ``baseline_size`` if given), the task's paper class count."""
    k = int(TASKS[task].default_classes or 1)
    return ModelSpec(model, task, size, k), ModelSpec(baseline, task, baseline_size or size, k)


#: Named pairs: (model, baseline). Sizes are the paper's; classes COCO 80 / VOC 21 / ImageNet 1000.
PAIRS: dict[str, tuple[ModelSpec, ModelSpec]] = {
    "retinanet-48s": _pair("bicsnet_48s", "tv:retinanet_resnet50_fpn", "detection", 640),
    "retinanet-48": _pair("bicsnet_48", "tv:retinanet_resnet50_fpn", "detection", 640),
    "seg-48": _pair("bicsnet_48", "tv:deeplabv3_resnet50", "segmentation", 512),
    "cls-48": _pair("bicsnet_48", "tv:resnet50", "classification", 224),
}

#: Baseline of every lite pair (its fixed input size): Table VII's on-device detector class.
_LITE_BASELINE = ("tv:ssdlite320_mobilenet_v3_large", 320)


def pair_names() -> list[str]:
    """Named pairs, with ``lite0``.. for every registered BiCSNet-lite model."""
    return list(PAIRS) + [n.replace("bicsnet_", "") for n in _lite_names()]


def pair_specs(name: str) -> tuple[ModelSpec, ModelSpec]:
    """The (model, baseline) specs of a named pair (copies; safe to edit).

    Raises:
        ConfigError: an unknown pair, listing the known ones.
    """
    if name in PAIRS:
        a, b = PAIRS[name]
        return ModelSpec(**asdict(a)), ModelSpec(**asdict(b))
    lite = f"bicsnet_{name}"
    if name.startswith("lite") and lite in _lite_names():
        from ..models import default_input_size

        return _pair(lite, _LITE_BASELINE[0], "detection", default_input_size(lite), _LITE_BASELINE[1])
    raise ConfigError(f"unknown pair {name!r}; choose one of {', '.join(pair_names())}")


# --------------------------------------------------------------------------- building


def _build_torchvision(spec: ModelSpec, score_thresh: float | None) -> nn.Module:
    from torchvision.models import get_model, list_models

    name = spec.name[len(TV_PREFIX):]
    if name not in list_models():
        raise ConfigError(f"{spec.name}: torchvision has no model {name!r}")
    _, io = _bench_task(spec.task)
    kw: dict[str, Any] = {"weights": None, **io.torchvision_options(name, spec.num_classes, spec.img_size, score_thresh)}
    kw.update(spec.overrides)
    return get_model(name, **kw)


def build_model(spec: ModelSpec, score_thresh: float | None = None) -> nn.Module:
    """Build ``spec`` in eval mode with fresh (random) weights.

    ``score_thresh`` (``None``: the model's default) goes to heads that take one (detectors).

    Raises:
        ConfigError: a task bench does not measure, an unknown model or option.
    """
    task, _ = _bench_task(spec.task)
    if spec.torchvision:
        return _build_torchvision(spec, score_thresh).eval()
    from ..models import create_model

    kw = dict(spec.overrides)
    if task.uses_img_size:  # detectors resize their input to S themselves
        kw.setdefault("img_size", spec.img_size)
    if score_thresh is not None and "score_thresh" in task.head_options:
        kw.setdefault("score_thresh", score_thresh)
    return create_model(spec.name, spec.task, spec.num_classes, **kw).eval()


def _network_call(model: nn.Module, spec: ModelSpec) -> Callable[[Tensor], Any]:
    """Backbone + head on a pre-processed (B, 3, S, S) tensor: the task table's ``network``."""
    return functools.partial(TASKS[spec.task].network, model)


def _compiled_parts(model: nn.Module) -> list[str] | None:
    """What ``--fast compile`` compiles: all of the model, or only its backbone and head.

    A model with its own input transform (a detector: resize, normalise, pad,
    and NMS after the head) runs Python around backbone + head; compiling only
    those two keeps that Python eager.
    """
    return ["backbone", "head"] if getattr(model, "transform", None) is not None else None


def model_gmacs(spec: ModelSpec) -> tuple[float, float]:
    """(GMACs for one image, parameters in millions), counted on the meta device."""
    from .flops import count_macs, count_params

    with torch.device("meta"):
        m = build_model(spec)
        x = torch.empty(1, 3, spec.img_size, spec.img_size)
    net = _network_call(m, spec)
    with torch.no_grad():
        macs = count_macs(lambda: net(x))
    return macs / 1e9, count_params(m) / 1e6


# --------------------------------------------------------------------------- one model's workload


class Workload:
    """Everything the benchmark runs for one model: inputs, network, end to end, training.

    What differs between tasks (the end-to-end image and its processing, the
    training batch and loss) is the task table's :class:`~bicsnet.tasks.BenchIO`.
    """

    def __init__(self, spec: ModelSpec, model: nn.Module, device: torch.device, batch: int, train_batch: int, seed: int = 0):
        self.spec, self.model, self.device = spec, model.to(device).eval(), device
        _, self.io = _bench_task(spec.task)
        s, k = spec.img_size, spec.num_classes
        g = torch.Generator().manual_seed(seed)
        # Network inputs are already pre-processed (normalised), as the FLOPs count them.
        self.x1 = torch.randn(1, 3, s, s, generator=g).to(device)
        self.xb = torch.randn(batch, 3, s, s, generator=g).to(device)
        self.batch, self.train_batch = batch, train_batch
        self.image = self.io.image(s, g)
        self._train_data = self.io.train_batch(train_batch, s, k, g)
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        # Ours normalise inside the model; torchvision's classifiers and segmenters take normalised input.
        self.normalize: Callable[[Tensor], Tensor] = (lambda x: (x - mean) / std) if spec.torchvision else (lambda x: x)

    # ----- network only
    def network_fn(self, model: nn.Module | None = None, channels_last: bool = False, amp: str | None = None) -> Callable[[Tensor], Any]:
        call = _network_call(model if model is not None else self.model, self.spec)
        ctx = autocast_context(amp, self.device) if amp else contextlib.nullcontext()

        def run(x: Tensor) -> Any:
            with torch.inference_mode(), ctx:
                return call(prepare_input(x, channels_last))

        return run

    # ----- end to end
    def e2e(self) -> Any:
        """Batch 1: the uint8 image through pre-processing, the network and post-processing."""
        with torch.inference_mode():
            return self.io.e2e(self.model, self.image.to(self.device), self.spec.img_size, self.normalize)

    # ----- training
    def make_train_step(self) -> Callable[[], float]:
        """A closure running one SGD step on a training copy of the model."""
        import copy

        model = copy.deepcopy(self.model).train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
        # Any nesting of tensors in lists, tuples and dicts (a detector's images and per-image targets).
        images, targets = tree_map_only(Tensor, lambda t: t.to(self.device), self._train_data)
        loss_fn, normalize = self.io.loss, self.normalize

        def step() -> float:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, images, targets, normalize)
            loss.backward()
            opt.step()
            return float(loss.detach())

        step.model = model  # type: ignore[attr-defined]
        return step


# --------------------------------------------------------------------------- timing and memory


@contextlib.contextmanager
def _train_batch_checked(train_batch: int) -> Iterator[None]:
    """Turn BatchNorm's one-value-per-channel error in a training step into a ConfigError naming ``--train-batch``."""
    try:
        yield
    except ValueError as e:
        if "more than 1 value per channel" not in str(e):
            raise
        # BatchNorm in training mode on a 1x1 map (the coarsest level of a small input) needs 2+ images.
        raise ConfigError(
            f"--train-batch {train_batch}: a training step needs at least 2 images at this input size "
            "(BatchNorm on the coarsest 1x1 maps); use --train-batch 2 or more"
        ) from None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(fns: Sequence[Callable[[], Any]], warmup: int, iters: int, device: torch.device) -> list[list[float]]:
    """Seconds per call of each fn: warm-up rounds, then ``iters`` rounds alternating the order."""
    for _ in range(warmup):
        for fn in fns:
            fn()
            _sync(device)
    times: list[list[float]] = [[] for _ in fns]
    for i in range(iters):
        order = range(len(fns)) if i % 2 == 0 else reversed(range(len(fns)))
        for j in order:
            _sync(device)
            t = time.perf_counter()
            fns[j]()
            _sync(device)
            times[j].append(time.perf_counter() - t)
    return times


def _median_ms(ts: list[float]) -> float:
    return round(statistics.median(ts) * 1e3, 2)


def _proc_status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim_heap() -> None:
    gc.collect()
    trim_heap()


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak memory ``fn()`` needs beyond what is allocated before it (MB).

    CUDA: max allocated; CPU: peak RSS over the RSS at the start, both after
    freed memory is returned. ``None`` where peak RSS cannot be reset (not Linux).
    """
    if device.type == "cuda":
        _sync(device)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return round((torch.cuda.max_memory_allocated(device) - base) / 2**20, 1)
    pin_malloc_thresholds()
    _trim_heap()
    base = _proc_status_kb("VmRSS")
    if base is None or not _reset_peak_rss():
        return None
    fn()
    peak = _proc_status_kb("VmHWM")
    return None if peak is None else round((peak - base) / 1024, 1)


# --------------------------------------------------------------------------- the benchmark


def _machine(device: torch.device) -> dict[str, Any]:
    from .runtimes import cpu_name, matrix_units

    info = {
        "device": str(device),
        "cpu": cpu_name(),
        "matrix_units": matrix_units(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError, AttributeError):
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)  # other work on the machine skews timings
    import torchvision

    info["torchvision"] = torchvision.__version__
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def _runtime_e2e(w: Workload, runtime: str, threads: int | None) -> Callable[[], Any] | None:
    """End to end on ``runtime`` for a model that pre-processes its input itself and exports (our detectors).

    The task table's export module on the runtime (static, at the padded
    batch-1 input), inside :class:`~bicsnet.tools.export.OnnxDetector`
    (pre-processing, NMS and rescaling in PyTorch, as ``bicsnet export`` files run).
    ``None`` for other models (their end-to-end pre-processing is not part of an export).
    """
    from .export import OnnxDetector, detection_metadata, example_input, export_module
    from .runtimes import network_runner

    if w.spec.torchvision or getattr(w.model, "transform", None) is None or TASKS[w.spec.task].export is None:
        return None
    model = w.model.cpu()
    module, _, _ = export_module(model, w.spec.task)
    x = example_input(model, w.spec.img_size, 1, False)
    run = network_runner(module, x, runtime, threads=threads, spinning=False)
    meta = {**detection_metadata(model), "img_size": w.spec.img_size, "input_size": list(x.shape[-2:]), "batch": 1, "dynamic": False}
    det = OnnxDetector(_WithMeta(run, meta))
    image = w.image.float().div(255)
    return lambda: det([image])


class _WithMeta:
    """A runner with the ``meta`` dict :class:`~bicsnet.tools.export.OnnxDetector` reads (an export file's metadata)."""

    def __init__(self, run: Callable[[Tensor], Any], meta: dict[str, Any]) -> None:
        self.run, self.meta = run, meta

    def __call__(self, x: Tensor) -> Any:
        return self.run(x)


def _runtime_latency(works: Sequence[Workload], runtime: str, warmup: int, iters: int) -> list[dict[str, float | None]]:
    """Latency of each model's network-only graph on ``runtime`` (batch 1), and end to end where it exports.

    A model whose conversion fails is reported (``None``), not fatal: a
    baseline may use an operator the runtime's converter lacks. A missing
    library or GPU (ConfigError) is raised: it would fail both alike.
    """
    from ..models.wrappers import NetworkOnly
    from .runtimes import network_runner

    threads = torch.get_num_threads()
    dev = works[0].device if runtime in ("torch", "tensorrt") else torch.device("cpu")
    nets: list[Callable[[], Any] | None] = []
    e2es: list[Callable[[], Any] | None] = []
    for w in works:
        net_fn = e2e_fn = None
        try:
            net = NetworkOnly(w.model.to(dev), TASKS[w.spec.task].network).eval()
            x = w.x1.to(dev)
            # No busy-waiting onnxruntime threads: the runners are timed in turns on shared cores.
            run = network_runner(net, x, runtime, threads=threads, spinning=False)
            net_fn = lambda run=run, x=x: run(x)  # noqa: E731
            e2e_fn = _runtime_e2e(w, runtime, threads)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - report, do not abort the benchmark
            print(f"bench: {runtime} conversion of {w.spec.name} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        finally:
            w.model.to(w.device)
        nets.append(net_fn)
        e2es.append(e2e_fn)
    out: list[dict[str, float | None]] = [{"net_ms": None, "e2e_ms": None} for _ in works]
    for key, fns in (("net_ms", nets), ("e2e_ms", e2es)):
        live = [f for f in fns if f is not None]
        times = iter(time_alternating(live, warmup, iters, dev) if live else [])
        for o, f in zip(out, fns):
            if f is not None:
                o[key] = _median_ms(next(times))
    return out


def run_bench(
    model: ModelSpec,
    baseline: ModelSpec | None,
    *,
    device: str | torch.device = "cpu",
    warmup: int = 2,
    iters: int = 10,
    batch: int = 4,
    train_batch: int = 2,
    train_iters: int | None = None,
    fast: Sequence[str] | str | None = None,
    onnx: bool = False,
    runtime: str = "torch",
    memory: bool = True,
    score_thresh: float | None = 0.0,
    pair: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure ``model`` (and ``baseline``) and return the result dict (``--json``'s content).

    ``runtime`` other than ``torch`` (and ``onnx=True``: onnxruntime) adds
    ``runtimes[<name>] = {net_ms, e2e_ms}`` per model (see the module docstring).

    Raises:
        ConfigError: an unknown model, task, fast option or runtime, or a runtime whose libraries are missing.
    """
    from .runtimes import RUNTIMES

    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime: choose from {', '.join(RUNTIMES)}, not {runtime!r}")
    runtimes = [r for r in dict.fromkeys((["onnxruntime"] if onnx else []) + [runtime]) if r != "torch"]
    device = torch.device(device)
    # Fixed input sizes: cuDNN times its algorithms once per shape (inside the warm-up runs) and keeps the fastest.
    torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark or device.type == "cuda"
    fast_opts = parse_fast(fast)
    say = log or (lambda s: None)
    specs = [model] + ([baseline] if baseline is not None else [])
    roles = ["model", "baseline"][: len(specs)]
    machine_start = _machine(device)  # load average before the runs: other work skews timings
    torch.manual_seed(0)
    models = [build_model(s, score_thresh) for s in specs]
    works = [Workload(s, m, device, batch, train_batch, seed=i) for i, (s, m) in enumerate(zip(specs, models))]
    results: dict[str, dict[str, Any]] = {}
    for role, s, m in zip(roles, specs, models):
        gm, pm = model_gmacs(s)
        results[role] = {**asdict(s), "gmacs": round(gm, 3), "params_m": round(pm, 3)}

    if train_batch < 2:  # refuse a batch BatchNorm cannot train on before minutes of timing, not after
        with _train_batch_checked(train_batch):
            for w in works:
                w.make_train_step()()

    say("network latency (batch 1)")
    ts = time_alternating([lambda w=w: w.network_fn()(w.x1) for w in works], warmup, iters, device)
    for role, t in zip(roles, ts):
        results[role]["net_ms"] = _median_ms(t)
    say("end-to-end latency (batch 1, uint8 image -> predictions)")
    ts = time_alternating([w.e2e for w in works], warmup, iters, device)
    for role, t in zip(roles, ts):
        results[role]["e2e_ms"] = _median_ms(t)
    say(f"throughput (batch {batch})")
    ts = time_alternating([lambda w=w: w.network_fn()(w.xb) for w in works], max(1, warmup // 2), max(1, iters // 2), device)
    for role, t in zip(roles, ts):
        results[role]["throughput_ips"] = round(batch / statistics.median(t), 2)
    say(f"training step (batch {train_batch})")
    steps = [w.make_train_step() for w in works]
    n_train = train_iters if train_iters is not None else max(1, min(iters, 3))
    with _train_batch_checked(train_batch):
        ts = time_alternating(steps, 1, n_train, device)
    for role, t in zip(roles, ts):
        results[role]["train_ips"] = round(train_batch / statistics.median(t), 2)
    if not memory:
        del steps

    if fast_opts:
        variants: list[tuple[str, list[str]]] = [(o, [o]) for o in fast_opts]
        if len(fast_opts) > 1:
            variants.append(("+".join(fast_opts), list(fast_opts)))
        for label, opts in variants:
            say(f"fast path: {label}")
            amp = next((o for o in opts if o in ("bf16", "fp16")), None)
            transforms = [o for o in opts if o not in ("bf16", "fp16")]
            cl = "channels_last" in transforms
            fns = []
            for w in works:
                fm = apply_fast_path(w.model, transforms, _compiled_parts(w.model)) if transforms else w.model
                fns.append(lambda w=w, fm=fm: w.network_fn(fm, cl, amp)(w.x1))
            ts = time_alternating(fns, max(warmup, 2 if "compile" in transforms else warmup), iters, device)
            for role, t in zip(roles, ts):
                ms = _median_ms(t)
                results[role].setdefault("fast", {})[label] = {"net_ms": ms, "gain": _ratio(results[role]["net_ms"], ms)}
    for rt in runtimes:
        say(f"{rt} latency (batch 1)")
        for role, times in zip(roles, _runtime_latency(works, rt, warmup, iters)):
            results[role].setdefault("runtimes", {})[rt] = times

    if memory:  # last: it pins malloc's thresholds (see bicsnet.engine.host_memory.pin_malloc_thresholds)
        say("peak memory")
        for role, w, step in zip(roles, works, steps):
            # After a step the optimizer state exists; free gradients, then measure one more step.
            for p in step.model.parameters():  # type: ignore[attr-defined]
                p.grad = None
            peak = peak_memory_mb(step, device)
            results[role]["train_peak_mb"] = peak
            results[role]["train_mem_per_image_mb"] = None if peak is None else round(peak / train_batch, 1)
        del steps
        for role, w in zip(roles, works):
            results[role]["infer_peak_mb"] = peak_memory_mb(lambda w=w: w.network_fn()(w.x1), device)

    machine = {**machine_start}
    with contextlib.suppress(OSError, AttributeError):
        machine["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    out: dict[str, Any] = {
        "pair": pair,
        "machine": machine,
        "settings": {
            "warmup": warmup, "iters": iters, "batch": batch, "train_batch": train_batch, "train_iters": n_train,
            "score_thresh": score_thresh, "fast": fast_opts, "runtimes": runtimes,
        },  # fmt: skip
        **results,
    }
    if baseline is not None:
        a, b = results["model"], results["baseline"]
        keys = ["gmacs", "params_m", "net_ms", "e2e_ms", "throughput_ips", "train_ips", "train_peak_mb", "train_mem_per_image_mb", "infer_peak_mb"]
        ratios = {k: _ratio(a.get(k), b.get(k)) for k in keys if k in a}
        for label in a.get("fast", {}):
            ratios[f"net_ms[{label}]"] = _ratio(a["fast"][label]["net_ms"], b["fast"][label]["net_ms"])
        for rt in a.get("runtimes", {}):
            for k in ("net_ms", "e2e_ms"):
                ratios[f"{k}[{rt}]"] = _ratio(a["runtimes"][rt][k], b["runtimes"][rt][k])
        out["ratios"] = ratios
        lat_vs_flops = _ratio(ratios.get("net_ms"), ratios.get("gmacs"))
        targets = {
            "net_latency_vs_flops": {
                "value": lat_vs_flops, "limit": TARGETS["net_latency_vs_flops"],
                "met": None if lat_vs_flops is None else lat_vs_flops <= TARGETS["net_latency_vs_flops"],
            },
        }  # fmt: skip
        mem = ratios.get("train_mem_per_image_mb")
        if mem is not None:
            targets["train_mem_per_image"] = {"value": mem, "limit": TARGETS["train_mem_per_image"], "met": mem <= TARGETS["train_mem_per_image"]}
        out["targets"] = targets
    return out


# --------------------------------------------------------------------------- report

_ROWS = [
    ("gmacs", "GMACs (1 image)", "{:.2f}"),
    ("params_m", "params (M)", "{:.2f}"),
    ("net_ms", "network latency, batch 1 (ms)", "{:.1f}"),
    ("e2e_ms", "end-to-end latency, batch 1 (ms)", "{:.1f}"),
    ("throughput_ips", "network throughput (img/s)", "{:.2f}"),
    ("train_ips", "training step (img/s)", "{:.2f}"),
    ("train_peak_mb", "training peak memory (MB)", "{:.0f}"),
    ("train_mem_per_image_mb", "training memory per image (MB)", "{:.0f}"),
    ("infer_peak_mb", "inference peak memory, batch 1 (MB)", "{:.0f}"),
]


def _cell(v: Any, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def _units_line(u: dict[str, Any]) -> str:
    """The CPU's matrix units in words (:func:`bicsnet.tools.runtimes.matrix_units`)."""
    if not u:
        return "matrix units: unknown"

    def yes(v: Any) -> str:
        return "yes" if v else "no"

    amx = ", ".join(u.get("amx") or []) or "no"
    ov = u.get("openvino_capabilities")
    return (f"matrix units: AVX2 {yes(u.get('avx2'))}, AVX-512 {yes(u.get('avx512'))} (bf16 {yes(u.get('avx512_bf16'))}, "
            f"VNNI {yes(u.get('avx512_vnni'))}), AMX {amx}; OpenVINO CPU capabilities: {', '.join(ov) if ov else '-'}")


def _label(spec: dict[str, Any], task: bool = False) -> str:
    """``name (task, 256px, width_mult=0.125)``: a model as benchmarked, its ``--set`` overrides included."""
    parts = ([spec["task"]] if task else []) + [f"{spec['img_size']}px"]
    parts += [f"{k}={v}" for k, v in (spec.get("overrides") or {}).items()]
    return f"{spec['name']} ({', '.join(parts)})"


def format_table(res: dict[str, Any]) -> str:
    """A Markdown table: metric, model, baseline, ratio; then the targets."""
    a, b = res["model"], res.get("baseline")
    m = res["machine"]
    s = res["settings"]
    title = _label(a, task=True) + (f" vs {_label(b)}" if b else "")
    lines = [
        f"## {res.get('pair') or title}",
        "",
        f"{title}; {m['device']} ({m['cpu']}, {m['threads']} threads), torch {m['torch']}, "
        f"load average {m.get('loadavg_1m', '-')} -> {m.get('loadavg_1m_end', '-')}; "
        f"median of {s['iters']} alternating runs after {s['warmup']} warm-up; batch {s['batch']}, train batch {s['train_batch']}",
        "",
        _units_line(m.get("matrix_units") or {}),
        "",
    ]
    if b:
        lines += ["| metric | model | baseline | ratio |", "|---|---:|---:|---:|"]
    else:
        lines += ["| metric | model |", "|---|---:|"]
    ratios = res.get("ratios", {})
    for key, label, fmt in _ROWS:
        if key not in a:
            continue
        row = f"| {label} | {_cell(a.get(key), fmt)} |"
        if b:
            row += f" {_cell(b.get(key), fmt)} | {_cell(ratios.get(key), '{:.3f}')} |"
        lines.append(row)
    for label, v in a.get("fast", {}).items():
        row = f"| network latency, {label} (ms) | {v['net_ms']:.1f} (x{v['gain']:.2f}) |"
        if b:
            bv = b["fast"][label]
            row += f" {bv['net_ms']:.1f} (x{bv['gain']:.2f}) | {_cell(ratios.get(f'net_ms[{label}]'), '{:.3f}')} |"
        lines.append(row)
    for rt, v in a.get("runtimes", {}).items():
        for k, what in (("net_ms", "network latency"), ("e2e_ms", "end-to-end latency")):
            if v[k] is None and (not b or b["runtimes"][rt][k] is None):
                continue
            row = f"| {what}, {rt}, batch 1 (ms) | {_cell(v[k], '{:.1f}')} |"
            if b:
                row += f" {_cell(b['runtimes'][rt][k], '{:.1f}')} | {_cell(ratios.get(f'{k}[{rt}]'), '{:.3f}')} |"
            lines.append(row)
    for name, t in res.get("targets", {}).items():
        verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")
        what = {
            "net_latency_vs_flops": "network latency ratio / FLOPs ratio",
            "train_mem_per_image": "training memory per image ratio",
        }[name]
        lines.append("")
        lines.append(f"target: {what} = {_cell(t['value'], '{:.3f}')} (limit {t['limit']}): {verdict}")
    return "\n".join(lines)


def write_json(res: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a :func:`run_bench` result to ``path`` as JSON (atomically, :mod:`bicsnet.io`)."""
    atomic_write_json(path, res)
