"""``bicsnet export``: a trained checkpoint to ONNX (NMS outside the graph for detectors)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CheckpointError, ConfigError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (detectors: network + box decoding; NMS outside, see bicsnet.tools.export)",
        description="Exports backbone + head (detectors: decoded boxes and sigmoid scores for every anchor, "
        "before NMS; run bicsnet.tools.export.OnnxDetector or your runtime's NMS on them). Checks the graph in "
        "onnxruntime against eager PyTorch unless --no-check.",
    )
    p.add_argument("--checkpoint", required=True, help="model.safetensors written by 'bicsnet train' (or its run directory)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="output format (default: %(default)s)")
    p.add_argument("--out", required=True, help="output file (.onnx)")
    p.add_argument("--dynamic", action="store_true", help="symbolic batch, height and width (default: fixed to the example)")
    p.add_argument("--img-size", type=int, help="example/fixed input size (default: the checkpoint's)")
    p.add_argument("--batch", type=int, default=1, help="example/fixed batch size (default: %(default)s)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime vs PyTorch comparison")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max allowed |onnx - torch| / max(1, max |torch|) per output (default: %(default)s)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from ..tools.export import export_checkpoint

    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        raise CheckpointError(f"{ckpt}: no such checkpoint")
    if args.batch < 1:
        raise ConfigError("--batch must be >= 1")
    out = export_checkpoint(ckpt, args.out, dynamic=args.dynamic, img_size=args.img_size, batch=args.batch, opset=args.opset)
    print(f"wrote {out}")
    if not args.no_check:
        err = check_export(ckpt, out, args.tolerance)
        print(f"onnxruntime vs PyTorch: max abs difference {err:.2e} (tolerance {args.tolerance:g})")
    return 0


def check_export(checkpoint: Path, onnx_path: Path, tolerance: float) -> float:
    """Run both on one random input of the exported shape; raise if they differ beyond ``tolerance``."""
    import torch

    from ..tools.export import OnnxModel, export_module
    from ..models import load_checkpoint_model

    model, meta = load_checkpoint_model(checkpoint, "cpu")
    ort = OnnxModel(onnx_path)
    module, _, _ = export_module(model, meta["task"])
    h, w = ort.meta["input_size"]
    inp = ort.session.get_inputs()[0].shape
    b = inp[0] if isinstance(inp[0], int) else 2
    x = torch.rand(b, 3, int(h), int(w), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = module(x)
    got = ort(x)
    # Error relative to each output's scale (1 at least): boxes are in pixels, scores in [0, 1].
    err = max(float((g - r).abs().max()) / max(1.0, float(r.abs().max())) for g, r in zip(got, ref))
    if err > tolerance:
        raise ConfigError(f"{onnx_path}: onnxruntime differs from PyTorch by {err:.2e} (> {tolerance:g})")
    return err
