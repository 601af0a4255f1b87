"""Where OpenVINO spends a network's time, by layer type and by kernel: two models side by side.

    # a trained detector, FP32 against its NNCF INT8 (as benchmarks/int8.py quantizes it)
    flock /tmp/bicsnet-bench.lock .venv/bin/python benchmarks/openvino_profile.py \
        --run runs/real/lite0-small --out benchmarks/results/openvino-profile-lite0-int8.json
    # a bench pair (random weights, as `bicsnet bench`), BiCSNet against its baseline, FP32
    flock /tmp/bicsnet-bench.lock .venv/bin/python benchmarks/openvino_profile.py \
        --pair seg-48 --out benchmarks/results/openvino-profile-seg-48.json

``--run``: exports the run's network to ONNX (``bicsnet.tools.export.export_checkpoint``),
converts it to OpenVINO and quantizes it with NNCF on the calibration images
exactly as ``benchmarks/int8.py`` does (``bicsnet.tools.quantize``). ``--pair``:
builds both networks of a ``bicsnet bench`` pair and converts each network-only
graph (``bicsnet.tools.runtimes.to_openvino``) at the pair's input size. Each
compiled model runs with OpenVINO's per-layer performance counters
(``PERF_COUNT``) at FP32 inference precision (``--precision default``: the
plugin's own, bf16 on CPUs with AVX-512 BF16 or AMX), ``--runs`` calls, and the script
prints the mean milliseconds per call by layer type and by the kernel OpenVINO
chose (its ``exec_type``: ``jit_avx2_I8`` is an INT8 kernel, ``brgconv_avx2_1x1_f32``
a float 1x1 convolution, ``ref_*`` a reference implementation), with each
model's multiply-adds. The counters add each layer's own time; their sum is
below the wall time of a call.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from bicsnet.io import atomic_write_json
from bicsnet.tools.export import OnnxDetector, export_checkpoint
from bicsnet.tools.quantize import calibration_inputs, images_from, quantize_openvino
from bicsnet.tools.runtimes import PRECISIONS, cpu_name
from bicsnet.tools.signal_stack import keep_signal_stack

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "strawberry"


def profile(compiled: Any, x: Any, runs: int) -> dict[str, dict[str, float]]:
    """Mean ms per call: ``{"by_type": {layer type: ms}, "by_kernel": {exec_type: ms}, "total": {"ms": sum}}``."""
    request = compiled.create_infer_request()
    for _ in range(3):  # warm-up: first calls allocate and pick kernels
        request.infer({0: x})
    by_type: dict[str, float] = defaultdict(float)
    by_kernel: dict[str, float] = defaultdict(float)
    for _ in range(runs):
        request.infer({0: x})
        for info in request.profiling_info:
            if info.status.name != "EXECUTED":
                continue  # fused into a neighbour or optimised out
            ms = info.real_time.total_seconds() * 1e3 / runs
            by_type[info.node_type] += ms
            by_kernel[info.exec_type] += ms
    ordered = lambda d: dict(sorted(((k, round(v, 3)) for k, v in d.items()), key=lambda kv: -kv[1]))  # noqa: E731
    return {"by_type": ordered(by_type), "by_kernel": ordered(by_kernel), "total": {"ms": round(sum(by_type.values()), 3)}}


def _trained_pair(run: Path, args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """``{"FP32": model, "INT8": model}`` of a trained detector, and a calibration input."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="bicsnet-openvino-profile-") as tmp:
        onnx_path = Path(tmp) / "net.onnx"
        export_checkpoint(run / "model.safetensors", onnx_path)
        meta = OnnxDetector(onnx_path, threads=args.threads).net.meta
        calib = calibration_inputs("detection", images_from(args.calib_images), int(meta["img_size"]), meta, args.calib)
        fp32 = ov.convert_model(str(onnx_path))
        return {"FP32": fp32, "INT8": quantize_openvino(fp32, calib)}, calib[0]


def _bench_pair(name: str) -> tuple[dict[str, Any], Any, dict[str, float]]:
    """The two networks of ``bicsnet bench --pair name`` as OpenVINO models, an input, and their GMACs."""
    import torch

    from bicsnet.models.wrappers import NetworkOnly
    from bicsnet.tasks import TASKS
    from bicsnet.tools.bench import build_model, model_gmacs, pair_specs
    from bicsnet.tools.runtimes import to_openvino

    models, gmacs = {}, {}
    for spec in pair_specs(name):
        torch.manual_seed(0)
        net = NetworkOnly(build_model(spec, 0.05), TASKS[spec.task].network).eval()
        x = torch.rand(1, 3, spec.img_size, spec.img_size)
        models[spec.name] = to_openvino(net, x)
        gmacs[spec.name] = round(model_gmacs(spec)[0], 3)
    return models, x.numpy(), gmacs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", type=Path, help="a trained detector's run directory (model.safetensors): FP32 against INT8")
    what.add_argument("--pair", help="a `bicsnet bench` pair (e.g. seg-48, cls-48): BiCSNet against its baseline, FP32")
    p.add_argument("--calib-images", type=Path, default=DATA / "train", help="--run: calibration images, a folder or a COCO file")
    p.add_argument("--calib", type=int, default=100, help="--run: calibration images used (the first N, sorted)")
    p.add_argument("--threads", type=int, default=2, help="OpenVINO inference threads")
    p.add_argument("--runs", type=int, default=30, help="profiled calls per model")
    p.add_argument("--precision", choices=PRECISIONS, default="f32",
                   help="OpenVINO inference precision: f32, or the plugin's default (bf16 where the CPU has it)")
    p.add_argument("--top", type=int, default=10, help="rows printed per table")
    p.add_argument("--out", type=Path, default=None, help="write the profile as JSON here")
    args = p.parse_args(argv)

    import openvino as ov

    gmacs: dict[str, float] = {}
    if args.run is not None:
        models, x = _trained_pair(args.run, args)
    else:
        models, x, gmacs = _bench_pair(args.pair)
    config: dict[str, Any] = {"PERF_COUNT": "YES", "INFERENCE_NUM_THREADS": args.threads}
    if args.precision == "f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    with keep_signal_stack():  # OpenVINO's CPU plugin can leave a dangling signal stack behind
        core = ov.Core()
        profiles = {name: profile(core.compile_model(m, "CPU", config), x, args.runs) for name, m in models.items()}
    result: dict[str, Any] = {
        "what": str(args.run) if args.run is not None else f"pair {args.pair}",
        "cpu": cpu_name(), "threads": args.threads, "runs": args.runs, "precision": args.precision, "openvino": ov.__version__, "gmacs": gmacs,
        "profiles": profiles,
    }  # fmt: skip
    names = list(result["profiles"])
    for key in ("by_type", "by_kernel"):
        print(f"\n| {key.replace('_', ' ')} | " + " | ".join(f"{n} ms" for n in names) + " |")
        print("|---|" + "---:|" * len(names))
        rows = list(dict.fromkeys(k for n in names for k in result["profiles"][n][key]))[: args.top]
        for r in rows:
            print(f"| {r} | " + " | ".join(f"{result['profiles'][n][key].get(r, 0):.2f}" for n in names) + " |")
    print("| total (sum of layers) | " + " | ".join(f"{result['profiles'][n]['total']['ms']:.2f}" for n in names) + " |")
    if gmacs:
        print("| GMACs | " + " | ".join(f"{gmacs[n]:.2f}" for n in names) + " |")
    if args.out is not None:
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
