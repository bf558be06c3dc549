"""Reproduce a figure of the README: run a receipt's commands again in a new folder and compare
each figure with the receipt's, within the tolerance stated beside it.

A receipt (receipts/*.json, one per row of README's Results) keeps the exact commands, the commit
and the machine that printed the figures, the figures and where each is read from; a row that
cannot be reproduced here says why instead (it needs a GPU, or hours of a CPU). The tolerance of a
figure is two standard errors of a top-1 over its test images, sqrt(p (1 - p) / n), the spread a
new training run is expected within; a run on another machine may differ by more, and says so.

Writes WORK/reproduced.json (the figures, their tolerances, the time, this machine) and exits 1
when a figure does not agree.

    python reproduce.py receipts/quick-start.json --data-dir ./cifar10-folder
"""

import datetime
import math
import os
import platform
import shlex
import subprocess
import sys
import time

import torch

import config
from simclr import errors, rundir

ROOT = os.path.dirname(os.path.abspath(__file__))


def read_receipt(path):
    """A receipt as a dict; one without commands and figures, or without why it cannot be
    reproduced, is refused in one line."""
    receipt = rundir.read_json(path, "restore it from git")
    if "why_not" not in receipt and not (receipt.get("commands") and receipt.get("figures")):
        raise errors.InputError(f"{path} has neither commands and figures nor why_not: restore it")
    return receipt


def run_commands(receipt, work_dir, data_dir, log):
    """Each command as its own process in work_dir, DATA_DIR replaced by data_dir; a failure ends
    the reproduction in one line naming the command and the log."""
    for line in receipt["commands"]:
        words = shlex.split(line.replace("DATA_DIR", os.path.abspath(data_dir)))
        if words[0] == "python":  # the repository's script, run as its command line would
            words = [sys.executable, os.path.join(ROOT, words[1]), *words[2:]]
        log.write(f"$ {line}\n")
        log.flush()
        done = subprocess.run(words, cwd=work_dir, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode:
            raise errors.InputError(
                f"`{line}` exited with {done.returncode} in {work_dir}: see {log.name}"
            )


def figure_now(figure, work_dir):
    """A figure as the reproduction's files hold it: a key of a JSON file, or the last value of a
    CSV column."""
    path = os.path.join(work_dir, figure["file"])
    if "key" in figure:
        return float(rundir.read_json(path)[figure["key"]])
    values = [row[figure["column"]] for row in rundir.read_csv(path) if row[figure["column"]]]
    return float(values[-1])


def tolerance(value, test_images):
    """Two standard errors of a top-1 of value (%) over test_images images, in points."""
    p = min(max(value / 100, 0.0), 1.0)
    return 200 * math.sqrt(p * (1 - p) / test_images)


def this_machine():
    """This machine in words: its CPUs (their model and whether they have native bf16, where
    /proc/cpuinfo says), its GPU, its torch."""
    cpu, flags = platform.processor() or platform.machine(), set()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as file:
            lines = [line.split(":", 1) for line in file if ":" in line]
        fields = {key.strip(): value.strip() for key, value in reversed(lines)}
        cpu, flags = fields.get("model name", cpu), set(fields.get("flags", "").split())
    bf16 = ", native bf16" if flags & {"avx512_bf16", "amx_bf16"} else ""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPUs ({cpu}{bf16}), {gpu}, torch {torch.__version__}"


@errors.one_line_errors
def main(argv=None):
    cfg = config.parse(config.Reproduce, argv)
    disagree = 0
    for path in cfg.receipts:
        receipt = read_receipt(path)
        if "why_not" in receipt:
            print(f"{path}: not reproduced here: {receipt['why_not']}")
            continue
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = os.path.splitext(os.path.basename(path))[0]
        work_dir = os.path.join(cfg.work_dir, f"{name}-{stamp}")
        os.makedirs(work_dir)
        started = time.perf_counter()
        print(f"{path}: running its {len(receipt['commands'])} commands in {work_dir}", flush=True)
        with open(os.path.join(work_dir, "commands.log"), "w") as log:
            run_commands(receipt, work_dir, cfg.data_dir, log)
        minutes = (time.perf_counter() - started) / 60
        found = []
        for figure in receipt["figures"]:
            now, points = (
                figure_now(figure, work_dir),
                tolerance(figure["value"], figure["test_images"]),
            )
            agrees = abs(now - figure["value"]) <= points
            disagree += not agrees
            found.append({**figure, "now": round(now, 2), "tolerance": round(points, 2)})
            print(
                f"{figure['name']}: receipt {figure['value']:.2f}% ({receipt['machine']}), now "
                f"{now:.2f}%: {'agree' if agrees else 'DISAGREE'} within {points:.2f} points (two "
                f"standard errors over {figure['test_images']:,} test images)"
            )
        rundir.write_json(
            os.path.join(work_dir, "reproduced.json"),
            {
                "receipt": path,
                "figures": found,
                "minutes": round(minutes, 1),
                "machine": this_machine(),
            },
        )
        print(f"{path}: {minutes:.1f} min on {this_machine()}")
    return 1 if disagree else 0


if __name__ == "__main__":
    main()
