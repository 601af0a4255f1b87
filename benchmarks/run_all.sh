#!/usr/bin/env bash
# Regenerate benchmarks/results/*.json and *.md (the tables in benchmarks/README.md).
# Each pair holds the shared benchmark lock, so timings never overlap other timings.
# Usage: benchmarks/run_all.sh [pair ...]   (default: every pair below)
set -euo pipefail
cd "$(dirname "$0")/.."
BICSNET=${BICSNET:-.venv/bin/bicsnet}
LOCK=${LOCK:-/tmp/bicsnet-bench.lock}
COMMON=(--iters 5 --warmup 1 --batch 2 --train-batch 2 --train-iters 2 --fast fold,channels_last,compile)
pairs=("$@")
[ ${#pairs[@]} -eq 0 ] && pairs=(retinanet-48 retinanet-48s seg-48 cls-48 lite0 lite1 lite2 lite3 retinanet-48-head-none retinanet-48-gradckpt)
mkdir -p benchmarks/results
# Two OpenMP threads stall badly when anything else runs on a 2-core machine:
# wait (inside the lock, up to QUIET_WAIT seconds) for the 1-minute load to drop.
QUIET_LOAD=${QUIET_LOAD:-1.0}
QUIET_WAIT=${QUIET_WAIT:-600}
wait_quiet='for i in $(seq 1 '"$QUIET_WAIT"'); do awk -v t='"$QUIET_LOAD"' "{exit !(\$1 < t)}" /proc/loadavg && break; sleep 1; done'
for pair in "${pairs[@]}"; do
  args=(--pair "$pair" "${COMMON[@]}")
  case "$pair" in
    retinanet-48|cls-48) args+=(--onnx) ;;
    # The same pair with torchvision's head (no norm in the subnets) instead of our GN head.
    retinanet-48-head-none) args=(--pair retinanet-48 --set head_norm=none --iters 5 --warmup 1 --batch 2 --train-batch 2 --train-iters 2) ;;
    # The same pair training with the fusions recomputed in backward (BiCSNet.set_grad_checkpointing).
    retinanet-48-gradckpt) args=(--pair retinanet-48 --set grad_checkpointing=true --iters 3 --warmup 1 --batch 2 --train-batch 2 --train-iters 2) ;;
  esac
  # Retry once when other work started during the run (load average at its end above RETRY_LOAD).
  for attempt in 1 2; do
    flock "$LOCK" bash -c "$wait_quiet; exec \"\$@\"" _ "$BICSNET" bench "${args[@]}" \
      --out "benchmarks/results/$pair.json" > "benchmarks/results/$pair.md"
    python3 -c 'import json,sys; sys.exit(json.load(open(sys.argv[1]))["machine"].get("loadavg_1m_end", 0) > float(sys.argv[2]))' \
      "benchmarks/results/$pair.json" "${RETRY_LOAD:-2.0}" && break
    echo "$pair: machine got busy during the run; retrying" >&2
  done
  cat "benchmarks/results/$pair.md"
done
