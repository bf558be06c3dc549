"""The scratch baseline's lr and weight decay, chosen on labelled images held out from its training
set, never on the test split (BENCHMARKS.md, "Learning with few labels").

For a folder run (stage one's config.json is all that is read), a validation folder is made of
symlinks: its train/ is the run's training folder (so the subset and the labelled images are the
run's), its test/ --held-out-per-class training images per class from outside stage one's subset.
trainstage2.py --mode scratch then trains at each point of the grid and its "test" top-1 is the
held-out top-1. Prints one line per point and the best point per label count.

    python bench/scratch_recipe.py --run-dir runs/fewlabels-r18 --labels-per-class 10 25 \
        --lrs 0.05 0.1 0.2 --weight-decays 0 5e-4 -- --workers 2 --batch-size 64 --min-steps 50
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from simclr import rundir  # noqa: E402
from simclr import datasets  # noqa: E402


def validation_folder(settings, held_out_per_class, folder):
    """folder/train -> the run's training class folders; folder/test/CLASS/ -> held-out images."""
    source = datasets.DataSource.of_run(settings)
    full = source.full_split(True)
    in_subset = set(source.chosen_indices(True, source.subset) or range(len(full)))
    outside = [index for index in range(len(full)) if index not in in_subset]
    generator = torch.Generator().manual_seed(settings["seed"] + 1)
    order = [outside[position] for position in torch.randperm(len(outside), generator=generator)]
    taken = {name: 0 for name in full.classes}
    os.makedirs(os.path.join(folder, "train"))
    for name in full.classes:
        os.symlink(
            os.path.join(source.data_dir, "train", name), os.path.join(folder, "train", name)
        )
        os.makedirs(os.path.join(folder, "test", name))
    for index in order:
        path, label = full.samples[index]
        name = full.classes[label]
        if taken[name] < held_out_per_class:
            os.symlink(path, os.path.join(folder, "test", name, os.path.basename(path)))
            taken[name] += 1
    if min(taken.values()) < held_out_per_class:
        raise SystemExit(f"fewer than {held_out_per_class} images per class outside the subset")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--held-out-per-class", type=int, default=100)
    parser.add_argument("--labels-per-class", type=int, nargs="+", default=[10, 25])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--weight-decays", type=float, nargs="+", default=[0.0, 5e-4])
    parser.add_argument("stage2_flags", nargs="*", help="more trainstage2.py flags, after --")
    args = parser.parse_args()
    settings = rundir.run_settings(args.run_dir)
    if settings["dataset"] != "folder":
        raise SystemExit("this benchmark needs a folder run: its held-out images are symlinks")
    work = tempfile.mkdtemp(prefix="scratch-recipe-")
    validation_folder(settings, args.held_out_per_class, os.path.join(work, "data"))
    run_copy = os.path.join(work, "run")
    os.makedirs(run_copy)
    shutil.copy(os.path.join(args.run_dir, "config.json"), run_copy)
    print(
        f"held-out images: {args.held_out_per_class} per class from outside the subset, in {work}"
    )
    best = {}
    for labels in args.labels_per_class:
        for lr in args.lrs:
            for weight_decay in args.weight_decays:
                command = [sys.executable, os.path.join(ROOT, "trainstage2.py"), "--run-dir"]
                command += [run_copy, "--data-dir", os.path.join(work, "data"), "--mode", "scratch"]
                command += ["--labels-per-class", str(labels), "--lr", str(lr)]
                name = f"scratch-{labels}-per-class-lr-{lr:g}-wd-{weight_decay:g}"
                command += ["--weight-decay", str(weight_decay), "--evaluation", name]
                subprocess.run(
                    [*command, *args.stage2_flags], check=True, stdout=subprocess.DEVNULL
                )
                folder = os.path.join(run_copy, rundir.EVALUATIONS, name)
                top1 = rundir.Results.read(folder).top1
                print(
                    f"{labels} labels per class, lr {lr:g} per 256, weight decay {weight_decay:g}: "
                    f"held-out top-1 {top1:.2f}%",
                    flush=True,
                )
                best[labels] = max(best.get(labels, (-1.0,)), (top1, lr, weight_decay))
    for labels, (top1, lr, weight_decay) in best.items():
        print(f"best at {labels} per class: lr {lr:g}, weight decay {weight_decay:g} ({top1:.2f}%)")


if __name__ == "__main__":
    main()
