"""Stage two with few labels: the labelled images, the three modes and their folders."""

import dataclasses
import gc
import io
import shutil
import signal
import sys

import pytest
import torch

from simclr import checkpoints, protocols
from simclr import optimizers
from simclr import rundir
from simclr import datasets
import config
from conftest import (
    CLASSES,
    TRAIN_PER_CLASS,
    assert_documented,
    copy_of_run,
    load_script,
    run_main,
    signal_after_calls,
    results_of,
)

FAST = ["--device", "cpu", "--workers", "0", "--precision", "fp32"]
# (lr per 256 images, weight decay, lr at batch 4) of each mode
RECIPES = {
    "linear": (0.1, 0.0, 0.1 * 4 / 256),
    "finetune": (0.05, 0.0, 0.05 * 4 / 256),
    "scratch": (0.1, 5e-4, 0.1 * 4 / 256),
}


def run_stage(script, argv):
    """A script's main in this process -> its exit code."""
    try:
        load_script(script).main([str(arg) for arg in argv])
    except SystemExit as exit_info:
        return exit_info.code
    return 0


def stage2_argv(run_dir, mode, epochs=1):
    return ["--run-dir", run_dir, "--mode", mode, "--epochs", epochs, "--batch-size", 4, *FAST]


def stage2(run_dir, mode, *extra):
    return run_stage("trainstage2", [*stage2_argv(run_dir, mode), *extra])


def test_the_labelled_images_are_a_seeded_class_balanced_few(image_folder):
    source = datasets.DataSource("folder", str(image_folder))
    full = source.full_split(True)
    _, chosen = source.labelled_split(per_class=3)
    again = source.labelled_split(per_class=3)[1]
    other = source.labelled_split(per_class=3, seed=1)[1]
    labels = torch.tensor([full.targets[index] for index in chosen])
    assert labels.bincount().tolist() == [3] * len(CLASSES)
    assert chosen == again and chosen != other
    _, quarter = source.labelled_split(fraction=0.25)
    assert len(quarter) == len(CLASSES) * round(0.25 * TRAIN_PER_CLASS)
    all_split, everything = source.labelled_split()
    assert everything == list(range(len(full))) and len(all_split) == len(full)
    # stage two's labels are drawn with its --data-seed, else its --seed
    for argv, seed in (([], 0), (["--seed", "1"], 1), (["--seed", "1", "--data-seed", "0"], 0)):
        settings = dataclasses.asdict(config.parse(config.Evaluate, argv))
        assert datasets.data_seed_of(settings) == seed


def encoder_of(path):
    return checkpoints.encoder_state(torch.load(path, weights_only=True)["model"])


def test_evaluations_live_side_by_side_with_the_same_labels_and_only_finetune_moves_the_encoder(
    stage_one_run, tmp_path, capsys
):
    run_dir = copy_of_run(stage_one_run, tmp_path)
    assert stage2(run_dir, "linear") == 0  # all labels: the run folder itself, as before
    linear_all = (run_dir / "stage2.pth").read_bytes()
    for mode in ("linear", "finetune", "scratch"):
        assert stage2(run_dir, mode, "--labels-per-class", 2) == 0
    assert (run_dir / "stage2.pth").read_bytes() == linear_all  # not overwritten
    folders = {
        mode: run_dir / "evaluations" / f"{mode}-2-per-class"
        for mode in ("linear", "finetune", "scratch")
    }
    listed = {
        mode: rundir.read_csv(folder / "labelled_images.csv") for mode, folder in folders.items()
    }
    assert listed["linear"] == listed["finetune"] == listed["scratch"]
    assert len(listed["linear"]) == 2 * len(CLASSES)
    for mode, folder in folders.items():
        results = results_of(folder)
        assert (results["mode"], results["labels_per_class"], results["labels"]) == (mode, 2, 6)
        assert results["epochs"] == 1 and results["steps"] == 2  # 6 images, batch 4
        recipe = (results["lr_per_256"], results["weight_decay"], results["peak_lr"])
        assert recipe == RECIPES[mode]
        assert (folder / "stage2_log.csv").is_file() and (
            folder / "stage2_predictions.csv"
        ).is_file()
    pretrained = encoder_of(run_dir / "stage1_last.pth")
    linear = encoder_of(folders["linear"] / "stage2.pth")
    finetuned = encoder_of(folders["finetune"] / "stage2.pth")
    for name, tensor in pretrained.items():
        assert torch.equal(linear[name], tensor), name
    moved = [
        name for name, tensor in pretrained.items() if not torch.equal(finetuned[name], tensor)
    ]
    assert (
        "conv1.weight" in moved and "bn1.running_mean" in moved and "layer4.1.conv2.weight" in moved
    )
    # the label-efficiency plot and table draw every evaluation of the run
    code, out, _ = run_main("visualization", ["--run-dir", run_dir], capsys)
    assert code == 0 and (run_dir / "label_efficiency.png").is_file()
    top1 = {mode: results_of(folder)["top1"] for mode, folder in folders.items()}
    all_labels = results_of(run_dir)["top1"]
    table = out[out.index("labels per class") :].splitlines()
    assert table == [
        "labels per class | linear | finetune | scratch",
        f"2 | {top1['linear']:.2f} (1 ep, 2 steps) | {top1['finetune']:.2f} (1 ep, 2 steps) | "
        f"{top1['scratch']:.2f} (1 ep, 2 steps)",
        f"{TRAIN_PER_CLASS} (all) | {all_labels:.2f} (1 ep, 6 steps) | - | -",
    ]  # every evaluation with --epochs 1: one schedule, a line per mode


def test_scratch_needs_no_stage_one_weights_and_ignores_them(stage_one_run, tmp_path):
    first = copy_of_run(stage_one_run, tmp_path / "a")
    second = copy_of_run(stage_one_run, tmp_path / "b")
    state = torch.load(second / "stage1_last.pth", weights_only=True)
    state["model"] = {
        key: value + 1 if value.is_floating_point() else value
        for key, value in state["model"].items()
    }
    torch.save(state, second / "stage1_last.pth")
    (first / "stage1_last.pth").unlink()
    for run_dir in (first, second):
        assert stage2(run_dir, "scratch", "--labels-per-class", 2) == 0
    found = [
        encoder_of(run / "evaluations" / "scratch-2-per-class" / "stage2.pth")
        for run in (first, second)
    ]
    for name, tensor in found[0].items():
        assert torch.equal(found[1][name], tensor), name
    results = results_of(first / "evaluations" / "scratch-2-per-class")
    assert results["stage1_checkpoint"] is None


class Labelled:
    """The part of loaddataset.StageTwoData that the schedule reads."""

    def __init__(self, labels, batch_size, training_images):
        self.labelled_images = [{}] * labels
        self.batch_size, self.training_images = batch_size, training_images


STAGE_ONE_EPOCHS = 7  # what a distillation takes by default


def test_finetune_takes_the_papers_epochs_raised_to_the_minimum_steps():
    with_schedule = config.with_stage_two_schedule

    def fitted(argv, data):
        return with_schedule(config.parse(config.Evaluate, argv), data, STAGE_ONE_EPOCHS)

    # 3 of 24 images labelled: above 1%, the paper's 30 epochs; at 2 steps an epoch, 70 steps
    # need 35 epochs
    finetune = fitted(["--mode", "finetune", "--min-steps", "70"], Labelled(3, 2, 24))
    assert (finetune.epochs, finetune.lr, finetune.batch_size) == (35, 0.05, 2)
    # 3 of 1,000: at most 1%, the paper's 60 epochs, already above 1 step
    assert fitted(["--mode", "scratch", "--min-steps", "1"], Labelled(3, 3, 1000)).epochs == 60
    assert fitted(["--mode", "scratch", "--epochs", "2"], Labelled(3, 3, 1000)).epochs == 2
    linear = fitted([], Labelled(3, 2, 24))
    assert (linear.epochs, linear.lr, linear.weight_decay) == (100, 0.1, 0)
    # training from random weights takes a recipe of its own, not fine-tuning's
    scratch = fitted(["--mode", "scratch"], Labelled(3, 2, 24))
    assert (scratch.lr, scratch.weight_decay) == (0.1, 5e-4)
    no_decay = fitted(["--mode", "scratch", "--weight-decay", "0"], Labelled(3, 2, 24))
    assert finetune.weight_decay == no_decay.weight_decay == 0
    # a distillation trains as long as stage one did, its batch of every image stage one saw
    distill = fitted(["--mode", "distill", "--batch-size", "16"], Labelled(3, 2, 24))
    assert (distill.epochs, distill.batch_size, distill.lr) == (STAGE_ONE_EPOCHS, 16, 0.05)
    # the plan: those settings, the rule's words, the lr scaled to the batch, the test epochs
    cfg = config.parse(config.Evaluate, ["--mode", "finetune", "--min-steps", "70"])
    plan = config.stage_two_plan(cfg, Labelled(3, 2, 24), STAGE_ONE_EPOCHS)
    assert plan.settings == finetune and plan.mode is config.STAGE_TWO_MODES["finetune"]
    assert plan.schedule == "the paper's epochs, at least 70 steps"
    assert plan.peak_lr == pytest.approx(0.05 * 2 / 256)
    assert plan.test_epochs == (*range(3, 34, 3), 35)  # every 35 // 10 epochs, and the last


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--labels-per-class", "0"],
            "error: --labels-per-class 0 is too small: keep at least one label per class (see --help)",
        ),
        (
            ["--label-fraction", "0"],
            "error: --label-fraction 0.0 is too small: the fraction must be above 0 (see --help)",
        ),
        (
            ["--label-fraction", "1.5"],
            "error: --label-fraction 1.5 is above 1: pass a fraction in (0, 1], or leave it out for all labels",
        ),
        (
            ["--labels-per-class", "2", "--label-fraction", "0.5"],
            "error: pass --labels-per-class or --label-fraction, not both",
        ),
        (
            ["--labels-per-class", "9"],
            f"error: --labels-per-class 9 is more than the {TRAIN_PER_CLASS} training images of class circle: pass --labels-per-class {TRAIN_PER_CLASS} or less",
        ),
    ],
)
def test_bad_label_flags_give_one_line_each(stage_one_run, tmp_path, capsys, flags, message):
    run_dir = copy_of_run(stage_one_run, tmp_path)
    code, _, errors = run_main("trainstage2", ["--run-dir", run_dir, *FAST, *flags], capsys)
    assert code == 2 and len(errors) == 1
    if message.endswith("(see --help)"):  # a flag's bound, worded as argparse words it
        assert errors[0].endswith(f": {message}")
    else:
        assert errors == [message]
        assert_documented(message)
    assert not (run_dir / "evaluations").exists()


@pytest.mark.parametrize("labels", [[], ["--labels-per-class", 2]])
def test_a_batch_larger_than_the_labelled_images_is_lowered_to_them_with_a_note(
    stage_one_run, tmp_path, capsys, labels
):
    """One rule with all labels and with few: a classifier's batch can be all the images."""
    run_dir = copy_of_run(stage_one_run, tmp_path)
    argv = ["--run-dir", run_dir, "--epochs", 1, "--batch-size", 100, *labels, *FAST]
    code, out, errors = run_main("trainstage2", argv, capsys)
    images = 2 * len(CLASSES) if labels else len(CLASSES) * TRAIN_PER_CLASS
    assert code == 0 and errors == []
    assert (
        f"note: --batch-size 100 is more than the {images} labelled images: using {images}" in out
    )
    folder = run_dir / "evaluations" / "linear-2-per-class" if labels else run_dir
    results = results_of(folder)
    assert results["batch_size"] == images and results["steps"] == 1


class Terminal(io.StringIO):
    """One stream for stdout and stderr that says it is a terminal, so tqdm draws its bar."""

    def isatty(self):
        return True


def test_a_stopped_stage_two_names_stage_ones_folder_and_draws_no_bar_after(
    stage_one_run, tmp_path, monkeypatch
):
    run_dir = copy_of_run(stage_one_run, tmp_path)
    signal_after_calls(optimizers, "set_lr", 2, monkeypatch)  # SIGTERM in the second step
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(sys, "stderr", screen)
    code = stage2(run_dir, "finetune", "--labels-per-class", 2)  # 6 labels at batch 4: 2 steps
    gc.collect()  # a bar left open would draw itself again when collected
    message = (
        f"stopped by SIGTERM in stage two, epoch 1; stage two does not resume: run the same "
        f"trainstage2.py command again to start it over (stage one's files in {run_dir}, and "
        f"any evaluation there before, are untouched)"
    )
    assert code == 128 + signal.SIGTERM
    assert screen.getvalue().rstrip().endswith("\n" + message)
    assert_documented(message)


def test_test_py_and_the_plots_read_any_evaluation(stage_one_run, tmp_path, capsys):
    run_dir = copy_of_run(stage_one_run, tmp_path)
    assert stage2(run_dir, "finetune", "--labels-per-class", 2) == 0
    folder = run_dir / "evaluations" / "finetune-2-per-class"
    pointed = ["--run-dir", run_dir, "--evaluation", "finetune-2-per-class"]
    code, out, _ = run_main("confusionMatrix", pointed, capsys)
    assert code == 0 and (folder / "confusion_matrix.png").is_file()
    code, out, _ = run_main("visualization", pointed, capsys)
    assert code == 0 and (folder / "stage2_curves.png").is_file()
    image = next((stage_one_run.parent / "images" / "test" / CLASSES[0]).iterdir())
    code, out, _ = run_main("test", [*pointed, image], capsys)
    assert code == 0 and out.startswith(f"{image}: ")
    code, _, errors = run_main(
        "test", ["--run-dir", run_dir, "--evaluation", "linear-5-per-class", image], capsys
    )
    assert code == 2 and errors == [
        f"error: {run_dir} has no evaluation linear-5-per-class (it has: finetune-2-per-class): pass "
        f"one of those, or make it with trainstage2.py --mode ... --labels-per-class ..."
    ]


def test_fine_tuning_measures_the_test_split_every_tenth_of_the_run_or_as_asked_and_at_the_end():
    for mode in ("finetune", "scratch"):
        test_epochs = config.STAGE_TWO_MODES[mode].test_epochs
        assert test_epochs(25, 10) == [*range(2, 25, 2), 25]
        assert test_epochs(25, 1) == [25] and test_epochs(24, 4) == [6, 12, 18, 24]
        assert test_epochs(25, 4) == [6, 12, 18, 24, 25] and test_epochs(3, 10) == [1, 2, 3]
    assert config.STAGE_TWO_MODES["linear"].test_epochs(25, 10) == [*range(1, 26)]
    for argv, test_evaluations in ([], 10), (["--test-evaluations", "1"], 1):
        cfg = config.parse(config.Evaluate, ["--mode", "finetune", *argv])
        assert cfg.test_evaluations == test_evaluations


def test_stage_two_reports_the_last_epochs_test_result_even_when_an_earlier_one_was_better(
    stage_one_run, tmp_path, monkeypatch
):
    """The first epoch is made to score every test image right; results.json, the predictions
    and the final line must still be the last epoch's (a best epoch chosen on the test split
    would be a biased number)."""
    run_dir = copy_of_run(stage_one_run, tmp_path)
    trainstage2 = load_script("trainstage2")
    measure, measured = protocols.CachedFeaturesProtocol.evaluate, []

    def first_epoch_perfect(protocol, split="test"):
        result = measure(protocol, split)
        measured.append(result)
        if len(measured) > 1:
            return result
        return protocols.EvalResult(0.0, 100.0, 100.0, result.labels.clone(), result.labels)

    monkeypatch.setattr(protocols.CachedFeaturesProtocol, "evaluate", first_epoch_perfect)
    argv = ["--run-dir", run_dir, "--epochs", 3, "--batch-size", 8, "--lr", 1e-9, *FAST]
    trainstage2.main([str(arg) for arg in argv])
    log = rundir.read_csv(run_dir / "stage2_log.csv")
    last = measured[-1]
    assert float(log[0]["test_top1"]) == 100.0 and last.top1 < 100  # the last epoch is worse
    results = results_of(run_dir)
    assert results["top1"] == float(log[-1]["test_top1"]) == round(last.top1, 3)
    predictions = rundir.read_csv(run_dir / "stage2_predictions.csv")
    assert [int(row["prediction"]) for row in predictions] == last.predictions.tolist()


def test_scratch_trains_on_the_same_augmented_views_as_finetune(
    stage_one_run, tmp_path, monkeypatch
):
    """The baseline must see what fine-tuning sees: the same crop + flip views of the same
    labelled images in the same order, none of them a plain image."""
    run_dir = copy_of_run(stage_one_run, tmp_path)
    trainstage2 = load_script("trainstage2")
    batches, views, plain = protocols.PerStepProtocol.batches, {}, {}

    def recorded(protocol, epoch):
        for images, labels in batches(protocol, epoch):
            views[modes[-1]] = views.get(modes[-1], []) + [images.clone()]
            yield images, labels
        plain[modes[-1]] = torch.cat([images for images, _ in protocol.data.plain_train_loader])

    monkeypatch.setattr(protocols.PerStepProtocol, "batches", recorded)
    modes = []
    for mode in ("finetune", "scratch"):
        modes.append(mode)
        argv = ["--run-dir", run_dir, "--mode", mode, "--labels-per-class", 2, "--epochs", 2]
        trainstage2.main([str(arg) for arg in [*argv, "--batch-size", 4, *FAST]])
    assert len(views["finetune"]) == len(views["scratch"]) == 4  # 6 images, batch 4, 2 epochs
    for finetune_views, scratch_views in zip(views["finetune"], views["scratch"]):
        assert torch.equal(finetune_views, scratch_views)
    seen = torch.cat(views["scratch"])
    assert torch.equal(plain["finetune"], plain["scratch"]) and len(plain["scratch"]) == 6
    assert not (seen[:, None] == plain["scratch"][None]).flatten(2).all(2).any()


@pytest.mark.parametrize("mode", ["finetune", "scratch"])
def test_a_last_batch_of_one_image_is_dropped_where_batchnorm_trains(
    mode, stage_one_run, tmp_path, capsys
):
    """3 labels per class, batch 4: 9 images make batches of 4, 4 and 1. BatchNorm in training
    mode (here the head's first layer under the classifier) cannot normalise one image: that
    batch is dropped, the others train."""
    run_dir = copy_of_run(stage_one_run, tmp_path)
    argv = ["--labels-per-class", 3, "--from-head-layer", 1]
    assert stage2(run_dir, mode, *argv) == 0
    folder = run_dir / "evaluations" / f"{mode}-3-per-class-head-layer-1"
    results = results_of(folder)
    assert (results["labels"], results["steps"]) == (9, 2)  # 9 // 4 steps per epoch
    stage2_checkpoint = torch.load(folder / "stage2.pth", weights_only=True)
    assert not stage2_checkpoint["feature_norm"]  # a linear probe's alone


def test_the_figure_to_choose_by_is_measured_on_held_out_training_images_never_the_test_split(
    stage_one_run, tmp_path, capsys
):
    """--validation-fraction holds a seeded, class-balanced part of the training images out of
    training and measures the classifier on them; the test split is measured once, after the last
    epoch. Shuffling the test split's labels changes the test figure, never the validation one."""
    run_dir = copy_of_run(stage_one_run, tmp_path)
    shuffled = tmp_path / "shuffled-test-labels"
    shutil.copytree(stage_one_run.parent / "images", shuffled)
    test_files = sorted((shuffled / "test").glob("*/*.png"))
    names = [path.name for path in test_files]  # each class's files move to the next class
    for path in test_files:
        path.rename(path.with_name(f"moving-{path.name}"))
    for path, name in zip(test_files, names):
        label = CLASSES[(CLASSES.index(path.parent.name) + 1) % len(CLASSES)]
        path.with_name(f"moving-{name}").rename(shuffled / "test" / label / name)
    figures = []
    for data_dir, name in ((stage_one_run.parent / "images", "original"), (shuffled, "shuffled")):
        argv = ["--validation-fraction", 0.25, "--data-dir", data_dir, "--evaluation", name]
        code, out, _ = run_main("trainstage2", [*stage2_argv(run_dir, "linear", 3), *argv], capsys)
        assert code == 0
        folder = run_dir / "evaluations" / name
        results = results_of(folder)
        log = rundir.read_csv(folder / "stage2_log.csv")
        figures.append((results, log))
        # 2 of each class's 8 training images held out; the test split measured once, at the end
        assert results["validation_images"] == 2 * len(CLASSES)
        assert results["labels"] == results["training_images"] == 6 * len(CLASSES)
        assert [row["test_top1"] != "" for row in log] == [False, False, True]
        assert all(row["val_top1"] != "" for row in log)
        assert float(log[-1]["val_top1"]) == results["validation_top1"]
        assert f"validation top-1 {results['validation_top1']:.2f}% on 6 held-out training" in out
        assert "(measured once, after the last epoch)" in out
    (original, original_log), (shuffled_results, shuffled_log) = figures
    assert original["validation_top1"] == shuffled_results["validation_top1"]
    assert [row["val_top1"] for row in original_log] == [row["val_top1"] for row in shuffled_log]
    assert original["per_class_accuracy"] != shuffled_results["per_class_accuracy"]
    # held out: never among the labels trained on, drawn per class, and by the data seed alone
    source = datasets.DataSource("folder", str(stage_one_run.parent / "images"))
    held_out = source.validation_indices(0.25, seed=0)
    _, labelled = source.labelled_split(held_out=held_out)
    full = source.full_split(True)
    assert not set(held_out) & set(labelled) and len(held_out) + len(labelled) == len(full)
    assert torch.tensor([full.targets[i] for i in held_out]).bincount().tolist() == [2, 2, 2]
    assert held_out != source.validation_indices(0.25, seed=1)
    one_each = datasets.DataSource("folder", str(stage_one_run.parent / "images"), subset=3)
    with pytest.raises(datasets.InputError, match="--validation-fraction 0.5 leaves no"):
        one_each.validation_indices(0.5, seed=0)
