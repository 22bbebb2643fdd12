#!/usr/bin/env bash
# Reproduces weights/fashion_mnist_mobilenet_v3_small.pt (+ .json card) on CPU or GPU:
#   bash train/fashion_mnist_mobilenet_v3_small.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
run="${1:-runs/fashion_mnist_mobilenet_v3_small}"
rtlrp train --arch mobilenet_v3_small --dataset fashion-mnist --input-size 32 --small-input \
    --epochs 20 --batch-size 128 --lr 0.1 --weight-decay 5e-4 --seed 0 --out "$run"
rtlrp export "$run" --out weights/fashion_mnist_mobilenet_v3_small.pt
