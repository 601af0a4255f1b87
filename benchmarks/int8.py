"""INT8 post-training quantization of trained detectors: box AP and batch-1 network latency, FP32 vs INT8.

    flock /tmp/bicsnet-bench.lock .venv/bin/python benchmarks/int8.py \
        --run runs/real/48s-small --out benchmarks/results/int8.json

For each run directory (a trained RetinaNet's ``model.safetensors``): export the
network to ONNX (``bicsnet.tools.export.export_checkpoint``, static batch 1 at
the run's size), convert that graph to OpenVINO, quantize both to INT8
(``bicsnet.tools.quantize``: NNCF for OpenVINO, onnxruntime's static QDQ),
calibrating on the first ``--calib`` images of ``--calib-images`` (sorted), and
evaluate box AP / AP50 on ``--val-ann`` with bicsnet's COCO evaluation
(``bicsnet.metrics.coco_evaluation``) for the eager PyTorch model and the four
exported ones. The exported graphs run with the eager model's pre- and
post-processing: ``OnnxDetector``'s ``DetectionTransform`` (resize, normalise,
pad) and ``postprocess_detections`` (top-k, threshold, NMS outside the graph).

Latency is the network alone (the pre-processed (1, 3, H, W) input -> boxes,
scores), FP32 and INT8 of the same runtime taking turns call by call
(``bicsnet.tools.bench.time_alternating``), medians of ``--runs`` calls. The
output names the CPU and the matrix / dot-product extensions INT8 kernels use
(AVX-512 VNNI, AMX, AVX-VNNI); without any of them INT8 convolutions run on
AVX2 and gain much less.

OpenVINO converts the same ONNX graph onnxruntime runs (``openvino.convert_model``
on the file), so both runtimes start from one graph; it runs in
``bicsnet.tools.runtimes.OpenVinoModel`` with ``precision="f32"`` (no silent
bf16 on CPUs that have it: the layers NNCF leaves in float stay FP32), inside
``OnnxDetector`` for the detections.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from bicsnet.data import CocoDetection, detection_eval_transforms
from bicsnet.io import atomic_write_json
from bicsnet.metrics import coco_evaluation, detections_to_coco_results
from bicsnet.models import load_checkpoint_model
from bicsnet.tools.bench import time_alternating
from bicsnet.tools.export import OnnxDetector, OnnxModel, export_checkpoint
from bicsnet.tools.quantize import calibration_inputs, images_from, quantize_onnx, quantize_openvino
from bicsnet.tools.runtimes import OpenVinoModel, cpu_name, matrix_units, set_openvino_metadata

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "strawberry"


def cpu_description() -> dict[str, Any]:
    """The CPU's model name, its INT8 matrix / dot-product flags (avx512*, amx*, avx_vnni) and ``matrix_units()``."""
    name = cpu_name()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    f = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    all_flags = set(f.group(1).split()) if f else set()
    flags = sorted(x for x in all_flags if x.startswith(("avx512", "amx")) or x == "avx_vnni")
    return {"model": name, "matrix_flags": flags, "avx2": "avx2" in all_flags, "units": matrix_units()}


def evaluate(detector: Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]], dataset: CocoDetection) -> dict[str, float]:
    """Box AP / AP50 of ``detector`` on ``dataset``, one image at a time, as ``bicsnet eval`` scores them."""
    results: list[dict[str, Any]] = []
    with torch.no_grad():
        for i in range(len(dataset)):
            image, target = dataset[i]
            out = [{k: v.detach().cpu() for k, v in d.items()} for d in detector([image])]
            results.extend(detections_to_coco_results(out, [int(target["image_id"])], dataset.cat_ids))
    bbox = coco_evaluation(dataset.coco, results).metrics["bbox"]
    return {"AP": round(bbox["AP"], 4), "AP50": round(bbox["AP50"], 4), "detections": len(results)}


def latency(fp32: Callable[[], Any], int8: Callable[[], Any], warmup: int, runs: int) -> tuple[float, float]:
    """Median ms per call of ``fp32`` and ``int8``, alternating."""
    t32, t8 = time_alternating([fp32, int8], warmup, runs, torch.device("cpu"))
    return statistics.median(t32) * 1e3, statistics.median(t8) * 1e3


def bench_run(run: Path, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    import onnx
    import onnxruntime as ort
    import openvino as ov

    label = run.name
    model, meta = load_checkpoint_model(run, "cpu")
    dataset = CocoDetection(args.val_images or args.val_ann.parent, args.val_ann, detection_eval_transforms())
    rows: list[dict[str, Any]] = []

    def row(runtime: str, precision: str, ap: dict[str, float], ms: float | None = None, speedup: float | None = None) -> None:
        rows.append({"run": label, "runtime": runtime, "precision": precision, **ap, "latency_ms": ms, "speedup": speedup})
        print(f"  {label} {runtime} {precision}: {ap} {'' if ms is None else f'{ms:.1f} ms'}", file=sys.stderr, flush=True)

    t = time.perf_counter()
    row("PyTorch (eager)", "FP32", evaluate(model, dataset))
    fp32_onnx = work / f"{label}.onnx"
    if not (args.work_dir and fp32_onnx.is_file()):  # --work-dir keeps the export for the next run
        export_checkpoint(run / "model.safetensors", fp32_onnx)
    # FP32 and INT8 sessions are timed in turns: no busy-waiting idle threads (OnnxModel's spinning).
    det32 = OnnxDetector(OnnxModel(fp32_onnx, args.threads, spinning=False))
    net_meta = det32.net.meta
    print(f"  exported in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    calib = calibration_inputs("detection", images_from(args.calib_images), int(net_meta["img_size"]), net_meta, args.calib)
    x = calib[0]

    # onnxruntime
    t = time.perf_counter()
    int8_onnx = work / f"{label}.int8.onnx"
    quantize_onnx(fp32_onnx, int8_onnx, calib)
    print(f"  onnxruntime INT8 in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    det8 = OnnxDetector(OnnxModel(int8_onnx, args.threads, spinning=False))
    n_q = sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(int8_onnx)).graph.node)
    s32, s8 = det32.net.session, det8.net.session
    feed = {det32.net.input_name: x}
    ms32, ms8 = latency(lambda: s32.run(None, feed), lambda: s8.run(None, feed), args.warmup, args.runs)
    row("onnxruntime " + ort.__version__, "FP32", evaluate(det32, dataset), ms32, 1.0)
    row("onnxruntime " + ort.__version__, "INT8", {**evaluate(det8, dataset), "quantize_ops": n_q}, ms8, ms32 / ms8)

    # OpenVINO: the same ONNX graph, converted; the detector's pre/post-processing is OnnxDetector's.
    t = time.perf_counter()
    ov32 = ov.convert_model(str(fp32_onnx))
    ov8 = quantize_openvino(ov32, calib)
    print(f"  OpenVINO INT8 (NNCF) in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    n_fq = sum(op.get_type_name() == "FakeQuantize" for op in ov8.get_ops())
    for m in (ov32, ov8):
        set_openvino_metadata(m, net_meta)  # the runner reads pre/post-processing settings from it
    net32 = OpenVinoModel(ov32, args.threads, precision="f32")
    net8 = OpenVinoModel(ov8, args.threads, precision="f32")
    r32, r8 = net32.request, net8.request
    ms32, ms8 = latency(lambda: r32.infer({0: x}), lambda: r8.infer({0: x}), args.warmup, args.runs)
    for net, precision, ms, extra in ((net32, "FP32", ms32, {}), (net8, "INT8", ms8, {"fake_quantize_ops": n_fq})):
        row("OpenVINO " + ov.__version__.split("-")[0], precision, {**evaluate(OnnxDetector(net), dataset), **extra}, ms, ms32 / ms)
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| run | runtime | precision | box AP | AP50 | latency ms | speed-up vs FP32 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = "" if r["latency_ms"] is None else f"{r['latency_ms']:.1f}"
        sp = "" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        lines.append(f"| {r['run']} | {r['runtime']} | {r['precision']} | {r['AP']:.4f} | {r['AP50']:.4f} | {ms} | {sp} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", type=Path, nargs="+", default=["runs/real/48s-small"], help="trained detector run directories")
    p.add_argument("--val-ann", type=Path, default=DATA / "valid" / "_annotations.coco.json", help="COCO file to evaluate on")
    p.add_argument("--val-images", type=Path, default=None, help="its image folder; None: the COCO file's folder")
    p.add_argument("--calib-images", type=Path, default=DATA / "train", help="calibration images: a folder or a COCO file")
    p.add_argument("--calib", type=int, default=100, help="calibration images used (the first N, sorted)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of both runtimes")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per model first")
    p.add_argument("--runs", type=int, default=30, help="timed calls per model (medians)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here; None: print only")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="keep the exported files here and reuse an FP32 export found there; None: a temporary folder")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.run = [Path(r) for r in args.run]
    runs = [r for r in args.run if (r / "model.safetensors").is_file()]
    for r in args.run:
        if r not in runs:
            print(f"skipping {r}: no model.safetensors", file=sys.stderr)
    cpu = cpu_description()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bicsnet-int8-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for r in runs:
            rows.extend(bench_run(r, args, work))
    flags = ", ".join(cpu["matrix_flags"]) or ("none (AVX2 only)" if cpu["avx2"] else "none")
    print(f"CPU: {cpu['model']}; INT8 matrix units / flags: {flags}; {args.threads} threads; "
          f"{args.calib} calibration images; latency: network only, batch 1, median of {args.runs}\n")
    print(markdown(rows))
    if args.out is not None:
        # Paths relative to the working directory (the repository root), as the commands give them.
        settings = {k: os.path.relpath(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        settings["run"] = [str(r) for r in args.run]
        atomic_write_json(args.out, {"cpu": cpu, "settings": settings, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
