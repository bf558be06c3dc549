"""A stage-two result is never reused, relabelled or overwritten under settings it was not made
with: an evaluation made otherwise is kept and the new one refused (or --replace, or a folder of
its own), a stopped one leaves the one before whole, and the probe that measures it trains
stably from its first epoch."""

import json
import math
import os
import signal

import pytest
import torch
import torch.nn.functional as F

import net
from simclr import checkpoints, optimizers, protocols, rundir, stage2_bookkeeping
from conftest import assert_documented, copy_of_run, load_script, run_main, signal_after_calls

FAST = ["--device", "cpu", "--workers", "0", "--precision", "fp32"]
FINETUNE = ["--mode", "finetune", "--labels-per-class", 2, "--epochs", 1, "--batch-size", 4]


def stage2(run_dir, capsys, *argv):
    return run_main("trainstage2", ["--run-dir", run_dir, *argv, *FAST], capsys)


def files_of(folder):
    return {
        name: (folder / name).read_bytes() for name in os.listdir(folder) if name != ".incoming"
    }


def test_an_evaluation_made_otherwise_is_kept_and_replaced_only_when_asked(
    stage_one_run, tmp_path, capsys
):
    run_dir = copy_of_run(stage_one_run, tmp_path)
    folder = run_dir / rundir.EVALUATIONS / "finetune-2-per-class"
    assert stage2(run_dir, capsys, *FINETUNE)[0] == 0
    made = files_of(folder)
    assert json.loads(made["results.json"])["provenance"]["settings"]["lr"] == 0.05
    code, out, errors = stage2(run_dir, capsys, *FINETUNE, "--lr", 0.1)
    assert code == 2 and errors == [
        f"error: {folder} holds an evaluation made with --lr 0.05 (this one: 0.1): pass --replace "
        f"to replace it, or --evaluation NAME to keep both"
    ]
    assert_documented(errors[0])
    assert files_of(folder) == made  # refused before anything was written
    # the same settings again: the same evaluation, made again
    assert stage2(run_dir, capsys, *FINETUNE)[0] == 0
    # both kept: the new one in a folder of its own
    code, out, _ = stage2(run_dir, capsys, *FINETUNE, "--lr", 0.1, "--evaluation", "lr-0.1")
    assert code == 0 and "--evaluation lr-0.1" in out
    kept = run_dir / rundir.EVALUATIONS / "lr-0.1"
    assert json.loads((kept / "results.json").read_text())["provenance"]["settings"]["lr"] == 0.1
    assert json.loads((folder / "results.json").read_text())["provenance"]["settings"]["lr"] == 0.05
    # replaced, as asked
    code, out, _ = stage2(run_dir, capsys, *FINETUNE, "--lr", 0.1, "--replace")
    assert code == 0 and "note: replacing" in out
    assert json.loads((folder / "results.json").read_text())["provenance"]["settings"]["lr"] == 0.1


def test_a_stopped_evaluation_leaves_the_one_before_whole(
    stage_one_run, tmp_path, monkeypatch, capsys
):
    """Ctrl-C in a second linear evaluation: the run folder keeps the first one's log, results,
    predictions and checkpoint, all of one evaluation, and the curves drawn from them."""
    run_dir = copy_of_run(stage_one_run, tmp_path)
    linear = ["--epochs", 2, "--batch-size", 8]
    assert stage2(run_dir, capsys, *linear)[0] == 0
    assert run_main("visualization", ["--run-dir", run_dir], capsys)[0] == 0
    before = files_of(run_dir)
    trainstage2 = load_script("trainstage2")
    signal_after_calls(trainstage2.optimizers, "set_lr", 4, monkeypatch)  # in the 2nd epoch
    with pytest.raises(SystemExit) as exit_info:
        trainstage2.main([str(arg) for arg in ["--run-dir", run_dir, *linear, "--epochs", 3,
                                               "--replace", *FAST]])  # fmt: skip
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert files_of(run_dir) == before and not (run_dir / rundir.INCOMING).exists()
    # and a finished one replaces the stage-two files together, the plots drawn from them too
    assert stage2(run_dir, capsys, *linear, "--epochs", 3, "--replace")[0] == 0
    assert not (run_dir / "stage2_curves.png").exists()
    assert len(rundir.read_csv(run_dir / "stage2_log.csv")) == 3
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 3


def test_a_climbing_training_loss_is_named_in_a_warning():
    """A probe whose training loss ends above its first epoch's says so, with the lr to try."""
    assert stage2_bookkeeping.climbing_warning(2.3, 2.9, 0.1) == (
        "warning: the training loss ended at 2.900, above its first epoch's 2.300: the lr (0.1 "
        "per 256 images) is too high for these features; try --lr 0.01"
    )
    assert stage2_bookkeeping.climbing_warning(2.3, 2.3, 0.1) is None
    assert stage2_bookkeeping.climbing_warning(2.3, 0.4, 0.1) is None


def test_a_run_whose_logged_loss_climbs_prints_the_warning_before_its_test_figures(
    stage_one_run, tmp_path, monkeypatch, capsys
):
    """The warning is judged on the losses the run logged: its first epoch's and its last."""
    trainstage2 = load_script("trainstage2")
    losses = iter([2.3, 4.1, 2.9])
    monkeypatch.setattr(
        trainstage2.ClassifierTraining,
        "train_epoch",
        lambda self, epoch, stop: protocols.EpochResult(next(losses), 50.0),
    )
    run_dir = copy_of_run(stage_one_run, tmp_path)
    trainstage2.main(
        [str(arg) for arg in ["--run-dir", run_dir, "--epochs", 3, "--lr", 0.1, *FAST]]
    )
    out = capsys.readouterr().out
    assert [float(row["train_loss"]) for row in rundir.read_csv(run_dir / "stage2_log.csv")] == [
        2.3,
        4.1,
        2.9,
    ]
    warning, figures = out.splitlines()[-2:]
    assert warning == stage2_bookkeeping.climbing_warning(2.3, 2.9, 0.1)
    assert figures.startswith("test top-1 ")


def features_with_a_shared_mean(count=2000, width=512, seed=0):
    """Features like a weak CIFAR ResNet-18's after its last ReLU (about 0.55 per dimension,
    spread 0.3, as measured on the quick start's checkpoint): all positive, a large mean shared by
    every dimension, the class in a weak direction of the part that varies."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (count,), generator=generator)
    directions = torch.randn(10, width, generator=generator) * 0.03
    varying = torch.randn(count, width, generator=generator) * 0.3 + directions[labels]
    return F.relu(0.55 + varying), labels


def probe_losses(feature_norm, features, labels, epochs=10, batch_size=256):
    """The stage-two recipe (SGD Nesterov 0.9, cosine lr per step, the linear mode's lr of 0.1 per
    256 images) on a LinearClassifier's probe -> the training loss of each epoch."""
    torch.manual_seed(0)
    width = features.shape[1]
    model = net.LinearClassifier(torch.nn.Identity(), width, 10, feature_norm=feature_norm)
    probe = model.probe()
    peak = optimizers.linearly_scaled(0.1, batch_size)
    optimizer = torch.optim.SGD(probe.parameters(), lr=peak, momentum=0.9, nesterov=True)
    lr_at = optimizers.schedule(peak, epochs, -(-len(features) // batch_size))
    generator, losses, step = torch.Generator().manual_seed(0), [], 0
    for _ in range(epochs):
        probe.train()
        total = 0.0
        for batch in torch.randperm(len(features), generator=generator).split(batch_size):
            optimizers.set_lr(optimizer, lr_at(step))
            loss = F.cross_entropy(probe(features[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, step = total + loss.item() * len(batch), step + 1
        losses.append(total / len(features))
    return losses


def test_the_probe_on_normalised_features_never_climbs_where_the_raw_one_does():
    """Features that share a large mean, as a ResNet's do after its last ReLU: at the default lr
    the probe on the raw features climbs above its first epoch's loss (what the quick start's
    probe did on CIFAR-10, BENCHMARKS.md). The same features with one direction of a large
    spread that says nothing of the class (variance 900; a sweep point's encoder had one of 267):
    centred alone, the probe's first epoch overshot to a loss near 20. Normalised, it starts at
    the loss of knowing nothing, ln 10, and falls from its first epoch on both."""
    features, labels = features_with_a_shared_mean()
    raw = probe_losses(False, features, labels)
    assert max(raw) > raw[0] * 1.2
    generator = torch.Generator().manual_seed(0)
    direction = F.normalize(torch.rand(features.shape[1], generator=generator), dim=0)
    spread = torch.randn(len(features), 1, generator=generator) * 30 * direction
    for seen in (features, features + spread):
        normalised = probe_losses(True, seen, labels)
        assert normalised[0] < 1.1 * math.log(10)
        assert all(later <= earlier + 1e-6 for earlier, later in zip(normalised, normalised[1:]))


def test_the_feature_norm_is_of_every_batch_seen_and_fixed_at_test():
    """The features less the mean of the batches seen, scaled so that their mean squared norm is
    FEATURE_SQUARED_NORM; at test, what training saw, unchanged."""
    norm = net.FeatureNorm(3, squared_norm=2.0)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, generator=generator) * scale + shift
               for scale, shift in ((1, 5), (3, -1), (2, 0))]  # fmt: skip
    norm.train()
    for batch in batches:
        out = norm(batch)
    mean = torch.stack([batch.mean(0) for batch in batches]).mean(0)
    spread = torch.stack([(b - b.mean(0)).pow(2).sum(1).mean() for b in batches]).mean()
    torch.testing.assert_close(norm.running_mean, mean)
    torch.testing.assert_close(norm.running_squared_norm, spread)
    torch.testing.assert_close(out, (batches[-1] - mean) * (2.0 / spread).sqrt())
    norm.eval()
    single = torch.randn(1, 3, generator=generator)
    torch.testing.assert_close(norm(single), (single - mean) * (2.0 / spread).sqrt())
    torch.testing.assert_close(norm.running_mean, mean)  # unchanged at test
    # over the whole of one set of features, the mean squared norm is the target
    many = torch.randn(1000, 8, generator=generator) * 7 + 3
    norm = net.FeatureNorm(8).train()
    normalised = norm(many)
    assert normalised.pow(2).sum(1).mean().item() == pytest.approx(net.FEATURE_SQUARED_NORM)


def test_a_linear_evaluation_normalises_its_features_and_stage2_pth_rebuilds_it(
    stage_one_run, tmp_path, capsys
):
    run_dir = copy_of_run(stage_one_run, tmp_path)
    assert stage2(run_dir, capsys, "--epochs", 2, "--batch-size", 8)[0] == 0
    path = run_dir / checkpoints.STAGE_TWO_FILE
    stage2_checkpoint = checkpoints.load(path, stage=2)
    assert stage2_checkpoint["feature_norm"]
    model = net.from_stage_two(stage2_checkpoint, path)
    assert model.normalises_features and model.feature_norm.batches_seen == 2 * 3  # 24, batch 8
    assert model.feature_norm.running_mean.abs().sum() > 0
    assert model.feature_norm.squared_norm == net.FEATURE_SQUARED_NORM
    code, _, _ = stage2(run_dir, capsys, "--epochs", 2, "--batch-size", 8, "--no-feature-norm",
                        "--evaluation", "raw")  # fmt: skip
    raw = checkpoints.load(run_dir / rundir.EVALUATIONS / "raw" / checkpoints.STAGE_TWO_FILE, 2)
    assert code == 0 and not raw["feature_norm"]
    assert not any(key.startswith("feature_norm.") for key in raw["model"])
    # a stage2.pth of before the normalisation (no key) loads as a plain classifier
    del raw["feature_norm"]
    assert not net.from_stage_two(raw, path).normalises_features
