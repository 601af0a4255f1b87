#!/usr/bin/env bash
# The main job: install, then train + evaluate a BiCSNet detector on the
# built-in synthetic data and write metrics, a loss curve and pictures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec .venv/bin/bicsnet demo "$@"
