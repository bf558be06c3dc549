#!/usr/bin/env bash
# Stage two with few labels from one stage-one run: linear, finetune and scratch at a few label
# counts per class, and linear on all labels; then the label-efficiency plot and table
# (visualization.py). STAGE2_FLAGS adds flags to every trainstage2.py call (e.g. "--workers 2").
# Usage, from the repository root:  bash bench/few_labels.sh RUN_DIR [LABELS_PER_CLASS...]
set -euo pipefail
run_dir=$1
shift
labels=${*:-10 25 100}
read -r -a flags <<< "${STAGE2_FLAGS:-}"
set -x
python3 trainstage2.py --run-dir "$run_dir" --mode linear "${flags[@]}"
for per_class in $labels; do
  for mode in linear finetune scratch; do
    python3 trainstage2.py --run-dir "$run_dir" --mode "$mode" --labels-per-class "$per_class" \
      "${flags[@]}"
  done
done
python3 visualization.py --run-dir "$run_dir"
