"""simclr/stage1_bookkeeping.py: stage one's running sums and the lines it prints."""

import dataclasses
import math

import torch

from simclr import stage1_bookkeeping as bookkeeping


def test_warning_when_the_first_epoch_loss_sits_at_chance():
    warning = bookkeeping.chance_warning(math.log(2 * 256 - 1) * 0.995, 256)
    assert warning.startswith("warning: after epoch 1 the loss 6.205 is still at chance level")
    assert bookkeeping.chance_warning(math.log(2 * 256 - 1) * 0.9, 256) is None


def test_an_epochs_running_sums_weigh_each_step_by_its_anchors_and_survive_a_resume():
    """Step 1: 4 anchors at loss 2.0, 3 of them right; step 2: 2 anchors at loss 5.0, none right.
    The epoch's loss is per anchor (3.0), not per step (3.5)."""
    cpu = torch.device("cpu")
    first = (torch.tensor(2.0), torch.eye(4), torch.tensor([0, 1, 2, 0]))
    second = (torch.tensor(5.0), torch.eye(2), torch.tensor([1, 0]))
    running = bookkeeping.RunningEpoch(bookkeeping.EpochTotals(), cpu)
    running.add(1, *first)
    running.add(2, *second)
    totals = running.finish()
    stats = totals.stats(0.1, None)
    assert (stats["loss"], stats["pair_accuracy"], stats["peak_memory_gib"]) == (3.0, 50.0, "")
    assert (totals.steps, totals.anchors, totals.images) == (2, 6, 3)

    interrupted = bookkeeping.RunningEpoch(bookkeeping.EpochTotals(), cpu)
    interrupted.add(1, *first)
    saved = bookkeeping.EpochTotals(**dataclasses.asdict(interrupted.finish()))
    resumed = bookkeeping.RunningEpoch(saved, cpu)
    resumed.add(2, *second)
    again = resumed.finish()
    assert (again.loss_sum, again.correct, again.anchors, again.images) == (18.0, 3, 6, 3)
