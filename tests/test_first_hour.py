"""What a new user meets first: the run a later script picks, Ctrl-C at any moment, a short run
that does not pay for the whole test split or the whole folder, and test.py's output files."""

import dataclasses
import json
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import config
from simclr import loaders_device
from simclr import checkpoints, features
import loaddataset
from simclr import rundir
from simclr import optimizers
from simclr import runtime
from simclr import datasets
from conftest import (
    CLASSES,
    TEST_PER_CLASS,
    assert_documented,
    classifier_checkpoint,
    draw,
    load_script,
    run_main,
    signal_after_calls,
    stage_one_data,
    results_of,
)

FAST = ["--device", "cpu", "--workers", "0", "--precision", "fp32"]


def stage1_argv(image_folder, run_dir, *extra):
    """The 32x32 test images at 16x16 (a later --image-size wins): a quarter of the work."""
    argv = ["--dataset", "folder", "--data-dir", image_folder, "--arch", "resnet18"]
    argv += ["--batch-size", "8", "--epochs", "1", "--image-size", "16"]
    argv += ["--run-dir", run_dir, *FAST, *extra]
    return [str(arg) for arg in argv]


def test_every_later_script_picks_the_same_newest_run_and_names_it(
    image_folder, tmp_path, monkeypatch, capsys
):
    """One rule for "the newest run": the run folder started last of those whose stage one
    finished. A newer run without stage two is the newest for every script, so the README's
    chained line never draws pictures of two runs: the scripts that need stage two say so."""
    monkeypatch.chdir(tmp_path)
    finished = tmp_path / "runs" / "finished"
    argv = stage1_argv(image_folder, finished, "--knn-every", "0")
    assert run_main("trainstage1", argv, capsys)[0] == 0
    stage2 = ["--run-dir", finished, "--epochs", 1, "--batch-size", 8, *FAST]
    assert run_main("trainstage2", stage2, capsys)[0] == 0
    # a newer run with stage one only, and a newest one stopped in its first epoch (a config.json
    # and nothing else), which no script picks
    newer = tmp_path / "runs" / "newer"
    newer.mkdir()
    for name in ("config.json", "stage1_log.csv", "stage1_last.pth"):
        (newer / name).write_bytes((finished / name).read_bytes())
    os.utime(newer / "config.json", (10**10, 10**10))
    stopped = tmp_path / "runs" / "stopped"
    stopped.mkdir()
    (stopped / "config.json").write_text((finished / "config.json").read_text())
    os.utime(stopped / "config.json", (2 * 10**10, 2 * 10**10))
    # and a newer run still training (epoch 1 of 3 logged, its checkpoint saved): not picked
    training = tmp_path / "runs" / "training"
    training.mkdir()
    (training / "stage1_log.csv").write_bytes((finished / "stage1_log.csv").read_bytes())
    checkpoint = torch.load(finished / "stage1_last.pth", weights_only=True)
    checkpoint["config"]["epochs"] = 3
    torch.save(checkpoint, training / "stage1_last.pth")
    config_json = json.loads((finished / "config.json").read_text())
    config_json["config"]["epochs"] = 3
    (training / "config.json").write_text(json.dumps(config_json))
    os.utime(training / "config.json", (3 * 10**10, 3 * 10**10))
    picked = f"run folder {os.path.join('runs', 'newer')} (the newest finished run)"
    code, out, errors = run_main("visualization", [], capsys)
    assert code == 0 and not errors and out.splitlines()[0] == picked
    assert (newer / "stage1_curves.png").is_file() and not (finished / "stage1_curves.png").exists()
    # named, the unfinished run is used, and says so in one line
    knn = ["--run-dir", training, "--device", "cpu", "--workers", "0", "--knn-k", "2"]
    for script, argv in (("knn", knn), ("export", ["--run-dir", training])):
        code, out, _ = run_main(script, argv, capsys)
        unfinished = [line for line in out.splitlines() if "unfinished" in line]
        assert code == 0 and unfinished == [
            f"note: {training / 'stage1_last.pth'} is of an unfinished stage one (epoch 1 of 3): "
            f"what is made here is of a part-trained encoder; finish it with trainstage1.py "
            f"--resume --run-dir {training}"
        ]
    code, out, errors = run_main("confusionMatrix", [], capsys)
    assert code == 2 and out.splitlines() == [picked]
    assert errors == [
        f"error: {os.path.join('runs', 'newer', 'stage2_predictions.csv')} does not exist: run "
        f"trainstage2.py first"
    ]
    image = next((image_folder / "test" / CLASSES[0]).iterdir())
    code, out, errors = run_main("test", [image], capsys)
    assert code == 2 and out.splitlines() == [picked]
    assert errors[0].startswith(
        f"error: checkpoint {os.path.join('runs', 'newer', 'stage2.pth')} does not exist: run "
        f"trainstage2.py first"
    )


def test_ctrl_c_during_start_up_ends_in_one_line_and_writes_no_run(
    image_folder, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loaddataset, "pretraining_data", interrupted)
    code, out, errors = run_main(
        "trainstage1", stage1_argv(image_folder, tmp_path / "runs" / "new"), capsys
    )
    assert code == 128 + signal.SIGINT and not errors
    assert out.strip().startswith("stopped by SIGINT at once")
    assert_documented(out.strip())
    assert not (tmp_path / "runs").exists()


def test_a_stop_during_the_knn_pass_is_honoured_at_the_next_batch_and_resume_measures_it(
    image_folder, tmp_path, monkeypatch, capsys
):
    """3 training steps (24 images, batch 8), then the kNN memory pass: the signal arrives with
    its first batch, no further batch is encoded, and --resume measures the kNN and writes the
    row that a run without the stop writes."""
    monkeypatch.chdir(tmp_path)
    whole = tmp_path / "whole"
    assert run_main("trainstage1", stage1_argv(image_folder, whole), capsys)[0] == 0
    batches = []
    with monkeypatch.context() as patch:
        signal_after_calls(runtime.Encoding, "inputs", 4, patch)
        inputs = runtime.Encoding.inputs
        patch.setattr(
            runtime.Encoding, "inputs", lambda self, x: batches.append(1) or inputs(self, x)
        )
        run_dir = tmp_path / "run"
        code, out, _ = run_main("trainstage1", stage1_argv(image_folder, run_dir), capsys)
    assert code == 128 + signal.SIGTERM and len(batches) == 4
    assert "stopped by SIGTERM in epoch 1 after step 3" in out
    assert not (run_dir / "stage1_log.csv").exists()
    saved = torch.load(run_dir / "stage1_last.pth", weights_only=True)
    assert saved["epoch"] == 0 and saved["next_epoch_totals"]["steps"] == 3
    code, out, _ = run_main("trainstage1", ["--resume", "--run-dir", str(run_dir)], capsys)
    assert code == 0 and "resuming in epoch 1 after step 3 of 3" in out
    columns = ("epoch", "loss", "lr", "pair_accuracy", "knn_top1")
    rows = [
        [
            {name: row[name] for name in columns}
            for row in rundir.read_csv(folder / "stage1_log.csv")
        ]
        for folder in (run_dir, whole)
    ]
    assert rows[0] == rows[1] and rows[0][0]["knn_top1"] != ""


def test_the_knn_monitor_classifies_a_balanced_choice_of_test_images_recorded_in_the_run(
    image_folder, tmp_path
):
    cfg = config.Pretrain(dataset="folder", data_dir=str(image_folder), batch_size=8, workers=0)
    assert config.knn_queries(cfg, training_images=24, test_images=10_000) == 1000
    assert config.knn_queries(cfg, training_images=5000, test_images=10_000) == 5000
    assert config.knn_queries(cfg, training_images=50_000, test_images=10_000) == 10_000
    for data_path in ("device", "workers"):
        chosen = config.Pretrain(
            **{**dataclasses.asdict(cfg), "knn_queries": 6, "data_path": data_path}
        )
        data = stage_one_data(chosen, torch.device("cpu"))
        labels = torch.cat([labels for _, labels in data.test_loader])
        assert data.knn_queries == 6 and labels.bincount().tolist() == [2, 2, 2]
        everything = config.Pretrain(**{**dataclasses.asdict(chosen), "knn_queries": 0})
        data = stage_one_data(everything, torch.device("cpu"))
        assert data.knn_queries == len(CLASSES) * TEST_PER_CLASS


def test_a_subset_of_a_folder_is_decoded_and_cached_alone(image_folder, tmp_path, monkeypatch):
    decoded = []
    rgb_loader = loaders_device.datasets.rgb_loader
    monkeypatch.setattr(
        loaders_device.datasets, "rgb_loader", lambda path: decoded.append(path) or rgb_loader(path)
    )
    cfg = config.Pretrain(
        dataset="folder", data_dir=str(image_folder), subset=6, batch_size=3, workers=0
    )
    source = loaders_device.datasets.DataSource(cfg.dataset, cfg.data_dir, cfg.subset, cfg.seed)
    images, labels = loaders_device.uint8_split(source, True, 32, workers=0)
    assert len(decoded) == 6 and len(images) == 6 and labels.bincount().tolist() == [2, 2, 2]
    (cache,) = (image_folder / loaders_device.CACHE_FOLDER).iterdir()
    assert len(torch.load(cache, weights_only=True)["images"]) == 6


def test_later_scripts_use_stage_ones_subset_drawn_with_its_seed_unless_told_otherwise(
    image_folder, tmp_path, monkeypatch, capsys
):
    """Stage one with --seed 1 --subset 12: stage two's labels, its scratch normalisation and
    knn.py's memory are stage one's 12 images, whatever their own --seed (0 by default); and those
    of a run with another --seed and --data-seed 1."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "NORMALISATION_SAMPLE", 6)  # fewer than the 24: the seed counts
    run_dir = tmp_path / "run"
    argv = stage1_argv(image_folder, run_dir, "--subset", "12", "--knn-every", "0", "--seed", "1")
    assert run_main("trainstage1", argv, capsys)[0] == 0
    trained_on = datasets.DataSource("folder", str(image_folder), 12, seed=1).chosen_indices(
        True, 12
    )
    assert trained_on != datasets.DataSource("folder", str(image_folder), 12).chosen_indices(
        True, 12
    )
    stage2 = ["--run-dir", str(run_dir), "--epochs", "1", "--batch-size", "4", *FAST]
    code, out, _ = run_main("trainstage2", [*stage2, "--labels-per-class", "4"], capsys)
    assert code == 0 and "12 labelled training images of 12 (--subset 12" in out
    listed = rundir.read_csv(run_dir / "evaluations" / "linear-4-per-class" / "labelled_images.csv")
    assert [int(row["index"]) for row in listed] == trained_on
    code, out, _ = run_main("trainstage2", stage2, capsys)
    assert code == 0 and "12 labelled training images of 12 (--subset 12" in out
    results = results_of(run_dir)
    assert (results["training_images"], results["subset"], results["batch_size"]) == (12, 12, 4)
    assert results["peak_lr"] == pytest.approx(0.1 * 4 / 256)
    code, out, _ = run_main("trainstage2", [*stage2, "--subset", "0", "--replace"], capsys)
    assert code == 0 and "24 labelled training images of 24 (--subset 0" in out
    stage1 = torch.load(run_dir / "stage1_last.pth", weights_only=True)
    code, _, _ = run_main("trainstage2", [*stage2, "--mode", "scratch"], capsys)
    scratch_path = run_dir / "evaluations" / "scratch-all-labels" / "stage2.pth"
    scratch = torch.load(scratch_path, weights_only=True)
    assert code == 0 and list(scratch["mean"]) == stage1["mean"]
    assert list(scratch["std"]) == stage1["std"]
    knn_cfg = config.parse(config.Knn, ["--run-dir", str(run_dir)])
    stage1_read = checkpoints.read_stage_one(run_dir / "stage1_last.pth", run_dir)
    assert features.data_source(knn_cfg, stage1_read).split(train=True).indices == trained_on
    # --data-seed 1 beside --seed 2: the images of --seed 1, the training noise of --seed 2
    other_dir = tmp_path / "other-training-seed"
    argv = stage1_argv(image_folder, other_dir, "--subset", "12", "--knn-every", "0")
    assert run_main("trainstage1", [*argv, "--seed", "2", "--data-seed", "1"], capsys)[0] == 0
    other = torch.load(other_dir / "stage1_last.pth", weights_only=True)
    knn_cfg = config.parse(config.Knn, ["--run-dir", str(other_dir)])
    other_read = checkpoints.read_stage_one(other_dir / "stage1_last.pth", other_dir)
    assert features.data_source(knn_cfg, other_read).split(train=True).indices == trained_on
    assert other["mean"] == stage1["mean"] and other["std"] == stage1["std"]
    first_conv = "encoder.conv1.weight"
    assert not torch.equal(other["model"][first_conv], stage1["model"][first_conv])


def test_test_py_writes_visible_unique_files_and_a_csv_of_every_prediction(tmp_path, monkeypatch):
    """Relative paths with '..' made hidden files, and ship.jpg / ship.png one file, before."""
    checkpoint_path = tmp_path / "stage2.pth"
    classifier_checkpoint(checkpoint_path)
    rng = np.random.default_rng(0)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        draw(0, rng).save(tmp_path / folder / "ship.png")
    draw(1, rng).save(tmp_path / "a" / "ship.jpg")
    monkeypatch.chdir(tmp_path / "a")
    argv = ["--checkpoint", str(checkpoint_path), "../b/ship.png", "ship.png", "ship.jpg"]
    argv += ["--save-dir", str(tmp_path / "out"), "--csv", str(tmp_path / "all.csv")]
    assert load_script("test").main(argv) is None  # every image classified: exit status 0
    written = sorted(os.listdir(tmp_path / "out"))
    assert written == ["ship.jpg.png", "ship.png-2.png", "ship.png.png"]
    with Image.open(tmp_path / "out" / "ship.png.png") as labelled:
        assert labelled.width == 256
    rows = rundir.read_csv(tmp_path / "all.csv")
    assert [row["image"] for row in rows] == ["../b/ship.png", "ship.png", "ship.jpg"]
    for row in rows:
        probabilities = [float(row[name]) for name in CLASSES]
        assert sum(probabilities) == pytest.approx(1, abs=1e-4)
        assert row["prediction"] == CLASSES[int(np.argmax(probabilities))]


@pytest.mark.parametrize("native", [True, False])
def test_the_precision_in_effect_is_printed_and_recorded_by_both_stages(
    image_folder, tmp_path, monkeypatch, capsys, native
):
    """--precision bf16 (the default) runs bf16 on a CPU with native bf16 and fp32 on one
    without: the start lines, config.json and results.json say which it was."""
    monkeypatch.setattr(runtime, "cpu_has_fast_half_precision", lambda dtype: native)
    run_dir = tmp_path / "run"
    # 8 px: bf16 on a CPU without it is emulated, several times slower than fp32
    argv = stage1_argv(image_folder, run_dir, "--knn-every", "0", "--image-size", "8")
    argv[argv.index("fp32")] = "bf16"
    code, out, _ = run_main("trainstage1", argv, capsys)
    in_effect = "bf16" if native else "fp32"
    assert code == 0 and f"resnet18 on cpu in {in_effect}, channels_last," in out
    derived = json.loads((run_dir / "config.json").read_text())["derived"]
    assert (derived["precision"], derived["memory_format"]) == (in_effect, "channels_last")
    stage2 = ["--run-dir", run_dir, "--epochs", 1, "--device", "cpu", "--workers", 0]
    code, out, _ = run_main("trainstage2", [*stage2, "--no-channels-last"], capsys)
    assert code == 0 and f"on cpu in {in_effect}, contiguous;" in out
    results = results_of(run_dir)
    assert (results["precision"], results["memory_format"]) == (in_effect, "contiguous")


def test_each_progress_line_shows_the_lr_of_its_own_step(image_folder, tmp_path, capsys):
    """In a log (stderr not a terminal), stage one's progress lines name the lr of the step they
    report, and the epoch's loss from this epoch, never numbers of a step or epoch before."""
    run_dir = tmp_path / "run"
    argv = stage1_argv(image_folder, run_dir, "--epochs", "2", "--knn-every", "0")
    load_script("trainstage1").main([*argv, "--warmup-epochs", "1"])
    cfg = config.with_dataset_defaults(
        config.parse(config.Pretrain, argv + ["--warmup-epochs", "1"])
    )
    lr_at = optimizers.schedule(config.peak_lr(cfg), 2, 3, config.warmup_epochs(cfg))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("stage 1")]
    steps = [int(line.split(": ")[1].split("/")[0]) for line in lines]
    assert steps == [1, 2, 3, 4, 5, 6]  # 24 images, batch 8: 3 steps an epoch
    for step, line in zip(steps, lines):
        assert f"lr={lr_at(step - 1):.3g}," in line, line
        assert "loss=..." not in line  # the first step of each epoch reads its loss
