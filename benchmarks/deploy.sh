#!/usr/bin/env bash
# The deployment-speed figures of benchmarks/deploy.md: every pair at batch 1, eager against
# bicsnet.deploy (+ channels-last) in PyTorch and on OpenVINO, both sides alternating in one
# process; results in benchmarks/results/deploy-<pair>.json. About 25 minutes on 2 quiet cores.
#   bash benchmarks/deploy.sh [PAIR ...]   # default: cls-48 retinanet-48s seg-48 retinanet-48
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin/bicsnet
OUT=benchmarks/results
PAIRS=("$@")
[[ ${#PAIRS[@]} -eq 0 ]] && PAIRS=(cls-48 retinanet-48s seg-48 retinanet-48)
COMMON=(--fast deploy,channels_last --runtime openvino --no-memory --batch 1 --train-batch 2 --train-iters 1)
for pair in "${PAIRS[@]}"; do
  case $pair in
    # the RetinaNet pairs against the registered ResNet-50-FPN RetinaNet (torchvision's backbone + FPN in
    # bicsnet's RetinaNet), so both sides also run end to end on OpenVINO through the same exported graph
    retinanet-48s|retinanet-48)
      model=bicsnet_${pair#retinanet-}
      args=(--model "$model" --baseline retinanet_resnet50_fpn --task detection --img-size 640 --num-classes 80 --iters 7) ;;
    cls-48) args=(--pair cls-48 --iters 21) ;;
    *) args=(--pair "$pair" --iters 9) ;;
  esac
  echo "== $pair"
  "$BIN" bench "${args[@]}" "${COMMON[@]}" --out "$OUT/deploy-$pair.json"
done
