"""The table of ``benchmarks/gpu.sh``: batch-1 latency per runtime beside the paper's V100 figures.

    .venv/bin/python benchmarks/gpu_table.py DIR [pair ...]

Reads what ``gpu.sh`` left in DIR, all of it ``bicsnet bench --out`` JSON:

* ``<pair>.json``: ``--fast channels_last,fp16`` (``bf16`` on CPU): eager fp32
  network latency (``net_ms``), the ``channels_last+fp16`` fast-path latency and the
  training step (``train_ips``, the RetinaNet-48 line);
* ``<pair>-compile.json``: ``--fast compile`` (``torch.compile``, fp32);
* ``<pair>-tensorrt.json``: ``--runtime tensorrt`` (``runtimes.tensorrt.net_ms`` per model);
* ``skipped.tsv``: ``pair<TAB>column<TAB>reason`` for each column the script skipped.

and prints one Markdown table: per pair a row for the model, one for its
torchvision baseline and their ratio, with the paper's V100 latency
(:data:`PAPER_V100_MS`) where the paper gives one. Standard library only, so it
starts in a fraction of a second. No timing here: every number is ``bicsnet bench``'s.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: Pairs in the order the issue lists them (default when none are given and DIR has them).
ORDER = ("cls-48", "seg-48", "retinanet-48s", "retinanet-48")

#: The paper's batch-1 GPU latency on a Tesla V100 (Section V: "Latency is measured with
#: batch size 1 on the same machine equipped with a Tesla V100 GPU"), by (pair, role).
#: The paper gives no table figure for RetinaNet (only the plot of Fig. 6).
PAPER_V100_MS: dict[tuple[str, str], tuple[float, str]] = {
    ("cls-48", "model"): (2.5, "Table VI, BiCSNet-48, ImageNet 224"),
    ("cls-48", "baseline"): (2.9, "Table VI, ResNet-50"),
    ("seg-48", "model"): (16.0, "Table V, BiCSNet-48 + DeepLabv3 head, PASCAL VOC"),
    ("seg-48", "baseline"): (72.0, "Table V, R50-D + DeepLabv3 (dilated ResNet-50)"),
}

#: The pair whose training images/s the issue asks for (RetinaNet-48 at 640).
TRAIN_PAIR = "retinanet-48"

ROLES = ("model", "baseline")


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _half_label(res: dict[str, Any]) -> str | None:
    """The fast-path label of channels_last with half precision (``channels_last+fp16`` or ``+bf16``)."""
    labels = res.get("model", {}).get("fast", {})
    return next((k for k in ("channels_last+fp16", "channels_last+bf16") if k in labels), None)


def tensorrt_ms(res: dict[str, Any] | None, role: str) -> float | None:
    """Network latency (ms) on TensorRT from a ``bench --runtime tensorrt`` result (``role.runtimes.tensorrt.net_ms``).

    ``None`` when the result is absent or the runtime did not run that model (bench reports a failed conversion as ``None``).
    """
    if res is None:
        return None
    v = res.get(role, {}).get("runtimes", {}).get("tensorrt", {}).get("net_ms")
    return None if v is None else float(v)


def _skipped(directory: Path) -> list[tuple[str, str, str]]:
    path = directory / "skipped.tsv"
    if not path.is_file():
        return []
    rows = [line.split("\t", 2) for line in path.read_text().splitlines() if line.strip()]
    return [(r[0], r[1], r[2] if len(r) > 2 else "") for r in rows if len(r) >= 2]


def _overrides(directory: Path, pair: str) -> list[str]:
    """What a pair's eager run changed from the paper's networks: ``--set`` / ``--baseline-set`` overrides."""
    res = _load(directory / f"{pair}.json") or {}
    return [
        f"{res[role]['name']} " + " ".join(f"{k}={v}" for k, v in res[role]["overrides"].items())
        for role in ROLES if res.get(role, {}).get("overrides")
    ]  # fmt: skip


def _cell(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def pair_rows(directory: Path, pair: str) -> list[dict[str, Any]]:
    """One dict per role (model, baseline) of ``pair``: names and the latency of every column (ms, or None).

    Raises:
        FileNotFoundError: ``DIR/<pair>.json`` (the eager run) is missing.
    """
    main = _load(directory / f"{pair}.json")
    if main is None:
        raise FileNotFoundError(f"{directory / (pair + '.json')}: no bicsnet bench result for {pair}")
    comp = _load(directory / f"{pair}-compile.json")
    trt = _load(directory / f"{pair}-tensorrt.json")
    half = _half_label(main)
    rows = []
    for role in ROLES:
        if role not in main:
            continue
        r = main[role]
        rows.append({
            "role": role,
            "name": r["name"],
            "img_size": r["img_size"],
            "eager": r.get("net_ms"),
            "half": r.get("fast", {}).get(half, {}).get("net_ms") if half else None,
            "compile": (comp or {}).get(role, {}).get("fast", {}).get("compile", {}).get("net_ms"),
            "tensorrt": tensorrt_ms(trt, role),
            "paper": PAPER_V100_MS.get((pair, role), (None, ""))[0],
        })  # fmt: skip
    return rows


COLUMNS = ("eager", "half", "compile", "tensorrt", "paper")


def format_table(directory: Path, pairs: list[str]) -> str:
    """The Markdown table (and notes) for ``pairs`` from the results in ``directory``.

    Raises:
        FileNotFoundError: a pair's eager result is missing.
    """
    first = _load(directory / f"{pairs[0]}.json") or {}
    m, s = first.get("machine", {}), first.get("settings", {})
    half = "fp16" if _half_label(first) in (None, "channels_last+fp16") else "bf16"
    where = m.get("gpu") or m.get("cpu", "?")
    lines = [
        f"## Batch-1 network latency (ms), {m.get('device', '?')} ({where}), torch {m.get('torch', '?')}",
        "",
        f"Medians of {s.get('iters', '?')} alternating runs after {s.get('warmup', '?')} warm-up; "
        "backbone + head on a 1 x 3 x S x S tensor, random weights; ratio = BiCSNet / baseline.",
        "",
        f"| pair | network @S | eager fp32 | channels_last + {half} | compiled (fp32) | TensorRT | paper V100 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for pair in pairs:
        rows = pair_rows(directory, pair)
        for r in rows:
            cells = " | ".join(_cell(r[c], 1 if c == "paper" else 2) for c in COLUMNS)
            lines.append(f"| {pair} | {r['name']} @{r['img_size']} | {cells} |")
        if len(rows) == 2:
            a, b = rows
            cells = " | ".join(_cell(_ratio(a[c], b[c]), 3) for c in COLUMNS)
            lines.append(f"| {pair} | ratio | {cells} |")
    train = _load(directory / f"{TRAIN_PAIR}.json")
    if TRAIN_PAIR in pairs and train is not None:
        a, b = train["model"], train.get("baseline")
        tb = train["settings"]["train_batch"]
        text = f"{a['name']} {_cell(a.get('train_ips'))} img/s"
        if b:
            text += f", {b['name']} {_cell(b.get('train_ips'))} img/s (ratio {_cell(_ratio(a.get('train_ips'), b.get('train_ips')), 3)})"
        lines += ["", f"Training, RetinaNet-48 @{a['img_size']} (fp32 SGD step, batch {tb}): {text}."]
    changed = sorted({r for p in pairs for r in _overrides(directory, p)})
    if changed:
        lines += ["", "Not the paper's networks (so not comparable with its figures): " + "; ".join(changed) + "."]
    notes = [f"{'all pairs' if p == '*' else p} {c}: {why}" for p, c, why in _skipped(directory) if p in pairs or p == "*"]
    if notes:
        lines += ["", "Skipped:"] + [f"- {n}" for n in notes]
    sources = sorted({src for (p, _), (_, src) in PAPER_V100_MS.items() if p in pairs})
    if sources:
        lines += ["", "Paper V100 figures: " + "; ".join(sources) + "."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``gpu_table.py DIR [pair ...]``: print the table; exit 2 with one line when DIR lacks a result."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: gpu_table.py DIR [pair ...]  (the table of benchmarks/gpu.sh's results in DIR)")
        return 0 if argv else 2
    directory = Path(argv[0])
    pairs = argv[1:] or [p for p in ORDER if (directory / f"{p}.json").is_file()]
    if not pairs:
        print(f"gpu_table: {directory}: no bicsnet bench results (run benchmarks/gpu.sh)", file=sys.stderr)
        return 2
    try:
        print(format_table(directory, pairs))
    except FileNotFoundError as e:
        print(f"gpu_table: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
