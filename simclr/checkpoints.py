"""The two checkpoint formats: their file names, what each holds, where a run keeps them, and how
they are written and read back (safely, strictly, without wrapper prefixes).

Both hold only tensors and plain Python values, so they load with weights_only=True, and carry
what rebuilds their network without the command line that made it (net.py rebuilds it):

stage1_last.pth  {"stage": 1, "epoch", "config", "arch", "stem", "feature_dim", "proj_dim",
                  "image_size", "mean", "std", "class_names", "knn_top1", "last_knn_top1",
                  "model", "optimizer", "scaler", "next_epoch_totals", "rng"}
stage2.pth       {"stage": 2, "arch", "stem", "feature_dim", "image_size", "mean", "std",
                  "class_names", "stage1_checkpoint", "stage1_config", "from_head_layer",
                  "feature_norm", "config", "model"}  (stage1_config, from_head_layer:
                  since SimCLRv2's modes; feature_norm: since the probe normalises them; arch
                  and feature_dim are those of the network it holds, a student's of
                  --student-arch)
"""

import hashlib
import os
import pickle

import torch

from simclr import rundir, runtime
from simclr.errors import InputError
from simclr.rundir import STAGE_ONE_FILE, STAGE_TWO_FILE

STAGE_FILES = {1: STAGE_ONE_FILE, 2: STAGE_TWO_FILE}
STAGE_SCRIPTS = {1: "trainstage1.py", 2: "trainstage2.py"}
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # added by DataParallel/DDP and torch.compile
# Runs from before --proj-layers had the SimCLR paper's 2-layer head.
HEAD_LAYERS_BEFORE_THE_FLAG = 2
# What a stage-two checkpoint copies from stage one's: enough to rebuild and feed the encoder.
ENCODER_KEYS = ("arch", "stem", "feature_dim", "image_size", "mean", "std")


def stage_one(cfg_dict, model, optimizer, scaler, data, progress):
    """A stage-one checkpoint. cfg_dict: the run's settings; data: its class names and
    normalisation (mean, std); progress: epoch (whole epochs done), knn_top1, last_knn_top1,
    next_epoch_totals and rng, what continues the run from the step after the last one taken."""
    return {
        "stage": 1,
        "epoch": progress["epoch"],
        "config": cfg_dict,
        "arch": cfg_dict["arch"],
        "stem": cfg_dict["stem"],
        "feature_dim": model.feature_dim,
        "proj_dim": cfg_dict["proj_dim"],
        "image_size": cfg_dict["image_size"],
        "mean": list(data.mean),
        "std": list(data.std),
        "class_names": data.class_names,
        "knn_top1": progress["knn_top1"],
        "last_knn_top1": progress["last_knn_top1"],
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "next_epoch_totals": progress["next_epoch_totals"],
        "rng": progress["rng"],
    }


def of_settings(settings, feature_dim, mean, std):
    """What stage two reads of a stage-one checkpoint, from the run's settings alone (--mode
    scratch: its weights are not used): no weights, no epoch, no path."""
    return {
        "config": settings,
        "arch": settings["arch"],
        "stem": settings.get("stem", "cifar"),  # runs from before --stem: cifar
        "feature_dim": feature_dim,
        "image_size": settings["image_size"],
        "mean": mean,
        "std": std,
        "epoch": None,
        "path": None,
    }


def stage_two(model, network, class_names, cfg_dict, built):
    """A stage-two checkpoint: everything test.py needs to rebuild and run the classifier, and
    the run it was made on (stage1_config: a distillation checks that its teacher is this run's).
    network: what the classifier is built on, stage one's checkpoint with its path, or for a
    student of another arch the same with the student's arch and feature width. built: how the
    classifier sits on it: from_head_layer, how many head layers are under it (their sizes:
    stage1_config), and feature_norm, whether net.FeatureNorm is."""
    return {
        "stage": 2,
        **{key: network[key] for key in ENCODER_KEYS},
        "class_names": class_names,
        "stage1_checkpoint": network["path"],
        "stage1_config": network["config"],
        "from_head_layer": built["from_head_layer"],
        "feature_norm": built["feature_norm"],
        "config": cfg_dict,
        "model": model.state_dict(),
    }


def trained_for(checkpoint):
    """How far the run of a stage-one checkpoint had trained, in words: 'epoch 7 of 10', or for a
    run stopped midway '7 steps into epoch 1 of 10' (whole epochs done: 0)."""
    epochs = checkpoint.get("config", {}).get("epochs")
    of = f" of {epochs}" if epochs else ""
    steps = checkpoint.get("next_epoch_totals", {}).get("steps", 0)
    if steps:
        return f"{runtime.counted(steps, 'step')} into epoch {checkpoint['epoch'] + 1}{of}"
    return f"epoch {checkpoint['epoch']}{of}"


def weights_digest(model_state):
    """A short digest of a state dict's tensors: the same weights give the same digest, so a
    record can tell whether the checkpoint it names was replaced since."""
    digest = hashlib.sha256()
    for key in sorted(model_state):
        tensor = model_state[key].detach().cpu().contiguous().reshape(-1)
        digest.update(key.encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def teacher_note(run_dir, results):
    """'' for a distillation whose teacher is still in its folder as it was (results: the
    student's rundir.Results), else ' (since replaced)' or ' (since removed)'; '' for any other
    evaluation, and for one made before teachers were recorded."""
    if results.teacher_weights is None:
        return ""
    folder = os.path.join(run_dir, rundir.EVALUATIONS, results.teacher)
    teacher = rundir.results_in(folder)
    if teacher is None:
        return " (since removed)"
    weights = teacher.weights
    if weights is None:  # a teacher made before results.json recorded its weights' digest
        weights = weights_digest(load(os.path.join(folder, STAGE_TWO_FILE), stage=2)["model"])
    return "" if weights == results.teacher_weights else " (since replaced)"


def proj_layers_of(settings):
    """The number of layers of a run's projection head, from its settings (config.json)."""
    return settings.get("proj_layers", HEAD_LAYERS_BEFORE_THE_FLAG)


def save(path, checkpoint):
    """Written to a temporary file and renamed: a crash leaves the previous checkpoint whole."""
    rundir.replace_atomically(path, lambda temporary: torch.save(checkpoint, temporary))


def locate(stage, run_dir="", checkpoint="", evaluation="", needs_run=True):
    """-> (the run folder, the checkpoint's path): --checkpoint if given, else the stage's file in
    --run-dir (or the newest run that has it; stage two: in its evaluation folder). The run folder
    is None where --checkpoint is given and the caller needs no run (needs_run False)."""
    if checkpoint and not needs_run:
        return None, checkpoint
    name = STAGE_FILES[stage]
    run_dir = rundir.resolve_run_dir(run_dir)
    folder = rundir.evaluation_dir(run_dir, evaluation)
    return run_dir, checkpoint or os.path.join(folder, name)


def strip_prefixes(state_dict):
    """Remove DataParallel/DDP ('module.') and torch.compile ('_orig_mod.') prefixes from keys."""

    def clean(key):
        for prefix in WRAPPER_PREFIXES:
            key = key.replace(prefix, "")
        return key

    return {clean(key): value for key, value in state_dict.items()}


def encoder_state(model_state):
    """The encoder's tensors from a SimCLRNet or LinearClassifier state_dict, without 'encoder.'."""
    return {
        key[len("encoder.") :]: value
        for key, value in model_state.items()
        if key.startswith("encoder.")
    }


def load(path, stage):
    """Load a checkpoint of the given stage safely (weights_only: unpickling never runs code)."""
    if not os.path.isfile(path):
        raise InputError(
            f"checkpoint {path} does not exist: run {STAGE_SCRIPTS[stage]} first, "
            f"or pass --checkpoint or --run-dir"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise InputError(
            f"refusing to load {path}: it holds pickled objects other than tensors and "
            f"plain values, which could run code ({str(error).splitlines()[0]})"
        )
    except Exception as error:  # truncated file, not a torch file at all
        raise InputError(f"{path} is not a readable checkpoint ({error})")
    found_stage = checkpoint.get("stage") if isinstance(checkpoint, dict) else None
    if found_stage != stage:
        found = f"a stage-{found_stage} checkpoint" if found_stage else "not a checkpoint of ours"
        raise InputError(
            f"{path} is {found}; this needs {STAGE_FILES[stage]} from {STAGE_SCRIPTS[stage]}"
        )
    checkpoint["model"] = strip_prefixes(checkpoint["model"])
    return checkpoint


def load_strictly(module, state_dict, path):
    """load_state_dict(strict=True), with a one-line error naming the keys that do not match."""
    missing, unexpected = (
        module.state_dict().keys() - state_dict,
        state_dict.keys() - module.state_dict(),
    )
    if missing or unexpected:
        raise InputError(
            f"{path} does not fit the model: {len(missing)} missing keys "
            f"{sorted(missing)[:3]}, {len(unexpected)} unexpected keys {sorted(unexpected)[:3]}"
        )
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:  # same keys, other shapes
        raise InputError(f"{path} does not fit the model: {str(error).splitlines()[-1].strip()}")
