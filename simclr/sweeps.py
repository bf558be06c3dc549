"""The paper's ablations as sweeps (sweep.py): each preset's grid, written once; the points a grid
expands to, each an ordinary stage-one run folder; the commands that make and measure a point;
its results read back into one record, and the records gathered into sweep.csv.

A point runs as a job of its own (submitit's, on this machine or on SLURM): run_point runs the
repository's scripts one after another in the job's process, as `python SCRIPT ARGS` would, and
writes the point's record last, so a record on disk means the point is finished, whatever happened
to the process that launched it. The record holds what the point was made and measured with (its
stage one's settings, as simclr/provenance.py resolves them; how it is measured, with the
measurements' recipe versions; each measurement's own provenance): a point is what made it, not
its folder's name. A point measured by an older recipe is measured again.
"""

import dataclasses
import itertools
import math
import os
import statistics
import sys
import time
import typing

from simclr import checkpoints, launchers, provenance, rundir
from simclr.errors import InputError

SWEEP_PREFIX = "sweep-"  # runs/sweep-NAME/
POINT_FILE = "sweep_point.json"  # in a point's run folder: its record, written when it finished
CSV_FILE, FIGURE_FILE, LOGS = "sweep.csv", "sweep.png", "logs"
SEED_FOLDER = "seed-{}"  # in a point's folder: its run at one seed, where the sweep runs several

SET_BY_THE_SWEEP = ("run_dir", "resume", "device")  # each point's own
# What to do about a damaged point record (rundir.damaged)
REMAKE_POINT = "remove it and run the sweep again with --resume, which measures the point again"
# Where a job or the machine decides the precision (SLURM's nodes), the sweep cannot know which will
# be in effect: a point is then compared by the precision asked for alone.
IN_EFFECT = "precision_in_effect"


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of a sweep: one setting (its name, from its settings) at one training seed, its
    stage-one flags and folders. The runs of one setting at several seeds share its name and its
    folder, RUN_DIR/seed-S each."""

    name: str
    settings: dict  # field name -> value as typed, the grid's keys only
    flags: tuple  # every stage-one flag but --run-dir, --resume and --device
    run_dir: str
    log_path: str
    seed: typing.Optional[int] = None  # the training seed, where the sweep runs several

    @property
    def run_name(self):
        """The point's name, and its seed where the sweep runs several: for lines and logs."""
        return self.name if self.seed is None else f"{self.name} seed {self.seed}"


def field_name(key, known):
    """A grid or --set key (batch-size or batch_size) -> the stage-one field it names."""
    name = key.strip().replace("-", "_")
    if name in SET_BY_THE_SWEEP:
        raise InputError(
            f"{key} is set by sweep.py for each point: leave it out of --grid and --set"
        )
    if name not in known:
        raise InputError(
            f"{key} is no flag of trainstage1.py: pass one of its flags (python trainstage1.py "
            f"--help), as KEY=VALUES"
        )
    return name


def parse_grid(items, known, single=False):
    """--grid KEY=V1,V2 ... (single: --set KEY=VALUE ...) -> {field name: [values]}."""
    grid = {}
    for item in items:
        key, equals, values = item.partition("=")
        split = [values] if single else [value for value in values.split(",") if value]
        if not equals or not split:
            raise InputError(f"{item} is not KEY=VALUES: write it as temperature=0.1,0.5")
        name = field_name(key, known)
        if name in grid:
            raise InputError(
                f"{key} is given twice ({','.join(grid[name])} and {values}): give each key once"
            )
        grid[name] = split
    return grid


def flag_words(name, value):
    """A field and its value as typed -> the trainstage1.py words: --blur / --no-blur for
    yes-or-no settings, a comma list for --augment's ops joined by +."""
    flag = "--" + name.replace("_", "-")
    if value.lower() in ("true", "false"):
        return [flag if value.lower() == "true" else "--no-" + flag[2:]]
    return [flag, value.replace("+", ",") if name == "augment" else value]


def point_name(settings):
    return "_".join(f"{key.replace('_', '-')}-{value}" for key, value in settings.items())


def training_seeds(base, seeds):
    """The training seeds of each setting (seeds of them, from the base's --seed on) and the one
    seed of the data they all draw (the base's --data-seed, else its --seed) -> (seeds, data
    seed); seeds None for one run per setting, made as a one-seed sweep always made it."""
    first = int(base.get("seed", 0))
    if seeds == 1:
        return None, None
    return list(range(first, first + seeds)), int(base.get("data_seed", first))


def expand(grids, base, sweep_dir, seeds=1):
    """The points of grids (each a {field: values}, their products joined, in order) over base
    (the scale's and --set's settings), each at seeds training seeds -> [Point], a setting's
    seeds side by side."""
    if seeds > 1 and any("seed" in grid or "data_seed" in grid for grid in grids):
        raise InputError(
            "--seeds runs every point at several training seeds: leave seed and data-seed out of "
            "--grid (--set seed=S sets the first)"
        )
    run_seeds, data_seed = training_seeds(base, seeds)
    points = []
    for grid in grids:
        for values in itertools.product(*grid.values()):
            settings = dict(zip(grid, values))
            name = point_name(settings)
            for seed in run_seeds or [None]:
                chosen = {**base, **settings}
                if seed is not None:
                    chosen |= {"seed": str(seed), "data_seed": str(data_seed)}
                flags = [word for key, value in chosen.items() for word in flag_words(key, value)]
                run_dir, log_name = os.path.join(sweep_dir, name), name
                if seed is not None:
                    seed_folder = SEED_FOLDER.format(seed)
                    run_dir, log_name = os.path.join(run_dir, seed_folder), f"{name}_{seed_folder}"
                log_path = os.path.join(sweep_dir, LOGS, f"{log_name}.log")
                points.append(Point(name, settings, tuple(flags), run_dir, log_path, seed))
    return points


def remeasured_for(record, measure):
    """What makes a finished point's measurements outdated against measure (a Job's): other
    recipe versions or another held-out fraction, in words, or '' where none does."""
    made = record.get("measure", {})
    reasons = []
    if made.get("versions") != measure["versions"]:
        reasons.append(
            f"other recipe versions ({made.get('versions') or 'none recorded'}; now "
            f"{measure['versions']})"
        )
    if made.get("validation_fraction", 0.0) != measure["validation_fraction"]:
        reasons.append(
            f"another --validation-fraction ({made.get('validation_fraction', 0.0):g}; now "
            f"{measure['validation_fraction']:g})"
        )
    return " and ".join(reasons)


def status(point, measure=None):
    """done (its record exists), outdated (its record exists, of measurements that measure, a
    Job's, would make otherwise: remeasured_for), running (a job that is making it is queued or
    running), stopped (its run folder exists, the record does not) or new."""
    record = record_of(point)
    if record is not None:
        return "outdated" if measure and remeasured_for(record, measure) else "done"
    if launchers.running_job(point):
        return "running"
    return "stopped" if rundir.holds_run(point.run_dir) else "new"


def made_with(point, settings_of):
    """-> (what a point on disk was made with, how it is measured), each None where nothing says
    (a new point): its record's, or while a job makes it the job's record's, or for a run stopped
    before its record the run's config.json. settings_of: a stage-one config dict -> its
    provenance.settings (sweep.py's, from config.Pretrain)."""
    record, job = record_of(point), launchers.job_of(point)
    if record is not None:
        return record.get("stage_one", {}), record.get("measure")
    if job is not None and "stage_one" in job and launchers.running_job(point):
        return job["stage_one"], job.get("measure")
    if rundir.holds_run(point.run_dir):
        run_record = rundir.read_run(point.run_dir)
        made = dict(run_record.config)
        if "precision" in run_record.derived:
            made[IN_EFFECT] = run_record.derived["precision"]
        return made, None
    return None, None


def check_seed_folders(point):
    """A point's folder holds one run (a sweep of one seed) or one run per seed (--seeds), never
    both: the sweep stops here, in one line, before the other kind is made beside it."""
    folder = point.run_dir if point.seed is None else os.path.dirname(point.run_dir)
    seeded = os.path.isdir(folder) and any(
        name.startswith(SEED_FOLDER.format("")) for name in os.listdir(folder)
    )
    if point.seed is not None and rundir.holds_run(folder):
        raise InputError(
            f"{folder} holds a run of one seed: sweep --seeds into another folder with --name, "
            f"or remove {folder}"
        )
    if point.seed is None and seeded:
        raise InputError(
            f"{folder} holds runs of several seeds: pass the --seeds they were made with, or "
            f"sweep into another folder with --name"
        )


def check_made_alike(job, settings_of):
    """A point on disk must have been made and, once measured, be measured as this sweep asks
    (job: its Job); else the sweep stops here, in one line, before anything runs: a point made
    otherwise is never reported as this sweep's. A measurement of an older recipe version is no
    reason to stop: the sweep measures the point again (status outdated). settings_of: a
    stage-one config dict -> its provenance.settings (sweep.py's, from config.Pretrain)."""
    check_seed_folders(job.point)
    stage_one, measure = made_with(job.point, settings_of)
    if stage_one is None:
        return
    made, asked = {"settings": settings_of(stage_one)}, {"settings": dict(job.stage_one)}
    if IN_EFFECT in stage_one and IN_EFFECT in job.stage_one:  # where both sides know it
        made["settings"][IN_EFFECT] = stage_one[IN_EFFECT]
    else:
        asked["settings"].pop(IN_EFFECT, None)
    if measure is not None:
        made["measure"] = {key: measure.get(key) for key in ("features", "linear_epochs")}
        asked["measure"] = {key: job.measure[key] for key in ("features", "linear_epochs")}
    if not stage_one or made != asked:
        before = made if stage_one else None  # a record of before points recorded their settings
        raise InputError(
            f"{job.point.run_dir} was made with "
            f"{provenance.differences(before, asked, 'this sweep')}: sweep into another folder "
            f"with --name, or remove {job.point.run_dir}"
        )


@dataclasses.dataclass(frozen=True)
class Job:
    """What one point's job runs: the point, which features to measure, where, and how."""

    point: Point
    features: tuple
    device: str
    resume: bool
    gpus: int  # 0: on CPUs; more than 1: stage one under torchrun with this many processes
    linear_epochs: int
    stage_one: dict  # the point's stage-one settings (provenance.settings), as its record keeps
    versions: dict  # the measurements' recipe versions: {"knn": N, "linear": M}
    validation_fraction: float = 0.0  # of the training images the linear probe holds out

    @property
    def measure(self):
        """How the point is measured, as its record keeps it."""
        measure = {"features": list(self.features), "linear_epochs": self.linear_epochs}
        measure |= {"validation_fraction": self.validation_fraction}
        return measure | {"versions": dict(self.versions)}

    def stage_one_command(self):
        """trainstage1.py's path and arguments (run in the job's process), or with several GPUs
        the whole torchrun command."""
        command = [os.path.join(launchers.ROOT, "trainstage1.py"), *self.point.flags]
        command += ["--run-dir", self.point.run_dir, "--device", self.device]
        command += ["--resume"] * self.resume
        if self.gpus > 1:
            torchrun = ["-m", "torch.distributed.run", "--standalone"]
            command = [sys.executable, *torchrun, f"--nproc_per_node={self.gpus}", *command]
        return command

    def measure_commands(self, proj_layers):
        """knn.py and a linear trainstage2.py on each feature; z is h where the head has no
        layers, so z is not measured again there."""
        features = self.features if proj_layers else ("h",)
        common = ["--run-dir", self.point.run_dir, "--device", self.device]
        epochs = ["--epochs", str(self.linear_epochs)]
        epochs += ["--validation-fraction", str(self.validation_fraction)]
        commands = []
        for which in features:
            commands.append([os.path.join(launchers.ROOT, "knn.py"), *common, "--features", which])
            # --replace: a point's evaluation is the sweep's to remake (a resumed stage one's)
            trainstage2 = [os.path.join(launchers.ROOT, "trainstage2.py"), *common, "--replace"]
            commands.append(trainstage2 + ["--features", which, *epochs])
        return commands


def run_point(job):
    """A point's job: stage one, then the measurements, each logged to the point's log -> its
    record (also written to RUN/sweep_point.json), or {"failed": what failed} when a script
    failed or stopped (a stopped stage one continues with --resume)."""
    started = time.perf_counter()
    point = job.point
    os.makedirs(os.path.dirname(point.log_path), exist_ok=True)
    os.environ.setdefault("MPLBACKEND", "Agg")
    record = {"point": point.name, "stage_one": job.stage_one, "measure": job.measure}
    try:
        with open(point.log_path, "a") as log:
            launchers.run_logged(job.stage_one_command(), log, in_process=job.gpus <= 1)
            run = rundir.read_run(point.run_dir)
            proj_layers = checkpoints.proj_layers_of(run.config)
            for command in job.measure_commands(proj_layers):
                launchers.run_logged(command, log)
        record |= results(point, job, proj_layers)
    except (launchers.PointFailed, InputError) as failure:
        return {"failed": str(failure)}
    if "precision" in run.derived:  # what the job's device made of --precision
        record["stage_one"] = {**job.stage_one, IN_EFFECT: run.derived["precision"]}
    record["seconds"] = round(time.perf_counter() - started, 1)
    rundir.write_json(os.path.join(point.run_dir, POINT_FILE), record)
    return record


def measured(results, what, features, job):
    """A linear evaluation's rundir.Results must be the one this point's job asked for: read from
    its provenance, not assumed from the folder's name -> (its test top-1, its validation
    top-1 or None)."""
    made = results.provenance or {}
    settings, measure = made.get("settings", {}), made.get("measure", {})
    found = (settings.get("mode"), settings.get("features"), settings.get("epochs"))
    found += (settings.get("validation_fraction", 0.0), measure.get("version"))
    asked = ("linear", features, job.linear_epochs, job.validation_fraction, job.versions["linear"])
    if found != asked:
        words = "{} on {} for {} epochs, validation fraction {}, recipe version {}"
        raise launchers.PointFailed(
            f"{what} holds {words.format(*found)}, not {words.format(*asked)}"
        )
    return results.top1, results.validation_top1


def results(point, job, proj_layers):
    """The point's kNN and linear top-1 (%) on each feature from the files the scripts wrote,
    and each measurement's provenance."""
    found, evaluations = {}, {}
    for which in job.features:
        measured_on = which if proj_layers else "h"  # no head: z is h
        knn = rundir.KnnResult.read(point.run_dir, measured_on)
        if knn.features != measured_on:
            raise launchers.PointFailed(
                f"{rundir.KnnResult.file(measured_on)} holds kNN on {knn.features}, not on "
                f"{measured_on}"
            )
        from_head_layer = proj_layers if measured_on == "z" else 0
        name = rundir.evaluation_name("linear", from_head_layer=from_head_layer)
        folder = rundir.evaluation_dir(point.run_dir, name or "")
        linear = rundir.Results.read(folder)
        found[f"knn_{which}"] = knn.knn_top1
        found[f"linear_{which}"], validation = measured(linear, folder, measured_on, job)
        if validation is not None:
            found[f"linear_val_{which}"] = validation
        evaluations |= {f"knn_{which}": knn.provenance, f"linear_{which}": linear.provenance}
    return found | {"evaluations": evaluations}


def record_of(point):
    """A finished point's record, else None; a damaged one is named in one line."""
    path = os.path.join(point.run_dir, POINT_FILE)
    if not os.path.isfile(path):
        return None
    record = rundir.read_json(path, REMAKE_POINT)
    for key in ("stage_one", "measure"):
        if not isinstance(record.get(key, {}), dict):
            raise rundir.damaged(path, f"its {key} is {record[key]!r}", REMAKE_POINT)
    return record


# A point's figures in sweep.csv, each by feature: FIGURE_{h,z}_top1 and its standard error
FIGURES = ("knn", "linear", "linear_val")
STATES = ("running", "stopped", "outdated", "new")  # a setting's, where not every seed is done


def mean_and_error(values):
    """-> (the mean of a setting's figures over its seeds, its standard error: their sample
    standard deviation over the square root of their number, '' for one seed), in percent
    rounded to hundredths of a point: what one of CIFAR-10's 10,000 test images is worth."""
    mean = round(statistics.fmean(values), 2)
    if len(values) < 2:
        return mean, ""
    return mean, round(statistics.stdev(values) / math.sqrt(len(values)), 2)


def csv_rows(points, features, measure=None):
    """sweep.csv's rows: one per setting, its settings; the mean and standard error over its
    seeds done of each figure (empty where none is done, or measured otherwise than measure, a
    Job's, would: status); how many seeds are done of how many; the mean seconds; its folder;
    its status (done where every seed is); and its rank by the linear probe's validation top-1
    on the first feature (held-out training images, never the test split), 1 the best."""
    keys = list(dict.fromkeys(key for point in points for key in point.settings))
    settings_points = {}
    for point in points:
        settings_points.setdefault(point.name, []).append(point)
    rows = []
    for name, runs in settings_points.items():
        states = [status(point, measure) for point in runs]
        records = [record_of(p) for p, state in zip(runs, states) if state == "done"]
        row = {"point": name, **{key: runs[0].settings.get(key, "") for key in keys}}
        for which in features:
            for figure in FIGURES:
                column = f"{figure}_{which}_top1"
                found = [r[f"{figure}_{which}"] for r in records if f"{figure}_{which}" in r]
                row[column], row[f"{column}_se"] = mean_and_error(found) if found else ("", "")
        seconds = [record["seconds"] for record in records if "seconds" in record]
        row["seeds"] = f"{len(records)} of {len(runs)}"
        row["seconds"] = round(statistics.fmean(seconds)) if seconds else ""
        row["run_dir"] = (
            os.path.dirname(runs[0].run_dir) if runs[0].seed is not None else runs[0].run_dir
        )
        done = all(state == "done" for state in states)
        row["status"] = "done" if done else next(s for s in STATES if s in states)
        rows.append(row)
    ranked = f"linear_val_{features[0]}_top1"
    order = [row for row in rows if row["status"] == "done" and row[ranked] != ""]
    for row in rows:  # a tie shares its rank: 1, 1, 3
        row["rank"] = ""
        if row in order:
            row["rank"] = 1 + sum(other[ranked] > row[ranked] for other in order)
    return rows


def chance_top1(points):
    """The top-1 (%) of guessing, 100 / the classes, as the first point that ran recorded them;
    None before any ran."""
    for point in points:
        if rundir.holds_run(point.run_dir):
            classes = rundir.read_run(point.run_dir).derived.get("classes")
            return 100 / classes if classes else None
    return None
