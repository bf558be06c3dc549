"""Bad input and failures mid-run: each ends with one line, a non-zero exit and nothing damaged."""

import gc
import math
import multiprocessing
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from simclr import checkpoints
from simclr import errors
from simclr import loaders_device
import net
from simclr import rundir
from simclr import datasets
from conftest import (
    CLASSES,
    assert_documented,
    classifier_checkpoint,
    copy_of_run,
    error_lines,
    load_script,
    run_main,
    run_script,
)

FAST = ["--device", "cpu", "--workers", "0"]


def stage1_argv(image_folder, *extra):
    return ["--dataset", "folder", "--data-dir", image_folder, "--arch", "resnet18", *FAST, *extra]


def files_under(folder):
    """{relative path: bytes} of every file below folder."""
    return {
        os.path.relpath(os.path.join(root, name), folder): open(
            os.path.join(root, name), "rb"
        ).read()
        for root, _, names in os.walk(folder)
        for name in names
    }


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
        (["--lr", "-0.1"], "--lr -0.1 is too small"),
        (["--batch-size", "25"], "--batch-size 25 is larger than the 24 training images"),
        (["--subset", "1"], "--subset 1 leaves one training image, of one class"),
    ],
)
def test_bad_settings_exit_2_with_one_line_before_anything_is_written(
    image_folder, tmp_path, monkeypatch, capsys, extra, message
):
    monkeypatch.chdir(tmp_path)
    code, _, errors = run_main("trainstage1", stage1_argv(image_folder, *extra), capsys)
    assert code == 2 and len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "runs").exists()


def test_a_data_folder_without_images_is_named(image_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for image in (image_folder / "train").glob("*/*.png"):
        image.rename(image.with_suffix(".txt"))
    code, _, errors = run_main("trainstage1", stage1_argv(image_folder), capsys)
    assert code == 2 and len(errors) == 1
    assert f"{image_folder / 'train'} has no images in class folders" in errors[0]
    assert not (tmp_path / "runs").exists()


def only_the_first_class(image_folder):
    for split in ("train", "test"):
        for class_name in CLASSES[1:]:
            shutil.rmtree(image_folder / split / class_name)
    return (
        f"{image_folder / 'train'} has one class only ({CLASSES[0]}): its images have no labels, "
        f"and this needs them"
    )


def an_empty_class_folder(image_folder):
    for image in (image_folder / "test" / CLASSES[1]).iterdir():
        image.unlink()
    return (
        f"{image_folder / 'test' / CLASSES[1]} has no images: put some in it, or remove the folder"
    )


@pytest.mark.parametrize("change", [only_the_first_class, an_empty_class_folder])
def test_a_folder_with_one_class_or_an_empty_class_is_refused_by_every_script_that_scores(
    stage_one_run, image_folder, tmp_path, monkeypatch, capsys, change
):
    """One class would give the kNN monitor and every classifier a perfect score: what scores
    refuses it (stage one trains on it as images without labels: tests/test_folders.py)."""
    monkeypatch.chdir(tmp_path)
    message = change(image_folder)
    if change is an_empty_class_folder:
        code, _, errors = run_main("trainstage1", stage1_argv(image_folder), capsys)
        assert code == 2 and len(errors) == 1 and errors[0].startswith(f"error: {message}")
        assert_documented(errors[0])
        assert not (tmp_path / "runs").exists()
    run_dir = copy_of_run(stage_one_run, tmp_path)
    before = files_under(run_dir)
    other_data = ["--run-dir", run_dir, "--data-dir", image_folder, *FAST]
    for script, extra in (
        ("trainstage2", ["--mode", "finetune", "--labels-per-class", 1]),
        ("knn", []),
    ):
        code, _, errors = run_main(script, [*other_data, *extra], capsys)
        assert code == 2 and len(errors) == 1 and errors[0].startswith(f"error: {message}")
        assert_documented(errors[0])
    assert files_under(run_dir) == before


@pytest.mark.parametrize("data_path", ["device", "workers"])
def test_a_training_image_that_does_not_decode_is_reported_by_path(
    image_folder, tmp_path, monkeypatch, capsys, data_path
):
    monkeypatch.chdir(tmp_path)
    broken = image_folder / "train" / CLASSES[1] / "broken.png"
    broken.write_bytes(b"not a png")
    before = files_under(image_folder)
    argv = stage1_argv(
        image_folder, "--data-path", data_path, "--workers", "2", "--batch-size", "8"
    )
    code, _, errors = run_main("trainstage1", argv, capsys)
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith(f"error: {broken}: cannot read it as an image")
    assert not (tmp_path / "runs").exists()
    assert files_under(image_folder) == before


@pytest.mark.parametrize(
    "data_path, where", [("device", "the cache build"), ("workers", "a training batch")]
)
def test_an_image_met_first_in_a_dataloader_worker_is_reported_by_path(
    image_folder, tmp_path, monkeypatch, capsys, data_path, where
):
    """Normalisation statistics fixed, so that no image is read in the main process first: the
    broken file is met by a DataLoader worker (in the cache build on the device path, in a
    training batch on the workers path) and still ends the run with its one line."""
    monkeypatch.chdir(tmp_path)
    fixed = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    monkeypatch.setattr(datasets.DataSource, "normalisation", lambda self, image_size: fixed)
    read_in_the_main_process = []
    real_loader = datasets.rgb_loader

    def loader_that_notes_its_process(path):
        if torch.utils.data.get_worker_info() is None:
            read_in_the_main_process.append(path)
        return real_loader(path)

    monkeypatch.setattr(datasets, "rgb_loader", loader_that_notes_its_process)
    broken = image_folder / "train" / CLASSES[1] / "broken.png"
    broken.write_bytes(b"not a png")
    argv = stage1_argv(image_folder, "--data-path", data_path, "--workers", "2")
    argv += ["--batch-size", "8", "--epochs", "1", "--run-dir", tmp_path / "run"]
    code, _, errors = run_main("trainstage1", argv, capsys)
    assert code == 2 and len(errors) == 1, (where, errors)
    assert errors[0].startswith(f"error: {broken}: cannot read it as an image")
    # the broken file was met by a worker (the main process reads at most the first few images,
    # for augmentations.png on the workers path)
    assert str(broken) not in map(str, read_in_the_main_process)
    assert not (image_folder / loaders_device.CACHE_FOLDER).exists() or data_path == "workers"


def test_a_test_image_that_does_not_decode_in_a_worker_is_reported_by_path(
    stage_one_run, image_folder, tmp_path, capsys
):
    run_dir = copy_of_run(stage_one_run, tmp_path)
    broken = image_folder / "test" / CLASSES[0] / "cut.png"
    data = (image_folder / "test" / CLASSES[0] / "0.png").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    before = files_under(run_dir)
    argv = ["--run-dir", run_dir, "--data-dir", image_folder, "--epochs", "1", "--batch-size", 8]
    argv += ["--device", "cpu", "--workers", "2"]
    code, _, errors = run_main("trainstage2", argv, capsys)
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith(f"error: {broken}: cannot read it as an image")
    assert files_under(run_dir) == before


def test_a_non_finite_loss_stops_with_epoch_and_step_and_keeps_the_last_checkpoint(
    image_folder, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    trainstage1 = load_script("trainstage1")
    real_step, steps = trainstage1.train_step, [0]

    def step_that_diverges_in_epoch_2(training, x1, x2):  # 24 images at batch 8: 3 steps/epoch
        loss, logits, targets = real_step(training, x1, x2)
        steps[0] += 1
        return (loss * float("nan") if steps[0] == 5 else loss), logits, targets

    monkeypatch.setattr(trainstage1, "train_step", step_that_diverges_in_epoch_2)
    run_dir = tmp_path / "run"
    last_saved = {}
    real_save = checkpoints.save

    def save_and_remember(path, checkpoint):
        real_save(path, checkpoint)
        last_saved[os.path.basename(path)] = open(path, "rb").read()

    monkeypatch.setattr(checkpoints, "save", save_and_remember)
    argv = stage1_argv(image_folder, "--batch-size", "8", "--epochs", "3", "--run-dir", run_dir)
    with pytest.raises(SystemExit) as exit_info:
        trainstage1.main([str(arg) for arg in argv])
    errors = error_lines(capsys.readouterr().err)
    assert exit_info.value.code == 2 and len(errors) == 1, errors
    assert "the loss became nan in epoch 2 by step 3" in errors[0] and "--lr" in errors[0]
    assert (run_dir / "stage1_last.pth").read_bytes() == last_saved["stage1_last.pth"]
    assert [row["epoch"] for row in rundir.read_csv(run_dir / "stage1_log.csv")] == ["1"]


def test_images_without_spread_in_a_channel_train_with_a_finite_loss_and_a_note(
    tmp_path, monkeypatch, capsys
):
    """Every training image solid red: no spread in any channel. Dividing by a standard
    deviation of 0 made every pixel nan, and the run stopped at step 1 with a message blaming
    the lr."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "red"
    for split, count in (("train", 4), ("test", 1)):
        for name in CLASSES:
            (folder / split / name).mkdir(parents=True)
            for number in range(count):
                Image.new("RGB", (32, 32), (255, 0, 0)).save(
                    folder / split / name / f"{number}.png"
                )
    argv = stage1_argv(folder, "--batch-size", "4", "--epochs", "1", "--run-dir", tmp_path / "run")
    code, out, errors = run_main("trainstage1", [*argv, "--knn-every", "1"], capsys)
    assert code == 0 and errors == []
    assert (
        f"note: the 12 training images of {folder}/train measured for the normalisation do not "
        f"vary in their red, green, blue channels" in out
    )
    loss = float(rundir.read_csv(tmp_path / "run" / "stage1_log.csv")[0]["loss"])
    assert math.isfinite(loss)
    checkpoint = torch.load(tmp_path / "run" / "stage1_last.pth", weights_only=True)
    assert checkpoint["std"] == pytest.approx([1 / 255] * 3)


def test_out_of_memory_names_a_batch_size_that_fits(image_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    trainstage1 = load_script("trainstage1")
    real_step = trainstage1.train_step

    def step_that_fits_4_images(training, x1, x2):
        if len(x1) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(training, x1, x2)

    monkeypatch.setattr(trainstage1, "train_step", step_that_fits_4_images)
    with pytest.raises(SystemExit) as exit_info:
        trainstage1.main([str(arg) for arg in stage1_argv(image_folder, "--batch-size", "16")])
    errors = error_lines(capsys.readouterr().err)
    assert exit_info.value.code == 2 and len(errors) == 1, errors
    assert "out of cpu memory at --batch-size 16 with resnet18" in errors[0]
    assert "--batch-size 4 fits: rerun with it" in errors[0]


def test_test_py_reports_each_bad_image_in_one_line_and_classifies_the_rest(tmp_path):
    checkpoint_path = tmp_path / "stage2.pth"
    classifier_checkpoint(checkpoint_path)
    images = tmp_path / "images"
    (images / "empty").mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "good.png")
    Image.fromarray(pixels).save(images / "whole.jpg")
    jpeg = (images / "whole.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (images / "notes.jpg").write_text("not an image")
    Image.fromarray((pixels[..., 0].astype(np.uint16) * 257)).save(images / "deep.png")
    Image.fromarray(pixels).convert("CMYK").save(images / "print.jpg")
    Image.new("RGB", (10_000, 10_000), (200, 40, 40)).save(images / "huge.jpg", quality=50)
    arguments = [
        images / "good.png",
        images / "missing.png",
        images / "empty",
        images / "notes.jpg",
        images / "truncated.jpg",
        images / "deep.png",
        images / "print.jpg",
        images / "huge.jpg",
    ]
    before = files_under(tmp_path)
    result = run_script("test.py", "--checkpoint", checkpoint_path, *arguments, cwd=tmp_path)
    assert result.returncode == 1
    classified = [line.split(": ")[0] for line in result.stdout.strip().splitlines()]
    assert classified == [
        str(images / name) for name in ("good.png", "deep.png", "print.jpg", "huge.jpg")
    ]
    errors = error_lines(result.stderr)
    assert len(errors) == 4, errors
    assert errors[0] == f"error: {images / 'missing.png'}: no such file"
    assert errors[1] == f"error: {images / 'empty'}: the folder holds no image files"
    assert errors[2].startswith(f"error: {images / 'notes.jpg'}: cannot read it as an image")
    assert errors[3].startswith(f"error: {images / 'truncated.jpg'}: cannot read it as an image")
    assert files_under(tmp_path) == before


def test_checkpoints_of_another_stage_or_network_are_named(stage_one_run, tmp_path, capsys):
    stage2_path = tmp_path / "stage2.pth"
    classifier_checkpoint(stage2_path)
    argv = ["--checkpoint", stage2_path, "--run-dir", stage_one_run, *FAST]
    code, _, errors = run_main("trainstage2", argv, capsys)
    assert code == 2 and len(errors) == 1
    assert "is a stage-2 checkpoint; this needs stage1_last.pth from trainstage1.py" in errors[0]

    other_stem = tmp_path / "other_stem.pth"
    classifier_checkpoint(other_stem, stem="vit-patchify")
    code, _, errors = run_main("test", ["--checkpoint", other_stem, "x.png"], capsys)
    assert code == 2 and len(errors) == 1
    assert "holds a resnet18 with a vit-patchify stem" in errors[0]

    foreign = tmp_path / "torchvision.pth"
    torch.save(net.resnet_encoder("resnet18").state_dict(), foreign)
    code, _, errors = run_main("test", ["--checkpoint", foreign, "x.png"], capsys)
    assert code == 2 and "is not a checkpoint of ours" in errors[0]


class UnreadableAtFive(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        if index == 5:
            raise errors.InputError("img5.png: cannot read it as an image; replace or remove it")
        return torch.zeros(1)


def end_the_run(ending):
    if ending == "stop":
        raise errors.Stopped("stopped by SIGTERM in epoch 1 after step 1", signal.SIGTERM)
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    "ending, exit_code, printed",
    [
        ("a worker's error", 2, "error: img5.png: cannot read it as an image; replace or"),
        ("stop", 128 + signal.SIGTERM, "stopped by SIGTERM in epoch 1 after step 1"),
        ("Ctrl-C", 128 + signal.SIGINT, "stopped by SIGINT at once"),
    ],
)
def test_a_run_ended_in_one_line_ends_its_dataloader_workers_with_it(
    ending, exit_code, printed, capsys
):
    """The error a worker raises comes back to the main process in a reference cycle with the
    loader's iterator: if the one-line report kept its traceback, the workers would live on until
    the garbage collector ran, then wait 5 s each to end (bench/dataloader_error_wait.py). A stop
    and a Ctrl-C in the main process end them too. Garbage collection off, so the test does not
    depend on when it would run."""

    @errors.one_line_errors
    def main():
        images = UnreadableAtFive() if ending == "a worker's error" else torch.zeros(8, 1)
        for step, _ in enumerate(torch.utils.data.DataLoader(images, batch_size=2, num_workers=2)):
            if step == 1 and ending != "a worker's error":
                end_the_run(ending)

    children_before = multiprocessing.active_children()
    gc.disable()
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == exit_code
        assert set(multiprocessing.active_children()) <= set(children_before)  # its workers ended
    finally:
        gc.enable()
    captured = capsys.readouterr()
    report = (captured.out + captured.err).strip().splitlines()
    assert len(report) == 1 and report[0].startswith(printed)


FINETUNE = ["--mode", "finetune", "--labels-per-class", 2, "--epochs", 1, "--batch-size", 4]


@pytest.mark.parametrize(
    "name, text, scripts",
    [
        ("results.json", '{"top1": 41.', ("trainstage2", "visualization", "confusionMatrix")),
        ("results.json", '{"top1": "high"}', ("trainstage2", "visualization", "confusionMatrix")),
        ("results.json", "[41.2]", ("trainstage2", "visualization", "confusionMatrix")),
        ("stage2_log.csv", "epoch,train_loss\n1,x\n", ("visualization",)),
        ("stage2_predictions.csv", "index,label\n0,1\n", ("confusionMatrix",)),
        ("labelled_images.csv", "index,label\n0,1\n", ("trainstage2",)),  # a distillation's
    ],
)
def test_a_damaged_record_of_an_evaluation_is_named_in_one_line_and_replace_remakes_it(
    name, text, scripts, stage_one_run, tmp_path, capsys
):
    run_dir = copy_of_run(stage_one_run, tmp_path)
    folder = run_dir / rundir.EVALUATIONS / "finetune-2-per-class"
    argv = ["--run-dir", run_dir, *FINETUNE, "--device", "cpu", "--workers", 0]
    assert run_main("trainstage2", argv, capsys)[0] == 0
    (folder / name).write_text(text)
    teacher = ["--mode", "distill", "--teacher", "finetune-2-per-class", "--epochs", 1]
    teacher += ["--batch-size", 8]
    for script in scripts:
        pointed = ["--run-dir", run_dir, "--evaluation", "finetune-2-per-class"]
        script_argv = {"trainstage2": argv} | {"visualization": pointed, "confusionMatrix": pointed}
        if name == "labelled_images.csv":
            script_argv["trainstage2"] = ["--run-dir", run_dir, *teacher, "--device", "cpu"]
        code, _, errors = run_main(script, script_argv[script], capsys)
        assert code == 2 and len(errors) == 1, (script, errors)
        assert errors[0].startswith(f"error: {folder / name} is damaged ("), (script, errors)
        assert_documented(errors[0])
    if name == "results.json":
        code, out, _ = run_main("trainstage2", [*argv, "--replace"], capsys)
        assert code == 0 and f"whose {name} is damaged" in out
        assert rundir.Results.read(folder).top1 >= 0


def test_a_damaged_config_json_or_stage_one_log_is_named_in_one_line(
    stage_one_run, tmp_path, capsys
):
    run_dir = copy_of_run(stage_one_run, tmp_path)
    (run_dir / "stage1_log.csv").write_text("epoch,loss\n1,0.5\ntwo,0.4\n")
    code, _, errors = run_main("visualization", ["--run-dir", run_dir], capsys)
    assert code == 2 and errors[0].startswith(f"error: {run_dir / 'stage1_log.csv'} is damaged (")
    (run_dir / "config.json").write_text('{"derived": {}}')
    code, _, errors = run_main("trainstage2", ["--run-dir", run_dir, "--mode", "scratch"], capsys)
    assert code == 2 and errors == [
        f"error: {run_dir / 'config.json'} is damaged (it has no config): it holds the run's "
        f"settings: restore it from a copy, or start the run again in a new --run-dir"
    ]
    assert_documented(errors[0])


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "tpu"])
def test_a_device_this_machine_does_not_have_is_named_in_one_line(
    device, stage_one_run, tmp_path, monkeypatch, capsys
):
    """Here torch sees no CUDA GPU, or (for cuda:3) one."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: device == "cuda:3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    new_run = stage1_argv(stage_one_run.parent / "images", "--run-dir", tmp_path / "new")
    for script, argv in (
        ("trainstage1", new_run),
        ("trainstage2", ["--run-dir", stage_one_run]),
        ("knn", ["--run-dir", stage_one_run]),
    ):
        code, _, errors = run_main(script, [*argv, "--device", device], capsys)
        assert code == 2 and len(errors) == 1, errors
        assert errors[0].startswith(f"error: --device {device}")
        assert_documented(errors[0])
    assert not (tmp_path / "new").exists()


def test_a_run_name_longer_than_the_file_system_allows_is_named_in_one_line(
    image_folder, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    name = "run-" + "x" * 296
    code, _, errors = run_main("trainstage1", stage1_argv(image_folder, "--run-dir", name), capsys)
    assert code == 2 and len(errors) == 1 and "300 bytes long, more than the 255" in errors[0]
    assert_documented(errors[0])
    assert os.listdir(tmp_path) == [os.path.basename(image_folder)]
