"""Write docs/models.md, the model cards, from the model registry.

Every registered model (``bicsnet.list_models()``) gets: what it is (the
registry's description), the tasks it builds, its default input size,
multiply-adds and parameters per task at that task's default input size and
class count (counted on the meta device, ``bicsnet.tools.flops``), and how it
was checked against the paper: the paper's figures beside ours
(``bicsnet.tools.flops.PAPER_ROWS``, what ``bicsnet info --paper`` prints), which
of them a test holds to a tolerance, and what else the tests check.

    .venv/bin/python scripts/models_md.py           # rewrite docs/models.md
    .venv/bin/python scripts/models_md.py --check   # exit 1 if it is out of date

Counting every model and task takes a minute or two on a small CPU;
``tests/test_project_files.py`` compares the registry's part of the page and a
few cheap counts, not the whole page.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import bicsnet
from bicsnet.io import atomic_write_text
from bicsnet.models import default_input_size, get_entry
from bicsnet.tools.flops import PAPER_ROWS, PaperRow, build_meta, count_params, model_macs

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "models.md"

#: Which paper tables a test holds our counts to, and how closely.
TESTED_TABLES = {
    "II": ("FLOPs within 5 %", "tests/test_models.py::test_flops_match_paper_tables"),
    "VI": ("FLOPs and params within 10 %", "tests/test_models.py::test_flops_match_paper_tables"),
    "VII": ("FLOPs and params within 10 %", "tests/test_lite.py::test_table_vii_within_10_percent"),
}
#: What the paper's tables measure, for the paper-check lines.
TABLE_NAMES = {
    "II": "RetinaNet on COCO", "III": "Mask R-CNN on COCO", "V": "DeepLabv3-style segmentation on VOC",
    "VI": "classification", "VII": "on-device detection on COCO", "IX": "bidirectional-architecture ablation",
}  # fmt: skip

_ABLATION = (
    "Table X reports only COCO AP for this variant (no FLOPs or params), so only its structure is checked: "
    "`tests/test_models.py` builds it and asserts that the switched-off part is absent (or the FPN present)."
)
_LITE = (
    "Table VII prints neither input sizes nor width multipliers: this model's scaling (`bicsnet.models.lite.LITE_SCALING`) "
    "is ours, searched so that FLOPs and params land on Table VII's totals (`docs/architecture.md`, \"BiCSNet-lite\")."
)
#: Table I's models: their scaling (d, gamma, omega) is printed from the registry's configuration.
TABLE_I = ("bicsnet_48s", "bicsnet_48", "bicsnet_48l", "bicsnet_94", "bicsnet_140")
#: What the counts cannot say, per model: its place in the paper and the tests that check it.
NOTES = {
    "bicsnet_48_fpn": _ABLATION,
    "bicsnet_48_no_gac": _ABLATION,
    "bicsnet_48_no_lrgac": _ABLATION,
    "bicsnet_48_no_sfm": _ABLATION,
    "bicsnet_48_no_skc": _ABLATION,
    "csnet_48": "`tests/test_models.py` asserts that no main-path edge of CSNet goes from a coarser to a finer level "
                "(unidirectional, as Section V-G1 describes).",
    "bicsnet_48_tiny": "Not a paper model: the BiCSNet-48 topology made narrow for CPU demos and tests; nothing to compare.",
    "bicsnet_lite0": _LITE,
    "bicsnet_lite1": _LITE,
    "bicsnet_lite2": _LITE,
    "bicsnet_lite3": _LITE,
    "resnet34": "torchvision's ResNet-34 without weights. Table VI lists ResNet-34 at 224 px: 3.7B FLOPs, 21.8M params "
                "(ImageNet); not asserted by a test.",
    "resnet50": "torchvision's ResNet-50 without weights. Table VI lists ResNet-50 at 224 px: 4.1B FLOPs, 25.6M params "
                "(ImageNet); `tests/test_cli.py::test_flops_counts_torchvision_baselines_like_targets` asserts 4.09 GMACs "
                "and 25.56M params here: the check that the counting convention (multiply-adds) is the paper's.",
    "retinanet_resnet50_fpn": "torchvision's ResNet-50-FPN in this package's RetinaNet, without weights. Table II lists "
                              "RetinaNet ResNet-50 at 640x640 with 96.8B FLOPs (34M params in Table IV); not asserted by a test.",
    "deeplabv3_resnet50": "torchvision's DeepLabv3-ResNet50 without weights. Table V's R50-D+DeepLabv3 row (92M params, "
                          "393B FLOPs, input size not given) is another configuration; not compared.",
}  # fmt: skip


def note(name: str) -> str:
    """What the counts cannot say about ``name``: its scaling, its place in the paper, the tests that check it."""
    if name in TABLE_I:
        c = get_entry(name).config
        return (f"Table I scaling here: input {default_input_size(name)} px, d {c.depth_repeat}, gamma {c.sfm_ratio:g}, "
                f"omega {c.width_mult:g}; `tests/test_models.py` asserts the input sizes, and d, gamma and omega are checked "
                "only through the FLOPs comparisons above.")  # fmt: skip
    return NOTES.get(name, "")


@dataclass
class Row:
    """One task of one model: input size, class count, multiply-adds (billions) and parameters (millions)."""

    task: str
    size: int
    classes: int | None
    gmacs: float
    params_m: float


@dataclass
class Card:
    """Everything docs/models.md says about one model."""

    name: str
    rows: list[Row] = field(default_factory=list)
    paper: list[str] = field(default_factory=list)


def task_setting(name: str, task: str) -> tuple[int, int | None]:
    """The input size and class count a task is counted at: the task table's defaults (``bicsnet.tasks``)."""
    spec = bicsnet.get_task(task)
    return spec.default_size(default_input_size(name)), spec.default_classes


def count(name: str, task: str, size: int, classes: int | None) -> Row:
    """Multiply-adds and parameters of ``name`` for ``task`` on one ``size`` x ``size`` image (meta device)."""
    spec = bicsnet.get_task(task)
    model = build_meta(name, task, classes, **({"img_size": size} if spec.uses_img_size else {}))
    return Row(task, size, classes, model_macs(model, task, size) / 1e9, count_params(model) / 1e6)


def paper_line(r: PaperRow, ours: Row) -> str:
    """One paper-check line: the paper's figure, ours, the difference, and whether a test holds it."""
    flops = f"FLOPs {r.flops_b:g}B, here {ours.gmacs:.2f} ({100 * (ours.gmacs / r.flops_b - 1):+.1f} %)"
    params = "" if r.params_m is None else f"; params {r.params_m:g}M, here {ours.params_m:.2f} ({100 * (ours.params_m / r.params_m - 1):+.1f} %)"
    if params and r.table == "II":
        params += " (the paper's params: Table IV)"
    tested = TESTED_TABLES.get(r.table)
    check = f"held to {tested[0]} by `{tested[1]}`" if tested else "shown by `bicsnet info --paper`, not asserted by a test"
    if r.table == "V":
        check += " (the paper gives no input size and these rows do not fit its other tables)"
    return (f"Table {r.table} ({TABLE_NAMES.get(r.table, r.task)}, {ours.size} px, {r.num_classes} classes): "
            f"{flops}{params}; {check}.")  # fmt: skip


def collect(name: str) -> Card:
    """Count every task of ``name`` and compare with the paper's rows for it."""
    card = Card(name, [count(name, task, *task_setting(name, task)) for task in get_entry(name).tasks])
    for r in PAPER_ROWS:
        if r.model != name:
            continue
        size = r.input_size or default_input_size(name)
        ours = next((row for row in card.rows if (row.task, row.size, row.classes) == (r.task, size, r.num_classes)), None)
        card.paper.append(paper_line(r, ours or count(name, r.task, size, r.num_classes)))
    return card


def describe(name: str) -> str:
    """The registry's part of a model's section (no counting): heading, description, tasks, input size."""
    entry = get_entry(name)
    return (
        f"## `{name}`\n\n{entry.description}.\n\n"
        f"Tasks: {', '.join(f'`{t}`' for t in entry.tasks)}. Default input size: {default_input_size(name)} px.\n"
    )


def table_line(row: Row) -> str:
    """A row of a model's count table."""
    classes = "-" if row.classes is None else str(row.classes)
    return f"| `{row.task}` | {row.size} | {classes} | {row.gmacs:.2f} | {row.params_m:.2f} |"


def section(card: Card) -> str:
    """A model's whole section."""
    lines = [describe(card.name), "| task | input (px) | classes | GMACs | params (M) |", "|---|---|---|---|---|"]
    lines += [table_line(row) for row in card.rows]
    lines.append("")
    checks = [c for c in (*card.paper, note(card.name)) if c] or ["Not in the paper's tables; nothing compared."]
    lines.append("Checked against the paper:\n")
    lines += [f"- {c}" for c in checks]
    return "\n".join(lines) + "\n"


def header() -> str:
    """What the page is and how its numbers are counted (from the task table)."""
    settings = []
    for name, spec in bicsnet.TASKS.items():
        size = f"{spec.input_size} px" if spec.input_size else "the model's input size"
        classes = f", {spec.default_classes} classes" if spec.default_classes else ""
        settings.append(f"`{name}` at {size}{classes}")
    return f"""# Models

<!-- Generated by scripts/models_md.py from the model registry; edit that script, not this page. -->

Every model `bicsnet.create_model` builds, with what it is, the tasks it builds,
its default input size (`--img-size`), its size and cost, and how it was checked
against the paper. `bicsnet info` lists the same models; `bicsnet flops --model NAME`
counts one at any size.

**Counting.** GMACs are billions of multiply-adds, the paper's "FLOPs" (Table III's
caption): `torch.utils.flop_counter` counts two per multiply-add, halved
(`bicsnet.tools.flops`). One image, square input, backbone plus the task's head;
pre-processing, anchor decoding and NMS are left out. Each task is counted at its
default input size and its paper dataset's class count: {"; ".join(settings)}.

**Checks common to every model.** `tests/test_model_table.py` holds the
multiply-adds and parameters of every model and task at 128 px to the values
recorded in `tests/data/model_table.json`, so any change to what a model computes
is caught (a regression check, not a paper check). `tests/test_models.py` runs
every BiCSNet-family model forward and backward at tiny width. The paper's
accuracy figures (COCO, ImageNet, VOC) are not reproduced here: the benchmarks
(`benchmarks/README.md`) train on the built-in synthetic data and small real sets.

| model | tasks | input (px) | backbone GMACs | backbone params (M) |
|---|---|---|---|---|
"""


def summary_line(card: Card) -> str:
    """The model's row in the summary table: its first task's counts where it has no backbone-only model."""
    row = next((r for r in card.rows if r.task == "backbone"), None)
    gmacs, params = (f"{row.gmacs:.2f}", f"{row.params_m:.2f}") if row else ("-", "-")
    tasks = ", ".join(get_entry(card.name).tasks)
    return f"| [`{card.name}`](#{card.name}) | {tasks} | {default_input_size(card.name)} | {gmacs} | {params} |"


def render(cards: list[Card]) -> str:
    """The whole page."""
    return header() + "\n".join(summary_line(c) for c in cards) + "\n\n" + "\n".join(section(c) for c in cards)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if docs/models.md differs from what would be written (default: write it)")
    args = p.parse_args(argv)
    text = render([collect(name) for name in bicsnet.list_models()])
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        print("docs/models.md is up to date" if current == text else "docs/models.md is out of date: run scripts/models_md.py")
        return 0 if current == text else 1
    atomic_write_text(OUT, text)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(bicsnet.list_models())} models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
