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

``--fast fold,channels_last,compile,bf16`` adds the network latency of each
:mod:`bicsnet.tools.fastpath` option alone and of all of them together; ``--onnx``
adds onnxruntime's network latency. Ratios are model / baseline.

Detectors run with ``score_thresh`` 0 by default: randomly initialised
weights score every anchor at about 0.01, below the usual 0.05, so a
threshold would leave NMS nothing to do; at 0 both detectors post-process
their full top-k candidates, as a trained model on a busy image would.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .fastpath import apply_fast_path, autocast_context, parse_fast, prepare_input

__all__ = [
    "ModelSpec",
    "PAIRS",
    "pair_names",
    "pair_specs",
    "build_model",
    "model_gmacs",
    "run_bench",
    "format_table",
    "TARGETS",
]

TV_PREFIX = "tv:"
BENCH_TASKS = ("detection", "segmentation", "classification")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Targets of the performance issue: network latency ratio <= 1.1 x FLOPs ratio,
#: training memory per image no more than the baseline's.
TARGETS = {"net_latency_vs_flops": 1.1, "train_mem_per_image": 1.0}


@dataclass
class ModelSpec:
    """What to build: a registered name, or ``tv:<torchvision builder>`` (no weights)."""

    name: str
    task: str
    img_size: int
    num_classes: int
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def torchvision(self) -> bool:
        return self.name.startswith(TV_PREFIX)


def _lite_names() -> list[str]:
    from ..models import list_models

    return [n for n in list_models("bicsnet_lite")]


#: Named pairs: (model, baseline). Sizes are the paper's; classes COCO 80 / VOC 21 / ImageNet 1000.
PAIRS: dict[str, tuple[ModelSpec, ModelSpec]] = {
    "retinanet-48s": (
        ModelSpec("bicsnet_48s", "detection", 640, 80),
        ModelSpec("tv:retinanet_resnet50_fpn", "detection", 640, 80),
    ),
    "retinanet-48": (
        ModelSpec("bicsnet_48", "detection", 640, 80),
        ModelSpec("tv:retinanet_resnet50_fpn", "detection", 640, 80),
    ),
    "seg-48": (
        ModelSpec("bicsnet_48", "segmentation", 512, 21),
        ModelSpec("tv:deeplabv3_resnet50", "segmentation", 512, 21),
    ),
    "cls-48": (
        ModelSpec("bicsnet_48", "classification", 224, 1000),
        ModelSpec("tv:resnet50", "classification", 224, 1000),
    ),
}


def pair_names() -> list[str]:
    """Named pairs, with ``lite0``.. for every registered BiCSNet-lite model."""
    return list(PAIRS) + [n.replace("bicsnet_", "") for n in _lite_names()]


def pair_specs(name: str) -> tuple[ModelSpec, ModelSpec]:
    """The (model, baseline) specs of a named pair (copies; safe to edit)."""
    if name in PAIRS:
        a, b = PAIRS[name]
        return ModelSpec(**asdict(a)), ModelSpec(**asdict(b))
    lite = f"bicsnet_{name}"
    if name.startswith("lite") and lite in _lite_names():
        from ..models import default_input_size

        return (
            ModelSpec(lite, "detection", default_input_size(lite), 80),
            ModelSpec("tv:ssdlite320_mobilenet_v3_large", "detection", 320, 80),
        )
    raise ConfigError(f"unknown pair {name!r}; choose one of {', '.join(pair_names())}")


# --------------------------------------------------------------------------- building


def _build_torchvision(spec: ModelSpec, score_thresh: float | None) -> nn.Module:
    from torchvision.models import get_model, list_models

    name = spec.name[len(TV_PREFIX):]
    if name not in list_models():
        raise ConfigError(f"{spec.name}: torchvision has no model {name!r}")
    k, s = spec.num_classes, spec.img_size
    kw: dict[str, Any] = {"weights": None}
    if spec.task == "detection":
        kw["weights_backbone"] = None
        # SSD counts the background class; RetinaNet / FCOS do not.
        kw["num_classes"] = k + 1 if name.startswith("ssd") else k
        if not name.startswith("ssd"):  # SSD(lite) has a fixed input size of its own
            kw.update(min_size=s, max_size=s)
        if score_thresh is not None:
            kw["score_thresh"] = score_thresh
    elif spec.task == "segmentation":
        kw.update(weights_backbone=None, num_classes=k, aux_loss=False)
    else:
        kw["num_classes"] = k
    kw.update(spec.overrides)
    return get_model(name, **kw)


def build_model(spec: ModelSpec, score_thresh: float | None = None) -> nn.Module:
    """Build ``spec`` in eval mode with fresh (random) weights."""
    if spec.task not in BENCH_TASKS:
        raise ConfigError(f"bench supports tasks {', '.join(BENCH_TASKS)}, not {spec.task!r}")
    if spec.torchvision:
        return _build_torchvision(spec, score_thresh).eval()
    from ..models import create_model

    kw = dict(spec.overrides)
    if spec.task == "detection":
        kw.setdefault("img_size", spec.img_size)
        if score_thresh is not None:
            kw.setdefault("score_thresh", score_thresh)
    return create_model(spec.name, spec.task, spec.num_classes, **kw).eval()


def _network_call(model: nn.Module, spec: ModelSpec) -> Callable[[Tensor], Any]:
    if spec.task == "detection":
        return lambda x: model.head(list(model.backbone(x).values()))
    if spec.torchvision and spec.task == "segmentation":
        return lambda x: model(x)["out"]
    return model


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
    """Everything the benchmark runs for one model: inputs, network, end to end, training."""

    def __init__(self, spec: ModelSpec, model: nn.Module, device: torch.device, batch: int, train_batch: int, seed: int = 0):
        self.spec, self.model, self.device = spec, model.to(device).eval(), device
        s, k = spec.img_size, spec.num_classes
        g = torch.Generator().manual_seed(seed)
        # Network inputs are already pre-processed (normalised), as the FLOPs count them.
        self.x1 = torch.randn(1, 3, s, s, generator=g).to(device)
        self.xb = torch.randn(batch, 3, s, s, generator=g).to(device)
        self.batch, self.train_batch = batch, train_batch
        if spec.task == "detection":
            self.image = torch.randint(0, 256, (3, s * 3 // 4, s), dtype=torch.uint8, generator=g)
        elif spec.task == "segmentation":
            self.image = torch.randint(0, 256, (3, s * 3 // 4, s), dtype=torch.uint8, generator=g)
        else:  # resize the short side to 256/224 x S and centre-crop S, as classification_eval_transforms
            self.image = torch.randint(0, 256, (3, s * 8 // 7, s * 3 // 2), dtype=torch.uint8, generator=g)
        self._train_data = self._make_train_batch(g)
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

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
        spec, dev = self.spec, self.device
        with torch.inference_mode():
            img = self.image.to(dev)
            if spec.task == "detection":
                # The detector's own transform resizes the long side to S, normalises and pads.
                dets = self.model([img.float().div_(255)])
                return [{k: v.cpu() for k, v in d.items()} for d in dets]
            if spec.task == "segmentation":
                x = img.float().div_(255)[None]
                if spec.torchvision:
                    x = (x - self.mean) / self.std
                out = _network_call(self.model, spec)(x)
                return out.argmax(1).to(torch.uint8).cpu()
            from torchvision.transforms.v2 import functional as TF

            s = spec.img_size
            x = TF.center_crop(TF.resize(img, [s * 256 // 224], antialias=True), [s, s])
            x = x.float().div_(255)[None]
            if spec.torchvision:
                x = (x - self.mean) / self.std
            return self.model(x).softmax(-1).topk(5)[1].cpu()

    # ----- training
    def _make_train_batch(self, g: torch.Generator) -> Any:
        spec, b, s, k = self.spec, self.train_batch, self.spec.img_size, self.spec.num_classes
        images = torch.rand(b, 3, s, s, generator=g)
        if spec.task == "detection":
            targets = []
            for _ in range(b):
                xy = torch.rand(4, 2, generator=g) * s * 0.6
                wh = torch.rand(4, 2, generator=g) * s * 0.35 + 8
                boxes = torch.cat([xy, xy + wh], 1).clamp(max=s - 1)
                # 1..K-1 is valid for every detector (ours 1..K, RetinaNet < K, SSD 1..K).
                labels = torch.randint(1, max(2, k), (4,), generator=g)
                targets.append({"boxes": boxes, "labels": labels})
            return list(images), targets
        if spec.task == "segmentation":
            return images, torch.randint(0, k, (b, s, s), generator=g)
        return images, torch.randint(0, k, (b,), generator=g)

    def _train_inputs(self) -> Any:
        dev = self.device
        images, targets = self._train_data
        if self.spec.task == "detection":
            return [i.to(dev) for i in images], [{kk: v.to(dev) for kk, v in t.items()} for t in targets]
        return images.to(dev), targets.to(dev)

    def make_train_step(self) -> Callable[[], float]:
        """A closure running one SGD step on a training copy of the model."""
        import copy

        model = copy.deepcopy(self.model).train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
        spec = self.spec
        images, targets = self._train_inputs()

        def step() -> float:
            opt.zero_grad(set_to_none=True)
            if spec.task == "detection":
                loss = sum(model(images, targets).values())
            else:
                x = images
                if spec.torchvision:
                    x = (x - self.mean) / self.std
                out = model(x)
                out = out["out"] if isinstance(out, dict) else out
                loss = F.cross_entropy(out, targets)
            loss.backward()
            opt.step()
            return float(loss.detach())

        step.model = model  # type: ignore[attr-defined]
        return step


# --------------------------------------------------------------------------- timing and memory


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


_MALLOC_PINNED = False


def _pin_malloc_thresholds() -> None:
    """Make glibc map every allocation over 64 KiB with mmap (and unmap it on free).

    By default glibc raises its mmap threshold after large frees and keeps
    freed tensors in the heap, so RSS would depend on what ran before. Fixed
    thresholds make RSS track the live tensors. It slows allocation a little,
    so :func:`run_bench` measures memory after every timing.
    """
    global _MALLOC_PINNED
    if _MALLOC_PINNED:
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
        _MALLOC_PINNED = True


def _trim_heap() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


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
    _pin_malloc_thresholds()
    _trim_heap()
    base = _proc_status_kb("VmRSS")
    if base is None or not _reset_peak_rss():
        return None
    fn()
    peak = _proc_status_kb("VmHWM")
    return None if peak is None else round((peak - base) / 1024, 1)


# --------------------------------------------------------------------------- the benchmark


def _machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    info = {
        "device": str(device),
        "cpu": cpu,
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


def _onnx_latency(works: Sequence[Workload], warmup: int, iters: int) -> list[float | None]:
    """onnxruntime latency of each model's network-only graph (backbone + head raw outputs)."""
    import warnings

    from .export import NetworkOnly, OnnxModel, quiet_stdout

    runners: list[Callable[[], Any] | None] = []
    with tempfile.TemporaryDirectory(prefix="bicsnet-bench-onnx-") as tmp:
        for i, w in enumerate(works):
            path = Path(tmp) / f"m{i}.onnx"
            try:
                net = NetworkOnly(w.model.cpu(), w.spec.task).eval()
                x = w.x1.cpu()
                with warnings.catch_warnings(), torch.no_grad(), quiet_stdout():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(net, (x,), dynamo=True, verbose=False).save(str(path))
                ort = OnnxModel(path)
                runners.append(lambda ort=ort, x=x: ort(x))
            except Exception as e:  # noqa: BLE001 - report, do not abort the benchmark
                print(f"bench: ONNX export of {w.spec.name} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                runners.append(None)
            finally:
                w.model.to(w.device)
        live = [r for r in runners if r is not None]
        times = time_alternating(live, warmup, iters, torch.device("cpu")) if live else []
    it = iter(times)
    return [(_median_ms(next(it)) if r is not None else None) for r in runners]


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
    memory: bool = True,
    score_thresh: float | None = 0.0,
    pair: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure ``model`` (and ``baseline``) and return the result dict (``--json``'s content)."""
    device = torch.device(device)
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
                sub = ["backbone", "head"] if w.spec.task == "detection" else None
                fm = apply_fast_path(w.model, transforms, sub) if transforms else w.model
                fns.append(lambda w=w, fm=fm: w.network_fn(fm, cl, amp)(w.x1))
            ts = time_alternating(fns, max(warmup, 2 if "compile" in transforms else warmup), iters, device)
            for role, t in zip(roles, ts):
                ms = _median_ms(t)
                results[role].setdefault("fast", {})[label] = {"net_ms": ms, "gain": _ratio(results[role]["net_ms"], ms)}
    if onnx:
        say("onnxruntime network latency (batch 1)")
        for role, ms in zip(roles, _onnx_latency(works, warmup, iters)):
            results[role]["onnx_net_ms"] = ms

    if memory:  # last: it pins malloc's thresholds (see _pin_malloc_thresholds)
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
            "score_thresh": score_thresh, "fast": fast_opts, "onnx": onnx,
        },  # fmt: skip
        **results,
    }
    if baseline is not None:
        a, b = results["model"], results["baseline"]
        keys = ["gmacs", "params_m", "net_ms", "e2e_ms", "throughput_ips", "train_ips", "train_peak_mb", "train_mem_per_image_mb", "infer_peak_mb", "onnx_net_ms"]
        ratios = {k: _ratio(a.get(k), b.get(k)) for k in keys if k in a}
        for label in a.get("fast", {}):
            ratios[f"net_ms[{label}]"] = _ratio(a["fast"][label]["net_ms"], b["fast"][label]["net_ms"])
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
    ("onnx_net_ms", "onnxruntime latency, batch 1 (ms)", "{:.1f}"),
]


def _cell(v: Any, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def format_table(res: dict[str, Any]) -> str:
    """A Markdown table: metric, model, baseline, ratio; then the targets."""
    a, b = res["model"], res.get("baseline")
    m = res["machine"]
    s = res["settings"]
    title = f"{a['name']} ({a['task']}, {a['img_size']}px)" + (f" vs {b['name']} ({b['img_size']}px)" if b else "")
    lines = [
        f"## {res.get('pair') or title}",
        "",
        f"{title}; {m['device']} ({m['cpu']}, {m['threads']} threads), torch {m['torch']}, "
        f"load average {m.get('loadavg_1m', '-')} -> {m.get('loadavg_1m_end', '-')}; "
        f"median of {s['iters']} alternating runs after {s['warmup']} warm-up; batch {s['batch']}, train batch {s['train_batch']}",
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
    Path(path).write_text(json.dumps(res, indent=2) + "\n")
