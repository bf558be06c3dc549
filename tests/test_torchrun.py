"""trainstage1.py under torchrun on this CPU: two Gloo processes. The run the others are held
against, and the one whose rank dies, are launched as a user types it (a new interpreter per
process); the others go through torchrun's own main with their ranks forked
(conftest.forked_torchrun), which spares the suite nineteen new interpreters importing torch."""

import os
import socket

import pytest
import torch

from simclr import checkpoints
from conftest import (
    assert_documented,
    assert_same_training,
    error_lines,
    finished_launch,
    forked_torchrun,
    load_script,
    stage1_args,
    start_forked_torchrun,
    torchrun,
    training_log,
    write_image_folder,
)

# its module-scoped fixtures run once: every test of the file in one pytest-xdist worker
pytestmark = [pytest.mark.xdist_group("torchrun"), pytest.mark.long]

# Float32 sums in another order (the loss over ranks, BatchNorm statistics over ranks) move the
# logged loss in its 5th significant digit over these runs' 6 steps of batch 8. The tolerance
# catches ranks that see other images or views, not a wrong gradient: LARS rescales each weight
# tensor's step, so a doubled gradient moved the loss only 0.35%. tests/test_distributed.py holds
# the gradient of a step to 1e-3 of its size, in float64.


def one_process(args):
    """trainstage1.py in this process -> its exit code."""
    try:
        load_script("trainstage1").main([str(arg) for arg in args])
    except SystemExit as exit_info:
        return exit_info.code
    return 0


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("torchrun") / "images")


@pytest.fixture(scope="module")
def one_process_log(images, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("one") / "run"
    assert one_process(stage1_args(images, run_dir)) == 0
    return training_log(run_dir)


@pytest.fixture(scope="module")
def one_process_workers_log(images, tmp_path_factory):
    """The same run on the per-image path (PIL transforms in the main process: --workers 0)."""
    run_dir = tmp_path_factory.mktemp("one-workers") / "run"
    assert one_process(stage1_args(images, run_dir, "--data-path", "workers")) == 0
    return training_log(run_dir)


@pytest.fixture(scope="module")
def two_process_run(images, tmp_path_factory):
    """Two processes with --activation-checkpointing: held against one process without it, the
    run is the same at another world size and with the encoder's stages recomputed (gathered
    negatives and BatchNorm synchronised across the ranks, in the recomputation too)."""
    run_dir = tmp_path_factory.mktemp("two") / "run"
    args = [*stage1_args(images, run_dir), "--activation-checkpointing"]
    return run_dir, torchrun("trainstage1.py", args)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def two_node_workers_run(images, tmp_path_factory):
    """Two torchrun launches, one process each, meeting at a rendezvous on 127.0.0.1 as two
    machines would, training on the per-image path -> (run folder, [(stdout, stderr)] per node,
    [exit status] per node)."""
    run_dir = tmp_path_factory.mktemp("nodes") / "run"
    endpoint = f"127.0.0.1:{free_port()}"
    args = stage1_args(images, run_dir, "--data-path", "workers")
    launches = []
    for node in (0, 1):
        launcher = ["--nnodes=2", f"--node-rank={node}", "--rdzv-backend=c10d"]
        launcher += [f"--rdzv-endpoint={endpoint}", "--rdzv-id=test"]
        output_dir = tmp_path_factory.mktemp(f"node{node}")
        launches.append(start_forked_torchrun("trainstage1.py", args, output_dir, 1, launcher))
    results = [finished_launch(*launch) for launch in launches]
    return (
        run_dir,
        [(result.stdout, result.stderr) for result in results],
        [result.returncode for result in results],
    )


def test_two_processes_write_one_log_and_one_checkpoint_that_match_one_process(
    two_process_run, one_process_log
):
    run_dir, result = two_process_run
    assert result.returncode == 0, result.stderr[-3000:]
    # rank 0 alone prints and writes
    assert result.stdout.count("done: ") == 1 and result.stdout.count("epoch 2: kNN top-1") == 1
    assert "activation checkpointing x 2 processes (global batch 8)" in result.stdout
    log = training_log(run_dir)
    assert [row["epoch"] for row in log] == ["1", "2"]  # no row written twice
    assert sorted(os.listdir(run_dir)) == [
        "augmentations.png",
        "config.json",
        "stage1_last.pth",
        "stage1_log.csv",
    ]
    assert_same_training(log, one_process_log)
    checkpoint = torch.load(run_dir / "stage1_last.pth", weights_only=True)
    assert not any(key.startswith("module.") for key in checkpoint["model"])  # unwrapped
    model = load_stage1_model(checkpoint)
    assert model.encoder.bn1.__class__ is torch.nn.BatchNorm2d


def load_stage1_model(checkpoint):
    import net

    model = net.SimCLRNet(checkpoint["arch"], checkpoint["proj_dim"])
    checkpoints.load_strictly(model, checkpoint["model"], "stage1_last.pth")
    return model


def test_two_nodes_on_the_per_image_path_train_the_one_process_run(
    two_node_workers_run, one_process_workers_log
):
    """Each rank augments its slice of every global batch with the seeds drawn for those
    positions, so the per-image path too trains on the images and views of one process."""
    run_dir, outputs, exit_codes = two_node_workers_run
    assert exit_codes == [0, 0], outputs[0][1][-3000:]
    assert sum(stdout.count("done: ") for stdout, _ in outputs) == 1
    assert "data path: workers" in outputs[0][0]
    assert_same_training(training_log(run_dir), one_process_workers_log)


def test_sigterm_to_torchrun_stops_both_ranks_at_one_step_and_resume_on_one_process_finishes(
    images, tmp_path, two_process_run, capsys
):
    """SIGTERM to torchrun in epoch 1 (rank 0 sends it when its step 2 begins): torchrun forwards
    it, the ranks agree on the step to stop after, rank 0 saves and says how to continue. The
    run then continues on one process: the same run at another world size."""
    run_dir = tmp_path / "run"
    args = ["0", "2", "sigterm-launcher", *stage1_args(images, run_dir)]
    stopped = forked_torchrun(os.path.join("tests", "interrupting_stage1.py"), args, tmp_path)
    assert stopped.returncode != 0
    lines = [line for line in stopped.stdout.splitlines() if line.startswith("stopped by")]
    assert len(lines) == 1 and lines[0].startswith("stopped by SIGTERM in epoch 1 after step 3")
    assert_documented(lines[0])
    saved = torch.load(run_dir / "stage1_last.pth", weights_only=True)
    assert (saved["epoch"], saved["next_epoch_totals"]["steps"]) == (0, 3)
    assert one_process(stage1_args(images, run_dir, "--resume")) == 0
    assert "resuming in epoch 1 after step 3 of 3" in capsys.readouterr().out
    assert_same_training(training_log(run_dir), training_log(two_process_run[0]))


def test_a_killed_rank_ends_the_job_naming_it_and_resume_continues_from_the_last_epoch(
    images, tmp_path, two_node_workers_run
):
    """kill -9 of rank 1 in epoch 2, on the per-image path with the augmentation in each rank's
    main process (--workers 0): torchrun ends the other rank and names the dead one; the
    checkpoint of epoch 1 is intact, and --resume under torchrun ends as the uninterrupted run,
    every rank drawing its own views again after the resume."""
    run_dir = tmp_path / "run"
    args = stage1_args(images, run_dir, "--data-path", "workers")
    # torchrun's report of its ranks' failures, from new interpreters as a user launches them: with
    # ranks forked (--run-path) torchrun reports one failure, whichever rank it finds first
    killed = torchrun(os.path.join("tests", "interrupting_stage1.py"), ["1", "5", "kill", *args])
    assert killed.returncode != 0
    assert "rank      : 1 (local_rank: 1)" in killed.stderr and "SIGKILL" in killed.stderr
    assert torch.load(run_dir / "stage1_last.pth", weights_only=True)["epoch"] == 1
    resume = stage1_args(images, run_dir, "--resume")
    resumed = forked_torchrun("trainstage1.py", resume, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(training_log(run_dir), training_log(two_node_workers_run[0]), 1e-6)


@pytest.mark.parametrize("case", ["batch-not-divisible", "unreadable-image", "stage-two"])
def test_bad_input_under_torchrun_prints_one_error_line_once_and_every_rank_exits(
    images, tmp_path, case
):
    script, data_dir, batch_size = "trainstage1.py", images, 8
    if case == "batch-not-divisible":
        batch_size = 9
    elif case == "unreadable-image":
        data_dir = tmp_path / "images"
        write_image_folder(data_dir)
        (data_dir / "train" / "circle" / "0.png").write_bytes(b"not an image")
    args = stage1_args(data_dir, tmp_path / "run", "--batch-size", batch_size)
    if case == "stage-two":
        script, args = "trainstage2.py", ["--run-dir", tmp_path / "run"]
    result = forked_torchrun(script, args, tmp_path, timeout=300)
    # torchrun reports the ranks' exit status 2 in its ChildFailedError and exits 1 (README)
    assert result.returncode == 1 and "ChildFailedError" in result.stderr
    assert "exitcode  : 2" in result.stderr
    errors = [line for line in error_lines_of(result.stderr) if line.startswith("error: ")]
    expected = {
        "batch-not-divisible": "error: --batch-size 9 (the global batch) does not divide among 2 "
        "processes: pass a multiple of 2, such as 8",
        "unreadable-image": f"error: {data_dir / 'train' / 'circle' / '0.png'}: cannot read it as",
        "stage-two": "error: trainstage2.py runs in one process, not under torchrun",
    }[case]
    assert len(errors) == 1 and errors[0].startswith(expected), errors
    assert_documented(errors[0])
    assert not (tmp_path / "run" / "config.json").exists()


def error_lines_of(stderr):
    """The error lines our ranks printed (torchrun's own failure report has a traceback)."""
    ours = stderr.split("Traceback (most recent call last):")[0]
    return error_lines(ours)
