"""What a stage-one run needs to stop at any step and continue exactly where it stopped.

A checkpoint records how far training got (whole epochs, then steps into the next one) and every
random state as it was when that next epoch began: Python, NumPy, torch (CPU and CUDA) and the
data loader's own generators, which fix the data order and the augmentation on either data path.
Resuming restores those states, draws the interrupted epoch's batches again from its start and
trains from the first step not yet taken, so every random draw after that is the one the
uninterrupted run made. Under torchrun rank 0 saves its states and every rank restores them: the
loaders' generators are alike on every rank, and training draws nothing from the global states.
"""

import dataclasses
import os
import random

import numpy as np
import torch

from simclr import checkpoints, rundir
from simclr.errors import InputError

# Settings a resumed run may change: where it runs and how fast, not what it computes (config.py
# declares them numbers=False; the views do not depend on --workers: each image's augmentation is
# seeded by the loader's own generator), and where its data is, if it holds the same images
# (check_same_data).
MAY_MOVE_ON_RESUME = ("data_dir",)
# Of those, the ones the machine decides: this command line's value, or this machine's default,
# never the saved one (8 workers saved on a large node would oversubscribe a laptop).
THIS_MACHINES = ("workers",)


def may_change_on_resume(cfg):
    """The names of the settings a resumed run may change (cfg: a config.Pretrain)."""
    where_and_how_fast = {
        field.name for field in dataclasses.fields(cfg) if not field.metadata.get("numbers", True)
    }
    return where_and_how_fast | set(MAY_MOVE_ON_RESUME)


def rng_state(loader):
    """Every random state that the next steps depend on, as tensors and plain values; loader: a
    views loader of either data path, whose generators() decide its order and augmentation."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (
            name,
            torch.from_numpy(keys.astype(np.int64)),
            position,
            has_gauss,
            cached_gaussian,
        ),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": [generator.get_state() for generator in loader.generators()],
    }


def set_rng_state(state, loader):
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state(
        (name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian)
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for generator, generator_state in zip(loader.generators(), state["data"]):
        generator.set_state(generator_state)


def settings_to_continue(cfg, saved):
    """The saved run's settings, changed only where this command line sets one of
    may_change_on_resume. Another flag given with a value other than the saved one would make the
    result differ from the uninterrupted run's, so it is refused rather than ignored or used."""
    defaults, changes, may_change = type(cfg)(), {}, may_change_on_resume(cfg)
    for field in dataclasses.fields(cfg):
        given, default = getattr(cfg, field.name), getattr(defaults, field.name)
        if field.name in THIS_MACHINES:
            changes[field.name] = given
            continue
        if given == default:  # not given, or given as the default: the saved value stands
            continue
        if field.name in may_change:
            changes[field.name] = given
        elif given != saved.get(field.name, default):
            flag = "--" + field.name.replace("_", "-")
            saved_value = saved.get(field.name, default)
            raise InputError(
                f"--resume continues {cfg.run_dir} with its saved settings, but {flag} {given} "
                f"differs from the run's {flag} "
                f"{'(not set)' if saved_value is None else saved_value}: drop {flag}, "
                f"or start a new run in a new --run-dir"
            )
    return dataclasses.replace(type(cfg)(**saved), **changes)


def continue_run(cfg):
    """--resume: -> (the run's settings, its last checkpoint, or None to start the run over)."""
    if not cfg.run_dir:
        raise InputError("--resume needs --run-dir: the folder of the run to continue")
    saved = rundir.run_settings(cfg.run_dir)
    known = {field.name for field in dataclasses.fields(cfg)}
    if "head" not in saved and checkpoints.proj_layers_of(saved) == 1:  # before --head: its name
        saved["head"] = "linear"
    cfg = settings_to_continue(cfg, {name: value for name, value in saved.items() if name in known})
    _, last_path = checkpoints.locate(1, cfg.run_dir)
    if not os.path.isfile(last_path):
        print(f"{cfg.run_dir} has no checkpoint yet (it stopped in its first epoch): starting over")
        return cfg, None
    return cfg, checkpoints.load(last_path, stage=1)


def check_same_data(cfg, checkpoint, data):
    """A resumed run trains on the images it trained on: --data-dir may name another folder (the
    data moved), but one whose images differ in number or normalisation from the checkpoint's is
    refused, naming both (data: loaddataset.PretrainData). Checkpoints of before "images" are
    held to their normalisation."""
    if checkpoint is None:
        return

    def rounded(values):  # to 4 decimals: the normalisation as measured again
        return [round(value, 4) for value in values]

    saved = {"images": checkpoint.get("images", data.images)}
    saved |= {"mean": rounded(checkpoint["mean"]), "std": rounded(checkpoint["std"])}
    here = {"images": data.images, "mean": rounded(data.mean), "std": rounded(data.std)}
    if here != saved:
        differing = "; ".join(
            f"{key} {words(here[key])} here, {words(saved[key])} in the checkpoint"
            for key in here
            if here[key] != saved[key]
        )
        raise InputError(
            f"--resume with --data-dir {cfg.data_dir}: these are not the images the run trained "
            f"on in {checkpoint['config']['data_dir']} ({differing}): resume with the run's "
            f"data, or start a new run in a new --run-dir"
        )


def words(value):
    if isinstance(value, dict):
        return ", ".join(f"{count:,} {kind}" for kind, count in value.items())
    return "(" + ", ".join(f"{number:g}" for number in value) + ")"


def data_moved(cfg):
    """The run's config.json, its data folder changed to --data-dir where the data moved (the same
    images, check_same_data says), so that every later script reads it where it is now ->
    rundir.RunRecord."""
    record = rundir.read_run(cfg.run_dir)
    saved = record.config.get("data_dir", cfg.data_dir)
    if os.path.abspath(saved) == os.path.abspath(cfg.data_dir):
        return record
    record = dataclasses.replace(record, config={**record.config, "data_dir": cfg.data_dir})
    rundir.write_json(os.path.join(cfg.run_dir, rundir.CONFIG_FILE), dataclasses.asdict(record))
    print(
        f"note: the run's data is now read from {cfg.data_dir} (its {rundir.CONFIG_FILE} says so)"
    )
    return record


def finished(cfg, checkpoint):
    """Whether the resumed run has done all its epochs already; if so, say what comes next."""
    if checkpoint is None or checkpoint["epoch"] < cfg.epochs:
        return False
    print(
        f"{cfg.run_dir} has already finished all {cfg.epochs} epochs; nothing to resume. "
        f"Next: python trainstage2.py --run-dir {cfg.run_dir}"
    )
    return True
