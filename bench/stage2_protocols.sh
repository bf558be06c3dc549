#!/usr/bin/env bash
# Stage two on one stage-one checkpoint, both protocols: features cached once vs an encoder pass
# every step (crop + flip), end to end. Prints each protocol's results.json (top-1, seconds).
# Usage, from the repository root:
#   bash bench/stage2_protocols.sh STAGE1_RUN_DIR [EPOCHS] [SUBSET] [extra trainstage2.py flags]
set -euo pipefail
source_run=$1
epochs=${2:-100}
subset=${3:-0}
shift $(( $# < 3 ? $# : 3 ))
set -x
for protocol in cached per-step; do
  run_dir=runs/bench-stage2-$protocol-$(basename "$source_run")
  mkdir -p "$run_dir"
  cp "$source_run/config.json" "$source_run/stage1_best.pth" "$run_dir/"
  /usr/bin/time -f "$protocol: %e s wall for the whole command" \
    python trainstage2.py --run-dir "$run_dir" --protocol "$protocol" --epochs "$epochs" \
    --subset "$subset" --batch-size 256 --workers 2 "$@"
  cat "$run_dir/results.json"
done
