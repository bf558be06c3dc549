"""Stopping and resuming stage one: the result is the uninterrupted run's, whatever the moment."""

import contextlib
import os
import random
import shutil
import signal
import time
import types

import pytest
import torch

from simclr import checkpoints
from simclr import distributed
from simclr import resume
from simclr import rundir
from simclr import loaders_workers
from conftest import (
    OutputLines,
    assert_documented,
    copy_of_run,
    error_lines,
    forked_script,
    load_script,
    run_main,
    signal_after_calls,
    training_log,
    write_image_folder,
)

# Columns that measure the machine rather than the training.


def stage1_argv(image_folder, run_dir, *extra):
    return [
        "--dataset",
        "folder",
        "--data-dir",
        str(image_folder),
        "--arch",
        "resnet18",
        "--batch-size",
        "8",
        "--epochs",
        "2",
        "--warmup-epochs",
        "1",
        "--knn-every",
        "1",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--image-size",  # the 32x32 test images at 8x8: the same code for a sixteenth of the pixels
        "8",
        "--run-dir",
        str(run_dir),
        *extra,
    ]


def run_stage1(argv):
    """trainstage1.main in this process -> its exit code (0 when it returns)."""
    try:
        load_script("trainstage1").main(argv)
    except SystemExit as exit_info:
        return exit_info.code
    return 0


def weights(run_dir):
    return torch.load(os.path.join(run_dir, "stage1_last.pth"), weights_only=True)["model"]


def assert_same_weights(first, second):
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], atol=1e-6, rtol=0, msg=key)


@pytest.mark.long
@pytest.mark.parametrize(
    "data_path, workers", [("device", "0"), ("workers", "0"), ("workers", "2")]
)
def test_stopped_and_resumed_runs_end_as_the_uninterrupted_run(
    image_folder, tmp_path, monkeypatch, capsys, data_path, workers
):
    monkeypatch.chdir(tmp_path)
    extra = ("--data-path", data_path, "--workers", workers)
    whole = tmp_path / "whole"
    assert run_stage1(stage1_argv(image_folder, whole, *extra)) == 0
    # 24 images at batch 8: 3 steps per epoch. Stop after the first epoch, and after step 2.
    for name, stop_after_steps in (("at-epoch", 3), ("mid-epoch", 2)):
        stopped = tmp_path / name
        with monkeypatch.context() as patch:
            trainstage1 = load_script("trainstage1")
            signal_after_calls(trainstage1, "train_step", stop_after_steps, patch)
            with pytest.raises(SystemExit) as exit_info:
                trainstage1.main(stage1_argv(image_folder, stopped, *extra))
        assert exit_info.value.code == 128 + signal.SIGTERM
        output = capsys.readouterr().out
        assert f"after step {stop_after_steps}" in output
        assert_documented(output.strip().splitlines()[-1])
        assert f"python trainstage1.py --resume --run-dir {stopped}" in output
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back
        assert run_stage1(["--resume", "--run-dir", str(stopped)]) == 0
        # at the epoch's end the signal cuts the kNN pass short: resume measures it first
        epoch, step = (1, 3) if name == "at-epoch" else (1, 2)
        assert f"resuming in epoch {epoch} after step {step} of 3" in capsys.readouterr().out
        assert training_log(stopped) == training_log(whole)
        assert_same_weights(weights(stopped), weights(whole))


def test_resume_of_a_finished_run_says_so_and_exits_0(stage_one_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_dir = copy_of_run(stage_one_run, tmp_path)
    before = (run_dir / "stage1_last.pth").read_bytes()
    capsys.readouterr()
    assert run_stage1(["--resume", "--run-dir", str(run_dir)]) == 0
    output = capsys.readouterr().out
    assert "already finished all 1 epochs" in output
    assert_documented(output.strip().splitlines()[-1])
    assert (run_dir / "stage1_last.pth").read_bytes() == before


def test_resume_refuses_a_changed_setting_and_a_folder_without_a_run(
    stage_one_run, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    run_dir = copy_of_run(stage_one_run, tmp_path)
    log_before = (run_dir / "stage1_log.csv").read_text()
    capsys.readouterr()
    cases = [
        (
            ["--resume", "--run-dir", str(run_dir), "--lr", "0.5"],
            "--lr 0.5 differs from the run's --lr (not set)",
        ),
        (["--resume", "--run-dir", str(tmp_path)], "holds no run"),
        (["--resume"], "--resume needs --run-dir"),
    ]
    for argv, message in cases:
        assert run_stage1(argv) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1 and message in errors[0]
        assert_documented(errors[0])
    assert (run_dir / "stage1_log.csv").read_text() == log_before


def test_a_run_stopped_before_its_first_checkpoint_starts_over(
    image_folder, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert run_stage1(stage1_argv(image_folder, whole)) == 0
    with monkeypatch.context() as patch:
        trainstage1 = load_script("trainstage1")
        patch.setattr(trainstage1, "train_epoch", crash)
        with pytest.raises(RuntimeError, match="killed"):
            trainstage1.main(stage1_argv(image_folder, stopped))
    assert (stopped / "config.json").exists() and not (stopped / "stage1_last.pth").exists()
    capsys.readouterr()
    assert run_stage1(["--resume", "--run-dir", str(stopped)]) == 0
    assert "starting over" in capsys.readouterr().out
    assert training_log(stopped) == training_log(whole)
    assert_same_weights(weights(stopped), weights(whole))


def crash(*args, **kwargs):
    raise RuntimeError("killed")


class ReachedTraining(Exception):
    """Raised where training would begin: the settings got past every check."""


def test_resume_at_another_number_of_processes_checks_the_runs_batch_not_the_flags_default(
    image_folder, tmp_path, monkeypatch, capsys
):
    """A run made with --batch-size 6, resumed under torchrun: 4 processes cannot share its global
    batch (refused, naming 6, not the flag's default 512), 3 can (it trains with 6). This process
    stands in for rank 0 of the launch, so that no processes need to be started."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:  # a run stopped before its first checkpoint
        trainstage1 = load_script("trainstage1")
        patch.setattr(trainstage1, "train_epoch", crash)
        with pytest.raises(RuntimeError, match="killed"):
            trainstage1.main(stage1_argv(image_folder, run_dir, "--batch-size", "6"))
    trainstage1, trained_with = load_script("trainstage1"), []

    def training_begins(cfg, *args):
        trained_with.append(cfg.batch_size)
        raise ReachedTraining

    monkeypatch.setattr(trainstage1, "start_training", training_begins)
    monkeypatch.setattr(distributed, "process_group", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(distributed, "main_rank_first", contextlib.nullcontext)
    capsys.readouterr()
    for processes in (4, 3):
        monkeypatch.setenv("WORLD_SIZE", str(processes))
        monkeypatch.setattr(distributed, "world_size", lambda: processes)
        try:
            trainstage1.main(["--resume", "--run-dir", str(run_dir)])
        except SystemExit as exit_info:
            code = exit_info.code
        except ReachedTraining:
            code = None
        errors = error_lines(capsys.readouterr().err)
        if processes == 4:
            assert code == 2 and errors == [
                "error: --batch-size 6 (the global batch) does not divide among 4 processes: "
                "pass a multiple of 4, such as 4"
            ]
            assert_documented(errors[0])
        else:
            assert code is None and trained_with == [6], (code, errors)


def read_until_the_run_starts(lines):
    """Read the run's output (OutputLines) up to its start line ("run folder ..."); a run that
    stopped before its first checkpoint first says that it starts over, and notes may come
    before. -> False if the run had already finished all its epochs, else True."""
    while True:
        line = lines.next_line()
        assert line is not None, "the run ended without its start line"
        if line.startswith("run folder"):
            return True
        if "already finished" in line:
            return False
        assert line.startswith("note: ") or "starting over" in line or "%|" in line, line


def read_until(lines, start):
    """Read the run's output (OutputLines) up to a line that starts with start -> that line, or
    None if the run ended first. Progress lines come between the others."""
    line = lines.next_line()
    while line is not None and not line.startswith(start):
        line = lines.next_line()
    return line


@pytest.mark.long
def test_kill_9_at_random_moments_then_resume_always_continues(image_folder, tmp_path, monkeypatch):
    """Ten kills at random moments, some while a run starts (data, model), most after its start
    line, each after a random number of finished epochs (steps, kNN, saves); every checkpoint on
    disk loads after each kill, and the last resume finishes with the uninterrupted run's log and
    weights. The kills follow lines the run prints, not the clock, so a slow or a fast machine
    kills at the same points of the run. Each run is a process of its own, forked from a server
    that imported torch once (conftest.forked_script): SIGKILL ends it as any process."""
    # 30% of the kills come during start-up and the others let at most 2 epochs finish: the ten
    # kills move the run on by a few epochs, so most land in a run still training (one after the
    # end meets "already finished", accepted too).
    epochs = 8
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    monkeypatch.chdir(tmp_path)
    assert run_stage1(stage1_argv(image_folder, whole, "--epochs", str(epochs))) == 0
    moments, kills_after_a_checkpoint = random.Random(0), 0
    for kill in range(10):
        argv = (
            ["--resume", "--run-dir", str(killed)]
            if (killed / "config.json").exists()
            else stage1_argv(image_folder, killed, "--epochs", str(epochs))
        )
        output = tmp_path / f"kill-{kill}.log"
        process = forked_script("trainstage1", argv, tmp_path, output)
        lines = OutputLines(output, process)
        if moments.random() < 0.3:  # during start-up, at whatever point it has reached
            time.sleep(moments.uniform(0.0, 1.0))
        elif read_until_the_run_starts(lines):
            for _ in range(moments.randrange(2)):  # kNN every epoch: one line per epoch
                read_until(lines, "epoch ")
            if moments.random() < 0.5:  # past the epoch's kNN pass and saving, in its steps
                read_until(lines, "stage 1, epoch ")
            time.sleep(moments.uniform(0.0, 0.2))
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        if (killed / "stage1_last.pth").exists():
            checkpoint = torch.load(killed / "stage1_last.pth", weights_only=True)
            assert checkpoint["stage"] == 1 and checkpoint["model"]
            kills_after_a_checkpoint += 1
    assert kills_after_a_checkpoint >= 3  # the kills met checkpoints to load and resume from
    finished = forked_script(
        "trainstage1", ["--resume", "--run-dir", killed], tmp_path, tmp_path / "end.log"
    )
    finished.join()
    assert finished.exitcode == 0, (tmp_path / "end.log").read_text()[-2000:]
    assert training_log(killed) == training_log(whole)
    assert_same_weights(weights(killed), weights(whole))


def test_rng_state_round_trips_through_a_safe_checkpoint(tmp_path):
    split = [(index, index) for index in range(10)]
    cfg = types.SimpleNamespace(batch_size=2, seed=0, workers=0)
    loader = loaders_workers.SeededLoader(split, lambda index: torch.rand(1) + index, cfg, False)
    state = resume.rng_state(loader)
    checkpoints.save(tmp_path / "rng.pth", {"rng": state})
    first = [torch.rand(3), random.random(), list(loader)]
    resume.set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"], loader)
    again = [torch.rand(3), random.random(), list(loader)]
    assert torch.equal(first[0], again[0]) and first[1] == again[1]
    for (values, labels), (values_again, labels_again) in zip(first[2], again[2]):
        assert torch.equal(values, values_again) and torch.equal(labels, labels_again)
    assert not torch.equal(first[2][0][0], next(iter(loader))[0])  # the next pass: a new draw


def test_stage_two_stops_on_a_signal_and_says_how_to_start_it_over(
    stage_one_run, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    run_dir = copy_of_run(stage_one_run, tmp_path)
    stage1_files = {path.name: path.read_bytes() for path in run_dir.iterdir()}
    capsys.readouterr()
    trainstage2 = load_script("trainstage2")
    signal_after_calls(trainstage2.optimizers, "set_lr", 2, monkeypatch)
    argv = ["--run-dir", str(run_dir), "--epochs", "3", "--batch-size", "8", "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_info:
        trainstage2.main([*argv, "--workers", "0"])
    assert exit_info.value.code == 128 + signal.SIGTERM
    message = capsys.readouterr().out.strip().splitlines()[-1]
    assert message.startswith("stopped by SIGTERM in stage two, epoch 1;")
    assert_documented(message)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert {path.name: path.read_bytes() for path in run_dir.iterdir()} == stage1_files


def test_a_write_that_dies_midway_leaves_the_previous_complete_file(tmp_path):
    path = tmp_path / "stage1_log.csv"
    rundir.write_csv(path, [{"epoch": 1, "loss": 5.0}])

    def write_half_then_die(temporary_path):
        with open(temporary_path, "w") as file:
            file.write("epoch,lo")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        rundir.replace_atomically(path, write_half_then_die)
    assert rundir.read_csv(path) == [{"epoch": "1", "loss": "5.0"}]


def test_resume_refuses_other_images_and_follows_the_same_images_moved(
    stage_one_run, tmp_path, capsys
):
    """--resume --data-dir DIR: another set of images (here three fewer) is refused, naming both
    folders and what differs, before anything is written; the same images in another folder
    continue the run, and config.json names where they are now, for every later script."""
    run_dir = copy_of_run(stage_one_run, tmp_path)
    record = rundir.read_json(run_dir / "config.json")
    record["config"]["epochs"] = 2  # the run asks for two epochs and has done one
    rundir.write_json(run_dir / "config.json", record)
    images = stage_one_run.parent / "images"
    other = write_image_folder(tmp_path / "other")
    for number in range(3):
        os.remove(other / "train" / "circle" / f"{number}.png")
    before = {name: (run_dir / name).read_bytes() for name in ("stage1_last.pth", "stage1_log.csv")}
    resume_in = ["--resume", "--run-dir", run_dir, "--data-dir"]
    code, _, errors = run_main("trainstage1", [*resume_in, other], capsys)
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith(
        f"error: --resume with --data-dir {other}: these are not the images"
    )
    assert f"trained on in {images} (images 21 training" in errors[0]
    assert "24 training, 0 unlabelled in the checkpoint" in errors[0]
    assert_documented(errors[0])
    assert before == {name: (run_dir / name).read_bytes() for name in before}
    moved = tmp_path / "moved"
    shutil.copytree(images, moved)
    code, out, _ = run_main("trainstage1", [*resume_in, moved], capsys)
    assert code == 0 and f"note: the run's data is now read from {moved}" in out
    assert rundir.read_json(run_dir / "config.json")["config"]["data_dir"] == str(moved)
    assert torch.load(run_dir / "stage1_last.pth", weights_only=True)["epoch"] == 2
