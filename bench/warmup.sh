#!/usr/bin/env bash
# A short run as a new user makes it (ResNet-18, 5 epochs, 5,000 CIFAR-10 training images, batch
# 256, every other setting at its default), twice: with the old fixed 10 warm-up epochs, which a
# 5-epoch run never leaves, and with the default warm-up (10 epochs, at most 10% of the run).
# Prints each run's log; knn_top1 in the last row is the kNN monitor on the 10,000 test images.
# Usage, from the repository root:  bash bench/warmup.sh [DATA_DIR]
# DATA_DIR: CIFAR-10 as a folder (docs/datasets.md), by default ./cifar10-folder.
set -euo pipefail
data_dir=${1:-cifar10-folder}
if [ ! -d "$data_dir/train" ]; then
  echo "error: $data_dir/train does not exist: make a CIFAR-10 folder as docs/datasets.md shows (\"CIFAR-10 as a folder\") and pass its path" >&2
  exit 2
fi
stamp=$(date +%Y%m%d-%H%M%S)
common=(--dataset folder --data-dir "$data_dir" --subset 5000 --arch resnet18 --batch-size 256
  --epochs 5 --knn-queries 0)
set -x
python trainstage1.py "${common[@]}" --warmup-epochs 10 --run-dir "runs/bench-warmup-10-$stamp"
python trainstage1.py "${common[@]}" --run-dir "runs/bench-warmup-default-$stamp"
cat "runs/bench-warmup-10-$stamp/stage1_log.csv" "runs/bench-warmup-default-$stamp/stage1_log.csv"
grep -h -A3 '"derived"' "runs/bench-warmup-10-$stamp/config.json" \
  "runs/bench-warmup-default-$stamp/config.json"
