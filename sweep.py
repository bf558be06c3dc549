"""The paper's ablations, one command each: every point an ordinary stage-one run folder
runs/sweep-NAME/POINT/ made by trainstage1.py, then measured by knn.py and a linear trainstage2.py
(on h, and on z where the preset is about the head). Writes runs/sweep-NAME/sweep.csv (one row per
point) and sweep.png (the paper's figure, the paper's numbers beside ours where it has them), and
each point's output to runs/sweep-NAME/logs/POINT.log. Run the same command again: finished points
are skipped, a stopped one continues with --resume, a failed one is reported and the rest go on.

    python sweep.py head --scale cpu --dataset folder --data-dir ./cifar10-jpeg
    python sweep.py --grid temperature=0.1,0.5 batch-size=128,256 --set epochs=5 --name tau
    python sweep.py temperature --scale paper --launcher slurm --partition gpu --gpus-per-point 4
"""

import dataclasses
import os

import matplotlib

matplotlib.use("Agg")  # before pyplot: draws to files, over ssh and in CI alike
import matplotlib.pyplot as plt  # noqa: E402

import config  # noqa: E402
from simclr import errors, rundir, runtime, sweep_figure, sweeps  # noqa: E402


STAGE_ONE_FIELDS = {field.name for field in dataclasses.fields(config.Pretrain)}  # --grid's keys


def chosen_grids(cfg):
    """-> (the preset or None, its grids for the scale or --grid's, the sweep's name)."""
    if bool(cfg.preset) == bool(cfg.grid):
        raise errors.InputError(
            f"pass a preset ({', '.join(config.SWEEP_PRESETS)}) or --grid KEY=V1,V2 ..., one "
            f"of the two"
        )
    if cfg.grid:
        grid = sweeps.parse_grid(cfg.grid, STAGE_ONE_FIELDS)
        return None, [grid], cfg.name or "-".join(key.replace("_", "-") for key in grid)
    if cfg.preset not in sweeps.PRESETS:
        raise errors.InputError(
            f"{cfg.preset} is no preset: pass one of {', '.join(config.SWEEP_PRESETS)}, or --grid"
        )
    preset = sweeps.PRESETS[cfg.preset]
    return preset, preset.grids.get(cfg.scale, preset.grids.get("any")), cfg.name or cfg.preset


def base_settings(cfg):
    """Every point's stage-one settings before its own: the scale's, the data, then --set."""
    settings = {**sweeps.SCALES[cfg.scale], "dataset": cfg.dataset, "data_dir": cfg.data_dir}
    return settings | {
        key: values[0]
        for key, values in sweeps.parse_grid(cfg.set, STAGE_ONE_FIELDS, single=True).items()
    }


def check_points(points):
    """Each point's flags, read as trainstage1.py reads them: a value its flag refuses stops the
    sweep here, in one line, before any point runs."""
    for point in points:
        pretrain = config.with_dataset_defaults(config.parse(config.Pretrain, list(point.flags)))
        config.augmentation_ops(pretrain)


def points_to_run(points, resume):
    """The points not finished; a stopped one only with --resume (else it is named and left)."""
    todo = []
    for point in points:
        state = sweeps.status(point)
        if state == "done":
            print(f"{point.name}: done, skipped ({point.run_dir})")
        elif state == "stopped" and not resume:
            print(f"{point.name}: stopped before it finished ({point.run_dir}): add --resume")
        else:
            todo.append(point)
    return todo


def launch(cfg, jobs, sweep_dir, name):
    """Run the jobs through the launcher, a line as each point ends (with the time the rest may
    take, at the mean pace so far) -> the names of the points that failed."""
    failed, seconds = [], []

    def finished(job, record):
        point, ended = job.point, len(failed) + len(seconds) + 1
        if "failed" in record:
            failed.append(point.name)
            print(
                f"error: point {point.name} failed: {record['failed']} (folder {point.run_dir}, "
                f"log {point.log_path}); the sweep goes on"
            )
            return
        seconds.append(record["seconds"])
        numbers = ", ".join(
            f"{key} {value:.2f}%"
            for key, value in record.items()
            if key.startswith(("knn", "linear"))
        )
        left = (len(jobs) - ended) * sum(seconds) / len(seconds) / 60
        print(
            f"{point.name} ({ended}/{len(jobs)}): {numbers} in {record['seconds']:.0f} s; "
            f"about {left:.0f} min to go"
        )

    if cfg.launcher == "slurm":
        parameters = sweeps.slurm_parameters(
            f"sweep-{name}", cfg.partition, cfg.gpus_per_point, cfg.cpus_per_gpu, cfg.slurm_time
        )
        if cfg.dry_run:
            print(sweeps.slurm_script(sweep_dir, parameters))
        else:
            sweeps.run_slurm(jobs, sweep_dir, parameters, finished)
    elif not cfg.dry_run:
        sweeps.run_local(jobs, sweep_dir, runtime.visible_gpus(cfg.device), finished)
    return failed


def write_outputs(sweep_dir, points, preset, drawn, title):
    """sweep.csv and sweep.png from every point's record, done or not; drawn: (the grid's keys,
    the figure's kind)."""
    keys, kind = drawn
    rows = sweeps.csv_rows(points, preset.features if preset else ("h",))
    rundir.write_csv(os.path.join(sweep_dir, sweeps.CSV_FILE), rows)
    figure = sweep_figure.draw(plt, rows, keys, kind, preset, title)
    figure.savefig(os.path.join(sweep_dir, sweeps.FIGURE_FILE), dpi=110)
    plt.close(figure)
    done = sum(row["status"] == "done" for row in rows)
    written = f"{sweep_dir}/{sweeps.CSV_FILE} and {sweeps.FIGURE_FILE}"
    print(f"wrote {written}: {done} of {len(rows)} points done")


def jobs_for(cfg, points, features):
    """Each point's job: what to measure, where, and whether its stage one continues."""
    gpus = cfg.gpus_per_point if cfg.launcher == "slurm" else 1  # local: one GPU per point
    return [
        sweeps.Job(
            point,
            features,
            cfg.device,
            resume=cfg.resume and sweeps.status(point) == "stopped",
            gpus=gpus,
            linear_epochs=cfg.linear_epochs,
        )
        for point in points
    ]


def figure_kind(preset, keys, points):
    """The preset's; a --grid of one numeric setting draws lines, any other grid bars."""
    if preset:
        return preset.figure
    numeric = all(sweep_figure.is_number(point.settings[keys[0]]) for point in points)
    return "lines" if len(keys) == 1 and numeric else "bars"


@errors.one_line_errors
def main(argv=None):
    cfg = config.parse(config.Sweep, argv)
    preset, grids, name = chosen_grids(cfg)
    sweep_dir = os.path.join(rundir.RUNS_DIR, sweeps.SWEEP_PREFIX + name)
    points = sweeps.expand(grids, base_settings(cfg), sweep_dir)
    check_points(points)
    features = preset.features if preset else ("h",)
    jobs = jobs_for(cfg, points if cfg.dry_run else points_to_run(points, cfg.resume), features)
    print(
        f"sweep {name}: {len(points)} points, {len(jobs)} to run, {cfg.launcher} launcher; each "
        f"point's output in {os.path.join(sweep_dir, sweeps.LOGS)}/"
    )
    if cfg.dry_run:
        for job in jobs:
            print(f"{job.point.name}:\n  {' '.join(job.stage_one_command())}")
    failed = launch(cfg, jobs, sweep_dir, name)
    if cfg.dry_run:
        return 0
    keys = list(dict.fromkeys(key for grid in grids for key in grid))
    title = f"sweep {name}: {cfg.scale} scale, {cfg.dataset}"
    write_outputs(sweep_dir, points, preset, (keys, figure_kind(preset, keys, points)), title)
    return 1 if failed else 0


if __name__ == "__main__":
    main()
