#!/usr/bin/env bash
# Stage two on one stage-one checkpoint, three ways, each end to end: features cached once (one
# plain pass), features cached once from PASSES crop + flip passes, and an encoder pass every step
# (crop + flip). Prints each run's results.json (top-1, seconds) and its wall time.
# Usage, from the repository root:
#   bash bench/stage2_protocols.sh STAGE1_RUN_DIR [EPOCHS] [SUBSET] [PASSES] [extra trainstage2.py flags]
set -euo pipefail
source_run=$1
epochs=${2:-100}
subset=${3:-0}
passes=${4:-10}
shift $(( $# < 4 ? $# : 4 ))
set -x
for setting in cached:0 cached:$passes per-step:0; do
  protocol=${setting%:*}
  augmented_passes=${setting#*:}
  run_dir=runs/bench-stage2-$protocol-$augmented_passes-$(basename "$source_run")
  mkdir -p "$run_dir"
  cp "$source_run/config.json" "$source_run"/stage1_*.pth "$run_dir/"  # the stage-one checkpoint
  /usr/bin/time -f "$setting: %e s wall for the whole command" \
    python trainstage2.py --run-dir "$run_dir" --protocol "$protocol" --epochs "$epochs" \
    --augmented-passes "$augmented_passes" --subset "$subset" --batch-size 256 --workers 2 "$@"
  cat "$run_dir/results.json"
done
