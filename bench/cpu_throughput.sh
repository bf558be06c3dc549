#!/usr/bin/env bash
# Stage-one speed on a CPU: ResNet-50 at batch 128 through the per-image PIL worker pipeline in
# fp32 NCHW (what the original scripts did) against the device path (uint8 tensor, batched
# augmentation) with bf16 autocast and channels_last; then the augmentation alone on both paths
# (the device path eager, then with --compile, which fuses the colour ops).
# Usage, from the repository root:  bash bench/cpu_throughput.sh [DATA_DIR]
# DATA_DIR: CIFAR-10 as a folder (docs/datasets.md), by default ./cifar10-folder.
set -euo pipefail
data_dir=${1:-cifar10-folder}
if [ ! -d "$data_dir/train" ]; then
  echo "error: $data_dir/train does not exist: make a CIFAR-10 folder as docs/datasets.md shows (\"CIFAR-10 as a folder\") and pass its path" >&2
  exit 2
fi
common=(--data-dir "$data_dir" --subset 5000 --workers 2)
set -x
python bench/throughput.py "${common[@]}" --arch resnet50 --batch-size 128 --steps 5 \
  --data-path workers --precision fp32 --no-channels-last
python bench/throughput.py "${common[@]}" --arch resnet50 --batch-size 128 --steps 5 \
  --data-path workers --precision bf16 --channels-last
python bench/throughput.py "${common[@]}" --arch resnet50 --batch-size 128 --steps 5 \
  --data-path device --precision bf16 --channels-last
python bench/throughput.py "${common[@]}" --augment-only --batch-size 512 --steps 10 --repeats 5 --data-path workers
python bench/throughput.py "${common[@]}" --augment-only --batch-size 512 --steps 20 --repeats 5 --data-path device
python bench/throughput.py "${common[@]}" --augment-only --batch-size 512 --steps 20 --repeats 5 --data-path device --compile
