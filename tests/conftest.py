"""Shared fixtures: a tiny image-folder dataset written into tmp_path, and script runners."""

import dataclasses
import importlib.util
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import config
import loaddataset
import net
from simclr import checkpoints
from simclr import rundir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.pop("SIMCLR_CACHE_DIR", None)  # the tests look for the cache beside their data
# pyproject.toml runs the suite in pytest-xdist workers, one per core. Each worker, and every
# process its tests start, takes its share of the cores as torch threads: two workers of two
# threads each on two cores were slower than one process (the tiny batches of the tests leave
# most of the time to one thread anyway).
XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if XDIST_WORKERS > 1:
    THREADS = max(1, (os.cpu_count() or 1) // XDIST_WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    torch.set_num_threads(THREADS)


def tests_write_into_ram(folder="/dev/shm", room_needed=4 * 2**30):
    """Put pytest's tmp_path folders on folder, a RAM-backed file system, where it has room_needed
    free; a user's PYTEST_DEBUG_TEMPROOT or --basetemp wins. The suite writes some 15 GB of
    checkpoints (a ResNet-18 run's is 92 MB) and at most about 2 GB at once, each test's folder
    removed as it passes (pyproject.toml): on a 2-core VM (AMD EPYC, AVX2) a checkpoint took 0.39 s to
    write under /tmp, on its disk, and 0.075 s under /dev/shm (bench/checkpoint_write.py; the
    suite's time with each: BENCHMARKS.md, "The test suite's time"). Not before pytest 7.3, which
    keeps every folder, 15 GB a run: two runs in a row would fill the RAM folder of a 24 GiB
    machine, and a full /dev/shm crashes the DataLoader workers and Gloo ranks that use it."""
    usable = os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)
    if "PYTEST_DEBUG_TEMPROOT" in os.environ or not usable or pytest.version_tuple < (7, 3):
        return
    room = os.statvfs(folder)
    if room.f_bavail * room.f_frsize >= room_needed:
        os.environ["PYTEST_DEBUG_TEMPROOT"] = folder


tests_write_into_ram()

CLASSES = ("circle", "square", "stripes")
TRAIN_PER_CLASS = 8
TEST_PER_CLASS = 3


def draw(class_index, rng, size=32):
    """A 32x32 RGB image whose colour and pattern depend on the class, with noise."""
    image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    image[..., class_index] += 150
    if class_index == 1:
        image[8:24, 8:24] = 255
    elif class_index == 2:
        image[::4] = 0
    return Image.fromarray(image)


@pytest.fixture
def image_folder(tmp_path):
    """DIR/train/CLASS/*.png and DIR/test/CLASS/*.png with three classes."""
    return write_image_folder(tmp_path / "images")


def write_image_folder(root):
    rng = np.random.default_rng(0)
    for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for class_index, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for number in range(count):
                draw(class_index, rng).save(folder / f"{number}.png")
    return root


@pytest.fixture(scope="session")
def stage_one_run(tmp_path_factory):
    """A finished one-epoch stage-one run (ResNet-18, batch 8, fp32, the kNN monitor after the
    epoch) at 16 px, on a tiny image folder of its own (RUN/../images), made once per test
    process and shared by the tests that read it. A test that runs a script on it takes
    copy_of_run; none may change the images."""
    root = tmp_path_factory.mktemp("stage-one")
    images = write_image_folder(root / "images")
    run_dir = root / "run"
    argv = ["--dataset", "folder", "--data-dir", images, "--arch", "resnet18", "--batch-size", 8]
    argv += ["--epochs", 1, "--knn-every", 1, "--precision", "fp32", "--device", "cpu"]
    argv += ["--image-size", 16]  # the 32x32 images at 16x16 here and in every later stage
    load_script("trainstage1").main(
        [str(arg) for arg in [*argv, "--workers", 0, "--run-dir", run_dir]]
    )
    return run_dir


def copy_of_run(run_dir, folder):
    """A copy of a run folder as folder/run, for a test that writes into it or resumes it."""
    copy = folder / "run"
    shutil.copytree(run_dir, copy)
    return copy


def pytest_collection_modifyitems(config, items):
    """Tests marked long come first, so that pytest-xdist's workers do not wait at the end on one
    that started last. Tests marked gpu run where CUDA is; elsewhere they are reported as
    skipped."""
    items.sort(key=lambda item: "long" not in item.keywords)  # stable: else in file order
    if torch.cuda.is_available():
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


def run_script(script, *args, cwd):
    """Run one of the repository's scripts as a user would; -> CompletedProcess with text output."""
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def load_script(name):
    """Import a top-level script by path (test.py would clash with Python's own 'test')."""
    spec = importlib.util.spec_from_file_location(
        f"script_{name}", os.path.join(ROOT, f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def results_of(folder):
    """An evaluation's results.json as the scripts read it (rundir.Results), as a dict."""
    return dataclasses.asdict(rundir.Results.read(folder))


def stage_one_data(cfg, device=torch.device("cpu")):
    """Stage one's loaders of a config.Pretrain, planned as trainstage1.py plans them."""
    sources = loaddataset.pretraining_sources(cfg)
    return loaddataset.pretraining_data(
        config.stage_one_plan(cfg, sources, device), sources, device
    )


FAILURES_PAGE = os.path.join(ROOT, "docs", "stopping-and-failures.md")


def documented_messages():
    """The messages of the failure table (docs/stopping-and-failures.md) as regexes, its
    placeholders matching any text."""
    with open(FAILURES_PAGE) as file:
        page = file.read()
    table = page[page.index("| case | what the script prints |") :]
    table = table[: table.index("\n\n")]
    patterns = []
    for message in re.findall(r"`([^`]*)`", table):
        if not message.startswith(("error: ", "stopped by ")) and "already finished" not in message:
            continue  # a flag named in the first column, or argparse's own wording
        pattern = re.escape(message)
        for placeholder in ("runs/X", "PATH", "DIR", "ARCH", "DEVICE", "..."):
            pattern = pattern.replace(re.escape(placeholder), ".+")
        patterns.append(re.compile(re.sub(r"\b[NM]\b", ".+", pattern)))
    return patterns


def assert_documented(line):
    """line, as the program printed it, is one of the failure table's messages."""
    assert any(pattern.fullmatch(line) for pattern in documented_messages()), (
        f"{line!r} is not in the table of failure cases of docs/stopping-and-failures.md"
    )


# A progress line as runtime.LogProgress prints it where stderr is not a terminal (as in tests)
PROGRESS_LINE = re.compile(r".+: \d+(/\d+)? \w+( \(\d+%\))?, \S+ \w+/s(, .*)?")


def error_lines(stderr):
    """The lines of stderr that are not progress bars (tqdm redraws them after carriage returns,
    runtime.LogProgress prints them as lines); a traceback, or an error line missing from
    the failure table (docs/stopping-and-failures.md), fails the test."""
    assert "Traceback" not in stderr, stderr
    lines = (line.split("\r")[-1].replace("\x1b[A", "").strip() for line in stderr.splitlines())
    lines = [
        line for line in lines if line and "%|" not in line and not PROGRESS_LINE.fullmatch(line)
    ]
    for line in lines:
        if line.startswith("error: "):
            assert_documented(line)
    return lines


def run_main(script, argv, capsys):
    """A script's main in this process -> (exit code, stdout, stderr lines but progress bars)."""
    try:
        load_script(script).main([str(arg) for arg in argv])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, error_lines(captured.err)


# Helpers that several test files share: run logs, stop signals, small checkpoints, torchrun.

TIMING_COLUMNS = ("seconds", "images_per_s", "peak_memory_gib")  # differ between equal runs
LOSS_TOLERANCE = 1e-3  # relative, between runs at other numbers of processes
# pair_accuracy counts anchors whose positive view is the most similar: float32 sums in another
# order can flip a near-tie, one anchor of an epoch's 2 x 24 (seen on an AVX-512 Xeon, not on
# an AVX2 EPYC). Other views or images move the loss far beyond LOSS_TOLERANCE.
ONE_ANCHOR = 100.0 / (2 * len(CLASSES) * TRAIN_PER_CLASS)  # percent


def training_log(run_dir):
    rows = rundir.read_csv(os.path.join(run_dir, "stage1_log.csv"))
    return [{key: value for key, value in row.items() if key not in TIMING_COLUMNS} for row in rows]


def signal_after_calls(module, name, calls, monkeypatch, signal_number=signal.SIGTERM):
    """Make module.name send this process a signal (SIGTERM) when it is called for the calls-th
    time."""
    original, count = getattr(module, name), [0]

    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        count[0] += 1
        if count[0] == calls:
            os.kill(os.getpid(), signal_number)
        return result

    monkeypatch.setattr(module, name, wrapped)


def classifier_checkpoint(path, **changes):
    """A stage-two checkpoint of a ResNet-18 classifier with untrained weights."""
    model = net.LinearClassifier(net.resnet_encoder("resnet18"), 512, len(CLASSES))
    checkpoint = {
        "stage": 2,
        "arch": "resnet18",
        "stem": "cifar",
        "feature_dim": 512,
        "image_size": 32,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "class_names": list(CLASSES),
        "model": model.state_dict(),
        **changes,
    }
    checkpoints.save(path, checkpoint)
    return checkpoint


def stage1_args(images, run_dir, *extra):
    return [
        "--dataset",
        "folder",
        "--data-dir",
        images,
        "--arch",
        "resnet18",
        "--batch-size",
        8,
        "--epochs",
        2,
        "--warmup-epochs",
        1,
        "--knn-every",
        1,
        "--device",
        "cpu",
        "--workers",
        0,
        "--precision",
        "fp32",
        "--image-size",  # the 32x32 test images at 16x16: a quarter of the work, the same paths
        16,
        "--run-dir",
        run_dir,
        *extra,
    ]


def torchrun(script, args, processes=2, launcher=("--standalone",), timeout=600):
    """torchrun --nproc_per_node=processes script args, as a user types it: the launcher and each
    rank a new interpreter -> CompletedProcess (text output)."""
    command = [sys.executable, "-m", "torch.distributed.run", *launcher]
    command += [f"--nproc_per_node={processes}", os.path.join(ROOT, script), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout
    )


def start_forked_torchrun(script, args, output_dir, processes=2, launcher=("--standalone",)):
    """torchrun's own main (its argument parsing, rendezvous, agent, signal forwarding and failure
    report) in a process forked from the server that imported torch and the project once, with
    --run-path --start-method fork: each rank is forked from the launcher and runs script as
    __main__. The same launch as torchrun() without the seconds each new interpreter spends
    importing torch and torchvision (three interpreters per launch). -> (the launcher's Process,
    its stdout file, its stderr file)."""
    argv = [*launcher, f"--nproc_per_node={processes}", "--run-path", "--start-method", "fork"]
    argv += [os.path.join(ROOT, script), *map(str, args)]
    os.makedirs(output_dir, exist_ok=True)
    stdout, stderr = output_dir / "torchrun.out", output_dir / "torchrun.err"
    process = forkserver_context().Process(
        target=torchrun_main_in_child, args=(argv, str(stdout), str(stderr))
    )
    process.start()
    return process, stdout, stderr


def forked_torchrun(script, args, output_dir, processes=2, timeout=600):
    """start_forked_torchrun, waited for -> CompletedProcess (text output), as torchrun()."""
    process, stdout, stderr = start_forked_torchrun(script, args, output_dir, processes)
    return finished_launch(process, stdout, stderr, timeout)


def finished_launch(process, stdout, stderr, timeout=600):
    process.join(timeout)
    if process.is_alive():
        process.kill()
        raise subprocess.TimeoutExpired("torchrun", timeout)
    return subprocess.CompletedProcess(
        "torchrun", process.exitcode, stdout.read_text(), stderr.read_text()
    )


def torchrun_main_in_child(argv, stdout_path, stderr_path):
    """A forked child's work: `torchrun ARGV` in ROOT, one thread per rank, its stdout and stderr
    (and its ranks', forked from it) line-buffered to two files, so that a rank killed by SIGKILL
    has written every line it printed. The files stay open because multiprocessing prints an
    uncaught error (torchrun's ChildFailedError) to stderr as the process ends."""
    os.chdir(ROOT)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    output_to_files(stdout_path, stderr_path)
    from torch.distributed import run

    run.main(argv)


def assert_same_training(found, expected, loss_tolerance=LOSS_TOLERANCE):
    """Two stage1_log.csv's (timing columns left out) of the same run at other world sizes."""
    assert [row["epoch"] for row in found] == [row["epoch"] for row in expected]
    for row, expected_row in zip(found, expected):
        for column, value in expected_row.items():
            if column == "loss":
                assert float(row[column]) == pytest.approx(float(value), rel=loss_tolerance)
            elif column == "pair_accuracy":
                assert abs(float(row[column]) - float(value)) <= ONE_ANCHOR + 1e-3, column
            else:
                assert row[column] == value, column


def output_to_files(stdout_path, stderr_path):
    """A forked child's stdout and stderr, Python's and its file descriptors 1 and 2 (which its
    own children inherit), line-buffered to the files (one file when the paths are equal), left
    open until the process ends."""
    sys.stdout = open(stdout_path, "w", buffering=1)
    sys.stderr = sys.stdout if stderr_path == stdout_path else open(stderr_path, "w", buffering=1)
    os.dup2(sys.stdout.fileno(), 1), os.dup2(sys.stderr.fileno(), 2)


HELD = "held: waiting for"  # what a held child prints when it reaches the function it waits at


def script_main_in_child(script, argv, cwd, output_path, hold=None):
    """A forked child's work: `python SCRIPT ARGV` in cwd, its stdout and stderr to output_path.
    hold: (the name of a function of the script, a path): the script's first call of that
    function prints HELD and waits until the path exists, so that a test acts while the script
    stands at a known point of its run, whatever the machine's speed."""
    os.chdir(cwd)
    output_to_files(output_path, output_path)
    module = load_script(script)
    if hold:
        name, go = hold
        original = getattr(module, name)

        def held(*args, **kwargs):
            print(f"{HELD} {go}", flush=True)
            while not os.path.exists(go):
                time.sleep(0.01)
            return original(*args, **kwargs)

        setattr(module, name, held)
    module.main([str(arg) for arg in argv])


_FORKSERVER = []


def forkserver_context():
    """The multiprocessing context whose server has imported torch and the project once: each
    process started from it is forked from that server, a real process without the seconds every
    new interpreter spends importing torch."""
    if not _FORKSERVER:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["torch", "torchvision", "config", "net", "loaddataset"])
        _FORKSERVER.append(context)
    return _FORKSERVER[0]


def forked_script(script, argv, cwd, output_path, hold=None):
    """Start `python SCRIPT ARGV` as a process of its own, forked from forkserver_context()'s
    server: SIGKILL ends it as it would any other (hold: script_main_in_child's). -> the
    multiprocessing Process."""
    process = forkserver_context().Process(
        target=script_main_in_child, args=(script, argv, str(cwd), str(output_path), hold)
    )
    process.start()
    return process


class OutputLines:
    """The lines a forked script writes to its output file, read as they come: next_line() waits
    for the next whole line (an event, whatever the machine's speed), or returns None once the
    process has ended without writing one."""

    def __init__(self, path, process):
        self.path, self.process, self.seen = path, process, 0

    def next_line(self):
        while True:
            text = self.path.read_text() if self.path.exists() else ""
            if "\n" in text[self.seen :]:
                line, _ = text[self.seen :].split("\n", 1)
                self.seen += len(line) + 1
                return line
            if not self.process.is_alive():
                return None
            time.sleep(0.01)
