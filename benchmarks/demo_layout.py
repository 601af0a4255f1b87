"""The demo's training step in NCHW against channels-last, in float32 and bf16 autocast: rounding and speed.

    .venv/bin/python benchmarks/demo_layout.py [--steps 30] [--no-speed] [--out FILE]

Why ``bicsnet demo``'s bf16 preset (``DEMO_PRESETS["cpu-bf16"]``) trains
channels-last and its float32 preset does not (``benchmarks/demo.md``). On the
demo's detector (``bicsnet_48_tiny`` RetinaNet, 6 classes, 256 px) and one batch of
8 synthetic training images (``bicsnet.data.synthetic``, the demo's generator and
training transforms, seed 0), freshly initialised:

1. **Rounding**: every parameter's gradient of the summed loss in four settings
   (NCHW / channels-last, float32 / bf16 autocast), each against the same
   computation in float64 NCHW: ``|g - g64| / |g64|`` per parameter tensor, then the
   median, 90th percentile and maximum over the tensors. PyTorch's CPU batch norm
   sums channels-last statistics less accurately (``docs/training.md``); the table
   says how that error compares with bf16 autocast's own.
2. **Speed** (skipped with ``--no-speed``): the training step (forward, loss,
   backward, SGD) of two copies of the model, one NCHW and one channels-last,
   taking turns step by step on the same batches, medians after 3 warm-up steps;
   in float32 and in bf16 autocast.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bicsnet.data.spec import DataSpec
from bicsnet.engine.host_memory import keep_freed_memory
from bicsnet.engine.trainer import cpu_bf16_units
from bicsnet.io import atomic_write_json
from bicsnet.models.factory import create_model
from bicsnet.tasks import get_task
from bicsnet.tools.runtimes import cpu_name, matrix_units

IMG_SIZE, BATCH = 256, 8


def demo_batches(root: Path, count: int) -> list[tuple[list[torch.Tensor], list[dict]]]:
    """``count`` batches of the demo's synthetic training images after its training transforms."""
    spec = DataSpec(synth_root=str(root), synth_train=BATCH * count, synth_val=2, synth_size=IMG_SIZE)
    td = get_task("detection").load_data(spec, IMG_SIZE, train=True)
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(td.train, batch_size=BATCH, shuffle=False, collate_fn=td.collate)
    return [(list(images), list(targets)) for images, targets in loader]


def _cast(batch: tuple[list[torch.Tensor], list[dict]], dtype: torch.dtype, channels_last: bool) -> tuple[list, list]:
    images, targets = batch
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ims = [x.to(dtype)[None].contiguous(memory_format=fmt)[0] for x in images]
    tgs = [{**t, "boxes": t["boxes"].to(dtype)} for t in targets]
    return ims, tgs


def gradients(model: torch.nn.Module, batch: tuple, dtype: torch.dtype, channels_last: bool, bf16: bool) -> dict[str, torch.Tensor]:
    """Every parameter's gradient of the summed training loss, in float64 (one step, no update)."""
    m = copy.deepcopy(model).to(dtype)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    m.train()
    images, targets = _cast(batch, dtype, channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = sum(m(images, targets).values())
    loss.backward()
    return {n: p.grad.double() for n, p in m.named_parameters() if p.grad is not None}


def rounding_table(model: torch.nn.Module, batch: tuple) -> list[dict]:
    ref = gradients(model, batch, torch.float64, False, False)
    names = [n for n, g in ref.items() if g.norm() > 1e-6]
    rows = []
    for label, cl, bf16 in [("float32 NCHW", False, False), ("float32 channels-last", True, False),
                            ("bf16 autocast NCHW", False, True), ("bf16 autocast channels-last", True, True)]:
        g = gradients(model, batch, torch.float32, cl, bf16)
        errs = sorted(float((g[n] - ref[n]).norm() / ref[n].norm()) for n in names)
        rows.append({"setting": label, "tensors": len(errs), "median": statistics.median(errs),
                     "p90": errs[int(0.9 * (len(errs) - 1))], "max": errs[-1]})
    return rows


def step_speed(model: torch.nn.Module, batches: list, steps: int, bf16: bool) -> dict:
    """Median ms per training step of an NCHW and a channels-last copy of ``model``, alternating."""
    models = {"nchw": copy.deepcopy(model), "channels_last": copy.deepcopy(model).to(memory_format=torch.channels_last)}
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(steps + 3):
        order = ["nchw", "channels_last"] if i % 2 == 0 else ["channels_last", "nchw"]
        for k in order:
            images, targets = _cast(batches[i % len(batches)], torch.float32, k == "channels_last")
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = sum(models[k](images, targets).values())
            loss.backward()
            opts[k].step()
            opts[k].zero_grad(set_to_none=True)
            if i >= 3:
                times[k].append(time.perf_counter() - t0)
    a, b = (statistics.median(times[k]) * 1e3 for k in ("nchw", "channels_last"))
    return {"precision": "bf16 autocast" if bf16 else "float32", "steps": steps, "nchw_ms": a, "channels_last_ms": b,
            "ratio": b / a}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="timed steps per layout and precision (default: %(default)s)")
    ap.add_argument("--no-speed", action="store_true", help="the rounding table only")
    ap.add_argument("--out", help="also write the tables as JSON")
    args = ap.parse_args()
    keep_freed_memory()  # as the demo's trainer does on the CPU
    with tempfile.TemporaryDirectory() as tmp:
        batches = demo_batches(Path(tmp), 6)
    torch.manual_seed(0)
    model = create_model("bicsnet_48_tiny", "detection", num_classes=6)
    units = matrix_units()
    flags = ", ".join([k for k, v in units.items() if v is True] + units["amx"]) or "none"
    print(f"# {cpu_name()}; {flags}; bf16 autocast units: {', '.join(cpu_bf16_units()) or 'none'}; "
          f"{torch.get_num_threads()} threads; torch {torch.__version__}")
    rows = rounding_table(model, batches[0])
    print("\nGradient error against float64 NCHW, |g - g64| / |g64| over parameter tensors:\n")
    print("| setting | tensors | median | 90th percentile | max |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['setting']} | {r['tensors']} | {r['median']:.3g} | {r['p90']:.3g} | {r['max']:.3g} |")
    speed = []
    if not args.no_speed:
        speed = [step_speed(model, batches, args.steps, bf16) for bf16 in (False, True)]
        print(f"\nTraining step, batch {BATCH} at {IMG_SIZE} px, NCHW and channels-last alternating, medians of {args.steps}:\n")
        print("| precision | NCHW (ms) | channels-last (ms) | ratio |\n|---|---:|---:|---:|")
        for s in speed:
            print(f"| {s['precision']} | {s['nchw_ms']:.1f} | {s['channels_last_ms']:.1f} | {s['ratio']:.3f} |")
    if args.out:
        atomic_write_json(Path(args.out), {"cpu": cpu_name(), "matrix_units": units, "threads": torch.get_num_threads(),
                                           "rounding": rows, "speed": speed})


if __name__ == "__main__":
    main()
