#!/usr/bin/env bash
# One prepared GPU benchmark, meant to fit one 10-minute device call (not yet run on a GPU): from the CIFAR-10 JPEG tarball,
# ResNet-18 stage one on the device data path with the kNN monitor (prints seconds per epoch,
# images/s, peak GPU memory and the kNN curve from the run's log), then ResNet-50 images/s, the
# memory and time of --activation-checkpointing (bench/activation_memory.py), then ResNet-50
# stage one on every GPU under torchrun when there are several.
# Usage, from the repository root:  bash bench/gpu.sh [TARBALL] [EPOCHS]
# TARBALL: a .tar.gz of CIFAR-10 as a folder (docs/datasets.md), by default data/cifar10-jpeg.tar.gz
# (data/ is ignored by git: a copy to carry to a GPU machine, never committed).
set -euo pipefail
tarball=${1:-data/cifar10-jpeg.tar.gz}
if [ ! -f "$tarball" ]; then
  echo "error: $tarball does not exist: pass a .tar.gz of CIFAR-10 as a folder (docs/datasets.md)" >&2
  exit 2
fi
epochs=${2:-60}
data_dir=$(mktemp -d)/cifar10-jpeg
run_dir=runs/bench-gpu-resnet18
mkdir -p "$data_dir" && tar -xzf "$tarball" -C "$data_dir"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
set -x
time python3 trainstage1.py --dataset folder --data-dir "$data_dir" --arch resnet18 \
  --epochs "$epochs" --knn-every 10 --knn-queries 0 --data-path device --workers 16 --run-dir "$run_dir"
cat "$run_dir/stage1_log.csv"
python3 bench/throughput.py --data-dir "$data_dir" --subset 0 --arch resnet50 --batch-size 512 \
  --data-path device --steps 30 --warmup-steps 5 --workers 16
python3 bench/throughput.py --data-dir "$data_dir" --subset 0 --arch resnet18 --batch-size 512 \
  --data-path device --steps 50 --warmup-steps 5 --workers 16
# --activation-checkpointing: peak memory (max allocated) and step time with and without it at the
# paper's batches, then the largest ResNet-50 batch under caps that stand for 16, 24 and 40 GB cards.
python3 bench/activation_memory.py --archs resnet18 resnet50 --batch-sizes 512 1024 --steps 5
python3 bench/activation_memory.py --archs resnet50 --batch-sizes --caps-gib 16 24 40
# Several GPUs: the same ResNet-50 stage one under torchrun, one process per GPU (global batch
# 512 per GPU); images/s per epoch from the log.
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
  python3 -m torch.distributed.run --standalone --nproc_per_node="$gpus" trainstage1.py \
    --dataset folder --data-dir "$data_dir" --arch resnet50 --batch-size $((512 * gpus)) \
    --epochs 2 --knn-every 0 --data-path device --run-dir runs/bench-gpu-ddp-"$gpus"
  cat runs/bench-gpu-ddp-"$gpus"/stage1_log.csv
else
  echo "multi-GPU line skipped: $gpus GPU on this machine"
fi
