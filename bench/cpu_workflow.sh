#!/usr/bin/env bash
# The whole workflow on real CIFAR-10 images, sized for a 2-core CPU: stage one (ResNet-18,
# 5,000-image subset), the kNN of a random encoder as the baseline, stage two, test.py, both plots.
# Usage, from the repository root:  bash bench/cpu_workflow.sh [DATA_DIR] [RUN_DIR]
# DATA_DIR: CIFAR-10 as a folder (docs/datasets.md), by default ./cifar10-folder.
set -euo pipefail
data_dir=${1:-cifar10-folder}
run_dir=${2:-runs/bench-cpu-resnet18-$(date +%Y%m%d-%H%M%S)}
if [ ! -d "$data_dir/train" ]; then
  echo "error: $data_dir/train does not exist: make a CIFAR-10 folder as docs/datasets.md shows (\"CIFAR-10 as a folder\") and pass its path" >&2
  exit 2
fi
data=(--dataset folder --data-dir "$data_dir" --subset 5000)
set -x
nproc
python -c "import torch; print('torch', torch.__version__, 'threads', torch.get_num_threads())"
python trainstage1.py "${data[@]}" --arch resnet18 --batch-size 256 --epochs 15 \
  --warmup-epochs 2 --knn-every 5 --knn-queries 0 --workers 2 --data-path workers --run-dir "$run_dir"
python knn.py --run-dir "$run_dir" --random --workers 2 --batch-size 256
python trainstage2.py --run-dir "$run_dir" --subset 0 --epochs 5 --batch-size 256 --workers 2 \
  --protocol per-step
python test.py "$(find "$data_dir/test/cat" -name '*.jpg' | sort | head -n 1)" \
  --run-dir "$run_dir" --save-dir "$run_dir/predictions"
python visualization.py --run-dir "$run_dir"
python confusionMatrix.py --run-dir "$run_dir"
cat "$run_dir/stage1_log.csv" "$run_dir/stage2_log.csv" "$run_dir/results.json"
