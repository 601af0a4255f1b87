"""Count multiply-adds and parameters of registered models into tests/data/model_table.json.

``--add`` counts the model x task pairs the table lacks (a new model) and keeps
every recorded row; ``--check`` prints the rows that differ from the table.
Counting is on the meta device at the table's input size (bicsnet.tools.flops).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import bicsnet
from bicsnet.tools.flops import count_params, model_macs

TABLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "model_table.json"


def count(name: str, task: str, size: int) -> dict[str, int]:
    spec = bicsnet.get_task(task)
    with torch.device("meta"):
        model = bicsnet.create_model(name, task, spec.default_classes, **({"img_size": size} if spec.uses_img_size else {}))
    return {"macs": int(model_macs(model, task, size)), "params": count_params(model)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--add", action="store_true", help="count the pairs the table lacks and write them")
    p.add_argument("--check", action="store_true", help="print the rows that differ from the table")
    args = p.parse_args()
    table = json.loads(TABLE.read_text())
    rows, size = table["rows"], table["img_size"]
    pairs = [f"{n}/{t}" for n in bicsnet.list_models() for t in bicsnet.get_entry(n).tasks]
    if args.add:
        new = {k: count(*k.split("/"), size) for k in pairs if k not in rows}
        rows.update(new)
        TABLE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        print(f"added {len(new)} row(s): {', '.join(new) or '-'}")
    if args.check:
        bad = [k for k in pairs if k in rows and count(*k.split("/"), size) != rows[k]]
        print("\n".join(bad) or "every recorded row matches")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
