"""The two checkpoint formats: their file names, what each holds, where a run keeps them, and how
they are written and read back (safely, strictly, without wrapper prefixes).

Both hold only tensors and plain Python values, so they load with weights_only=True, and carry
what rebuilds their network without the command line that made it (net.py rebuilds it):

stage1_last.pth  {"stage": 1, "run_id", "epoch", "config", "arch", "stem", "feature_dim",
                  "proj_dim", "image_size", "mean", "std", "images", "class_names", "knn_top1",
                  "last_knn_top1", "model", "optimizer", "scaler", "next_epoch_totals", "rng"}
                  (run_id, the run's config.json's, and images, how many it trains on and how
                  many of them are labelled: since results record what made them)
stage2.pth       {"stage": 2, "arch", "stem", "feature_dim", "image_size", "mean", "std",
                  "class_names", "stage1_checkpoint", "stage1_weights", "stage1_config",
                  "from_head_layer", "feature_norm", "config", "model"}  (stage1_config,
                  from_head_layer: since SimCLRv2's modes; feature_norm: since the probe
                  normalises them; stage1_weights, the digest of the stage-one weights it was
                  made on (None from random weights): since results record what made them; arch
                  and feature_dim are those of the network it holds, a student's of
                  --student-arch)
"""

import dataclasses
import os
import pickle
import typing

import torch

from simclr import provenance, rundir, runtime
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
    """A stage-one checkpoint. cfg_dict: the run's settings; data: its class names, normalisation
    (mean, std) and images (PretrainData); progress: run_id (its config.json's), epoch (whole
    epochs done), knn_top1, last_knn_top1, next_epoch_totals and rng, what continues the run from
    the step after the last one taken."""
    return {
        "stage": 1,
        "run_id": progress["run_id"],
        "epoch": progress["epoch"],
        "config": cfg_dict,
        "arch": cfg_dict["arch"],
        "stem": cfg_dict["stem"],
        "feature_dim": model.feature_dim,
        "proj_dim": cfg_dict["proj_dim"],
        "image_size": cfg_dict["image_size"],
        "mean": list(data.mean),
        "std": list(data.std),
        "images": data.images,
        "class_names": data.class_names,
        "knn_top1": progress["knn_top1"],
        "last_knn_top1": progress["last_knn_top1"],
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "next_epoch_totals": progress["next_epoch_totals"],
        "rng": progress["rng"],
    }


@dataclasses.dataclass(frozen=True)
class StageOne:
    """A stage-one run as the later scripts build on it: the network and data it describes, its
    settings, and where it has weights, the checkpoint that holds them, its path and their digest
    (read_stage_one; of_settings: the settings alone, for --mode scratch)."""

    settings: dict  # the run's settings, as config.json and the checkpoint's "config" hold them
    arch: str
    stem: str
    feature_dim: int  # the width of h
    image_size: int
    mean: tuple  # the training split's normalisation, as stage one measured it
    std: tuple
    checkpoint: typing.Optional[dict] = None  # as trainstage1.py saved it; None: settings alone
    path: typing.Optional[str] = None
    weights: typing.Optional[str] = None  # the digest of its weights (provenance.weights_digest)

    @property
    def epoch(self):
        return self.checkpoint["epoch"] if self.checkpoint else None

    @property
    def trained(self):
        """How far it had trained, in words (trained_for); None without a checkpoint."""
        return trained_for(self.checkpoint) if self.checkpoint else None

    @property
    def encoder_spec(self):
        """{key: value} of ENCODER_KEYS: what rebuilds and feeds its encoder."""
        return {key: getattr(self, key) for key in ENCODER_KEYS}


def of_settings(settings, feature_dim, mean, std):
    """What stage two reads of a stage-one run from its settings alone (--mode scratch: its
    weights are not used): no checkpoint, no path, no weights."""
    stem = settings.get("stem", "cifar")  # runs from before --stem: cifar
    return StageOne(
        settings, settings["arch"], stem, feature_dim, settings["image_size"], mean, std
    )


def stage_two(model, network, class_names, cfg_dict, built):
    """A stage-two checkpoint: everything test.py needs to rebuild and run the classifier, and
    the stage one it was made on (stage1_weights: a distillation checks that its teacher was made
    on this run's weights). network: what the classifier is built on, a StageOne
    (read_stage_one's), or for a student of another arch the same with the student's arch and
    feature width. built: how the classifier sits on it: from_head_layer, how many head layers
    are under it (their sizes: stage1_config), and feature_norm, whether net.FeatureNorm is."""
    return {
        "stage": 2,
        **network.encoder_spec,
        "class_names": class_names,
        "stage1_checkpoint": network.path,
        "stage1_weights": network.weights,
        "stage1_config": network.settings,
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


def note_unfinished(checkpoint, path, run_dir):
    """One line where a stage-one checkpoint is of a run that has not finished: what a script
    makes of it is of a part-trained encoder."""
    if not finished(checkpoint):
        print(
            f"note: {path} is of an unfinished stage one ({trained_for(checkpoint)}): what is "
            f"made here is of a part-trained encoder; finish it with trainstage1.py --resume "
            f"--run-dir {run_dir}"
        )


def finished(checkpoint):
    """Whether a stage-one checkpoint is of its run's last epoch (one of before runs recorded
    their epochs: taken as finished)."""
    epochs = checkpoint.get("config", {}).get("epochs")
    steps = checkpoint.get("next_epoch_totals", {}).get("steps", 0)
    return not steps and (epochs is None or checkpoint["epoch"] >= epochs)


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
        weights = provenance.weights_digest(
            load(os.path.join(folder, STAGE_TWO_FILE), stage=2)["model"]
        )
    return "" if weights == results.teacher_weights else " (since replaced)"


def proj_layers_of(settings):
    """The number of layers of a run's projection head, from its settings (config.json)."""
    return settings.get("proj_layers", HEAD_LAYERS_BEFORE_THE_FLAG)


def check_head_layer(from_head_layer, layers):
    """--from-head-layer must name a layer of the run's projection head (0: none, the h)."""
    if from_head_layer > layers:
        raise InputError(
            f"--from-head-layer {from_head_layer} is more than the {layers} layers of this run's "
            f"projection head: pass 0 to {layers} (0: the encoder's h)"
        )


def save(path, checkpoint):
    """Written to a temporary file and renamed: a crash leaves the previous checkpoint whole."""
    rundir.replace_atomically(path, lambda temporary: torch.save(checkpoint, temporary))


def locate(stage, run_dir="", checkpoint="", evaluation="", needs_run=True):
    """-> (the run folder, the checkpoint's path): --checkpoint if given, else the stage's file in
    --run-dir (or the newest run that has it; stage two: in its evaluation folder). A --checkpoint
    belongs to the run folder it sits in: that run is the one its results go to, never the
    newest; where it sits in no run folder, --run-dir names its run (read_stage_one checks it
    once loaded). The run folder is None where --checkpoint is given and the caller needs no run
    (needs_run False)."""
    if checkpoint and not needs_run:
        return None, checkpoint
    if checkpoint:
        return run_holding(checkpoint, run_dir), checkpoint
    name = STAGE_FILES[stage]
    run_dir = rundir.resolve_run_dir(run_dir)
    folder = rundir.evaluation_dir(run_dir, evaluation)
    return run_dir, os.path.join(folder, name)


def run_holding(checkpoint, run_dir):
    """The run folder of --checkpoint: the folder it sits in, where that holds a run (and is
    --run-dir, if given); else --run-dir, which must be given."""
    own = os.path.dirname(os.path.abspath(checkpoint))
    if rundir.holds_run(own):
        if run_dir and os.path.abspath(run_dir) != own:
            raise InputError(
                f"--checkpoint {checkpoint} belongs to the run in {own}, not to --run-dir "
                f"{run_dir}: leave out --run-dir (its results go to the checkpoint's own run)"
            )
        return os.path.dirname(checkpoint) or os.curdir
    if not run_dir:
        raise InputError(
            f"--checkpoint {checkpoint} is not in a run folder (no {rundir.CONFIG_FILE} beside it), "
            f"so its results have no run to go to: pass --run-dir, the run it was trained in"
        )
    return rundir.resolve_run_dir(run_dir)


def check_of_run(checkpoint, path, run_dir):
    """A stage-one --checkpoint outside its run folder, given with --run-dir, must be of that run:
    its run_id that of the run's config.json (checkpoints of before run ids: taken as given)."""
    made_in, run_id = checkpoint.get("run_id"), rundir.read_run(run_dir).run_id
    if made_in and made_in != run_id:
        raise InputError(
            f"--checkpoint {path} was not trained in the run of --run-dir {run_dir} (run "
            f"{made_in}, not {run_id or 'that one'}): pass the run folder it was trained in"
        )


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


def stage_one_inputs(stage1, with_weights):
    """What a result read of a stage-one run (a StageOne), for its provenance: the network (arch,
    stem, widths, image size, normalisation) and, with_weights, the weights' digest and how far
    they had trained."""
    inputs = stage1.encoder_spec | {"mean": list(stage1.mean), "std": list(stage1.std)}
    if with_weights:
        inputs |= {"stage1_weights": stage1.weights, "stage1_trained": stage1.trained}
    return inputs


def read_stage_one(path, run_dir):
    """The StageOne of the checkpoint at path, of the run in run_dir (locate's), as stage two,
    knn.py, pictures.py and test.py build on it."""
    checkpoint = load(path, stage=1)
    if os.path.dirname(os.path.abspath(path)) != os.path.abspath(run_dir):
        check_of_run(checkpoint, path, run_dir)
    note_unfinished(checkpoint, path, run_dir)
    network = {key: checkpoint.get(key) for key in ENCODER_KEYS}  # net.check_buildable checks
    weights = provenance.weights_digest(checkpoint["model"])
    return StageOne(
        checkpoint["config"], **network, checkpoint=checkpoint, path=path, weights=weights
    )


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
