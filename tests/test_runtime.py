"""Progress in a log file: with stderr not a terminal (nohup, a cluster job, these tests), every
long pass prints a plain line at each tenth of its length and at least once a minute."""

import re

from simclr import runtime
from conftest import copy_of_run, load_script

FAST = ["--device", "cpu", "--workers", "0", "--precision", "fp32"]


def test_counted_puts_the_noun_in_the_right_number():
    assert [runtime.counted(n, "step") for n in (0, 1, 2, 1000)] == [
        "0 steps",
        "1 step",
        "2 steps",
        "1,000 steps",
    ]


def test_a_pass_prints_a_line_at_every_tenth_with_its_rate_and_time_left(capsys):
    bar = runtime.progress(total=50, desc="stage 2, epoch 1/5", unit="step")
    for step in range(50):
        bar.set_postfix(loss=f"{2.0 - step / 50:.3f}")
        bar.update()
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert [int(re.search(r"\((\d+)%\)", line)[1]) for line in lines] == list(range(10, 101, 10))
    assert re.fullmatch(
        r"stage 2, epoch 1/5: 5/50 steps \(10%\), \S+ step/s, 0:00:\d\d left, loss=1\.920", lines[0]
    )
    assert lines[-1].startswith("stage 2, epoch 1/5: 50/50 steps (100%)")
    assert "\r" not in capsys.readouterr().err


def test_a_slow_pass_prints_at_least_once_a_minute(capsys, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(runtime.time, "monotonic", lambda: clock[0])
    batches = runtime.progress(range(1000), desc="encoding test split", unit="batch")
    for batch in batches:
        clock[0] += 30.0 if batch < 4 else 0.0  # two minutes over the first 4 of 1,000 batches
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == [
        "encoding test split: 2/1000 batches (0%), 0.0333 batch/s, 8:19:00 left",
        "encoding test split: 4/1000 batches (0%), 0.0333 batch/s, 8:18:00 left",
    ]
    assert len(lines) == 2 + 10  # then the tenths


def test_stage_two_in_a_log_shows_its_encoding_and_training_passes(stage_one_run, tmp_path, capsys):
    run_dir = copy_of_run(stage_one_run, tmp_path)
    argv = ["--run-dir", run_dir, "--epochs", 3, "--batch-size", 8, *FAST]
    load_script("trainstage2").main([str(arg) for arg in argv])
    lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith("encoding test split: 2/2 batches (100%)") for line in lines)
    assert lines[-1].startswith("stage 2, epoch 3/3: 9/9 steps (100%)")  # 24 images, batch 8
    assert "\r" not in "".join(lines)
