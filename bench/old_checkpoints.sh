#!/usr/bin/env bash
# Checkpoints written by an older commit still load in every script of this one: a tiny run (stage
# one, then stage two's linear and a few-label finetune) made with the scripts of OLD, then each
# script of the checkout it is run from on that run folder. Exits non-zero at the first failure.
#   bash bench/old_checkpoints.sh OLD_COMMIT DATA_DIR    (DATA_DIR: DIR/train/CLASS/*, DIR/test/CLASS/*)
set -euo pipefail
old=$1 data=$2
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/simclr-old-checkpoints.XXXX)
git -C "$root" archive "$old" | tar -x -C "$work/" --one-top-level=old
export MPLBACKEND=Agg
fast=(--device cpu --workers 2)
run=$work/runs/old
cd "$work"
echo "== made by $old"
python old/trainstage1.py --dataset folder --data-dir "$data" --arch resnet18 --subset 200 \
    --batch-size 64 --epochs 2 --knn-every 1 --run-dir "$run" "${fast[@]}" | tail -1
python old/trainstage2.py --run-dir "$run" --epochs 1 "${fast[@]}" | tail -1
python old/trainstage2.py --run-dir "$run" --mode finetune --labels-per-class 2 --epochs 1 \
    "${fast[@]}" | tail -1
echo "== read by $(git -C "$root" rev-parse --short HEAD) (uncommitted changes included)"
image=$(find "$data/test" -type f | sort | sed -n 1p)
python "$root/trainstage1.py" --resume --run-dir "$run" --device cpu | tail -1
python "$root/trainstage2.py" --run-dir "$run" --mode finetune --labels-per-class 2 --epochs 1 \
    "${fast[@]}" | tail -1
python "$root/test.py" --run-dir "$run" "$image" --device cpu
python "$root/test.py" --run-dir "$run" --evaluation finetune-2-per-class "$image" --device cpu
python "$root/knn.py" --run-dir "$run" --knn-queries 100 "${fast[@]}" | tail -1
python "$root/pictures.py" --run-dir "$run" --tsne-images 50 "${fast[@]}" | tail -1
python "$root/export.py" --run-dir "$run" | tail -1
python "$root/visualization.py" --run-dir "$run" | tail -1
python "$root/confusionMatrix.py" --run-dir "$run" | sed -n 1p
echo "every script read the checkpoints of $old"
