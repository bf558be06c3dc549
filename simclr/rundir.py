"""The run folder, the interface between the scripts: config.json, CSV logs, results, evaluation
folders, atomic writes (the checkpoints inside it: checkpoints.py).

Every file is written to a temporary file in the same folder and renamed into place, so a crash at
any moment leaves the previous complete version, never a half-written one.
"""

import csv
import dataclasses
import datetime
import json
import os
import subprocess

import torch

from simclr.errors import InputError

RUNS_DIR = "runs"  # where stage-one runs create their folders; later scripts pick the newest one
EVALUATIONS = (
    "evaluations"  # RUN/evaluations/MODE-LABELS/: stage two other than linear on all labels
)
MADE_BY = {  # the run files that later scripts read, and the script that writes each
    "config.json": "trainstage1.py",
    "stage1_log.csv": "trainstage1.py",
    "stage2_predictions.csv": "trainstage2.py",
}


def replace_atomically(path, write):
    """Call write(temporary_path), then rename the temporary file onto path."""
    temporary_path = f"{path}.tmp"
    write(temporary_path)
    os.replace(temporary_path, path)


def write_json(path, data):
    def write(temporary_path):
        with open(temporary_path, "w") as file:
            json.dump(data, file, indent=2)

    replace_atomically(path, write)


def write_csv(path, rows):
    """rows: a list of dicts with the same keys; the keys become the header."""

    def write(temporary_path):
        with open(temporary_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    replace_atomically(path, write)


def read_json(path):
    with open(path) as file:
        return json.load(file)


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def run_name(run_dir):
    """The run folder's own name, for titles: the last part of runs/NAME/."""
    return os.path.basename(os.path.normpath(run_dir))


class Run:
    """One run folder; log() keeps a CSV file complete after every row."""

    def __init__(self, run_dir):
        self.dir = run_dir
        self.rows = {}

    def path(self, name):
        return os.path.join(self.dir, name)

    def log(self, name, **row):
        self.rows.setdefault(name, []).append(row)
        write_csv(self.path(name), self.rows[name])


def git_commit():
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except OSError:
        return ""


def start_run(cfg, derived):
    """Create the stage-one run folder and write config.json into it first; derived: the values
    computed from the config that the run uses (the peak lr, the warm-up)."""
    run_dir = cfg.run_dir or os.path.join(
        RUNS_DIR, f"{cfg.dataset}-{cfg.arch}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    )
    if os.path.exists(os.path.join(run_dir, "config.json")):
        raise InputError(
            f"{run_dir} already holds a run: pass --resume to continue it, "
            f"or a new --run-dir to start another"
        )
    os.makedirs(run_dir, exist_ok=True)
    write_json(
        os.path.join(run_dir, "config.json"),
        {
            "config": dataclasses.asdict(cfg),
            "derived": derived,
            "torch": torch.__version__,
            "git_commit": git_commit(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
        },
    )
    return Run(run_dir)


def reopen_run(run_dir, log_name, epochs_done):
    """The run in run_dir, its log cut to the epochs its checkpoint holds: a row written just
    before a crash, for an epoch the checkpoint does not have, is trained and logged again."""
    run = Run(run_dir)
    if epochs_done and os.path.isfile(run.path(log_name)):
        rows = [row for row in read_csv(run.path(log_name)) if int(row["epoch"]) <= epochs_done]
        run.rows[log_name] = rows
    return run


def evaluation_name(mode, labels_per_class=None, label_fraction=None, from_head_layer=0):
    """The folder name of a stage-two evaluation: None for the linear one on all labels from h,
    which writes into the run folder itself; else MODE-LABELS, e.g. finetune-10-per-class, and
    -head-layer-K with K projection-head layers under the classifier."""
    if labels_per_class:
        labels = f"{labels_per_class}-per-class"
    elif label_fraction:
        labels = f"{label_fraction:g}-of-labels"
    else:
        labels = "all-labels"
    head = f"-head-layer-{from_head_layer}" if from_head_layer else ""
    return (
        None if (mode, labels, head) == ("linear", "all-labels", "") else f"{mode}-{labels}{head}"
    )


def knn_file(features, random=False):
    """Where knn.py writes its result in the run folder: knn_h.json, knn_z_random.json."""
    return f"knn_{features}{'_random' if random else ''}.json"


def evaluation_kind(results):
    """The mode of an evaluation in words, from its results.json: 'finetune', 'finetune from head
    layer 1' (SimCLRv2's fine-tuning from the head's middle)."""
    mode, from_head_layer = results.get("mode", "linear"), results.get("from_head_layer")
    return f"{mode} from head layer {from_head_layer}" if from_head_layer else mode


def evaluation_title(results):
    """An evaluation in words, from its results.json: 'finetune on 10 labels per class (100)'."""
    mode, labels = evaluation_kind(results), results.get("labels")
    counted = f" ({labels:,})" if labels else ""  # a stage2.pth's settings: no count
    if results.get("labels_per_class"):
        labelled = f"{results['labels_per_class']} labels per class{counted}"
    elif results.get("label_fraction"):
        labelled = f"{results['label_fraction']:g} of the labels{counted}"
    else:
        labelled = f"all {labels:,} labels" if labels else "all labels"
    return f"{mode} on {labelled}"


def evaluation_names(run_dir):
    """The names of the run's stage-two evaluation folders (RUN/evaluations/*), sorted."""
    folder = os.path.join(run_dir, EVALUATIONS)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def evaluation_dir(run_dir, evaluation):
    """Where a stage-two evaluation's files are: the run folder for the default one (evaluation
    ""), else RUN/evaluations/EVALUATION, which must exist."""
    if not evaluation:
        return run_dir
    path = os.path.join(run_dir, EVALUATIONS, evaluation)
    if not os.path.isdir(path):
        found = evaluation_names(run_dir)
        raise InputError(
            f"{run_dir} has no evaluation {evaluation} (it has: {', '.join(found) or 'none'}): "
            f"pass one of those, or make it with trainstage2.py --mode ... --labels-per-class ..."
        )
    return path


def run_settings(run_dir):
    """The stage-one settings in run_dir/config.json."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise InputError(
            f"{run_dir} holds no run (no config.json): pass a trainstage1.py run folder"
        )
    with open(path) as file:
        return json.load(file)["config"]


def newest_run_dir(needed_file, made_by=None):
    """The run folder under runs/ that holds needed_file and whose config.json was written last:
    a run stopped before it wrote that file is passed over."""
    runs, candidates = [], []
    if os.path.isdir(RUNS_DIR):
        for entry in os.scandir(RUNS_DIR):
            config_path = os.path.join(entry.path, "config.json")
            if entry.is_dir() and os.path.isfile(config_path):
                runs.append(entry.path)
                if os.path.isfile(os.path.join(entry.path, needed_file)):
                    candidates.append((os.path.getmtime(config_path), entry.path))
    made_by = f"run {made_by or MADE_BY[needed_file]} first, or pass --run-dir"
    if not runs:
        raise InputError(f"no run folder in {RUNS_DIR}/: {made_by}")
    if not candidates:
        raise InputError(f"no run folder in {RUNS_DIR}/ has {needed_file} yet: {made_by}")
    return max(candidates)[1]


def resolve_run_dir(run_dir, needed_file, made_by=None):
    """--run-dir if given (it must exist), else the newest run that has needed_file (written by
    the script made_by, by default MADE_BY's), named."""
    if not run_dir:
        run_dir = newest_run_dir(needed_file, made_by)
        print(f"run folder {run_dir} (the newest with {needed_file})", flush=True)
        return run_dir
    if not os.path.isdir(run_dir):
        raise InputError(
            f"--run-dir {run_dir} does not exist: pass a folder made by trainstage1.py"
        )
    return run_dir
