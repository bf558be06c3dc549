#!/usr/bin/env bash
# Stage one in one process against two torchrun processes (Gloo) on this CPU: the same global
# batch, seed and data, on the device data path. Prints both logs (images/s per epoch, and the
# loss, pair accuracy and kNN, which should agree up to float32 summation order).
# Usage, from the repository root:
#   bash bench/cpu_processes.sh [DATA_DIR] [SUBSET] [EPOCHS] [BATCH] [PRECISION]
# DATA_DIR: CIFAR-10 as a folder (docs/datasets.md), by default ./cifar10-folder.
# PRECISION bf16 measures the agreement in bf16 where the CPU has it natively (AVX-512 BF16 or
# AMX; the start lines say "in bf16"); elsewhere the scripts fall back to fp32 and say so.
set -euo pipefail
data_dir=${1:-cifar10-folder}
subset=${2:-2048}
epochs=${3:-3}
batch=${4:-256}
precision=${5:-fp32}
if [ ! -d "$data_dir/train" ]; then
  echo "error: $data_dir/train does not exist: make a CIFAR-10 folder as docs/datasets.md shows (\"CIFAR-10 as a folder\") and pass its path" >&2
  exit 2
fi
common=(--dataset folder --data-dir "$data_dir" --arch resnet18 --subset "$subset"
  --batch-size "$batch" --epochs "$epochs" --knn-every "$epochs" --knn-queries 1000 --precision "$precision"
  --data-path device --device cpu --workers 2)
runs=runs/bench-processes-$(date +%Y%m%d-%H%M%S)
# The first run decodes the chosen images and caches them; the log's images/s covers the steps only.
set -x
OMP_NUM_THREADS=2 python3 trainstage1.py "${common[@]}" --run-dir "$runs-1process"
OMP_NUM_THREADS=1 python3 -m torch.distributed.run --standalone --nproc_per_node=2 trainstage1.py \
  "${common[@]}" --run-dir "$runs-2processes"
set +x
for run in "$runs-1process" "$runs-2processes"; do echo "$run"; cat "$run/stage1_log.csv"; done
