"""simclr/checkpoints.py: the two formats' contents, the run folder -> checkpoint path, the prefix
strip and strict loading; and net.py's rebuild of each network from its checkpoint."""

import os
import re
import shutil

import pytest
import torch

import net
from simclr import checkpoints, rundir
from simclr.errors import InputError
from conftest import CLASSES, assert_documented, classifier_checkpoint, copy_of_run, run_main

FAST = ["--device", "cpu", "--workers", "0", "--precision", "fp32"]

# What a checkpoint holds is a promise to every checkpoint already on disk: a key renamed or
# dropped here would stop old runs from loading (bench/old_checkpoints.sh tries them).
STAGE_ONE_KEYS = {"stage", "epoch", "config", "arch", "stem", "feature_dim", "proj_dim"}
STAGE_ONE_KEYS |= {"image_size", "mean", "std", "class_names", "knn_top1", "last_knn_top1"}
STAGE_ONE_KEYS |= {"model", "optimizer", "scaler", "next_epoch_totals", "rng"}
STAGE_ONE_KEYS |= {"run_id", "images"}  # since results record what made them
STAGE_TWO_KEYS = {"stage", "arch", "stem", "feature_dim", "image_size", "mean", "std"}
STAGE_TWO_KEYS |= {"class_names", "stage1_checkpoint", "config", "model"}
STAGE_TWO_KEYS |= {"stage1_config", "from_head_layer"}  # since SimCLRv2's modes
STAGE_TWO_KEYS |= {"feature_norm"}  # since the linear probe normalises its features
STAGE_TWO_KEYS |= {"stage1_weights"}  # since results record what made them


def test_both_checkpoints_hold_their_format_and_rebuild_their_networks(
    stage_one_run, tmp_path, capsys
):
    run_dir = copy_of_run(stage_one_run, tmp_path)
    stage1_path = os.path.join(run_dir, checkpoints.STAGE_ONE_FILE)
    stage1 = checkpoints.load(stage1_path, stage=1)
    assert set(stage1) == STAGE_ONE_KEYS and stage1["stage"] == 1 and stage1["epoch"] == 1
    model = net.from_stage_one(stage1, stage1_path)
    assert model.state_dict().keys() == stage1["model"].keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stage1["model"].items())
    encoder = net.from_stage_one(stage1, stage1_path, encoder_only=True)
    assert encoder.state_dict().keys() == model.encoder.state_dict().keys()
    assert torch.equal(encoder.conv1.weight, model.encoder.conv1.weight)
    fresh = net.from_stage_one(stage1, stage1_path, with_weights=False)
    assert not torch.equal(fresh.encoder.conv1.weight, model.encoder.conv1.weight)

    argv = ["--run-dir", str(run_dir), "--epochs", "1", "--batch-size", "8", *FAST]
    code, _, _ = run_main("trainstage2", argv, capsys)
    stage2_path = os.path.join(run_dir, checkpoints.STAGE_TWO_FILE)
    stage2 = checkpoints.load(stage2_path, stage=2)
    assert code == 0 and set(stage2) == STAGE_TWO_KEYS and stage2["stage"] == 2
    assert stage2["stage1_checkpoint"] == stage1_path
    assert all(stage2[key] == stage1[key] for key in checkpoints.ENCODER_KEYS)
    classifier = net.from_stage_two(stage2, stage2_path)
    assert classifier.classifier.out_features == len(CLASSES)
    assert stage2["feature_norm"] and "feature_norm.running_mean" in stage2["model"]
    assert all(torch.equal(classifier.state_dict()[k], v) for k, v in stage2["model"].items())


def test_a_run_folder_resolves_to_its_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_dir = os.path.join("runs", "one")
    evaluation = os.path.join(run_dir, "evaluations", "finetune-2-per-class")
    os.makedirs(evaluation)
    open(os.path.join(run_dir, checkpoints.STAGE_ONE_FILE), "w").close()
    rundir.write_json(os.path.join(run_dir, "config.json"), {"config": {"epochs": 1}})
    rundir.write_csv(os.path.join(run_dir, "stage1_log.csv"), [{"epoch": 1, "loss": 5.0}])
    assert checkpoints.locate(1, run_dir) == (run_dir, os.path.join(run_dir, "stage1_last.pth"))
    assert checkpoints.locate(1) == (run_dir, os.path.join(run_dir, "stage1_last.pth"))
    assert "run folder runs/one (the newest finished run)" in capsys.readouterr().out
    assert checkpoints.locate(1, run_dir, "elsewhere.pth") == (run_dir, "elsewhere.pth")
    assert checkpoints.locate(1, "", "elsewhere.pth", needs_run=False) == (None, "elsewhere.pth")
    assert capsys.readouterr().out == ""  # --checkpoint alone names no run folder
    # a newer run, still training, is not the newest run; alone, it is named in one line
    training = os.path.join("runs", "training")
    os.makedirs(training)
    open(os.path.join(training, checkpoints.STAGE_ONE_FILE), "w").close()
    rundir.write_json(os.path.join(training, "config.json"), {"config": {"epochs": 3}})
    rundir.write_csv(os.path.join(training, "stage1_log.csv"), [{"epoch": 1, "loss": 5.0}])
    os.utime(os.path.join(training, "config.json"), (10**10, 10**10))
    assert checkpoints.locate(1)[0] == run_dir
    damaged = os.path.join("runs", "damaged")  # newer, its records unreadable: passed over
    os.makedirs(damaged)
    open(os.path.join(damaged, checkpoints.STAGE_ONE_FILE), "w").close()
    with open(os.path.join(damaged, "config.json"), "w") as file:
        file.write("{not json")
    os.utime(os.path.join(damaged, "config.json"), (2 * 10**10, 2 * 10**10))
    assert checkpoints.locate(1)[0] == run_dir
    shutil.rmtree(damaged)
    os.rename(run_dir, "elsewhere")
    with pytest.raises(InputError) as raised:
        checkpoints.locate(1)
    assert_documented(f"error: {raised.value}")
    assert "(the newest, runs/training, has 1 of 3 epochs)" in str(raised.value)
    os.rename("elsewhere", run_dir)
    found = checkpoints.locate(2, run_dir, evaluation="finetune-2-per-class")
    assert found == (run_dir, os.path.join(evaluation, "stage2.pth"))
    with pytest.raises(InputError, match="stage2.pth does not exist: run trainstage2.py first"):
        checkpoints.load(checkpoints.locate(2)[1], stage=2)


def test_encoder_state_takes_only_encoder_tensors_without_prefix():
    model = net.SimCLRNet("resnet18")
    with torch.no_grad():  # distinct values, so a tensor taken from the wrong key shows
        for number, tensor in enumerate(model.state_dict().values()):
            tensor.copy_(torch.full_like(tensor, number))
    state = checkpoints.encoder_state(model.state_dict())
    assert state.keys() == model.encoder.state_dict().keys()
    for key, tensor in model.encoder.state_dict().items():
        assert torch.equal(state[key], tensor), key
    fresh = net.resnet_encoder("resnet18")
    fresh.load_state_dict(state)
    assert torch.equal(fresh.conv1.weight, model.encoder.conv1.weight)


def test_wrapper_prefixes_are_stripped_and_loading_stays_strict(tmp_path):
    model = net.LinearClassifier(net.resnet_encoder("resnet18"), 512, len(CLASSES))
    wrapped = {f"module._orig_mod.{key}": value for key, value in model.state_dict().items()}
    path = tmp_path / "wrapped.pth"
    classifier_checkpoint(path, model=wrapped)
    loaded = checkpoints.load(path, stage=2)
    fresh = net.LinearClassifier(net.resnet_encoder("resnet18"), 512, len(CLASSES))
    checkpoints.load_strictly(fresh, loaded["model"], path)
    assert all(
        torch.equal(fresh.state_dict()[key], value) for key, value in model.state_dict().items()
    )
    with pytest.raises(InputError, match=re.escape("1 unexpected keys ['extra.weight']")):
        checkpoints.load_strictly(fresh, {**loaded["model"], "extra.weight": torch.zeros(1)}, path)


def test_the_newest_run_is_the_one_whose_config_json_was_written_last_not_the_last_by_name(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    for name, written in (("b-later-name", 1000), ("a-earlier-name", 2000)):
        run_dir = os.path.join("runs", name)
        os.makedirs(run_dir)
        open(os.path.join(run_dir, checkpoints.STAGE_ONE_FILE), "w").close()
        rundir.write_json(os.path.join(run_dir, "config.json"), {"config": {"epochs": 1}})
        rundir.write_csv(os.path.join(run_dir, "stage1_log.csv"), [{"epoch": 1, "loss": 5.0}])
        os.utime(os.path.join(run_dir, "config.json"), (written, written))
    assert checkpoints.locate(1)[0] == os.path.join("runs", "a-earlier-name")
