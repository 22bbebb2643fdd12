#!/usr/bin/env bash
# Reproduces the shipped model weights/fashion_mnist_vgg11_bn.pt (+ .json card) on CPU or GPU:
#   bash train/fashion_mnist_vgg11_bn.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
run="${1:-runs/fashion_mnist_vgg11_bn}"
rtlrp train --amp --arch vgg11_bn --dataset fashion-mnist --width 0.375 --hidden 256 --pool 1 --dropout 0.2 \
    --input-size 32 --epochs 12 --batch-size 128 --lr 0.1 --seed 0 --out "$run"
rtlrp export "$run" --out weights/fashion_mnist_vgg11_bn.pt
