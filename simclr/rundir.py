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
import shutil
import subprocess

import torch

from simclr.errors import InputError

RUNS_DIR = "runs"  # where stage-one runs create their folders; later scripts pick the newest one
CONFIG_FILE = "config.json"
STAGE_ONE_FILE = "stage1_last.pth"  # written every epoch; stage two evaluates the last one
STAGE_TWO_FILE = "stage2.pth"
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


# A stage-two evaluation's files: those trainstage2.py writes, then those the plot scripts draw
# from them. A new evaluation replaces them all, so that none is left from the one before.
STAGE_TWO_FILES = (
    "stage2_log.csv",
    STAGE_TWO_FILE,
    "stage2_predictions.csv",
    "labelled_images.csv",
    "results.json",  # moved into place last: an evaluation with results.json is complete
)
DRAWN_FROM_STAGE_TWO = ("stage2_curves.png", "confusion_matrix.png", "confusion_matrix.csv")
INCOMING = ".incoming"  # in an evaluation's folder: its files while it trains


class Evaluation(Run):
    """A stage-two evaluation's folder. While it trains, its files go into the hidden folder
    INCOMING inside it (dir); finish() moves them into the folder (final_dir) together, so a
    stopped evaluation never mixes its files with those of the one before."""

    def __init__(self, final_dir):
        super().__init__(os.path.join(final_dir, INCOMING))
        self.final_dir = final_dir

    def open(self):
        """An empty staging folder: what a stopped or killed evaluation left there goes."""
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)

    def finish(self):
        """The new files into place, replacing every stage-two file of the evaluation before."""
        for name in DRAWN_FROM_STAGE_TWO + STAGE_TWO_FILES:
            old = os.path.join(self.final_dir, name)
            if os.path.isfile(old) and not os.path.isfile(self.path(name)):
                os.remove(old)
        for name in STAGE_TWO_FILES:
            if os.path.isfile(self.path(name)):
                os.replace(self.path(name), os.path.join(self.final_dir, name))
        shutil.rmtree(self.dir)

    def abandon(self):
        """A stopped evaluation: its files go, and its folder if nothing else is in it."""
        shutil.rmtree(self.dir, ignore_errors=True)
        if not os.listdir(self.final_dir):
            os.rmdir(self.final_dir)


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
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


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


def newest_run_dir():
    """The one rule every script uses for "the newest run": of the run folders under runs/ that
    hold a stage-one checkpoint (a run stopped in its first epoch has none and is passed over),
    the one whose config.json was written last."""
    runs, candidates = [], []
    if os.path.isdir(RUNS_DIR):
        for entry in os.scandir(RUNS_DIR):
            config_path = os.path.join(entry.path, CONFIG_FILE)
            if entry.is_dir() and os.path.isfile(config_path):
                runs.append(entry.path)
                if os.path.isfile(os.path.join(entry.path, STAGE_ONE_FILE)):
                    candidates.append((os.path.getmtime(config_path), entry.path))
    if not runs:
        raise InputError(
            f"no run folder in {RUNS_DIR}/: run trainstage1.py first, or pass --run-dir"
        )
    if not candidates:
        raise InputError(
            f"no run folder in {RUNS_DIR}/ has {STAGE_ONE_FILE} yet (none finished its first "
            f"epoch): let trainstage1.py finish an epoch, or pass --run-dir"
        )
    return max(candidates)[1]


def resolve_run_dir(run_dir):
    """--run-dir if given (it must exist), else the newest run (newest_run_dir), named."""
    if not run_dir:
        run_dir = newest_run_dir()
        print(f"run folder {run_dir} (the newest run)", flush=True)
        return run_dir
    if not os.path.isdir(run_dir):
        raise InputError(
            f"--run-dir {run_dir} does not exist: pass a folder made by trainstage1.py"
        )
    return run_dir
