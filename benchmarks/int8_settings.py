"""Which NNCF settings keep box AP: OpenVINO INT8 of a trained detector under each activation-range estimator, with and without bias correction.

    flock /tmp/bicsnet-bench.lock .venv/bin/python benchmarks/int8_settings.py \
        --run runs/real/48s-small --out benchmarks/results/int8-settings-48s.json

For one run directory (a trained RetinaNet's ``model.safetensors``): export the
network to ONNX and convert it to OpenVINO as ``benchmarks/int8.py`` does, then
quantize it with ``bicsnet.tools.quantize.quantize_openvino`` once per
combination of ``ranges`` (``histogram``, the default; ``minmax``;
``nncf_default``, NNCF's own choice) and ``bias_correction`` (off, the default;
NNCF's fast bias correction), all calibrated on the same images. Each INT8
model's box AP / AP50 is evaluated on every split of ``--splits``
(``strawberry/<split>/_annotations.coco.json``, bicsnet's COCO evaluation, the
eager model's pre- and post-processing), beside the FP32 model's; its network
latency is timed against FP32 in turns (medians of ``--runs``), at f32 inference
precision as in ``int8.py``.

The training split is what the model was fitted and calibrated on, so its AP
loss is not a held-out figure; it is given because it is measured on 117 images
against the 11 of ``valid`` and 6 of ``test``, where one box moves AP visibly.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8 import DATA, cpu_description, evaluate, latency  # noqa: E402  (benchmarks/int8.py)

from bicsnet.data import CocoDetection, detection_eval_transforms  # noqa: E402
from bicsnet.io import atomic_write_json  # noqa: E402
from bicsnet.tools.export import OnnxDetector, OnnxModel, export_checkpoint  # noqa: E402
from bicsnet.tools.quantize import ACTIVATION_RANGES, calibration_inputs, images_from, quantize_openvino  # noqa: E402
from bicsnet.tools.runtimes import OpenVinoModel, set_openvino_metadata  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("runs/real/48s-small"), help="trained detector run directory")
    p.add_argument("--data", type=Path, default=DATA, help="COCO dataset root with one folder per split")
    p.add_argument("--splits", nargs="+", default=["valid", "test", "train"], help="splits to evaluate box AP on")
    p.add_argument("--calib-images", type=Path, default=DATA / "train", help="calibration images: a folder or a COCO file")
    p.add_argument("--calib", type=int, default=100, help="calibration images used (the first N, sorted)")
    p.add_argument("--ranges", nargs="+", default=list(ACTIVATION_RANGES), choices=list(ACTIVATION_RANGES))
    p.add_argument("--threads", type=int, default=2, help="OpenVINO inference threads")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per model first")
    p.add_argument("--runs", type=int, default=20, help="timed calls per model (medians)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (args.run / "model.safetensors").is_file():
        p.error(f"{args.run}: no model.safetensors")

    import openvino as ov

    splits = {s: CocoDetection(args.data / s, args.data / s / "_annotations.coco.json", detection_eval_transforms()) for s in args.splits}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bicsnet-int8-settings-") as tmp:
        onnx_path = Path(tmp) / "net.onnx"
        export_checkpoint(args.run / "model.safetensors", onnx_path)
        meta = OnnxModel(onnx_path, args.threads, spinning=False).meta
        calib = calibration_inputs("detection", images_from(args.calib_images), int(meta["img_size"]), meta, args.calib)
        fp32 = ov.convert_model(str(onnx_path))
        set_openvino_metadata(fp32, meta)
        net32 = OpenVinoModel(fp32, args.threads, precision="f32")
        rows.append({"ranges": None, "bias_correction": None, **{s: evaluate(OnnxDetector(net32), d) for s, d in splits.items()}})
        print(f"FP32: {rows[-1]}", file=sys.stderr, flush=True)
        x = calib[0]
        for ranges, bias_correction in itertools.product(args.ranges, (False, True)):
            t = time.perf_counter()
            int8 = quantize_openvino(fp32, calib, ranges=ranges, bias_correction=bias_correction)
            seconds = time.perf_counter() - t
            set_openvino_metadata(int8, meta)
            net8 = OpenVinoModel(int8, args.threads, precision="f32")
            r32, r8 = net32.request, net8.request
            ms32, ms8 = latency(lambda: r32.infer({0: x}), lambda: r8.infer({0: x}), args.warmup, args.runs)
            rows.append({
                "ranges": ranges, "bias_correction": bias_correction,
                **{s: evaluate(OnnxDetector(net8), d) for s, d in splits.items()},
                "fp32_ms": round(ms32, 2), "int8_ms": round(ms8, 2), "speedup": round(ms32 / ms8, 3), "quantize_s": round(seconds, 1),
            })  # fmt: skip
            print(f"INT8: {rows[-1]}", file=sys.stderr, flush=True)
    cpu = cpu_description()
    print(f"{args.run}; CPU: {cpu['model']} ({', '.join(cpu['matrix_flags']) or 'AVX2 only'}); {args.threads} threads; "
          f"{args.calib} calibration images; OpenVINO INT8 latency at f32 precision, median of {args.runs}\n")
    print("| ranges | bias correction | " + " | ".join(f"{s} AP / AP50" for s in args.splits) + " | speed-up vs FP32 |")
    print("|---|---|" + "---|" * len(args.splits) + "---:|")
    for r in rows:
        name = "FP32" if r["ranges"] is None else r["ranges"]
        bc = "" if r["bias_correction"] is None else ("fast" if r["bias_correction"] else "off")
        sp = "" if "speedup" not in r else f"{r['speedup']:.2f}x"
        print(f"| {name} | {bc} | " + " | ".join(f"{r[s]['AP']:.4f} / {r[s]['AP50']:.3f}" for s in args.splits) + f" | {sp} |")
    if args.out is not None:
        atomic_write_json(args.out, {"cpu": cpu, "run": str(args.run), "calib": args.calib, "threads": args.threads, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
