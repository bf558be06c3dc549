"""How long one stage-one checkpoint of a ResNet-18 run (its weights and LARS momentum, 92 MB)
takes to write into each folder given, as checkpoints.save writes it (a temporary file renamed),
a new file each time as in the tests' run folders. The folders are written in turn, so a slow
phase of the machine falls on all of them alike. Prints the median and range per folder.

    python bench/checkpoint_write.py /tmp /dev/shm --repeats 8
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import net  # noqa: E402
from simclr import checkpoints  # noqa: E402


def resnet18_checkpoint():
    model = net.SimCLRNet("resnet18")
    momentum = {name: torch.randn_like(weight) for name, weight in model.named_parameters()}
    return {"stage": 1, "model": model.state_dict(), "optimizer": {"momentum": momentum}}


def seconds_per_write(folders, repeats):
    checkpoint, seconds = resnet18_checkpoint(), {folder: [] for folder in folders}
    scratch = {folder: tempfile.mkdtemp(dir=folder) for folder in folders}
    try:
        for repeat in range(repeats):
            for folder in folders:
                path = os.path.join(scratch[folder], f"{repeat}.pth")
                started = time.perf_counter()
                checkpoints.save(path, checkpoint)
                seconds[folder].append(time.perf_counter() - started)
    finally:
        for folder in folders:
            for name in os.listdir(scratch[folder]):
                os.remove(os.path.join(scratch[folder], name))
            os.rmdir(scratch[folder])
    return seconds


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    for folder, times in seconds_per_write(args.folders, args.repeats).items():
        print(
            f"{folder}: median {statistics.median(times):.3f} s "
            f"({min(times):.3f} to {max(times):.3f}) per checkpoint, {len(times)} writes"
        )
