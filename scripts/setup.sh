#!/usr/bin/env bash
# Create .venv (if needed) and install bicsnet with its dependencies into it.
# torch comes from the package index as the build torchvision requires: the
# machine-local CPU-only torch wheel cannot load torchvision's compiled ops.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
extras=${1:-test}
# Quiet when already satisfied; the first run downloads torch (a few GB).
.venv/bin/python -m pip install --disable-pip-version-check -q -e ".[${extras}]"
.venv/bin/python - <<'PY'
import torch, torchvision
from torchvision.ops import nms
nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([1.0]), 0.5)
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}: ops load")
PY
