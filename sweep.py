"""The paper's ablations, one command each: every point an ordinary stage-one run folder
runs/sweep-NAME/POINT/ made by trainstage1.py, then measured by knn.py and a linear trainstage2.py
(on h, and on z where the preset is about the head). Writes runs/sweep-NAME/sweep.csv (one row per
point) and sweep.png (the paper's figure, the paper's numbers beside ours where it has them), and
each point's output to runs/sweep-NAME/logs/POINT.log. Run the same command again: finished points
are skipped, a stopped one continues with --resume, a failed one is reported and the rest go on.

    python sweep.py head --scale cpu --dataset folder --data-dir ./cifar10-folder
    python sweep.py --grid temperature=0.1,0.5 batch-size=128,256 --set epochs=5 --name tau
    python sweep.py temperature --scale paper --launcher slurm --partition gpu --gpus-per-point 4
"""

import dataclasses
import os
import signal

import matplotlib

matplotlib.use("Agg")  # before pyplot: draws to files, over ssh and in CI alike
import matplotlib.pyplot as plt  # noqa: E402

import config  # noqa: E402
from simclr import ablations, errors, evaluate, provenance, rundir, runtime  # noqa: E402
from simclr import launchers, sweep_figure, sweeps  # noqa: E402


STAGE_ONE_FIELDS = {field.name for field in dataclasses.fields(config.Pretrain)}  # --grid's keys


def chosen_grids(cfg):
    """-> (the preset or None, its grids for the scale or --grid's, the sweep's name)."""
    if bool(cfg.preset) == bool(cfg.grid):
        raise errors.InputError(
            f"pass a preset ({', '.join(ablations.PRESETS)}) or --grid KEY=V1,V2 ..., one "
            f"of the two"
        )
    if cfg.grid:
        grid = sweeps.parse_grid(cfg.grid, STAGE_ONE_FIELDS)
        return None, [grid], cfg.name or "-".join(key.replace("_", "-") for key in grid)
    if cfg.preset not in ablations.PRESETS:
        raise errors.InputError(
            f"{cfg.preset} is no preset: pass one of {', '.join(ablations.PRESETS)}, or --grid"
        )
    preset = ablations.PRESETS[cfg.preset]
    return preset, preset.grids.get(cfg.scale, preset.grids.get("any")), cfg.name or cfg.preset


def base_settings(cfg):
    """Every point's stage-one settings before its own: the scale's, the data, then --set."""
    settings = {**ablations.SCALES[cfg.scale], "dataset": cfg.dataset, "data_dir": cfg.data_dir}
    return settings | {
        key: values[0]
        for key, values in sweeps.parse_grid(cfg.set, STAGE_ONE_FIELDS, single=True).items()
    }


def stage_one_settings(point, in_effect=None):
    """A point's stage-one settings as trainstage1.py reads its flags (a value its flag refuses
    stops the sweep here, in one line, before any point runs), those that make its numbers
    (provenance.settings); in_effect: the device the points run on (the local launcher's), to add
    the precision that will be in effect there."""
    pretrain = config.with_dataset_defaults(config.parse(config.Pretrain, list(point.flags)))
    config.augmentation_ops(pretrain)
    settings = provenance.settings(pretrain)
    if in_effect is not None:
        dtype, _ = runtime.autocast_choice(pretrain.precision, in_effect)
        settings[sweeps.IN_EFFECT] = runtime.precision_in_effect(dtype)
    return settings


def settings_of(values):
    """A stage-one config dict (config.json's, a point's record) -> its provenance.settings."""
    return provenance.settings_of_record(config.Pretrain, values)


def points_to_run(jobs, resume):
    """The jobs of the points not finished; a stopped one only with --resume (else it is named
    and left), one whose job still runs never; one measured by an older recipe is measured
    again (its stage one, finished, is not trained again)."""
    todo = []
    for job in jobs:
        point, state = job.point, sweeps.status(job.point, job.measure)
        if state == "done":
            print(f"{point.run_name}: done, skipped ({point.run_dir})")
        elif state == "outdated":
            why = sweeps.remeasured_for(sweeps.record_of(point), job.measure)
            print(f"{point.run_name}: measured with {why}: measuring it again")
            todo.append(dataclasses.replace(job, resume=True))
        elif state == "running":
            print(
                f"{point.run_name}: {launchers.running_job(point)}: not launched again (if that job "
                f"is gone, remove {os.path.join(point.run_dir, launchers.JOB_FILE)})"
            )
        elif state == "stopped" and not resume:
            print(f"{point.run_name}: stopped before it finished ({point.run_dir}): add --resume")
        else:
            todo.append(dataclasses.replace(job, resume=state == "stopped"))
    return todo


def launch(cfg, jobs, sweep_dir, name):
    """Run the jobs through the launcher, a line as each point ends (with the time the rest may
    take, at the mean pace so far). Ctrl-C stops the sweep in one line: the point that was
    running continues with --resume."""
    seconds, ended = [], []

    def finished(job, record):
        point = job.point
        ended.append(point.name)
        if "failed" in record:
            print(
                f"error: point {point.run_name} failed: {record['failed']} (folder "
                f"{point.run_dir}, "
                f"log {point.log_path}); the sweep goes on"
            )
            return
        seconds.append(record["seconds"])
        numbers = ", ".join(
            f"{key} {value:.2f}%"
            for key, value in record.items()
            if key.startswith(("knn", "linear"))
        )
        left = (len(jobs) - len(ended)) * sum(seconds) / len(seconds) / 60
        print(
            f"{point.run_name} ({len(ended)}/{len(jobs)}): {numbers} in {record['seconds']:.0f} s; "
            f"about {left:.0f} min to go"
        )

    try:
        run_jobs(cfg, jobs, sweep_dir, name, finished)
    except KeyboardInterrupt:
        raise errors.Stopped(
            f"stopped by SIGINT: {len(ended)} of the {len(jobs)} points to run ended; run the same "
            f"command again to go on, with --resume for a point stopped midway",
            signal.SIGINT,
        ) from None


def run_jobs(cfg, jobs, sweep_dir, name, finished):
    """The jobs through the launcher cfg names (or, with --dry-run, the SLURM jobs' sbatch lines)."""
    if cfg.launcher == "slurm":
        parameters = launchers.slurm_parameters(
            f"sweep-{name}", cfg.partition, cfg.gpus_per_point, cfg.cpus_per_gpu, cfg.slurm_time
        )
        if cfg.dry_run:
            print(launchers.slurm_script(sweep_dir, parameters))
        else:
            launchers.run_slurm(jobs, sweeps.run_point, sweep_dir, parameters, finished)
    elif not cfg.dry_run:
        launchers.run_local(
            jobs, sweeps.run_point, sweep_dir, runtime.visible_gpus(cfg.device), finished
        )


def write_outputs(sweep_dir, jobs, preset, drawn, title):
    """sweep.csv and sweep.png from every point's record, done or not (jobs: every point's);
    drawn: (the grid's keys, the figure's kind) -> whether every point is done."""
    keys, kind = drawn
    points, features = [job.point for job in jobs], jobs[0].features
    rows = sweeps.csv_rows(points, features, jobs[0].measure)
    rundir.write_csv(os.path.join(sweep_dir, sweeps.CSV_FILE), rows)
    chance = sweeps.chance_top1(points)
    figure = sweep_figure.draw(plt, rows, keys, kind, preset, title, chance)
    figure.savefig(os.path.join(sweep_dir, sweeps.FIGURE_FILE), dpi=110)
    plt.close(figure)
    done = sum(row["status"] == "done" for row in rows)
    written = f"{sweep_dir}/{sweeps.CSV_FILE} and {sweeps.FIGURE_FILE}"
    print(f"wrote {written}: {done} of {len(rows)} points done")
    print_ranking(rows, features[0])
    return done == len(rows)


def print_ranking(rows, feature):
    """The points done, best first, by the linear probe's top-1 on held-out training images."""
    ranked = sorted((row for row in rows if row["rank"] != ""), key=lambda row: row["rank"])
    if not ranked:
        return
    column = f"linear_val_{feature}_top1"

    def figure(row):
        error = f" ± {row[f'{column}_se']:.2f}" if row[f"{column}_se"] != "" else ""
        return f"{row['rank']}. {row['point']} {row[column]:.2f}%{error}"

    print(
        f"ranked by the linear probe's validation top-1 on {feature} (held-out training images, "
        f"never the test split; mean ± standard error over the seeds): "
        + ", ".join(figure(row) for row in ranked)
    )


def measure_versions():
    """The recipe versions of a point's measurements, as its record keeps them."""
    return {"knn": evaluate.KNN_VERSION, "linear": config.STAGE_TWO_MODES["linear"].version}


def jobs_for(cfg, points, features):
    """Each point's job: its stage-one settings, what to measure and where. A point already on
    disk made or measured otherwise stops the sweep here, before anything runs. The local
    launcher's points run on this machine, so the precision in effect there is known here."""
    gpus = cfg.gpus_per_point if cfg.launcher == "slurm" else 1  # local: one GPU per point
    here = runtime.pick_device(cfg.device) if cfg.launcher == "local" else None
    jobs = []
    for point in points:
        job = sweeps.Job(
            point,
            features,
            cfg.device,
            resume=False,
            gpus=gpus,
            linear_epochs=cfg.linear_epochs or config.LINEAR_EPOCHS,
            stage_one=stage_one_settings(point, here),
            versions=measure_versions(),
            validation_fraction=cfg.validation_fraction,
        )
        sweeps.check_made_alike(job, settings_of)
        jobs.append(job)
    return jobs


def figure_kind(preset, keys, points):
    """The preset's; a --grid of one numeric setting draws lines, any other grid bars."""
    if preset:
        return preset.figure
    numeric = all(sweep_figure.is_number(point.settings[keys[0]]) for point in points)
    return "lines" if len(keys) == 1 and numeric else "bars"


def made_with(jobs, keys):
    """What every point was made and measured with, for the figure's title: the settings the
    points share that the grid does not vary."""
    settings, measure = jobs[0].stage_one, jobs[0].measure
    subset = f"{int(settings['subset']):,} images" if settings["subset"] else "all images"
    subset += f" at {settings['image_size']} px"
    shared = [
        f"{settings['arch']}",
        f"{settings['dataset']} ({subset})",
        f"{runtime.counted(settings['epochs'], 'epoch')}",
        f"batch {settings['batch_size']}",
    ]
    varied = {"arch", "dataset", "subset", "epochs", "batch_size"} & set(keys)
    shown = [
        text
        for text, key in zip(shared, ("arch", "dataset", "epochs", "batch_size"))
        if key not in varied
    ]
    return f"{', '.join(shown)}; linear probe {measure['linear_epochs']} epochs"


@errors.one_line_errors
def main(argv=None):
    cfg = config.parse(config.Sweep, argv)
    preset, grids, name = chosen_grids(cfg)
    sweep_dir = os.path.join(rundir.RUNS_DIR, sweeps.SWEEP_PREFIX + name)
    points = sweeps.expand(grids, base_settings(cfg), sweep_dir, cfg.seeds)
    features = preset.features if preset else ("h",)
    jobs = jobs_for(cfg, points, features)
    to_run = jobs if cfg.dry_run else points_to_run(jobs, cfg.resume)
    settings = len({point.name for point in points})
    runs = f" at {cfg.seeds} seeds each" if cfg.seeds > 1 else ""
    print(
        f"sweep {name}: {runtime.counted(settings, 'point')}{runs}, "
        f"{runtime.counted(len(to_run), 'run')} to make, {cfg.launcher} "
        f"launcher; each run's output in {os.path.join(sweep_dir, sweeps.LOGS)}/"
    )
    if cfg.dry_run:
        for job in to_run:
            print(f"{job.point.run_name}:\n  {shown_command(job.stage_one_command())}")
    launch(cfg, to_run, sweep_dir, name)
    if cfg.dry_run:
        return 0
    keys = list(dict.fromkeys(key for grid in grids for key in grid))
    title = f"sweep {name}: {made_with(jobs, keys)}"
    if cfg.seeds > 1:
        title += f"; mean and standard error of {cfg.seeds} training seeds"
    drawn = (keys, figure_kind(preset, keys, points))
    return 0 if write_outputs(sweep_dir, jobs, preset, drawn, title) else 1


def shown_command(command):
    """A command as typed: python before a script that runs in the job's process."""
    return " ".join(["python", *command] if command[0].endswith(".py") else command)


if __name__ == "__main__":
    main()
