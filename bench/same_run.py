"""Whether two run folders hold the same run: the same files, the same log rows and results (the
columns that time it left out), the same predictions and bit-identical checkpoint tensors. For a
change that should not change behaviour: the same commands at two commits, the same seed.

    python bench/same_run.py runs/BEFORE runs/AFTER
"""

import csv
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from simclr import rundir  # noqa: E402

TIMED = {"seconds", "images_per_s", "peak_memory_gib", "started", "git_commit", "run_dir"}
TIMED |= {"stage1_checkpoint", "checkpoint", "run_id"}  # what names the run folder or the run


def files(run_dir):
    return sorted(
        os.path.relpath(os.path.join(folder, name), run_dir)
        for folder, _, names in os.walk(run_dir)
        for name in names
    )


def untimed(value):
    if isinstance(value, dict):
        return {key: untimed(item) for key, item in value.items() if key not in TIMED}
    if isinstance(value, list):
        return [untimed(item) for item in value]
    return value


def differences(a, b, where):
    """The places where two loaded checkpoints differ: a tensor, a key or a plain value."""
    if isinstance(a, torch.Tensor):
        return [] if torch.equal(a, b) else [where]
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return [f"{where} keys"]
        return [
            d
            for key in a
            if key not in TIMED
            for d in differences(a[key], b[key], f"{where}.{key}")
        ]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length"]
        return [d for x, y in zip(a, b) for d in differences(x, y, where)]
    return [] if a == b else [where]


def compare(before, after, name):
    a, b = os.path.join(before, name), os.path.join(after, name)
    if name.endswith(".csv"):
        with open(a, newline="") as file_a, open(b, newline="") as file_b:
            return untimed(list(csv.DictReader(file_a))) == untimed(list(csv.DictReader(file_b)))
    if name.endswith(".json"):
        # results.json as the scripts read it: its settings at the top or in its provenance alike
        read = rundir.with_settings if os.path.basename(name) == rundir.RESULTS_FILE else dict
        with open(a) as file_a, open(b) as file_b:
            found = untimed(read(json.load(file_a))), untimed(read(json.load(file_b)))
        for key in sorted(set(found[0]) | set(found[1])):
            if found[0].get(key) != found[1].get(key):
                print(f"differs: {name} {key}")
        return found[0] == found[1]
    if name.endswith(".pth"):
        load = dict(map_location="cpu", weights_only=True)
        found = differences(torch.load(a, **load), torch.load(b, **load), name)
        for place in found:
            print(f"differs: {place}")
        return not found
    return None  # pictures: drawn from the same numbers, not compared byte for byte


def main(before, after):
    names = files(before)
    if names != files(after):
        print(f"different files: {sorted(set(names) ^ set(files(after)))}")
        return 1
    verdicts = {name: compare(before, after, name) for name in names}
    for name, same in verdicts.items():
        print(f"{'same' if same else 'DIFFERENT' if same is False else 'not compared'}: {name}")
    return 1 if False in verdicts.values() else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
