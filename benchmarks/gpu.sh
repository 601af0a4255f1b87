#!/usr/bin/env bash
# Batch-1 latency on one GPU beside the paper's V100 figures (issue #13), and RetinaNet-48 training img/s.
#
# Usage: bash benchmarks/gpu.sh [--device cuda|cpu] [--quick] [--no-compile] [--no-tensorrt] [--out DIR] [pair ...]
#   --device       cuda (default) or cpu; on cpu the half-precision column is bf16 (fp16 autocast needs CUDA)
#   --quick        tiny models at 64 px, 1 timed run, no memory, no compile: a smoke test (default: off)
#   --no-compile   skip the torch.compile column (default: measured, except with --quick)
#   --no-tensorrt  skip the TensorRT column (default: measured where bench has --runtime tensorrt and CUDA is there)
#   --out DIR      where the JSON results, per-call tables and table.md go (default: benchmarks/results/gpu)
#   pair ...       bicsnet bench pairs (default: cls-48 seg-48 retinanet-48s retinanet-48)
# Environment: BICSNET (default .venv/bin/bicsnet), PYTHON (default .venv/bin/python),
#   LOCK (default unset: set it, e.g. /tmp/bicsnet-bench.lock, to hold that lock around each timing on a shared machine).
#
# Every number comes from `bicsnet bench` (alternating model/baseline runs after warm-up, medians,
# torch.cuda.synchronize around each timed call); this script only chooses the calls, and
# benchmarks/gpu_table.py prints their JSON as one table. Per pair it runs, each in its own process:
#   1. --fast channels_last,fp16: eager fp32, channels_last + fp16 autocast (also each alone), end to end,
#      batch-8 throughput, training step (RetinaNet-48: batch 8 at 640), CUDA peak memory;
#   2. --fast compile: torch.compile (inductor, frozen weights), fp32;
#   3. --runtime tensorrt, when this bench has that option: the same network in TensorRT.
# A failing compile or TensorRT call is recorded in DIR/skipped.tsv and the script goes on; a failing
# eager call makes the script exit 1 at the end (after the other pairs), 2 when no pair was measured.
#
# Time budget on an H200-class GPU (estimates; no GPU was lent yet to measure them; the first run
# fills torch inductor's on-disk cache, later runs compile faster):
#   process start (import torch, CUDA context, building both models, FLOPs count): ~10 s per call, 12 calls: ~2 min
#   1. eager + channels_last/fp16: 50 timed runs x ~3-20 ms x 6 variants per model: ~10 s per pair: ~0.7 min
#   2. compile: ~30 s for a BiCSNet model, ~15 s for a ResNet-50 baseline (Triton kernels built in parallel
#      on the host's cores): ~45 s per pair: ~3 min with a cold cache
#   3. TensorRT: ONNX export + engine build, ~15 s per model: ~2 min
#   total ~7.7 min (< 8); --no-tensorrt or --no-compile when a run must be shorter.
set -euo pipefail
caller=$PWD  # --out is relative to where the script was called from
cd "$(dirname "$0")/.."
BICSNET=${BICSNET:-.venv/bin/bicsnet}
PYTHON=${PYTHON:-.venv/bin/python}

usage() { sed -n '4,13p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "gpu.sh: $*" >&2; exit 2; }

device=cuda quick=0 compile=1 tensorrt=1 out=$PWD/benchmarks/results/gpu
pairs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) [ $# -ge 2 ] || die "--device needs cuda or cpu"; device=$2; shift 2 ;;
    --device=*) device=${1#*=}; shift ;;
    --quick) quick=1; shift ;;
    --no-compile) compile=0; shift ;;
    --no-tensorrt) tensorrt=0; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$(cd "$caller" && realpath -m -- "$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) pairs+=("$1"); shift ;;
  esac
done
case "$device" in
  cuda) half=fp16 ;;
  cpu) half=bf16 ;;  # fp16 autocast is CUDA-only (bicsnet.tools.fastpath.autocast_context)
  *) die "--device must be cuda or cpu, not '$device'" ;;
esac
[ ${#pairs[@]} -eq 0 ] && pairs=(cls-48 seg-48 retinanet-48s retinanet-48)
command -v "$BICSNET" > /dev/null || die "no bicsnet at '$BICSNET' (install the package, or set BICSNET)"
mkdir -p "$out"
: > "$out/skipped.tsv"
# Results of an earlier run in DIR must not fill a column this run skips.
for pair in "${pairs[@]}"; do
  rm -f "$out/$pair".{json,md,log} "$out/$pair"-{compile,tensorrt}.{json,md,log}
done

lock() { if [ -n "${LOCK:-}" ]; then flock "$LOCK" "$@"; else "$@"; fi; }

# One bench call: JSON to $out/$name.json, its own table to $out/$name.md, stderr to $out/$name.log.
bench() {
  local name=$1; shift
  lock "$BICSNET" bench --device "$device" "$@" --out "$out/$name.json" > "$out/$name.md" 2> "$out/$name.log"
}
skip() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$out/skipped.tsv"; echo "gpu.sh: $1: $2 skipped: $3" >&2; }
last_error() { grep -v '^bench: ' "$1" | tail -n 1; }

if [ "$quick" = 1 ]; then
  # Tiny BiCSNet (the family's own tiny options, bicsnet.models.bicsnet.BICSNET_TINY) at 64 px, one timed run.
  # Train batch 2: BatchNorm needs more than one value per channel when training.
  common=(--img-size 64 --set width_mult=0.125 --set endpoint_channels=16 --iters 1 --warmup 0
          --batch 1 --train-batch 2 --train-iters 1 --no-memory)
  train_retina=()
  [ "$compile" = 1 ] && skip "*" compile "--quick"
  compile=0
else
  common=(--iters 50 --warmup 10 --batch 8 --train-batch 2 --train-iters 3)
  # The issue's training figure: RetinaNet-48 at 640, a batch that keeps a GPU busy, 10 steps.
  train_retina=(--train-batch 8 --train-iters 10)
fi
# The optional columns time the network only: fewer side measurements.
side=(--no-memory --train-iters 1)

trt_reason=""
if [ "$tensorrt" = 0 ]; then
  trt_reason="--no-tensorrt"
elif [ "$device" != cuda ]; then
  trt_reason="TensorRT needs a CUDA device (--device $device)"
elif ! grep -q -- '--runtime' <<< "$("$BICSNET" bench --help 2>/dev/null || true)"; then
  trt_reason="this bicsnet bench has no --runtime option yet"
fi
[ -n "$trt_reason" ] && skip "*" tensorrt "$trt_reason"

status=0
for pair in "${pairs[@]}"; do
  extra=()
  [ "$pair" = retinanet-48 ] && extra=("${train_retina[@]}")
  echo "gpu.sh: $pair: eager fp32, channels_last + $half" >&2
  if ! bench "$pair" --pair "$pair" "${common[@]}" "${extra[@]}" --fast "channels_last,$half"; then
    echo "gpu.sh: $pair: bicsnet bench failed: $(last_error "$out/$pair.log")" >&2
    status=1
    continue
  fi
  if [ "$compile" = 1 ]; then
    echo "gpu.sh: $pair: torch.compile" >&2
    bench "$pair-compile" --pair "$pair" "${common[@]}" "${side[@]}" --fast compile \
      || skip "$pair" compile "$(last_error "$out/$pair-compile.log")"
  fi
  if [ -z "$trt_reason" ]; then
    echo "gpu.sh: $pair: TensorRT" >&2
    bench "$pair-tensorrt" --pair "$pair" "${common[@]}" "${side[@]}" --runtime tensorrt \
      || skip "$pair" tensorrt "$(last_error "$out/$pair-tensorrt.log")"
  fi
done

done_pairs=()
for pair in "${pairs[@]}"; do [ -f "$out/$pair.json" ] && done_pairs+=("$pair"); done
[ ${#done_pairs[@]} -gt 0 ] || die "no pair was measured (logs in $out)"
"$PYTHON" benchmarks/gpu_table.py "$out" "${done_pairs[@]}" > "$out/table.md"
cat "$out/table.md"
exit "$status"
