"""``bicsnet export``: a trained checkpoint to ONNX or OpenVINO IR (NMS outside the graph for detectors)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import BicsnetError, CheckpointError, ConfigError, DataError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    from ..tools.export import FORMATS
    from ..tools.quantize import DEFAULT_CALIBRATION_COUNT

    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX or OpenVINO (detectors: network + box decoding; NMS outside, see bicsnet.tools.export)",
        description="Exports backbone + head (detectors: decoded boxes and sigmoid scores for every anchor, "
        "before NMS; run bicsnet.tools.runtimes.load_exported or your runtime's NMS on them). Checks the export "
        "(onnxruntime, or OpenVINO in f32) against eager PyTorch unless --no-check.",
    )
    p.add_argument("--checkpoint", required=True, help="model.safetensors written by 'bicsnet train' (or its run directory)")
    p.add_argument("--format", default="onnx", choices=list(FORMATS),
                   help="onnx (OUT.onnx), or openvino (OUT.xml + OUT.bin, FP32 weights) (default: %(default)s)")
    p.add_argument("--out", required=True, help="output file: .onnx, or .xml for --format openvino")
    p.add_argument("--dynamic", action="store_true", help="symbolic batch, height and width (default: fixed to the example)")
    p.add_argument("--img-size", type=int, help="example/fixed input size (default: the checkpoint's)")
    p.add_argument("--batch", type=int, default=1, help="example/fixed batch size (default: %(default)s)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--no-simplify", action="store_true",
                   help="do not simplify the ONNX graph with onnxslim (default: simplify when onnxslim is installed)")
    p.add_argument("--deploy", action="store_true",
                   help="export the deploy-time re-parameterised model, bicsnet.deploy (default: off, the trained model as is)")
    p.add_argument("--int8", action="store_true",
                   help="INT8 post-training quantization (NNCF for openvino, onnxruntime static for onnx); the check then "
                   "reports the max and mean relative difference instead of failing on --tolerance (default: off)")
    p.add_argument("--calib-images", help="calibration images for --int8: a folder or COCO JSON "
                   "(default: the training images in the checkpoint's run config.yaml)")
    p.add_argument("--calib-count", type=int, default=None,
                   help=f"calibration images used by --int8 (default: {DEFAULT_CALIBRATION_COUNT})")
    p.add_argument("--check-images", help="compare with PyTorch on these images (folder or COCO JSON; first 2) "
                   "instead of one random input (default: none, random input); --dynamic also checks a second size")
    p.add_argument("--no-check", action="store_true", help="skip the exported vs PyTorch comparison")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max allowed |export - torch| / max(1, max |torch|) per output (default: %(default)s)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from ..tools.export import check_export, export_checkpoint, remove_export
    from ..tools.quantize import DEFAULT_CALIBRATION_COUNT

    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        raise CheckpointError(f"{ckpt}: no such checkpoint")
    if args.batch < 1:
        raise ConfigError("--batch must be >= 1")
    if not args.int8:
        given = [flag for flag, value in (("--calib-images", args.calib_images), ("--calib-count", args.calib_count)) if value is not None]
        if given:  # calibration settings without --int8 would be silently ignored: a float export the user did not ask for
            verb, pronoun = ("applies", "it") if len(given) == 1 else ("apply", "them")
            raise ConfigError(f"{' and '.join(given)} only {verb} with --int8 (INT8 calibration); add --int8 or drop {pronoun}")
    calib_count = DEFAULT_CALIBRATION_COUNT if args.calib_count is None else args.calib_count
    if calib_count < 1:
        raise ConfigError("--calib-count must be >= 1")
    for flag, value in (("--check-images", args.check_images), ("--calib-images", args.calib_images)):
        if value is not None and not Path(value).exists():  # before minutes of exporting
            raise DataError(f"{flag} {value}: no such image folder or COCO file")
    out = export_checkpoint(
        ckpt, args.out, format=args.format, dynamic=args.dynamic, img_size=args.img_size, batch=args.batch,
        opset=args.opset, simplify=not args.no_simplify, deploy=args.deploy, int8=args.int8,
        calib_images=args.calib_images, calib_count=calib_count,
    )  # fmt: skip
    written = f"{out}" + (f" and {out.with_suffix('.bin')}" if args.format == "openvino" else "")
    if not args.no_check:
        runtime = "OpenVINO (f32)" if args.format == "openvino" else "onnxruntime"
        try:
            records = check_export(ckpt, out, args.tolerance, images=args.check_images, raise_on_mismatch=not args.int8)
        except BicsnetError:
            remove_export(out)  # an export that failed its check is not left behind to be shipped
            raise
        for r in records:
            size = f"{r['size'][0]}x{r['size'][1]}"
            if args.int8:
                print(f"{runtime} INT8 vs PyTorch at {size}: max abs difference {r['max_abs']:.3g}, mean relative difference {r['mean_rel']:.2%}")
            else:
                print(f"{runtime} vs PyTorch at {size}: max difference {r['err']:.2e} relative to max(1, max |PyTorch|) (tolerance {args.tolerance:g})")
    print(f"wrote {written}")
    return 0
