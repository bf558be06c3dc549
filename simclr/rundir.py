"""The run folder, the interface between the scripts: the name of every file in it and the format
of those that are not checkpoints (checkpoints.py holds those), read back as named records; the
evaluation folders; atomic writes.

Every file is written to a temporary file in the same folder and renamed into place, so a crash at
any moment leaves the previous complete version, never a half-written one.

runs/<name>/config.json        RunRecord: stage one's settings, derived values, torch, git commit
            stage1_log.csv     one row per epoch (simclr/stage1_bookkeeping.py writes it)
            stage1_last.pth    the stage-one checkpoint (checkpoints.py)
            knn_h.json ...     KnnResult, of knn.py
            stage2_log.csv     one row per epoch of the linear evaluation on all labels
            stage2.pth, stage2_predictions.csv, results.json (Results)
            evaluations/NAME/  every other stage-two evaluation, the same files, and with few
                               labels labelled_images.csv
"""

import csv
import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import typing
import uuid

import torch
import torchvision

from simclr.errors import InputError

RUNS_DIR = "runs"  # where stage-one runs create their folders; later scripts pick the newest one
CONFIG_FILE = "config.json"
STAGE_ONE_LOG = "stage1_log.csv"
STAGE_ONE_FILE = "stage1_last.pth"  # written every epoch; stage two evaluates the last one
STAGE_TWO_LOG = "stage2_log.csv"
STAGE_TWO_FILE = "stage2.pth"
PREDICTIONS_FILE = "stage2_predictions.csv"
LABELLED_IMAGES_FILE = "labelled_images.csv"
RESULTS_FILE = "results.json"
STAGE_TWO_CURVES = "stage2_curves.png"  # visualization.py's, from the evaluation's log
CONFUSION_MATRIX = "confusion_matrix"  # confusionMatrix.py's .png and .csv, from its predictions
EVALUATIONS = "evaluations"  # RUN/evaluations/NAME/: stage two other than linear on all labels
MADE_BY = {  # the run files that later scripts read, and the script that writes each
    CONFIG_FILE: "trainstage1.py",
    STAGE_ONE_LOG: "trainstage1.py",
    PREDICTIONS_FILE: "trainstage2.py",
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


# What to do about a run-folder file that is damaged (cut short by a full disk, edited by hand): by
# file name, else REMAKE_ANY's words.
REMAKE_EVALUATION = "run the trainstage2.py command that made this evaluation again, with --replace"
REMAKE = {
    CONFIG_FILE: "it holds the run's settings: restore it from a copy, or start the run again in "
    "a new --run-dir",
    STAGE_ONE_LOG: "it is rewritten after every epoch: restore it from a copy, or remove the "
    "damaged rows",
    **dict.fromkeys(
        (RESULTS_FILE, STAGE_TWO_LOG, PREDICTIONS_FILE, LABELLED_IMAGES_FILE), REMAKE_EVALUATION
    ),
}
REMAKE_ANY = "remove it and run the script that wrote it again"


def damaged(path, what, remake=None):
    """The error for a run-folder file that is not what its name promises (what: how, in words;
    remake: what to do about it, REMAKE's by default)."""
    remake = remake or REMAKE.get(os.path.basename(path), REMAKE_ANY)
    return InputError(f"{path} is damaged ({what}): {remake}")


def read_json(path, remake=None):
    """A JSON object from a run folder; one that does not parse, or is no object, is refused in
    one line naming the file and what to do (remake: damaged's)."""
    try:
        with open(path) as file:
            found = json.load(file)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise damaged(path, f"not JSON: {error}", remake) from None
    if not isinstance(found, dict):
        raise damaged(path, f"a JSON {type(found).__name__}, not an object", remake)
    return found


def fits(value, hint):
    """Whether a value read from JSON has the type a record's field declares (int for float too;
    typing.Any, and anything unknown, takes anything)."""
    if hint is typing.Any:
        return True
    if typing.get_origin(hint) is typing.Union:
        return any(fits(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def read_record(cls, path, completed=None):
    """path's JSON object as cls, a record dataclass: keys this code does not know are left aside
    (a newer file still reads); a missing field without a default, or a value of another type, is
    refused in one line naming the file. completed: the object -> the same with the fields it
    holds elsewhere (results.json's settings)."""
    found, hints = read_json(path), typing.get_type_hints(cls)
    found = completed(found) if completed else found
    fields = dataclasses.fields(cls)
    for field in fields:
        required = field.default is dataclasses.MISSING and (
            field.default_factory is dataclasses.MISSING
        )
        if required and field.name not in found:
            raise damaged(path, f"it has no {field.name}")
        if field.name in found and not fits(found[field.name], hints[field.name]):
            raise damaged(path, f"its {field.name} is {found[field.name]!r}")
    return cls(**{field.name: found[field.name] for field in fields if field.name in found})


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def read_table(path, numbers=(), whole_numbers=(), texts=()):
    """A CSV file's rows, checked: the columns named are there in every row, holding numbers
    (or nothing), whole numbers, or any text. A damaged file is refused in one line naming it."""
    try:
        rows = read_csv(path)
    except (UnicodeDecodeError, csv.Error) as error:
        raise damaged(path, f"not CSV: {error}") from None
    kinds = {column: float for column in numbers} | {column: int for column in whole_numbers}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        for column in (*kinds, *texts):
            value = row.get(column)
            if value is None:
                raise damaged(path, f"line {line} has no {column}")
            if column in numbers and value == "":
                continue  # an empty cell: not measured in that row (kNN, the test split)
            try:
                kinds.get(column, str)(value)
            except ValueError:
                raise damaged(path, f"line {line}'s {column} is {value!r}") from None
    return rows


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
    STAGE_TWO_LOG,
    STAGE_TWO_FILE,
    PREDICTIONS_FILE,
    LABELLED_IMAGES_FILE,
    RESULTS_FILE,  # moved into place last: an evaluation with results.json is complete
)
DRAWN_FROM_STAGE_TWO = (STAGE_TWO_CURVES, f"{CONFUSION_MATRIX}.png", f"{CONFUSION_MATRIX}.csv")
INCOMING = ".incoming"  # in an evaluation's folder: its files while it trains


class Evaluation(Run):
    """A stage-two evaluation's folder. While it trains, its files go into the hidden folder
    INCOMING inside it (dir); finish() moves them into the folder (final_dir) together, so a
    stopped evaluation never mixes its files with those of the one before."""

    def __init__(self, final_dir):
        super().__init__(os.path.join(final_dir, INCOMING))
        self.final_dir = final_dir

    def open(self):
        """An empty staging folder: what a stopped or killed evaluation left there goes (a file
        of its name too: the name is the staging folder's)."""
        if os.path.isdir(self.dir) and not os.path.islink(self.dir):
            shutil.rmtree(self.dir)
        elif os.path.lexists(self.dir):
            os.remove(self.dir)
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


# The longest file or folder name that the usual file systems take (ext4, XFS, APFS, NTFS)
NAME_MAX = 255


def shortened(text, width=40):
    return text if len(text) <= width else f"{text[: width - 3]}..."


def folder_name_problem(name):
    """'' for one plain folder name, else what is wrong with it and what to pass instead: a name
    given for a folder inside runs/ or a run's evaluations/ never reaches outside it, nor hides
    among the staging files (.incoming)."""
    separators = {"/", "\\", os.sep}
    if name.startswith(".") or any(sep in name for sep in separators) or os.path.isabs(name):
        return (
            "is not one plain folder name: pass a name without /, \\ or a leading . (e.g. "
            "finetune-lr-0.1)"
        )
    if len(os.fsencode(name)) > NAME_MAX:
        return (
            f"is {len(os.fsencode(name))} bytes long, more than the {NAME_MAX} a folder name may "
            f"have: pass a shorter name"
        )
    return ""


def check_path_fits(path, flag):
    """Every name in path fits a file system's limit, else one line, before any work is done."""
    for name in os.path.normpath(path).split(os.sep):
        if len(os.fsencode(name)) > NAME_MAX:
            raise InputError(
                f"{flag} {shortened(path)}: the name {shortened(name, 20)} is "
                f"{len(os.fsencode(name))} bytes long, more than the {NAME_MAX} a file or folder "
                f"name may have: pass a shorter one"
            )


def git(*words):
    """git's output in the repository's folder, stripped; '' where git cannot tell."""
    try:
        return subprocess.run(
            ["git", *words],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except OSError:
        return ""


def git_commit():
    return git("rev-parse", "HEAD")


def git_changes():
    """Whether the repository's tracked files differ from its commit; None where git cannot tell."""
    if not git_commit():
        return None
    return bool(git("status", "--porcelain", "--untracked-files=no"))


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """config.json, written first into a stage-one run's folder: its settings (the resolved
    Pretrain config, a dict), the values derived from them that the run used (the peak lr, the
    warm-up, the kNN test images, the precision in effect...), and what made it."""

    config: dict
    derived: dict = dataclasses.field(default_factory=dict)
    torch: str = ""
    git_commit: str = ""
    started: str = ""
    run_id: str = ""  # every checkpoint of the run carries it (runs of before: "")
    torchvision: typing.Optional[str] = None  # runs of before did not record these
    git_changes: typing.Optional[bool] = None  # tracked files differed from git_commit


def read_run(run_dir):
    """run_dir's config.json -> RunRecord; a folder without one is refused in one line."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise InputError(
            f"{run_dir} holds no run (no {CONFIG_FILE}): pass a trainstage1.py run folder"
        )
    return read_record(RunRecord, path)


def run_settings(run_dir):
    """The stage-one settings in run_dir/config.json."""
    return read_run(run_dir).config


def holds_run(run_dir):
    """Whether a run started in run_dir (its config.json is written first)."""
    return os.path.isfile(os.path.join(run_dir, CONFIG_FILE))


def start_run(cfg, derived):
    """Create the stage-one run folder and write config.json into it first; derived: the values
    computed from the config that the run uses (the peak lr, the warm-up)."""
    run_dir = cfg.run_dir or os.path.join(
        RUNS_DIR, f"{cfg.dataset}-{cfg.arch}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    )
    if holds_run(run_dir):
        raise InputError(
            f"{run_dir} already holds a run: pass --resume to continue it, "
            f"or a new --run-dir to start another"
        )
    os.makedirs(run_dir, exist_ok=True)
    record = RunRecord(
        config=dataclasses.asdict(cfg),
        derived=derived,
        torch=torch.__version__,
        git_commit=git_commit(),
        started=datetime.datetime.now().isoformat(timespec="seconds"),
        run_id=uuid.uuid4().hex[:12],
        torchvision=torchvision.__version__,
        git_changes=git_changes(),
    )
    write_json(os.path.join(run_dir, CONFIG_FILE), dataclasses.asdict(record))
    return Run(run_dir), record


# results.json's fields that only a distillation has: left out of the file for every other mode
DISTILLATION_RESULTS = ("teacher", "teacher_top1", "teacher_weights", "distill_temperature")
DISTILLATION_RESULTS += ("label_weight", "student_arch", "student_images", "images_seen")


# results.json's fields that its settings hold (provenance's "settings", by flag name): written
# there alone, and read from there (a file of before holds them at the top as well).
SETTINGS_FIELDS = {"lr_per_256": "lr"} | {
    name: name
    for name in ("epochs", "mode", "from_head_layer", "features", "labels_per_class",
                 "label_fraction", "protocol", "augmented_passes", "subset", "batch_size",
                 "weight_decay", "seed", "precision", "distill_temperature", "label_weight",
                 "student_arch")
}  # fmt: skip


def settings_of_results(found):
    """The settings recorded in a results.json's provenance ({} where it has none)."""
    made = found.get("provenance")
    settings = made.get("settings") if isinstance(made, dict) else None
    return settings if isinstance(settings, dict) else {}


def with_settings(found):
    """A results.json's object with the fields its settings hold filled in from them; a field it
    holds at the top (a file of before) stays as it is."""
    settings = settings_of_results(found)
    filled = {field: settings[flag] for field, flag in SETTINGS_FIELDS.items() if flag in settings}
    return filled | found


@dataclasses.dataclass(frozen=True)
class Results:
    """results.json: a stage-two evaluation's test figures and everything that made them. Fields
    recorded only since a later change have defaults, so older files still read; the settings'
    fields (SETTINGS_FIELDS) are read from its provenance, where it records them."""

    top1: float  # percent, on the whole test split
    top5: typing.Optional[float] = None
    validation_top1: typing.Optional[float] = None  # on held-out training images, to choose by
    validation_images: typing.Optional[int] = None  # how many were held out (None: none)
    class_names: list = dataclasses.field(default_factory=list)
    per_class_accuracy: dict = dataclasses.field(default_factory=dict)  # class -> top-1 (%)
    epochs: typing.Optional[int] = None
    split: str = "test"
    mode: str = "linear"
    from_head_layer: typing.Optional[int] = 0  # head layers under the classifier
    features: str = "h"
    labels_per_class: typing.Optional[int] = None
    label_fraction: typing.Optional[float] = None
    labels: typing.Optional[int] = None  # labelled training images
    protocol: str = "cached"
    augmented_passes: int = 0
    protocol_details: str = ""
    steps: int = 0
    schedule: typing.Optional[str] = None  # config.stage_two_schedule_rule's words
    training_images: typing.Optional[int] = None  # the labels were drawn from this many
    subset: typing.Optional[int] = None
    batch_size: typing.Optional[int] = None
    lr_per_256: typing.Optional[float] = None
    peak_lr: typing.Optional[float] = None
    weight_decay: typing.Optional[float] = None
    seed: int = 0
    seconds: typing.Optional[float] = None
    stage1_checkpoint: typing.Optional[str] = None
    stage1_epoch: typing.Optional[int] = None
    stage1_trained: typing.Optional[str] = None  # checkpoints.trained_for's words
    stage1_checkpoint_choice: str = ""
    trainable_parameters: typing.Optional[int] = None
    precision: str = "fp32"
    memory_format: str = "contiguous"
    teacher: typing.Optional[str] = None  # a distillation's: DISTILLATION_RESULTS
    teacher_top1: typing.Optional[float] = None
    teacher_weights: typing.Optional[str] = None
    distill_temperature: typing.Optional[float] = None
    label_weight: typing.Optional[float] = None
    student_arch: typing.Optional[str] = None
    student_images: typing.Optional[int] = None
    images_seen: typing.Optional[int] = None
    settings: typing.Optional[dict] = None  # before provenance: the settings that made it
    weights: typing.Optional[str] = None  # the digest of its stage2.pth's weights
    provenance: typing.Optional[dict] = None  # what made its numbers (simclr/provenance.py)

    @property
    def labelled(self):
        """How many labelled images it trained on (older files: the training images, when they
        recorded that but not the labels)."""
        return self.training_images if self.labels is None else self.labels

    @property
    def kind(self):
        return evaluation_kind(self.mode, self.from_head_layer)

    @property
    def title(self):
        return evaluation_title(
            self.mode, self.from_head_layer, self.labels_per_class, self.label_fraction, self.labels
        )

    @classmethod
    def read(cls, folder):
        """The results.json in folder (read_record: keys this code does not know left aside)."""
        return read_record(cls, os.path.join(folder, RESULTS_FILE), with_settings)

    def write(self, folder):
        """results.json: the figures, and each setting once, in its provenance's settings."""
        found = dataclasses.asdict(self)
        settings = settings_of_results(found)
        left_out = {"settings"} | {
            field
            for field, flag in SETTINGS_FIELDS.items()
            if flag in settings and settings[flag] == found[field]
        }
        left_out |= set(DISTILLATION_RESULTS) if found["teacher"] is None else set()
        write_json(
            os.path.join(folder, RESULTS_FILE),
            {key: value for key, value in found.items() if key not in left_out},
        )


def results_in(folder):
    """The Results of the evaluation in folder, or None where it has none (yet)."""
    return Results.read(folder) if os.path.isfile(os.path.join(folder, RESULTS_FILE)) else None


def evaluation_results(run_dir):
    """(folder, Results) of every stage-two evaluation of the run: the run folder's own, then
    those in RUN/evaluations/."""
    names = evaluation_names(run_dir)
    folders = [run_dir] + [os.path.join(run_dir, EVALUATIONS, name) for name in names]
    return [(folder, results) for folder in folders if (results := results_in(folder))]


@dataclasses.dataclass(frozen=True)
class KnnResult:
    """knn_h.json, knn_z.json, knn_h_random.json...: knn.py's kNN top-1 and what it measured."""

    knn_top1: float  # percent
    features: str = "h"
    encoder: str = ""  # the checkpoint and its epoch, or "random ARCH (seed N)"
    dataset: str = ""
    data_dir: str = ""
    memory_images: int = 0
    query_images: int = 0
    knn_k: int = 0
    knn_temperature: float = 0.0
    provenance: typing.Optional[dict] = None  # what made its number (simclr/provenance.py)

    @staticmethod
    def file(features, random=False):
        """Where knn.py writes its result in the run folder: knn_h.json, knn_z_random.json."""
        return f"knn_{features}{'_random' if random else ''}.json"

    @classmethod
    def read(cls, run_dir, features):
        return read_record(cls, os.path.join(run_dir, cls.file(features)))

    def write(self, path):
        write_json(path, dataclasses.asdict(self))


def reopen_run(run_dir, log_name, epochs_done):
    """The run in run_dir, its log cut to the epochs its checkpoint holds: a row written just
    before a crash, for an epoch the checkpoint does not have, is trained and logged again."""
    run = Run(run_dir)
    if epochs_done and os.path.isfile(run.path(log_name)):
        logged = read_table(run.path(log_name), whole_numbers=("epoch",))
        run.rows[log_name] = [row for row in logged if int(row["epoch"]) <= epochs_done]
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


def evaluation_kind(mode, from_head_layer=0):
    """The mode of an evaluation in words: 'finetune', 'finetune from head layer 1' (SimCLRv2's
    fine-tuning from the head's middle)."""
    return f"{mode} from head layer {from_head_layer}" if from_head_layer else mode


def evaluation_title(mode, from_head_layer, labels_per_class, label_fraction, labels=None):
    """An evaluation in words: 'finetune on 10 labels per class (100)' (labels: how many; None
    where the number is not known, as in a stage2.pth's settings)."""
    kind, counted = evaluation_kind(mode, from_head_layer), f" ({labels:,})" if labels else ""
    if labels_per_class:
        labelled = f"{labels_per_class} labels per class{counted}"
    elif label_fraction:
        labelled = f"{label_fraction:g} of the labels{counted}"
    else:
        labelled = f"all {labels:,} labels" if labels else "all labels"
    return f"{kind} on {labelled}"


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


def stage_one_progress(run_dir):
    """-> (epochs logged, epochs asked for) of the stage one in run_dir, from its config.json and
    stage1_log.csv (a log cut short counts the rows it has)."""
    epochs = read_run(run_dir).config.get("epochs")
    log_path = os.path.join(run_dir, STAGE_ONE_LOG)
    logged = read_table(log_path, whole_numbers=("epoch",)) if os.path.isfile(log_path) else []
    return (int(logged[-1]["epoch"]) if logged else 0), epochs


def stage_one_finished(run_dir):
    """Whether the stage one in run_dir logged all its epochs; one whose records do not read (a
    config.json edited by hand) is not, so the newest run is never blocked by another's damage."""
    try:
        done, epochs = stage_one_progress(run_dir)
    except InputError:
        return False
    return epochs is not None and done >= epochs


def newest_run_dir():
    """The one rule every script uses for "the newest run": of the run folders under runs/ whose
    stage one finished (every epoch logged, its checkpoint written), the one whose config.json was
    written last. A run still training, or stopped, is never taken for it: a block of commands
    run while another terminal starts runs keeps to the finished one (better: name --run-dir)."""
    runs, finished = [], []
    if os.path.isdir(RUNS_DIR):
        for entry in os.scandir(RUNS_DIR):
            config_path = os.path.join(entry.path, CONFIG_FILE)
            if entry.is_dir() and os.path.isfile(config_path):
                runs.append((os.path.getmtime(config_path), entry.path))
                if os.path.isfile(os.path.join(entry.path, STAGE_ONE_FILE)) and (
                    stage_one_finished(entry.path)
                ):
                    finished.append(runs[-1])
    if not runs:
        raise InputError(
            f"no run folder in {RUNS_DIR}/: run trainstage1.py first, or pass --run-dir"
        )
    if not finished:
        newest = max(runs)[1]
        done, epochs = stage_one_progress(newest)
        raise InputError(
            f"no run folder in {RUNS_DIR}/ has finished its stage one (the newest, {newest}, "
            f"has {done} of {epochs} epochs): pass --run-dir {newest} to use it as it is, or "
            f"finish it with trainstage1.py --resume --run-dir {newest}"
        )
    return max(finished)[1]


def resolve_run_dir(run_dir):
    """--run-dir if given (it must exist), else the newest run (newest_run_dir), named."""
    if not run_dir:
        run_dir = newest_run_dir()
        print(f"run folder {run_dir} (the newest finished run)", flush=True)
        return run_dir
    if not os.path.isdir(run_dir):
        raise InputError(
            f"--run-dir {run_dir} does not exist: pass a folder made by trainstage1.py"
        )
    return run_dir
