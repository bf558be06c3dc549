"""sweep.py: grids expand as written, bad grids stop before anything runs, points run through the
local launcher and are skipped when done, a failed point is reported and the sweep goes on, a
stopped one continues with --resume, and the SLURM job it would submit."""

import dataclasses
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import types

import matplotlib
import pytest
import torch
from conftest import ROOT, assert_documented, load_script, run_main, signal_after_calls, results_of
from conftest import stage1_args, write_image_folder

import config
from simclr import ablations, launchers, rundir, sweep_figure, sweeps

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402

real_draw = sweep_figure.draw  # sweep.png's drawing, before a test wraps it

KNOWN = {"temperature", "batch_size", "blur", "augment", "head", "epochs"}
VERSIONS = {"knn": 1, "linear": 2}  # the measurements' recipe versions today


def test_the_grid_expands_as_written(tmp_path):
    grid = sweeps.parse_grid(["temperature=0.1,0.5", "batch-size=8,16"], KNOWN)
    assert grid == {"temperature": ["0.1", "0.5"], "batch_size": ["8", "16"]}
    base = {"epochs": "3", "batch_size": "4"}
    points = sweeps.expand([grid], base, str(tmp_path))
    assert [point.name for point in points] == [
        "temperature-0.1_batch-size-8",
        "temperature-0.1_batch-size-16",
        "temperature-0.5_batch-size-8",
        "temperature-0.5_batch-size-16",
    ]
    # the point's own values replace the base's; each flag once
    assert points[1].flags == ("--epochs", "3", "--batch-size", "16", "--temperature", "0.1")
    assert points[1].run_dir == os.path.join(tmp_path, "temperature-0.1_batch-size-16")
    words = sweeps.expand([{"blur": ["true", "false"], "augment": ["crop+color"]}], {}, "s")
    assert [point.flags for point in words] == [
        ("--blur", "--augment", "crop,color"),
        ("--no-blur", "--augment", "crop,color"),
    ]


def test_the_presets_are_the_papers_grids():
    def names(preset, scale="cpu"):
        grids = ablations.PRESETS[preset].grids
        return [point.name for point in sweeps.expand(grids.get(scale, grids.get("any")), {}, "s")]

    assert names("head") == ["head-none", "head-linear", "head-mlp"]
    assert ablations.PRESETS["head"].features == ("h", "z")
    assert names("color")[-1] == "color-strength-1_blur-true" and len(names("color")) == 5
    pairs = sweeps.expand(ablations.PRESETS["augment-pairs"].grids["any"], {}, "s")
    assert len(pairs) == 4 + 6 and all("--one-branch" in point.flags for point in pairs)
    assert len(names("batch-epochs", "paper")) == 5 * 4 and len(names("batch-epochs")) == 9
    # the paper's numbers name points that the preset makes
    for preset in ablations.PRESETS.values():
        made = {p.name for grids in preset.grids.values() for p in sweeps.expand(grids, {}, "s")}
        assert set(preset.paper) <= made


@pytest.mark.parametrize(
    "argv, documented",
    [
        (["--grid", "colour=0.5"], True),
        (["--grid", "temperature"], True),
        (["--grid", "run-dir=a,b"], True),
        (["--grid", "head=none", "--set", "proj-layers=3"], True),
        (["--grid", "augment=crop+rotate"], True),
        (["head", "--grid", "temperature=0.5"], True),
        ([], True),
        (["heads"], True),
        (["--grid", "head=mpl"], False),  # argparse's own wording, as trainstage1.py says it
        (["--grid", "temperature=-1"], False),
    ],
)
def test_a_bad_grid_stops_before_anything_runs_in_one_line(
    argv, documented, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    code, out, errors = run_main("sweep", [*argv, "--device", "cpu"], capsys)
    assert code == 2 and len(errors) == 1, errors
    assert "error:" in errors[0]
    if documented:
        assert_documented(errors[0])
    assert not os.path.exists(tmp_path / rundir.RUNS_DIR)  # nothing ran, nothing was written


def test_the_slurm_job_it_would_submit(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [
        "head",
        "--launcher",
        "slurm",
        "--dry-run",
        "--partition",
        "gpu",
        "--gpus-per-point",
        "2",
    ]
    code, out, _ = run_main("sweep", [*argv, "--slurm-time", "60", "--dataset", "folder"], capsys)
    assert code == 0
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --time=60",
                 "#SBATCH --cpus-per-task=16", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --job-name=sweep-head", f"export PYTHONPATH={ROOT}"):  # fmt: skip
        assert line in out, line
    assert "runs/sweep-head/submitit/%j" in out  # the job engine's files beside the points
    for head in ("none", "linear", "mlp"):
        command = next(line for line in out.splitlines() if f"--head {head}" in line)
        assert "-m torch.distributed.run --standalone --nproc_per_node=2" in command
        assert f"--run-dir runs/sweep-head/head-{head}" in command
        assert "--arch resnet18 --subset 2000" in command  # the cpu scale's
    assert not os.path.exists(tmp_path / rundir.RUNS_DIR)
    point = sweeps.expand([{"head": ["mlp"]}], {}, "s")[0]
    one_gpu = sweeps.Job(point, ("h",), "cuda", False, 1, 100, stage_one={}, versions=VERSIONS)
    assert "torch.distributed.run" not in one_gpu.stage_one_command()


def test_the_figure_draws_what_is_done_and_names_what_is_missing():
    rows = [
        {"point": "augment-crop", "augment": "crop", "linear_h_top1": "30.0", "status": "done"},
        {"point": "augment-crop+color", "augment": "crop+color", "linear_h_top1": "40.0",
         "status": "done"},
        {"point": "augment-color", "augment": "color", "linear_h_top1": "", "status": "new"},
    ]  # fmt: skip
    preset = ablations.PRESETS["augment-pairs"]
    figure = sweep_figure.draw(plt, rows, ["augment", "one_branch"], "matrix", preset, "sweep x")
    title = figure._suptitle.get_text()
    assert "1 of 3 points missing (not drawn): augment-color" in title.replace("\n", " ")
    cells = figure.axes[0].images[0].get_array()
    assert cells[0, 1] == cells[1, 0] == 40.0 and cells[0, 0] == 30.0  # a pair is symmetric
    assert cells.mask[1, 1]  # colour alone: missing
    plt.close(figure)


@pytest.mark.long
def test_a_sweep_runs_its_points_skips_them_when_done_and_goes_on_past_a_failure(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    images = write_image_folder(tmp_path / "images")
    common = ["--name", "tiny", "--dataset", "folder", "--data-dir", images, "--linear-epochs", "1"]
    common += ["--device", "cpu", "--set", "image-size=16", "workers=0"]
    common += ["--set", "precision=fp32", "knn-every=0"]  # --set twice: the values add up
    # the point that fails comes first: the one after it still runs
    first = ["--grid", "batch-size=1000,8", *common, "--set", "epochs=1"]
    code, out, _ = run_main("sweep", first, capsys)
    assert code == 1, out  # a point failed
    sweep_dir = tmp_path / "runs" / "sweep-tiny"
    failure = next(line for line in out.splitlines() if line.startswith("error: point"))
    assert "batch-size-1000 failed: trainstage1.py exited with 2" in failure
    assert "runs/sweep-tiny/logs/batch-size-1000.log" in failure
    rows = rundir.read_csv(sweep_dir / "sweep.csv")
    assert [(row["point"], row["status"]) for row in rows] == [
        ("batch-size-1000", "new"),
        ("batch-size-8", "done"),
    ]
    assert rows[0]["linear_h_top1"] == ""
    point_dir = tmp_path / rows[1]["run_dir"]
    record = rundir.read_json(point_dir / sweeps.POINT_FILE)
    assert float(rows[1]["linear_h_top1"]) == round(record["linear_h"], 2)
    assert float(rows[1]["knn_h_top1"]) == round(record["knn_h"], 2)
    assert float(rows[1]["linear_val_h_top1"]) == round(record["linear_val_h"], 2)
    assert rows[1]["rank"] == "1" and rows[0]["rank"] == ""
    # the record holds every setting the point was made and measured with, as they were used
    assert record["measure"] == {
        "features": ["h"], "linear_epochs": 1, "validation_fraction": 0.1, "versions": VERSIONS
    }  # fmt: skip
    assert results_of(point_dir)["epochs"] == 1  # --linear-epochs 1
    made = rundir.read_json(point_dir / "config.json")
    sweep = load_script("sweep")
    assert record["stage_one"] == sweep.settings_of(made["config"]) | {
        sweeps.IN_EFFECT: made["derived"]["precision"]
    }
    assert record["stage_one"]["data_dir"] == str(images)  # absolute, as the run used it
    assert (record["stage_one"]["epochs"], record["stage_one"]["precision"]) == (1, "fp32")
    assert (sweep_dir / "sweep.png").stat().st_size > 0
    checkpoint = point_dir / "stage1_last.pth"
    trained_at = checkpoint.stat().st_mtime_ns

    finished = ["--grid", "batch-size=8", *common, "--set", "epochs=1"]
    code, out, _ = run_main("sweep", finished, capsys)
    assert code == 0 and "batch-size-8: done, skipped" in out and "0 runs to make" in out
    assert checkpoint.stat().st_mtime_ns == trained_at
    # the data folder as ./images: the same folder, the same point
    relative = [word if word != images else "./images" for word in finished]
    code, out, _ = run_main("sweep", relative, capsys)
    assert code == 0 and "batch-size-8: done, skipped" in out

    # measured by an older probe, as an older commit recorded it (no recipe versions; the
    # evaluation's settings alone): measured again, its stage one not trained again
    old_record = {key: value for key, value in record.items() if key != "evaluations"}
    old_record["measure"] = {"features": ["h"], "linear_epochs": 1}
    old_record["linear_h"] = 26.2
    rundir.write_json(point_dir / sweeps.POINT_FILE, old_record)
    old_results = rundir.with_settings(rundir.read_json(point_dir / "results.json"))
    old_results["settings"] = old_results.pop("provenance")["settings"]
    rundir.write_json(point_dir / "results.json", old_results | {"top1": 26.2})
    code, out, _ = run_main("sweep", finished, capsys)
    assert code == 0, out
    assert "batch-size-8: measured with other recipe versions (none recorded; now" in out
    assert "and another --validation-fraction (0; now 0.1): measuring it again" in out
    assert "1 run to make" in out and checkpoint.stat().st_mtime_ns == trained_at
    remeasured = rundir.read_json(point_dir / sweeps.POINT_FILE)
    assert remeasured["measure"]["versions"] == VERSIONS
    results = rundir.read_json(point_dir / "results.json")
    assert results["provenance"]["measure"] == {"recipe": "linear", "version": 2}
    assert remeasured["linear_h"] == results["top1"] == record["linear_h"]  # the same probe
    assert remeasured["evaluations"]["linear_h"] == results["provenance"]

    # the same sweep asking for 2 epochs never takes the 1-epoch point as its own
    asked = ["--grid", "batch-size=8", *common, "--set", "epochs=2"]
    code, out, errors = run_main("sweep", asked, capsys)
    assert code == 2 and errors == [
        f"error: {os.path.join('runs', 'sweep-tiny', 'batch-size-8')} was made with --epochs 1 "
        f"(this sweep: 2): sweep into another folder with --name, or remove "
        f"{os.path.join('runs', 'sweep-tiny', 'batch-size-8')}"
    ]
    assert_documented(errors[0])
    assert checkpoint.stat().st_mtime_ns == trained_at

    # a point stopped before its record was written waits for --resume, then finishes
    os.remove(point_dir / sweeps.POINT_FILE)
    code, out, _ = run_main("sweep", finished, capsys)
    assert code == 1  # a point is not done
    assert "batch-size-8: stopped before it finished" in out
    assert "add --resume" in out and "0 runs to make" in out and "0 of 1 points done" in out
    code, out, _ = run_main("sweep", [*finished, "--resume"], capsys)
    assert code == 0, out
    assert "already finished all 1 epochs" in (sweep_dir / "logs" / "batch-size-8.log").read_text()
    assert os.path.isfile(point_dir / sweeps.POINT_FILE)


def job_for(point):
    """The job sweep.py makes of a point of --grid temperature=0.2 on the CPU."""
    stage_one = load_script("sweep").stage_one_settings(point)
    return sweeps.Job(point, ("h",), "cpu", False, 1, 100, stage_one, VERSIONS)


def fake_point(sweep_dir, argv, stage_one_changes=None, measure_changes=None, done=True):
    """A point on disk as sweep.py with argv would make it (stage_one_changes, measure_changes:
    what it was made or measured with otherwise): its record when done, else its config.json."""
    sweep = load_script("sweep")
    cfg = config.parse(config.Sweep, argv)
    preset, grids, _ = sweep.chosen_grids(cfg)
    point = sweeps.expand(grids, sweep.base_settings(cfg), str(sweep_dir), cfg.seeds)[0]
    stage_one = sweep.stage_one_settings(point) | (stage_one_changes or {})
    measure = {"features": list(preset.features if preset else ("h",)), "linear_epochs": 100}
    measure |= {
        "validation_fraction": cfg.validation_fraction,
        "versions": sweep.measure_versions(),
    }
    os.makedirs(point.run_dir)
    if done:
        record = {"point": point.name, "stage_one": stage_one}
        record["measure"] = measure | (measure_changes or {})
        rundir.write_json(os.path.join(point.run_dir, sweeps.POINT_FILE), record)
    rundir.write_json(os.path.join(point.run_dir, "config.json"), {"config": stage_one})
    return point


@pytest.mark.parametrize(
    "made, asked, named",
    [
        ({"epochs": 1}, ["--set", "epochs=2"], "--epochs 1 (this sweep: 2)"),
        (
            {"data_dir": "elsewhere"},
            ["--data-dir", "here"],
            "--data-dir elsewhere (this sweep: here)",
        ),
        ({"dataset": "cifar100"}, [], "--dataset cifar100 (this sweep: cifar10)"),
        ({"seed": 0}, ["--set", "seed=1"], "--seed 0 (this sweep: 1)"),
    ],
)
@pytest.mark.parametrize("done", [True, False])
def test_a_point_made_otherwise_stops_the_sweep_before_anything_runs(
    made, asked, named, done, tmp_path, capsys, monkeypatch
):
    """Done or stopped, a point on disk made with other settings is never this sweep's."""
    monkeypatch.chdir(tmp_path)
    argv = ["--grid", "temperature=0.2", "--name", "t", "--device", "cpu", *asked]
    point = fake_point(tmp_path / "runs" / "sweep-t", argv, stage_one_changes=made, done=done)
    launched = []
    monkeypatch.setattr(launchers, "run_local", lambda *args: launched.append(args))
    code, out, errors = run_main("sweep", argv, capsys)
    assert code == 2 and len(errors) == 1 and named in errors[0], errors
    assert errors[0].startswith(f"error: {os.path.relpath(point.run_dir)} was made with")
    assert_documented(errors[0])
    assert not launched and not os.path.exists(tmp_path / "runs" / "sweep-t" / sweeps.CSV_FILE)


def test_a_point_measured_otherwise_or_by_a_preset_of_the_same_name_is_not_this_sweeps(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    sweep_dir = tmp_path / "runs" / "sweep-t"
    argv = ["--grid", "temperature=0.2", "--name", "t", "--device", "cpu"]
    fake_point(sweep_dir, argv, measure_changes={"linear_epochs": 10})
    code, _, errors = run_main("sweep", argv, capsys)
    assert code == 2 and "--linear-epochs 10 (this sweep: 100)" in errors[0]
    code, _, errors = run_main("sweep", [*argv, "--linear-epochs", "10"], capsys)
    assert code == 0 and not errors  # made and measured as asked: done
    # runs/sweep-head of a --grid measured on h alone, then the head preset (h and z)
    grid = ["--grid", "head=none,linear,mlp", "--name", "head", "--device", "cpu"]
    fake_point(tmp_path / "runs" / "sweep-head", grid)
    code, _, errors = run_main("sweep", ["head", "--device", "cpu"], capsys)
    assert code == 2 and "--features ['h'] (this sweep: ['h', 'z'])" in errors[0]


def test_the_title_says_what_the_points_were_made_with():
    sweep = load_script("sweep")
    cfg = config.parse(config.Sweep, ["temperature", "--scale", "paper", "--set", "epochs=1",
                                      "arch=resnet18", "--linear-epochs", "10"])  # fmt: skip
    _, grids, _ = sweep.chosen_grids(cfg)
    points = sweeps.expand(grids, sweep.base_settings(cfg), "s")
    jobs = sweep.jobs_for(cfg, points, ("h",))
    title = sweep.made_with(jobs, ["temperature"])
    assert title == (
        "resnet18, cifar10 (all images at 32 px), 1 epoch, batch 1024; linear probe 10 epochs"
    )
    assert "paper" not in title
    cfg = config.parse(config.Sweep, ["--grid", "temperature=0.1,0.5", "--set", "image_size=16"])
    points = sweeps.expand(*sweep.chosen_grids(cfg)[1:2], sweep.base_settings(cfg), "s")
    title = sweep.made_with(sweep.jobs_for(cfg, points, ("h",)), ["temperature"])
    assert title == (
        "resnet18, cifar10 (2,000 images at 16 px), 15 epochs, batch 128; linear probe 100 epochs"
    )


def test_repeated_set_and_grid_flags_add_up_and_a_key_given_twice_is_refused(capsys):
    cfg = config.parse(config.Sweep, ["--set", "subset=500", "--set", "epochs=2", "--grid", "a=1"])
    assert cfg.set == ["subset=500", "epochs=2"]
    sweep = load_script("sweep")
    assert sweep.base_settings(cfg)["subset"] == "500" and sweep.base_settings(cfg)["epochs"] == "2"
    code, _, errors = run_main(
        "sweep", ["--grid", "temperature=0.1", "--set", "epochs=1", "--set", "epochs=2"], capsys
    )
    assert code == 2 and errors == ["error: epochs is given twice (1 and 2): give each key once"]
    assert_documented(errors[0])


class FakeExecutor:
    """submitit.LocalExecutor's part that run_local uses: records what each job would see."""

    submitted = []

    def __init__(self, folder):
        self.parameters = {}

    def update_parameters(self, **parameters):
        self.parameters = parameters

    def submit(self, function, job):
        FakeExecutor.submitted.append((self.parameters["visible_gpus"], job.device))
        return types.SimpleNamespace(job_id=str(os.getpid()), result=lambda: {"seconds": 1.0})


def test_the_local_launcher_gives_each_job_the_gpu_it_sees(tmp_path, monkeypatch):
    """--device cuda:1: the job sees GPU 1 alone (CUDA_VISIBLE_DEVICES=1), as cuda:0, so it is
    told cuda, not cuda:1; with several GPUs, one each."""
    monkeypatch.setitem(sys.modules, "submitit", types.SimpleNamespace(LocalExecutor=FakeExecutor))
    point = sweeps.expand([{"temperature": ["0.1", "0.5"]}], {}, str(tmp_path))
    jobs = [sweeps.Job(p, ("h",), "cuda:1", False, 1, 100, {}, VERSIONS) for p in point]
    FakeExecutor.submitted = []
    launchers.run_local(jobs[:1], sweeps.run_point, str(tmp_path), [1], lambda job, record: None)
    assert FakeExecutor.submitted == [((1,), "cuda")]
    FakeExecutor.submitted = []
    launchers.run_local(jobs, sweeps.run_point, str(tmp_path), [0, 1], lambda job, record: None)
    assert FakeExecutor.submitted == [((0,), "cuda"), ((1,), "cuda")]
    FakeExecutor.submitted = []
    cpu = [dataclasses.replace(job, device="cpu") for job in jobs]
    launchers.run_local(cpu, sweeps.run_point, str(tmp_path), [], lambda job, record: None)
    assert FakeExecutor.submitted == [((), "cpu"), ((), "cpu")]
    assert launchers.running_job(jobs[0].point) == f"local job {os.getpid()} is running"


@pytest.mark.parametrize(
    "launcher, state, running",
    [
        ("local", None, True),  # this process: alive
        ("slurm", "PENDING", True),
        ("slurm", "RUNNING", True),
        ("slurm", None, True),  # sacct cannot tell: it may still run
        ("slurm", "TIMEOUT", False),
        ("slurm", "COMPLETED", False),
    ],
)
def test_a_point_whose_job_is_queued_or_running_is_not_launched_again(
    launcher, state, running, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(launchers, "slurm_state", lambda job_id: state)
    argv = ["--grid", "temperature=0.2", "--name", "t", "--device", "cpu", "--resume"]
    point = fake_point(tmp_path / "runs" / "sweep-t", argv, done=False)
    job = job_for(point)
    launchers.record_job(job, launcher, os.getpid() if launcher == "local" else 1234)
    launched = []
    monkeypatch.setattr(launchers, "run_local", lambda jobs, *args: launched.extend(jobs))
    code, out, _ = run_main("sweep", argv, capsys)
    assert code == 1  # the point is not done either way
    if running:
        assert "not launched again" in out and not launched
        assert sweeps.status(point) == "running"
    else:
        assert [job.point.name for job in launched] == [point.name]
        assert launched[0].resume  # its stage one continues
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)  # fmt: skip
    launchers.record_job(job, "local", int(dead.stdout))
    assert launchers.running_job(point) is None


def test_ctrl_c_stops_a_sweep_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(launchers, "run_local", interrupted)
    code, out, errors = run_main(
        "sweep", ["--grid", "temperature=0.2,0.5", "--device", "cpu"], capsys
    )
    assert code == 130 and "Traceback" not in out and not errors
    line = out.strip().splitlines()[-1]
    assert line == (
        "stopped by SIGINT: 0 of the 2 points to run ended; run the same command again to go on, "
        "with --resume for a point stopped midway"
    )
    assert_documented(line)


@pytest.mark.long
def test_a_point_measures_h_and_z_end_to_end_and_its_record_holds_what_each_measured(
    tmp_path, monkeypatch
):
    """The head preset's point: knn.py and a linear trainstage2.py on h and on z, as a job runs
    them (in this process); the record's z numbers are those of the z measurements' own files."""
    monkeypatch.chdir(tmp_path)
    images = write_image_folder(tmp_path / "images")
    settings = {"dataset": "folder", "data_dir": str(images), "arch": "resnet18", "epochs": "1"}
    settings |= {"batch_size": "8", "image_size": "16", "workers": "0", "precision": "fp32"}
    settings |= {"knn_every": "0"}
    (point,) = sweeps.expand([{"head": ["mlp"]}], settings, str(tmp_path / "sweep"))
    sweep = load_script("sweep")
    job = sweeps.Job(
        point, ("h", "z"), "cpu", False, 1, 2, sweep.stage_one_settings(point), VERSIONS, 0.25
    )
    record = sweeps.run_point(job)
    assert "failed" not in record, record
    run_dir = point.run_dir
    for which, layers in (("h", 0), ("z", 2)):
        knn = rundir.KnnResult.read(run_dir, which)
        assert knn.features == which and record[f"knn_{which}"] == knn.knn_top1
        name = rundir.evaluation_name("linear", from_head_layer=layers)
        linear = rundir.Results.read(rundir.evaluation_dir(run_dir, name or ""))
        assert (linear.features, linear.from_head_layer, linear.epochs) == (which, layers, 2)
        assert record[f"linear_{which}"] == linear.top1
        # 2 of each class's 8 training images held out: the ranking figure, on each feature
        assert linear.validation_images == 6
        assert record[f"linear_val_{which}"] == linear.validation_top1 is not None
    assert record["measure"] == {
        "features": ["h", "z"], "linear_epochs": 2, "validation_fraction": 0.25,
        "versions": VERSIONS,
    }  # fmt: skip
    assert rundir.read_json(os.path.join(run_dir, sweeps.POINT_FILE)) == record
    (row,) = sweeps.csv_rows([point], ("h", "z"))
    assert (row["knn_z_top1"], row["linear_z_top1"]) == (record["knn_z"], record["linear_z"])


def test_a_points_numbers_are_read_from_the_files_of_each_feature(tmp_path):
    """Each column from its own file: distinct numbers planted in each, none may land in
    another's place."""
    (point,) = sweeps.expand([{"head": ["mlp"]}], {}, str(tmp_path))
    os.makedirs(os.path.join(point.run_dir, rundir.EVALUATIONS, "linear-all-labels-head-layer-2"))
    for which, knn in (("h", 11.0), ("z", 22.0)):
        path = os.path.join(point.run_dir, rundir.KnnResult.file(which))
        rundir.KnnResult(knn, which).write(path)
    for folder, which, top1 in (("", "h", 33.0), ("linear-all-labels-head-layer-2", "z", 44.0)):
        made = {"settings": {"mode": "linear", "features": which, "epochs": 5}}
        results = {"top1": top1, "provenance": made | {"measure": {"version": 2}}}
        rundir.write_json(
            os.path.join(rundir.evaluation_dir(point.run_dir, folder), "results.json"), results
        )
    job = sweeps.Job(point, ("h", "z"), "cpu", False, 1, 5, {}, VERSIONS)
    found = sweeps.results(point, job, proj_layers=2)
    evaluations = found.pop("evaluations")
    assert found == {"knn_h": 11.0, "linear_h": 33.0, "knn_z": 22.0, "linear_z": 44.0}
    assert evaluations["linear_z"]["settings"]["features"] == "z"
    with pytest.raises(
        launchers.PointFailed,
        match=r"holds linear on h for 5 epochs, validation fraction 0.0, recipe version 2, not "
        r"linear on h for 7 epochs",
    ):
        sweeps.results(point, dataclasses.replace(job, linear_epochs=7), proj_layers=2)
    rundir.write_json(
        os.path.join(point.run_dir, sweeps.POINT_FILE), {"point": point.name, **found}
    )
    (row,) = sweeps.csv_rows([point], ("h", "z"))
    assert [row[f"{kind}_{which}_top1"] for which in "hz" for kind in ("knn", "linear")] == [
        11.0, 33.0, 22.0, 44.0,
    ]  # fmt: skip


def test_sigusr2_before_a_slurm_time_limit_saves_stage_one_and_a_torchrun_child_gets_sigterm(
    stage_one_run, tmp_path, monkeypatch, capsys
):
    """SLURM sends a submitit job SIGUSR2 before its time limit: stage one, run in the job's
    process, saves after its step and stops (--resume continues it); stage one under torchrun,
    a process of its own, is passed SIGTERM, which torchrun hands to every rank."""
    run_dir = tmp_path / "run"
    argv = [str(arg) for arg in stage1_args(stage_one_run.parent / "images", run_dir)]
    trainstage1 = load_script("trainstage1")
    signal_after_calls(trainstage1, "train_step", 2, monkeypatch, signal.SIGUSR2)
    with pytest.raises(SystemExit) as exit_info:
        trainstage1.main(argv)
    assert exit_info.value.code == 128 + signal.SIGUSR2
    assert "stopped by SIGUSR2 in epoch 1 after step 2; saved" in capsys.readouterr().out
    assert (
        torch.load(run_dir / "stage1_last.pth", weights_only=True)["next_epoch_totals"]["steps"]
        == 2
    )
    # a process that waits for SIGTERM, as torchrun does, gets it when the job gets SIGUSR2
    child = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(143)); "
    child += "print('ready', flush=True); time.sleep(60)"
    log_path = tmp_path / "log"
    with open(log_path, "a") as log:
        ready = threading.Thread(target=send_when_ready, args=(log_path,))
        ready.start()
        code = launchers.run_process([sys.executable, "-c", child], log)
        ready.join()
    assert code == 143 and "ready" in log_path.read_text()


def send_when_ready(log_path):
    """SIGUSR2 to this process once the child has written its first line."""
    while "ready" not in (log_path.read_text() if log_path.exists() else ""):
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGUSR2)


def test_a_queued_point_is_compared_by_what_its_job_record_saved(tmp_path, capsys, monkeypatch):
    """A SLURM job queued for a point has written nothing yet but its job record: the sweep run
    again leaves the point to it and collects the rest, and a sweep of other settings is refused
    by what that record saved."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(launchers, "slurm_state", lambda job_id: "PENDING")
    argv = ["--grid", "temperature=0.2", "--name", "t", "--device", "cpu"]
    sweep = load_script("sweep")
    (point,) = sweeps.expand(*sweep.chosen_grids(config.parse(config.Sweep, argv))[1:2],
                             sweep.base_settings(config.parse(config.Sweep, argv)),
                             os.path.join("runs", "sweep-t"))  # fmt: skip
    launchers.record_job(job_for(point), "slurm", 1234)
    assert not rundir.holds_run(point.run_dir)  # queued: no config.json yet
    code, out, errors = run_main("sweep", argv, capsys)
    assert code == 1 and not errors, errors
    assert "SLURM job 1234 is PENDING: not launched again" in out
    assert (
        rundir.read_csv(os.path.join("runs", "sweep-t", sweeps.CSV_FILE))[0]["status"] == "running"
    )
    code, _, errors = run_main("sweep", [*argv, "--set", "epochs=3"], capsys)
    assert code == 2 and "was made with --epochs 15 (this sweep: 3)" in errors[0], errors


def test_a_point_record_of_before_points_recorded_their_settings_is_not_taken_as_done(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    argv = ["--grid", "temperature=0.2", "--name", "t", "--device", "cpu"]
    point = fake_point(tmp_path / "runs" / "sweep-t", argv)
    rundir.write_json(os.path.join(point.run_dir, sweeps.POINT_FILE), {"point": point.name,
                                                                       "linear_h": 30.0})  # fmt: skip
    code, _, errors = run_main("sweep", argv, capsys)
    assert code == 2 and "was made with nothing recorded" in errors[0], errors
    assert_documented(errors[0])


@pytest.mark.parametrize(
    "name, text",
    [
        (sweeps.POINT_FILE, '{"point": "temperature-0.2", "stage_one": '),  # cut short
        (sweeps.POINT_FILE, '{"point": "temperature-0.2", "stage_one": [1, 2]}'),
        (launchers.JOB_FILE, '{"launcher": "local"}'),
        (launchers.JOB_FILE, "[]"),
    ],
)
def test_a_damaged_point_or_job_record_ends_the_sweep_in_one_line(
    name, text, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    argv = ["--grid", "temperature=0.2", "--name", "t", "--device", "cpu"]
    point = fake_point(tmp_path / "runs" / "sweep-t", argv, done=name == sweeps.POINT_FILE)
    path = os.path.relpath(os.path.join(point.run_dir, name))
    with open(path, "w") as file:
        file.write(text)
    code, _, errors = run_main("sweep", argv, capsys)
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith(f"error: {path} is damaged (")
    assert_documented(errors[0])


def test_a_zombie_is_not_a_running_job(tmp_path):
    """A local job's process that ended but was not yet reaped by its parent is not running."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    while open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)  # until it has ended: an event, not a moment
    assert not launchers.process_alive(child.pid)
    assert launchers.process_alive(os.getpid())
    child.wait()
    assert not launchers.process_alive(child.pid)


def test_a_slurm_sweep_on_cpus_asks_for_no_gpus(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["head", "--launcher", "slurm", "--dry-run", "--gpus-per-point", "0"]
    code, out, _ = run_main("sweep", [*argv, "--dataset", "folder"], capsys)
    assert code == 0 and "#SBATCH --cpus-per-task=8" in out
    assert "gpus" not in out and "torch.distributed.run" not in out


@pytest.mark.long
def test_a_sweep_at_three_seeds_reports_the_mean_and_standard_error_of_each_points_seeds(
    tmp_path, capsys, monkeypatch
):
    """--seeds 3: each point's three runs differ in --seed alone (their data drawn with one
    --data-seed), sit in its folder, and sweep.csv's figures are the mean and standard error of
    their records; sweep.png draws them as error bars beside a line for chance, and the ranking
    is by the held-out training images' figure."""
    monkeypatch.chdir(tmp_path)
    images = write_image_folder(tmp_path / "images")
    argv = ["--grid", "temperature=0.2,0.5", "--seeds", "3", "--name", "tau", "--device", "cpu"]
    argv += ["--dataset", "folder", "--data-dir", images, "--linear-epochs", "1"]
    argv += ["--set", "image-size=8", "workers=0", "precision=fp32", "knn-every=0", "epochs=1"]
    argv += ["batch-size=8", "subset=12", "--validation-fraction", "0.25"]
    drawn = []
    monkeypatch.setattr(sweep_figure, "draw", lambda *args: drawn.append(args) or real_draw(*args))
    code, out, _ = run_main("sweep", argv, capsys)
    assert code == 0, out
    assert "sweep tau: 2 points at 3 seeds each, 6 runs to make" in out
    sweep_dir = tmp_path / "runs" / "sweep-tau"
    rows = rundir.read_csv(sweep_dir / "sweep.csv")
    assert [row["point"] for row in rows] == ["temperature-0.2", "temperature-0.5"]
    for row in rows:
        point_dir = sweep_dir / row["point"]
        assert row["run_dir"] == os.path.join("runs", "sweep-tau", row["point"])
        assert (row["seeds"], row["status"]) == ("3 of 3", "done")
        records = [
            rundir.read_json(point_dir / f"seed-{seed}" / sweeps.POINT_FILE) for seed in range(3)
        ]
        assert [r["stage_one"]["seed"] for r in records] == [0, 1, 2]
        assert {r["stage_one"]["data_seed"] for r in records} == {0}
        for figure in ("knn_h", "linear_h", "linear_val_h"):
            values = [record[figure] for record in records]
            error = statistics.stdev(values) / math.sqrt(3)
            assert float(row[f"{figure}_top1"]) == round(statistics.fmean(values), 2)
            assert float(row[f"{figure}_top1_se"]) == round(error, 2)
        seeds = [rundir.read_json(point_dir / f"seed-{seed}" / "config.json") for seed in range(3)]
        assert len({json.dumps(run["config"]["seed"]) for run in seeds}) == 3
    validation = [float(row["linear_val_h_top1"]) for row in rows]
    ranks = [str(1 + sum(other > mine for other in validation)) for mine in validation]
    assert [row["rank"] for row in rows] == ranks  # a tie shares its rank
    assert "ranked by the linear probe's validation top-1 on h" in out
    (args,) = drawn
    chance = args[-1]
    assert chance == pytest.approx(100 / 3)
    figure = real_draw(*args)
    axes = figure.axes[0]
    bars = [c for c in axes.containers if isinstance(c, ErrorbarContainer)]
    linear = next(c for c in bars if c.get_label() == "linear on h")
    (caps,) = linear.lines[2]
    spans = [segment[1, 1] - segment[0, 1] for segment in caps.get_segments()]
    assert spans == pytest.approx([2 * float(row["linear_h_top1_se"]) for row in rows], abs=1e-9)
    assert axes.get_ylim()[0] <= chance
    plt.close(figure)


def test_a_point_of_one_seed_and_one_of_several_never_share_a_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--grid", "temperature=0.2", "--name", "t", "--device", "cpu"]
    fake_point(tmp_path / "runs" / "sweep-t", argv)
    folder = os.path.join("runs", "sweep-t", "temperature-0.2")
    code, _, errors = run_main("sweep", [*argv, "--seeds", "2"], capsys)
    assert code == 2 and errors == [
        f"error: {folder} holds a run of one seed: sweep --seeds into another folder with "
        f"--name, or remove {folder}"
    ]
    assert_documented(errors[0])
    several = ["--grid", "temperature=0.5", "--name", "s", "--device", "cpu", "--seeds", "2"]
    fake_point(tmp_path / "runs" / "sweep-s", several)  # its first seed's run
    code, _, errors = run_main("sweep", several[:-2], capsys)
    folder = os.path.join("runs", "sweep-s", "temperature-0.5")
    assert code == 2 and errors == [
        f"error: {folder} holds runs of several seeds: pass the --seeds they were made with, or "
        f"sweep into another folder with --name"
    ]
    assert_documented(errors[0])
