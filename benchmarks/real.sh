#!/usr/bin/env bash
# Real-data benchmarks of benchmarks/real.md: strawberry (COCO, Roboflow export) and
# Stanford Background (mask folder), from scratch, on the 2-core CPU.
#   bash benchmarks/real.sh [DATA_ROOT] [RUN]   # DATA_ROOT holds strawberry/ and stanford_background/
# RUN (optional) runs one of: 48s-small r50-small 48s-small-short seg48-short deeplab maskrcnn maskrcnn-4ep lite0-small
# Then: .venv/bin/python benchmarks/real_table.py runs/real
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
ONLY=${2:-}
S=$DATA/strawberry
B=$DATA/stanford_background
OUT=runs/real
BIN=.venv/bin/bicsnet
COCO=(--train-ann "$S/train/_annotations.coco.json" --train-images "$S/train"
      --val-ann "$S/valid/_annotations.coco.json" --val-images "$S/valid")
TEST=(--val-ann "$S/test/_annotations.coco.json" --val-images "$S/test")
SEG=(--task segmentation --images "$B/images" --masks "$B/labels" --ignore-index 15
     --train-split "$B/splits/train_backup.txt" --val-split "$B/splits/val_backup.txt"
     --class-names benchmarks/stanford_background_classes.txt)
COMMON=(--workers 1 --device cpu)

run() {  # run NAME ARGS...: train into $OUT/NAME unless it is done; detection runs are also evaluated on test/
  local name=$1; shift
  [[ -n "$ONLY" && "$ONLY" != "$name" ]] && return 0
  if [[ ! -f "$OUT/$name/metrics.json" ]]; then
    rm -rf "${OUT:?}/$name"
    mkdir -p "$OUT"
    # wall and CPU seconds of the whole command (loading, training, evaluations): real_table.py reads them
    /usr/bin/time -f "%e %U %S" -o "$OUT/$name.time" "$BIN" train "$@" "${COMMON[@]}" --out "$OUT/$name"
  fi
  if [[ " $* " != *" --task segmentation "* && ! -f "$OUT/$name/test/metrics.json" ]]; then
    "$BIN" eval --checkpoint "$OUT/$name" "${TEST[@]}" --workers 1 --device cpu --out "$OUT/$name/test"
  fi
}

# Strawberry detection: the small-data recipe (what `bicsnet train` picks for 117 images), 35 epochs
# (what BiCSNet-48S trains in ~30 CPU-minutes at 256 px) ...
run 48s-small --model bicsnet_48s "${COCO[@]}" --img-size 256 --epochs 35 --eval-every 5
# ... against torchvision's ResNet-50-FPN in the same RetinaNet, same recipe and epochs (12: what
# ResNet-50-FPN trains in ~25 CPU-minutes), and BiCSNet-48S at those 12 epochs.
run r50-small --model retinanet_resnet50_fpn "${COCO[@]}" --img-size 256 --epochs 12
run 48s-small-short --model bicsnet_48s "${COCO[@]}" --img-size 256 --epochs 12
# Stanford Background, 572 / 143 images: BiCSNet-48 against DeepLabv3-ResNet50, same recipe and
# epochs (1: what DeepLabv3-ResNet50 trains in ~30 CPU-minutes).
run seg48-short --model bicsnet_48 "${SEG[@]}" --img-size 256 --epochs 1
run deeplab --model deeplabv3_resnet50 "${SEG[@]}" --img-size 256 --epochs 1
# BiCSNet-48S Mask R-CNN (box and mask AP), same recipe, 256 px as the RetinaNet runs above;
# 1 epoch (about 5 quiet CPU-minutes at 0.41 img/s: what this session's time allowed).
run maskrcnn --task instance --model bicsnet_48s "${COCO[@]}" --img-size 256 --epochs 1
# ... and 4 epochs (about 22 quiet CPU-minutes).
run maskrcnn-4ep --task instance --model bicsnet_48s "${COCO[@]}" --img-size 256 --epochs 4
# BiCSNet-lite0 RetinaNet on strawberry, small-data recipe, 256 px, 35 epochs: the FP32 model
# whose INT8 quantization benchmarks/deploy.md reports (box AP before and after).
run lite0-small --model bicsnet_lite0 "${COCO[@]}" --img-size 256 --epochs 35 --eval-every 5
