"""SimCLRv2's third step (Chen et al. 2020b): a fine-tuned teacher's predictions, on every image
stage one saw, teach a student; the loss, and the teacher read from disk and checked for this
run and its data."""

import os
import typing

import torch
import torch.nn.functional as F

from simclr import checkpoints, provenance, rundir
from simclr.errors import InputError


class Teacher(typing.NamedTuple):
    """--mode distill's teacher: an evaluation of this run, read and checked."""

    name: str  # its evaluation folder's name
    dir: str
    checkpoint: dict  # its stage2.pth
    path: str
    top1: typing.Optional[float]  # its test top-1 (results.json), where it has one
    weights: str  # its weights' digest: a teacher replaced since is another teacher

    @property
    def settings(self):
        """Its stage-two settings (the Evaluate config it was made with, as a dict)."""
        return self.checkpoint["config"]


class BuiltTeacher(typing.NamedTuple):
    """What a distillation's protocol is handed: the teacher, and its network (built by
    trainstage2.py, on the device, in eval mode)."""

    teacher: Teacher
    network: torch.nn.Module


def distillation_loss(student_logits, teacher_logits, temperature):
    """-sum_y P_T(y|x; tau) log P_S(y|x; tau), averaged over the batch, in float32. The teacher's
    side carries no gradient: it is a target, as a label is."""
    teacher = F.softmax(teacher_logits.detach().float() / temperature, dim=1)
    student = F.log_softmax(student_logits.float() / temperature, dim=1)
    return -(teacher * student).sum(dim=1).mean()


def teacher_checkpoint(run_dir, teacher, stage1):
    """-> (the teacher's stage2.pth, loaded, and its path): the evaluation --teacher of this run,
    refused where it is missing, not a stage-two checkpoint or of another run."""
    if not teacher:
        found = rundir.evaluation_names(run_dir)
        raise InputError(
            f"--mode distill needs --teacher EVALUATION, a fine-tuned evaluation of {run_dir} "
            f"(it has: {', '.join(found) or 'none'}; make one with --mode finetune "
            f"--labels-per-class ...)"
        )
    path = os.path.join(rundir.evaluation_dir(run_dir, teacher), checkpoints.STAGE_TWO_FILE)
    if not os.path.isfile(path):
        raise InputError(
            f"--teacher {teacher} has no {checkpoints.STAGE_TWO_FILE} (stopped before its end?): "
            f"run its trainstage2.py command again, or pass another evaluation"
        )
    checkpoint = checkpoints.load(path, stage=2)
    if not made_on(checkpoint, stage1):
        raise InputError(
            f"--teacher {teacher}: {path} was not made on this run's stage-one weights, "
            f"{stage1.path} ({stage1.trained}): stage one trained on since, or "
            f"the teacher is of another run, or from before results recorded their weights; "
            f"make the teacher again on these weights"
        )
    return checkpoint, path


def made_on(checkpoint, stage1):
    """Whether a stage-two checkpoint was made on stage1's weights (a teacher trained from random
    weights: on stage1's run, its settings alike)."""
    if checkpoint.get("config", {}).get("mode") == "scratch":
        return checkpoint.get("stage1_config") == stage1.settings
    return checkpoint.get("stage1_weights") == stage1.weights


def read_teacher(run_dir, name, stage1):
    """--teacher NAME of this run, read from disk and checked (teacher_checkpoint) -> Teacher."""
    checkpoint, path = teacher_checkpoint(run_dir, name, stage1)
    folder = os.path.dirname(path)
    results = rundir.results_in(folder)
    weights = provenance.weights_digest(checkpoint["model"])
    return Teacher(name, folder, checkpoint, path, results and results.top1, weights)


def check_teacher_data(teacher, data):
    """The teacher must know this data's classes and have been given the labels the student is
    (data: loaddataset.StageTwoData)."""
    check_teacher_classes(teacher.checkpoint, teacher.name, data.class_names)
    check_same_labels(teacher.dir, data.labelled_images)


def check_teacher_classes(checkpoint, teacher, class_names):
    """The teacher must predict this dataset's classes, in its order."""
    if checkpoint["class_names"] != class_names:
        raise InputError(
            f"--teacher {teacher} classifies {len(checkpoint['class_names'])} classes and this "
            f"dataset has {len(class_names)} ({', '.join(class_names[:3])}, ...): distil on the "
            f"teacher's dataset (drop --dataset / --data-dir)"
        )


def check_same_labels(teacher_dir, labelled_images):
    """The student may see only the labels its teacher was given: the labelled images drawn for it
    must be those of the teacher's labelled_images.csv (the teacher's labels, seed and data)."""
    listed = os.path.join(teacher_dir, rundir.LABELLED_IMAGES_FILE)
    if not os.path.isfile(listed):  # a teacher of all the labels: the run and classes are checked
        return
    teacher_images = [row["image"] for row in rundir.read_table(listed, texts=("image",))]
    if [row["image"] for row in labelled_images] != teacher_images:
        raise InputError(
            f"the labelled images drawn for the student are not the teacher's ({listed}): distil "
            f"with the teacher's dataset, subset and --seed"
        )
