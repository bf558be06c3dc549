"""A stage-two result is never reused, relabelled or overwritten under settings it was not made
with: an evaluation made otherwise is kept and the new one refused (or --replace, or a folder of
its own), a stopped one leaves the one before whole, and the probe that measures it trains
stably from its first epoch."""

import dataclasses
import json
import math
import os
import shutil
import signal

import pytest
import torch
import torch.nn.functional as F

import net
from simclr import checkpoints, locks, optimizers, protocols, rundir, runtime
from simclr import stage2_bookkeeping
from conftest import HELD, OutputLines, assert_documented, copy_of_run, forked_script, results_of
from conftest import load_script, run_main, signal_after_calls

FAST = ["--device", "cpu", "--workers", "0", "--precision", "fp32"]
FINETUNE = ["--mode", "finetune", "--labels-per-class", 2, "--epochs", 1, "--batch-size", 4]


def stage2(run_dir, capsys, *argv):
    return run_main("trainstage2", ["--run-dir", run_dir, *argv, *FAST], capsys)


def files_of(folder):
    return {
        name: (folder / name).read_bytes() for name in os.listdir(folder) if name != ".incoming"
    }


def test_results_json_holds_each_setting_once_and_one_of_before_reads_alike_everywhere(
    stage_one_run, tmp_path, capsys
):
    """results.json records a setting in its provenance's settings alone, and reads it from
    there; one written before, with every setting at the top as well, is read by each script
    that reads results and recognised as the same evaluation."""
    run_dir = copy_of_run(stage_one_run, tmp_path)
    assert stage2(run_dir, capsys, "--epochs", 1, "--batch-size", 8)[0] == 0
    written = rundir.read_json(run_dir / rundir.RESULTS_FILE)
    settings = written["provenance"]["settings"]
    assert not set(written) & set(rundir.SETTINGS_FIELDS)
    results = rundir.Results.read(run_dir)
    for field, flag in rundir.SETTINGS_FIELDS.items():
        assert getattr(results, field) == settings.get(flag, getattr(results, field)), field
    assert (results.mode, results.epochs, results.batch_size, results.lr_per_256) == (
        "linear",
        1,
        8,
        0.1,
    )
    # as results.json was written before: every field at the top, the settings among them
    before = dataclasses.asdict(results)
    for key in ("settings", *rundir.DISTILLATION_RESULTS):
        before.pop(key)
    rundir.write_json(run_dir / rundir.RESULTS_FILE, before)
    assert rundir.Results.read(run_dir) == results
    for script in ("visualization", "confusionMatrix"):
        code, out, errors = run_main(script, ["--run-dir", run_dir], capsys)
        assert code == 0 and not errors, (script, errors)
    assert (run_dir / "stage2_curves.png").is_file() and (
        run_dir / "confusion_matrix.png"
    ).is_file()
    assert (
        run_main("export", ["--run-dir", run_dir, "--output-dir", tmp_path / "out"], capsys)[0] == 0
    )
    (card,) = (tmp_path / "out").glob("*.json")
    (entry,) = [e for e in rundir.read_json(card)["evaluations"] if e.get("kind") == "linear"]
    assert entry["epochs"] == 1 and entry["top1"] == results.top1
    code, _, errors = stage2(run_dir, capsys, "--epochs", 1, "--batch-size", 8, "--lr", 0.05)
    assert code == 2 and "holds an evaluation made with --lr 0.1 (this one: 0.05)" in errors[0]


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
    assert results_of(kept)["provenance"]["settings"]["lr"] == 0.1
    assert results_of(folder)["provenance"]["settings"]["lr"] == 0.05
    # replaced, as asked
    code, out, _ = stage2(run_dir, capsys, *FINETUNE, "--lr", 0.1, "--replace")
    assert code == 0 and "note: replacing" in out
    assert results_of(folder)["provenance"]["settings"]["lr"] == 0.1


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
    assert results_of(run_dir)["epochs"] == 3


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


def test_a_training_batch_of_one_moves_the_feature_norms_mean_but_not_its_spread():
    """One image has no spread about its batch's mean: counted as 0, it would shrink the spread
    estimate and blow the features up. Its mean counts as any batch's."""
    norm = net.FeatureNorm(3).train()
    generator = torch.Generator().manual_seed(0)
    batch, single = torch.randn(4, 3, generator=generator), torch.randn(1, 3, generator=generator)
    norm(batch)
    spread = norm.running_squared_norm.clone()
    norm(single)
    torch.testing.assert_close(norm.running_squared_norm, spread)
    torch.testing.assert_close(norm.running_mean, (batch.mean(0) + single[0]) / 2)


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


def test_an_evaluation_is_keyed_by_its_seed_and_its_mode_not_by_replace_or_where_it_ran(
    stage_one_run, tmp_path, capsys
):
    """--seed draws other labels and another order: another evaluation. --replace, the workers
    and the memory format change nothing of its numbers: the same one, made again."""
    run_dir = copy_of_run(stage_one_run, tmp_path)
    folder = run_dir / rundir.EVALUATIONS / "finetune-2-per-class"
    assert stage2(run_dir, capsys, *FINETUNE, "--replace")[0] == 0
    made = results_of(folder)["provenance"]
    assert made["settings"]["seed"] == 0 and made["measure"] == {"recipe": "finetune", "version": 1}
    assert "replace" not in made["settings"] and "workers" not in made["settings"]
    assert "feature_norm" not in made["settings"]  # a linear probe's: finetune does not read it
    assert stage2(run_dir, capsys, *FINETUNE, "--no-channels-last")[0] == 0  # the same one
    code, _, errors = stage2(run_dir, capsys, *FINETUNE, "--seed", 1)
    assert code == 2 and "made with --seed 0 (this one: 1)" in errors[0]


def test_the_precision_in_effect_keys_an_evaluation_not_the_one_asked_for(
    stage_one_run, tmp_path, capsys, monkeypatch
):
    """--precision bf16 on a CPU without native bf16 runs in fp32: the same evaluation as one
    asked for in fp32; where bf16 runs, another one."""
    run_dir = copy_of_run(stage_one_run, tmp_path)
    assert stage2(run_dir, capsys, *FINETUNE)[0] == 0  # FAST: fp32
    bf16 = [flag if flag != "fp32" else "bf16" for flag in FAST]
    argv = ["--run-dir", run_dir, *FINETUNE, *bf16]
    monkeypatch.setattr(runtime, "cpu_has_fast_half_precision", lambda dtype: False)
    code, out, _ = run_main("trainstage2", argv, capsys)
    assert code == 0 and "this CPU has no native bf16" in out and "replacing" not in out
    monkeypatch.setattr(runtime, "cpu_has_fast_half_precision", lambda dtype: True)
    code, _, errors = run_main("trainstage2", argv, capsys)
    assert code == 2 and "made with --precision fp32 (this one: bf16)" in errors[0]


@pytest.mark.parametrize("name", ["../x", "..", ".", "/abs", "a/b", ".incoming", "x" * 300])
def test_an_evaluation_name_is_one_plain_folder_name_checked_before_anything_is_written(
    name, stage_one_run, tmp_path, capsys
):
    run_dir = copy_of_run(stage_one_run, tmp_path)
    before = files_under(tmp_path)
    code, _, errors = stage2(run_dir, capsys, *FINETUNE, "--evaluation", name)
    assert code == 2 and len(errors) == 1, errors
    assert ": error: --evaluation " in errors[0]
    assert ("bytes long" if len(name) > 255 else "is not one plain folder name") in errors[0]
    assert files_under(tmp_path) == before
    for script in ("test", "visualization", "confusionMatrix"):
        argv = ["--run-dir", run_dir, "--evaluation", name, *(["image.png"] * (script == "test"))]
        code, _, errors = run_main(script, argv, capsys)
        assert code == 2 and "--evaluation" in errors[0], (script, errors)
    code, _, errors = stage2(run_dir, capsys, "--mode", "distill", "--teacher", name)
    assert code == 2 and "--teacher" in errors[0]


def files_under(folder):
    return {
        os.path.relpath(os.path.join(root, name), folder): os.path.getmtime(
            os.path.join(root, name)
        )
        for root, _, names in os.walk(folder)
        for name in names
    }


@pytest.mark.long
def test_a_second_stage_two_on_a_run_folder_is_refused_in_one_line_while_the_first_finishes(
    stage_one_run, tmp_path, capsys
):
    """Two trainstage2.py processes on one run folder: the first holds it from start to end; the
    second is refused before it writes anything, naming the first; the first finishes whole."""
    run_dir = copy_of_run(stage_one_run, tmp_path)
    go, output = tmp_path / "go", tmp_path / "first.log"
    argv = ["--run-dir", run_dir, *FINETUNE, *FAST]
    first = forked_script("trainstage2", argv, tmp_path, output, ("train_classifier", str(go)))
    try:
        lines = OutputLines(output, first)
        while not (line := lines.next_line()).startswith(HELD):  # the first is training now
            assert line is not None
        code, _, errors = stage2(run_dir, capsys, *FINETUNE, "--lr", 0.2)
        assert code == 2 and len(errors) == 1
        assert errors[0].startswith(f"error: {run_dir} is in use by another trainstage2.py (pid ")
        assert_documented(errors[0])
    finally:
        go.touch()  # the first goes on, whatever happened here
        first.join(600)
    assert first.exitcode == 0, output.read_text()
    results = json.loads((run_dir / rundir.EVALUATIONS / "finetune-2-per-class" / "results.json")
                         .read_text())  # fmt: skip
    assert results["provenance"]["settings"]["lr"] == 0.05  # the first's, whole
    assert not (run_dir / locks.STAGE_TWO_LOCK).exists()  # and the run folder free again
    assert stage2(run_dir, capsys, *FINETUNE, "--lr", 0.2, "--evaluation", "lr-0.2")[0] == 0


def test_a_lock_left_by_a_killed_stage_two_is_no_lock(stage_one_run, tmp_path, capsys):
    run_dir = copy_of_run(stage_one_run, tmp_path)
    (run_dir / locks.STAGE_TWO_LOCK).write_text("pid 99999999 on elsewhere, since yesterday")
    assert stage2(run_dir, capsys, *FINETUNE)[0] == 0
    assert not (run_dir / locks.STAGE_TWO_LOCK).exists()


def test_a_checkpoint_files_its_evaluation_with_its_own_run_never_the_newest(
    stage_one_run, tmp_path, monkeypatch, capsys
):
    """--checkpoint runs/old/stage1_last.pth with a newer run beside it: stage two and knn.py
    write into runs/old. A checkpoint outside any run needs --run-dir, of the run it was
    trained in."""
    monkeypatch.chdir(tmp_path)
    old = copy_of_run(stage_one_run, tmp_path / "runs" / "old")
    new = copy_of_run(stage_one_run, tmp_path / "runs" / "new")
    (new / "config.json").touch()  # written last: the newest run
    linear = ["--epochs", 1, "--batch-size", 8, *FAST]
    checkpoint = os.path.join("runs", "old", "run", "stage1_last.pth")
    code, out, _ = run_main("trainstage2", ["--checkpoint", checkpoint, *linear], capsys)
    assert code == 0 and (old / "results.json").is_file() and not (new / "results.json").exists()
    assert f"--run-dir {os.path.join('runs', 'old', 'run')}" in out  # the next commands too
    knn = ["--checkpoint", checkpoint, *FAST]
    assert run_main("knn", knn, capsys)[0] == 0
    assert (old / "knn_h.json").is_file() and not (new / "knn_h.json").exists()
    code, _, errors = run_main("trainstage2", ["--checkpoint", checkpoint, "--run-dir", new,
                                               *linear], capsys)  # fmt: skip
    assert code == 2 and "belongs to the run in" in errors[0]
    outside = tmp_path / "epoch-1.pth"
    shutil.copy(checkpoint, outside)
    code, _, errors = run_main("trainstage2", ["--checkpoint", outside, *linear], capsys)
    assert code == 2 and "is not in a run folder" in errors[0]
    stranger = checkpoints.load(outside, stage=1) | {"run_id": "another"}
    checkpoints.save(outside, stranger)
    code, _, errors = run_main("trainstage2", ["--checkpoint", outside, "--run-dir", new, *linear],
                               capsys)  # fmt: skip
    assert code == 2 and "was not trained in the run of --run-dir" in errors[0]
    assert not (new / "results.json").exists()


def test_evaluations_of_earlier_stage_one_weights_are_refused_marked_and_named(
    stage_one_run, tmp_path, capsys
):
    """Stage one trains on after an evaluation (resumed for more epochs): the evaluation made
    again into the same folder names the weights and how far they had trained; the plot draws
    the two apart and says so; test.py says the classifier it serves is of earlier weights."""
    run_dir = copy_of_run(stage_one_run, tmp_path)
    assert stage2(run_dir, capsys, *FINETUNE)[0] == 0
    path = run_dir / checkpoints.STAGE_ONE_FILE
    stage1 = checkpoints.load(path, stage=1)
    stage1["model"]["encoder.conv1.weight"] += 0.01
    checkpoints.save(path, stage1 | {"epoch": 2, "config": {**stage1["config"], "epochs": 2}})
    code, _, errors = stage2(run_dir, capsys, *FINETUNE)
    assert code == 2 and "stage-one weights " in errors[0]
    assert "stage one trained to epoch 1 of 1 (this one: epoch 2 of 2)" in errors[0]
    assert stage2(run_dir, capsys, *FINETUNE, "--evaluation", "after")[0] == 0
    code, out, _ = run_main("visualization", ["--run-dir", run_dir], capsys)
    assert code == 0, out
    assert "finetune (on other stage-one weights, epoch 1 of 1)" in out
    assert "note: some evaluations were not made on the run's stage1_last.pth as it is" in out
    image = next((stage_one_run.parent / "images" / "test" / "circle").iterdir())
    pointed = ["--run-dir", run_dir, "--evaluation"]
    code, out, errors = run_main("test", [*pointed, "finetune-2-per-class", image], capsys)
    assert code == 0 and out.startswith(f"{image}: ")
    assert errors == [
        f"note: this classifier was made on other stage-one weights than {path} holds now (epoch 2 "
        f"of 2: stage one trained on since, or was replaced); run trainstage2.py again for one of "
        f"the run as it is"
    ]
    code, out, errors = run_main("test", [*pointed, "after", image], capsys)
    assert code == 0 and not errors


def test_a_killed_evaluations_staging_files_are_never_moved_in(stage_one_run, tmp_path, capsys):
    """What a killed stage two left in .incoming (a few-label evaluation's list of labels) never
    joins the next evaluation of the folder; a file named .incoming is no obstacle either."""
    run_dir = copy_of_run(stage_one_run, tmp_path)
    staging = run_dir / rundir.INCOMING
    staging.mkdir()
    (staging / rundir.LABELLED_IMAGES_FILE).write_text("index,image,label\n0,a.png,circle\n")
    assert stage2(run_dir, capsys, "--epochs", 1, "--batch-size", 8)[0] == 0
    assert not (run_dir / rundir.LABELLED_IMAGES_FILE).exists() and not staging.exists()
    staging.write_text("not a folder")
    assert stage2(run_dir, capsys, "--epochs", 1, "--batch-size", 8)[0] == 0
    assert not staging.exists()


@pytest.mark.parametrize(
    "flags",
    [
        ["--mode", "finetune", "--no-feature-norm"],
        ["--mode", "scratch", "--protocol", "per-step"],
        ["--mode", "finetune", "--augmented-passes", 2],
        ["--protocol", "per-step", "--augmented-passes", 2],
        ["--mode", "finetune", "--epochs", 3, "--min-steps", 10],
        ["--test-evaluations", 3],
        ["--label-weight", 0.5],
    ],
)
def test_a_setting_the_mode_would_ignore_is_refused_in_one_line(flags, stage_one_run, capsys):
    code, _, errors = run_main("trainstage2", ["--run-dir", stage_one_run, *flags, *FAST], capsys)
    assert code == 2 and len(errors) == 1 and "only: leave it out" in errors[0], errors
