"""What made a number: one record, built the same way for every result this repository reports
(a stage-two evaluation, a kNN measurement, a stage-one run in a sweep) and compared by every check
that asks whether two results are the same one (an evaluation's folder, a sweep's points, a
distillation's teacher, the pictures).

A record has three parts:
- settings: every setting that changes the numbers and that the run reads, as it used them: the
  fields declared numbers=True in config.py whose `only` holds, paths absolute and normalised,
  the precision in effect rather than the one asked for;
- inputs: what the result read, by content: the digest of the weights it started from (stage
  one's, a teacher's), how far stage one had trained, the data's size and normalisation;
- measure: the measurement's recipe and its version, bumped in code whenever the recipe changes
  in a way no setting records (a probe that normalises its features measures otherwise).

Two results are the same one when their records are equal; where they are not, differences()
says how, in the words of the flags.
"""

import dataclasses
import hashlib
import os

import torch

from simclr import flags


def resolved(field, value):
    """A setting's value as the run used it: a path made absolute and normalised (./images and
    images are one folder)."""
    if field.metadata.get("path") and value:
        return os.path.abspath(os.path.expanduser(value))
    return value


def settings(cfg, precision=None):
    """{name: value} of the settings of cfg (a config.py dataclass) that change its numbers and
    that it reads, resolved; precision: the one in effect, which replaces --precision's."""
    found = {
        field.name: resolved(field, getattr(cfg, field.name))
        for field in dataclasses.fields(cfg)
        if field.metadata.get("numbers", True) and flags.read_where(cfg, field)
    }
    return found | ({"precision": precision} if precision else {})


def settings_of_record(cls, values):
    """settings() of a config dict as a record keeps it (config.json's, a sweep point's): its
    fields of cls (a config.py dataclass) that change the numbers, resolved; a field the dict
    lacks (a record of before it) stays out, so the record differs from one that has it."""
    fields = {field.name: field for field in dataclasses.fields(cls)}
    return {
        name: resolved(fields[name], value)
        for name, value in values.items()
        if name in fields and fields[name].metadata.get("numbers", True)
    }


def record(settings, inputs, measure):
    """A result's record: its settings, inputs and measure, each a dict of plain values."""
    return {"settings": dict(settings), "inputs": dict(inputs), "measure": dict(measure)}


def weights_digest(model_state):
    """A short digest of a state dict's tensors: the same weights give the same digest, whatever
    file holds them, so a record can tell whether what it names was replaced since."""
    digest = hashlib.sha256()
    for key in sorted(model_state):
        tensor = model_state[key].detach().cpu().contiguous().reshape(-1)
        digest.update(key.encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


# How differences() names an input or a part of the measure; a setting is named by its flag.
WORDS = {
    "inputs.stage1_weights": "stage-one weights",
    "inputs.stage1_trained": "stage one trained to",
    "inputs.teacher_weights": "the teacher's weights",
    "inputs.training_images": "training images",
    "inputs.labelled_images": "labelled images",
    "inputs.test_images": "test images",
    "inputs.stage_one_images": "images stage one saw",
    "inputs.memory_images": "memory images",
    "inputs.query_images": "query images",
    "inputs.mean": "normalisation mean",
    "inputs.std": "normalisation std",
    "measure.recipe": "the measurement",
    "measure.version": "the measurement's version",
    "measure.features": "--features",  # a sweep's points: how sweep.py measures them
    "measure.linear_epochs": "--linear-epochs",
    "settings.precision_in_effect": "--precision in effect",
}


def flattened(made):
    """{'settings.lr': 0.1, 'inputs.stage1_weights': '3f2a...', ...} of a record."""
    return {
        f"{part}.{key}": value
        for part, values in made.items()
        if isinstance(values, dict)
        for key, value in values.items()
    }


def named(key):
    """A flattened key in words: a setting by its flag, anything else by WORDS."""
    part, _, name = key.partition(".")
    if key in WORDS:
        return WORDS[key]
    return "--" + name.replace("_", "-") if part == "settings" else name.replace("_", " ")


def shown_value(value):
    """A value as differences() words it: a path below the working folder relative to it."""
    here = os.getcwd() + os.sep
    if isinstance(value, str) and os.path.isabs(value) and value.startswith(here):
        return os.path.relpath(value)
    return value


def differences(made, now, now_is="this one", shown=3):
    """What two records differ in, in words, at most `shown` of them: '--lr 0.05 (this one:
    0.1), stage-one weights 3f2a... (this one: 9c01...) and 2 more'; a key one record lacks is
    'unset' there. A record of None was made before results recorded what made them."""
    if not made:
        return "nothing recorded (made before results recorded what made them)"
    before, after = flattened(made), flattened(now)
    changed = [key for key in dict.fromkeys([*before, *after]) if before.get(key) != after.get(key)]
    words = [
        f"{named(key)} {shown_value(before.get(key, 'unset'))} "
        f"({now_is}: {shown_value(after.get(key, 'unset'))})"
        for key in changed[:shown]
    ]
    more = f" and {len(changed) - shown} more" if len(changed) > shown else ""
    return ", ".join(words) + more
