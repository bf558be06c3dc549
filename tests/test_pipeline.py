"""The whole workflow on a tiny image folder, stage one and test.py through their real command
lines, the scripts between them through their main in this process; and its bad inputs."""

import csv
import json
import os
import shutil
import urllib.error

import pytest
import torch
import torchvision
from PIL import Image

import config
from simclr import evaluate
import net
from simclr import runtime
from simclr import datasets
from conftest import CLASSES, TEST_PER_CLASS, draw, run_main, run_script, stage_one_data, results_of

import numpy as np

FAST = ["--device", "cpu", "--workers", "0"]


def read_rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def assert_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100


@pytest.mark.long
def test_stage1_stage2_test_and_plots_chain_through_the_run_folder(
    image_folder, tmp_path, capsys, monkeypatch
):
    # one test circle filed as a square: the kNN top-1 cannot be 100%, so the value checked
    # below depends on which images are memory and which are queries
    (image_folder / "test" / "circle" / "0.png").rename(image_folder / "test" / "square" / "9.png")
    run_dir = tmp_path / "runs" / "tiny"
    stage1 = run_script(
        "trainstage1.py",
        "--dataset",
        "folder",
        "--data-dir",
        image_folder,
        "--arch",
        "resnet18",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--knn-every",
        "1",
        "--run-dir",
        run_dir,
        "--precision",
        "fp32",
        *FAST,
        cwd=tmp_path,
    )
    assert stage1.returncode == 0, stage1.stderr
    log = read_rows(run_dir / "stage1_log.csv")
    assert [row["epoch"] for row in log] == ["1"]
    assert list(log[0]) == [
        "epoch",
        "loss",
        "lr",
        "pair_accuracy",
        "seconds",
        "images_per_s",
        "peak_memory_gib",
        "knn_top1",
    ]
    saved_config = json.loads((run_dir / "config.json").read_text())
    assert saved_config["config"]["batch_size"] == 8 and saved_config["torch"] == torch.__version__
    # one epoch of 3 steps: the warm-up is a tenth of the run, 0.3 steps, so none at all
    assert saved_config["derived"] == {
        "peak_lr": 8 / 256,
        "warmup_epochs": 0.1,
        "knn_queries": 9,  # the whole test split: fewer than the 1,000 a small run gets
        "data_path": "device",  # --data-path auto: the training split fits
        "unlabelled_images": 0,
        "steps_per_epoch": 3,
        "classes": 3,
        "device": "cpu",
        "precision": "fp32",
        "memory_format": "channels_last",
    }
    assert saved_config["torchvision"] == torchvision.__version__
    assert saved_config["git_changes"] in (True, False, None)  # None: not in a git checkout
    assert "resnet18 on cpu in fp32, channels_last, data path: device" in stage1.stdout
    assert "lr 0.03125 after 0.1 warm-up epochs (0 steps), then cosine to 0" in stage1.stdout
    # one checkpoint, the final epoch's: none is chosen by the kNN monitor on the test split
    assert not (run_dir / "stage1_best.pth").exists()
    stage1_checkpoint = torch.load(run_dir / "stage1_last.pth", weights_only=True)
    assert stage1_checkpoint["stage"] == 1 and stage1_checkpoint["arch"] == "resnet18"
    assert stage1_checkpoint["class_names"] == list(CLASSES)
    assert stage1_checkpoint["stem"] == "cifar" and stage1_checkpoint["feature_dim"] == 512
    assert not any(key.startswith(("module.", "_orig_mod.")) for key in stage1_checkpoint["model"])
    assert torch.load(run_dir / "stage1_last.pth", weights_only=True)["epoch"] == 1
    # the logged kNN top-1 is the saved weights' kNN top-1 over the test split, recomputed here
    cfg = config.Pretrain(**saved_config["config"])
    model = net.SimCLRNet("resnet18")
    model.load_state_dict(stage1_checkpoint["model"])
    data = stage_one_data(cfg, torch.device("cpu"))
    encoding = runtime.Encoding(torch.device("cpu"), None, cfg.channels_last)
    knn_top1 = evaluate.knn_top1(
        model.encoder,
        data.memory_loader,
        data.test_loader,
        encoding,
        cfg.knn_k,
        cfg.knn_temperature,
    )
    assert float(log[0]["knn_top1"]) == pytest.approx(knn_top1, abs=0.005) and knn_top1 < 100

    # stage two finds the run as the newest one under ./runs
    monkeypatch.chdir(tmp_path)
    code, out, errors = run_main("trainstage2", ["--epochs", 1, "--batch-size", 8, *FAST], capsys)
    assert code == 0, errors
    assert f"trainable parameters: {512 * 3 + 3:,}" in out
    # the hints name this run: the later scripts would pick the newest, which may be another's
    pointed = f"--run-dir {os.path.join('runs', 'tiny')}"
    assert out.rstrip().endswith(
        f"next: python test.py IMAGE {pointed}, python visualization.py {pointed}, "
        f"python confusionMatrix.py {pointed}"
    )
    stage2_checkpoint = torch.load(run_dir / "stage2.pth", weights_only=True)
    encoder_keys = [key for key in stage1_checkpoint["model"] if key.startswith("encoder.")]
    assert encoder_keys and all(  # weights and BatchNorm running statistics alike
        torch.equal(stage2_checkpoint["model"][key], stage1_checkpoint["model"][key])
        for key in encoder_keys
    )
    assert any(key.endswith("running_mean") for key in encoder_keys)
    assert list(read_rows(run_dir / "stage2_log.csv")[0]) == [
        "epoch",
        "train_loss",
        "train_top1",
        "test_loss",
        "test_top1",
        "test_top5",
        "seconds",
    ]
    predictions = read_rows(run_dir / "stage2_predictions.csv")
    assert len(predictions) == len(CLASSES) * TEST_PER_CLASS
    results = results_of(run_dir)
    assert results["split"] == "test" and results["class_names"] == list(CLASSES)
    # stage two ran with the default --precision bf16: fp32 where this CPU emulates bf16
    native_bf16 = runtime.cpu_has_fast_half_precision(torch.bfloat16)
    expected = ("bf16" if native_bf16 else "fp32", "channels_last")
    assert (results["precision"], results["memory_format"]) == expected
    correct = sum(row["label"] == row["prediction"] for row in predictions)
    assert results["top1"] == pytest.approx(100.0 * correct / len(predictions), abs=1e-3)
    assert set(results["per_class_accuracy"]) == set(CLASSES) and results["protocol"] == "cached"
    assert results["stage1_checkpoint"].endswith(os.path.join("tiny", "stage1_last.pth"))
    assert "never chosen on the test split" in results["stage1_checkpoint_choice"]
    per_step = ["--epochs", 1, "--batch-size", 8, "--protocol", "per-step", *FAST]
    # --replace: the evaluation made with the cached protocol is replaced, as asked
    code, out, errors = run_main("trainstage2", [*per_step, "--replace"], capsys)
    assert code == 0, errors
    assert (
        "note: replacing runs/tiny's evaluation, made with --protocol cached (this one: per-step)"
        in out
    )
    assert results_of(run_dir)["protocol"] == "per-step"

    query_path = tmp_path / "query.png"
    draw(1, np.random.default_rng(5), size=48).convert("L").save(query_path)  # grayscale, 48x48
    (tmp_path / "notes.jpg").write_text("not an image")
    predict = run_script(
        "test.py",
        query_path,
        tmp_path / "missing.png",
        tmp_path / "notes.jpg",
        "--save-dir",
        tmp_path / "labelled",
        cwd=tmp_path,
    )
    assert predict.returncode == 1  # two of the three failed, the good one was still classified
    chosen_run, *printed = predict.stdout.strip().splitlines()
    assert chosen_run == f"run folder {os.path.join('runs', 'tiny')} (the newest finished run)"
    assert len(printed) == 1 and printed[0].startswith(f"{query_path}: ")
    assert sorted(part.split()[0] for part in printed[0].split(": ")[1].split(", ")) == sorted(
        CLASSES
    )
    errors = predict.stderr.strip().splitlines()
    assert len(errors) == 2 and "missing.png: no such file" in errors[0]
    assert "notes.jpg: cannot read it as an image" in errors[1]
    assert len(os.listdir(tmp_path / "labelled")) == 1

    assert run_main("visualization", [], capsys)[0] == 0
    assert run_main("confusionMatrix", ["--run-dir", run_dir], capsys)[0] == 0
    for name in (
        "stage1_curves.png",
        "stage2_curves.png",
        "confusion_matrix.png",
        "augmentations.png",
    ):
        assert_png(run_dir / name)
    matrix_rows = read_rows(run_dir / "confusion_matrix.csv")
    assert sum(int(row[name]) for row in matrix_rows for name in CLASSES) == len(predictions)


def test_bad_data_folders_exit_2_with_one_line_and_write_nothing(
    image_folder, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    cases = [
        (["--data-dir", tmp_path / "nowhere"], "nowhere/train does not exist"),
        (
            ["--data-dir", image_folder, "--batch-size", "100"],
            "--batch-size 100 is larger than the 24 training images",
        ),
    ]
    for extra, message in cases:
        argv = ["--dataset", "folder", "--arch", "resnet18", *map(str, extra), *FAST]
        code, _, errors = run_main("trainstage1", argv, capsys)
        assert code == 2 and len(errors) == 1 and message in errors[0]
    (image_folder / "test" / "circle").rename(image_folder / "test" / "ring")
    code, _, errors = run_main(
        "trainstage1", ["--dataset", "folder", "--data-dir", str(image_folder), *FAST], capsys
    )
    assert code == 2 and "class folders" in errors[0] and "differ" in errors[0]
    assert not (tmp_path / "runs").exists()


def test_an_existing_run_is_never_overwritten(image_folder, tmp_path, capsys):
    run_dir = tmp_path / "taken"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"mine": true}')
    code, _, errors = run_main(
        "trainstage1",
        [
            "--dataset",
            "folder",
            "--data-dir",
            str(image_folder),
            "--batch-size",
            "8",
            "--run-dir",
            str(run_dir),
            *FAST,
        ],
        capsys,
    )
    assert code == 2 and "already holds a run" in errors[0]
    assert (run_dir / "config.json").read_text() == '{"mine": true}'


def test_test_py_names_the_file_it_needs_when_given_a_stage1_checkpoint(tmp_path, capsys):
    checkpoint_path = tmp_path / "stage1_last.pth"
    torch.save({"stage": 1, "model": {}}, checkpoint_path)
    code, _, errors = run_main("test", ["--checkpoint", str(checkpoint_path), "x.png"], capsys)
    assert code == 2 and len(errors) == 1
    assert "stage-1 checkpoint" in errors[0] and "stage2.pth from trainstage2.py" in errors[0]


class CreatesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_whose_unpickling_would_run_code_is_refused(tmp_path, capsys):
    checkpoint_path, victim = tmp_path / "evil.pth", tmp_path / "created_by_pickle"
    torch.save({"stage": 2, "model": CreatesAFile(str(victim))}, checkpoint_path)
    code, _, errors = run_main("test", ["--checkpoint", str(checkpoint_path), "x.png"], capsys)
    assert code == 2 and "refusing to load" in errors[0]
    assert not victim.exists()


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "stl10"])
def test_a_torchvision_dataset_missing_and_offline_gives_where_to_put_the_archive(
    tmp_path, capsys, monkeypatch, dataset
):
    def no_network(self):
        raise urllib.error.URLError("no route to host")

    spec = datasets.TORCHVISION[dataset]
    monkeypatch.setattr(spec.dataset_class, "download", no_network)
    monkeypatch.chdir(tmp_path)
    argv = ["--dataset", dataset, "--data-dir", str(tmp_path / "dataset"), *FAST]
    code, _, errors = run_main("trainstage1", argv, capsys)
    assert code == 2 and len(errors) == 1
    assert errors[0].startswith(f"error: {spec.name} is not in ")
    assert spec.archive in errors[0] and "no route to host" in errors[0]
    assert "--dataset folder" in errors[0]  # the way on without CIFAR
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(
    not any(shutil.which(name) for name in ("g++", "c++", "clang++")),
    reason="torch.compile on a CPU needs a C++ compiler",
)
def test_a_compiled_run_saves_weights_that_load_into_a_plain_model(
    image_folder, tmp_path, monkeypatch, capsys
):
    """torch.compile with dynamo's eager backend: the wrapper that prefixes the weights with
    _orig_mod. is dynamo's, whatever the backend, and inductor's code generation for a ResNet
    costs a minute on two cores (the colour ops go through inductor in
    test_augment_batched.py::test_compiled_colour_ops_give_the_eager_views)."""
    monkeypatch.chdir(tmp_path)
    compiled, compile_ = [], torch.compile

    def eager_compile(target, **options):
        compiled.append(type(target).__name__ if isinstance(target, torch.nn.Module) else target)
        return compile_(target, **{**options, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", eager_compile)
    run_dir = tmp_path / "compiled"
    argv = ["--dataset", "folder", "--data-dir", image_folder, "--arch", "resnet18", "--compile"]
    argv += ["--epochs", "1", "--batch-size", "8", "--run-dir", run_dir, *FAST]
    code, _, errors = run_main("trainstage1", argv, capsys)
    assert code == 0 and errors == []
    assert "SimCLRNet" in compiled and len(compiled) == 3  # the model and the two colour ops
    checkpoint = torch.load(run_dir / "stage1_last.pth", weights_only=True)
    assert not any("_orig_mod" in key for key in checkpoint["model"])
    assert net.SimCLRNet("resnet18").load_state_dict(checkpoint["model"]).missing_keys == []
    assert float(read_rows(run_dir / "stage1_log.csv")[0]["loss"]) > 0


def test_compile_without_a_cxx_compiler_says_so_before_any_work(
    image_folder, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    argv = ["--dataset", "folder", "--data-dir", str(image_folder), "--compile", *FAST]
    code, _, errors = run_main("trainstage1", argv, capsys)
    assert code == 2 and len(errors) == 1 and "needs a C++ compiler" in errors[0]
    assert not (tmp_path / "runs").exists()
