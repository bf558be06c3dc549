"""sweep.py: grids expand as written, bad grids stop before anything runs, points run through the
local launcher and are skipped when done, a failed point is reported and the sweep goes on, a
stopped one continues with --resume, and the SLURM job it would submit."""

import os

import matplotlib
import pytest
from conftest import ROOT, assert_documented, run_main, run_script, write_image_folder

from simclr import rundir, sweep_figure, sweeps

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KNOWN = {"temperature", "batch_size", "blur", "augment", "head", "epochs"}


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
        grids = sweeps.PRESETS[preset].grids
        return [point.name for point in sweeps.expand(grids.get(scale, grids.get("any")), {}, "s")]

    assert names("head") == ["head-none", "head-linear", "head-mlp"]
    assert sweeps.PRESETS["head"].features == ("h", "z")
    assert names("color")[-1] == "color-strength-1_blur-true" and len(names("color")) == 5
    pairs = sweeps.expand(sweeps.PRESETS["augment-pairs"].grids["any"], {}, "s")
    assert len(pairs) == 4 + 6 and all("--one-branch" in point.flags for point in pairs)
    assert len(names("batch-epochs", "paper")) == 5 * 4 and len(names("batch-epochs")) == 9
    # the paper's numbers name points that the preset makes
    for preset in sweeps.PRESETS.values():
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
    one_gpu = sweeps.Job(sweeps.expand([{"head": ["mlp"]}], {}, "s")[0], ("h",), "cuda", False, 1)
    assert "torch.distributed.run" not in one_gpu.stage_one_command()


def test_the_figure_draws_what_is_done_and_names_what_is_missing():
    rows = [
        {"point": "augment-crop", "augment": "crop", "linear_h_top1": "30.0", "status": "done"},
        {"point": "augment-crop+color", "augment": "crop+color", "linear_h_top1": "40.0",
         "status": "done"},
        {"point": "augment-color", "augment": "color", "linear_h_top1": "", "status": "new"},
    ]  # fmt: skip
    preset = sweeps.PRESETS["augment-pairs"]
    figure = sweep_figure.draw(plt, rows, ["augment", "one_branch"], "matrix", preset, "sweep x")
    title = figure._suptitle.get_text()
    assert "1 of 3 points missing (not drawn): augment-color" in title.replace("\n", " ")
    cells = figure.axes[0].images[0].get_array()
    assert cells[0, 1] == cells[1, 0] == 40.0 and cells[0, 0] == 30.0  # a pair is symmetric
    assert cells.mask[1, 1]  # colour alone: missing
    plt.close(figure)


@pytest.mark.long
def test_a_sweep_runs_its_points_skips_them_when_done_and_goes_on_past_a_failure(tmp_path):
    images = write_image_folder(tmp_path / "images")
    common = ["--name", "tiny", "--dataset", "folder", "--data-dir", images, "--linear-epochs", "1"]
    common += ["--device", "cpu", "--set", "epochs=1", "image-size=16", "workers=0"]
    common += ["precision=fp32", "knn-every=0"]
    # the point that fails comes first: the two after it still run
    first = run_script("sweep.py", "--grid", "batch-size=1000,8,12", *common, cwd=tmp_path)
    assert first.returncode == 1, first.stderr  # a point failed
    sweep_dir = tmp_path / "runs" / "sweep-tiny"
    failure = next(line for line in first.stdout.splitlines() if line.startswith("error: point"))
    assert "batch-size-1000 failed: trainstage1.py exited with 2" in failure
    assert "runs/sweep-tiny/logs/batch-size-1000.log" in failure
    rows = rundir.read_csv(sweep_dir / "sweep.csv")
    assert [(row["point"], row["status"]) for row in rows] == [
        ("batch-size-1000", "new"),
        ("batch-size-8", "done"),
        ("batch-size-12", "done"),
    ]
    assert rows[0]["linear_h_top1"] == ""
    for row in rows[1:]:
        assert 0 <= float(row["knn_h_top1"]) <= 100 and 0 <= float(row["linear_h_top1"]) <= 100
        assert os.path.isfile(tmp_path / row["run_dir"] / "stage1_last.pth")
    assert (sweep_dir / "sweep.png").stat().st_size > 0
    checkpoint = sweep_dir / "batch-size-8" / "stage1_last.pth"
    trained_at = checkpoint.stat().st_mtime_ns

    finished = ["--grid", "batch-size=8,12", *common]
    again = run_script("sweep.py", *finished, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "batch-size-8: done, skipped" in again.stdout
    assert "batch-size-12: done, skipped" in again.stdout and "0 to run" in again.stdout
    assert checkpoint.stat().st_mtime_ns == trained_at

    # a point stopped before its record was written waits for --resume, then finishes
    os.remove(sweep_dir / "batch-size-12" / sweeps.POINT_FILE)
    waiting = run_script("sweep.py", *finished, cwd=tmp_path)
    assert "batch-size-12: stopped before it finished" in waiting.stdout
    assert "add --resume" in waiting.stdout and "0 to run" in waiting.stdout
    resumed = run_script("sweep.py", *finished, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "already finished all 1 epochs" in (sweep_dir / "logs" / "batch-size-12.log").read_text()
    assert os.path.isfile(sweep_dir / "batch-size-12" / sweeps.POINT_FILE)
