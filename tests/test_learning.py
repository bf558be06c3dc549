"""Stage one learns: the loss falls below chance, the logged lr is the schedule's, and both views
go through the network in one forward pass, so BatchNorm sees all 2N images together."""

import math

import pytest
import torch

import config
from simclr import optimizers
from simclr import rundir
from conftest import copy_of_run, load_script


@pytest.mark.long
def test_stage_one_learns_with_the_scheduled_lr_and_one_forward_pass_for_both_views(
    image_folder, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    trainstage1 = load_script("trainstage1")
    batch_norm_batches, initial_weights = [], {}
    start_training = trainstage1.start_training

    def start_training_with_a_hook(cfg, encoding, lr_at):
        training = start_training(cfg, encoding, lr_at)

        def record(module, inputs, output):
            if module.training:
                batch_norm_batches.append(len(inputs[0]))

        training.model.encoder.bn1.register_forward_hook(record)
        initial_weights.update(
            {name: p.detach().clone() for name, p in training.model.named_parameters()}
        )
        return training

    monkeypatch.setattr(trainstage1, "start_training", start_training_with_a_hook)
    run_dir = tmp_path / "run"
    argv = ["--dataset", "folder", "--data-dir", image_folder, "--arch", "resnet18"]
    argv += ["--batch-size", "8", "--epochs", "3", "--knn-every", "0", "--precision", "fp32"]
    argv += ["--device", "cpu", "--workers", "0", "--run-dir", run_dir]
    trainstage1.main([str(arg) for arg in argv])
    log = rundir.read_csv(run_dir / "stage1_log.csv")
    steps = 3  # 24 images at batch 8
    assert batch_norm_batches == [2 * 8] * (3 * steps)  # 2N views per step, one pass each
    cfg = config.Pretrain(epochs=3, batch_size=8)
    lr_at = optimizers.schedule(config.peak_lr(cfg), 3, steps, config.warmup_epochs(cfg))
    assert [float(row["lr"]) for row in log] == [lr_at(epoch * steps - 1) for epoch in (1, 2, 3)]
    assert float(log[1]["lr"]) > 0
    chance = math.log(2 * 8 - 1)
    assert float(log[-1]["loss"]) < chance - 0.05
    # every weight tensor moved: the optimizer took real steps (an lr left at 0, or gradients
    # cleared between backward and step, would leave them exactly where they started)
    final = torch.load(run_dir / "stage1_last.pth", weights_only=True)["model"]
    for name, before in initial_weights.items():
        moved = (final[name] - before).norm() / before.norm().clamp(min=1e-12)
        assert moved > 1e-4, (name, moved.item())


def test_the_linear_probe_learns_and_test_py_predicts_what_stage_two_predicted(
    stage_one_run, tmp_path, monkeypatch, capsys
):
    """The classifier reaches a high training top-1 on separable classes (an optimizer that never
    stepped, or a classifier fed the wrong features, would stay near a third), and test.py, reading
    stage2.pth and the image files, predicts the class stage two recorded for each test image."""
    monkeypatch.chdir(tmp_path)
    run_dir = copy_of_run(stage_one_run, tmp_path)
    image_folder = stage_one_run.parent / "images"
    common = ["--device", "cpu", "--workers", "0", "--precision", "fp32"]
    stage2 = ["--run-dir", run_dir, "--epochs", "30", "--batch-size", "8", "--lr", "30"]
    load_script("trainstage2").main([str(arg) for arg in stage2 + common])
    log = rundir.read_csv(run_dir / "stage2_log.csv")
    assert float(log[-1]["train_top1"]) >= 90, log[-1]
    recorded = rundir.read_csv(run_dir / "stage2_predictions.csv")
    assert sorted(row["image"] for row in recorded) == sorted(
        str(path) for path in (image_folder / "test").rglob("*.png")
    )
    capsys.readouterr()
    code = load_script("test").main(
        [*(row["image"] for row in recorded), "--run-dir", str(run_dir), "--top-k", "1"]
    )
    printed = capsys.readouterr().out.strip().splitlines()
    assert code is None and len(printed) == len(recorded)  # None: exit status 0
    predicted = dict(line.rsplit(" ", 1)[0].split(": ") for line in printed)
    assert predicted == {row["image"]: row["prediction_name"] for row in recorded}
