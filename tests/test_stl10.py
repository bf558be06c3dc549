"""STL-10 on a tiny stand-in in torchvision's binary format: stage one on its labelled training
images and its unlabelled ones at 96 px with the ImageNet stem by default, kNN and stage two on the
labelled splits (its offline error: tests/test_pipeline.py)."""

import hashlib
import json

import numpy as np
import pytest

from simclr import datasets
from conftest import run_main, results_of

CLASSES = [f"class{label}" for label in range(10)]
FAST = ["--device", "cpu", "--workers", "0", "--precision", "fp32"]
TRAIN_PER_CLASS, TEST_PER_CLASS, UNLABELLED = 2, 1, 12


def write_images(path, labels, rng):
    """96x96 images as torchvision reads them: uint8 planes, each stored column by column."""
    images = rng.integers(0, 80, (len(labels), 3, 96, 96), dtype=np.uint8)
    for row, label in enumerate(labels):
        images[row, label % 3] += np.uint8(60 + 15 * label)
    path.write_bytes(images.transpose(0, 1, 3, 2).tobytes())


def write_stl10(data_dir):
    folder = data_dir / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        labels = [label for label in range(10) for _ in range(per_class)]
        write_images(folder / f"{split}_X.bin", labels, rng)
        (folder / f"{split}_y.bin").write_bytes(bytes(label + 1 for label in labels))  # 1-based
    write_images(folder / "unlabeled_X.bin", [label % 10 for label in range(UNLABELLED)], rng)
    (folder / "class_names.txt").write_text("\n".join(CLASSES) + "\n")
    return data_dir


@pytest.fixture
def stl10(tmp_path, monkeypatch):
    """The stand-in, with torchvision told its files' checksums in place of the real ones: its
    own integrity checks then run on it."""
    data_dir = write_stl10(tmp_path / "dataset")
    dataset_class = datasets.torchvision.datasets.STL10

    def listed(*names):
        files = (data_dir / dataset_class.base_folder / name for name in names)
        return [[file.name, hashlib.md5(file.read_bytes()).hexdigest()] for file in files]

    monkeypatch.setattr(
        dataset_class, "train_list", listed("train_X.bin", "train_y.bin", "unlabeled_X.bin")
    )
    monkeypatch.setattr(dataset_class, "test_list", listed("test_X.bin", "test_y.bin"))
    return data_dir


def test_the_splits_are_the_labelled_ones_and_the_unlabelled_images_join_stage_one(stl10):
    source = datasets.DataSource("stl10", str(stl10))
    train, test = source.split(train=True), source.split(train=False)
    assert (len(train), len(test), source.class_names) == (20, 10, CLASSES)
    assert sorted(set(train.targets)) == list(range(10)) and train[3][0].size == (96, 96)
    assert len(source.pretraining_split()) == 20 + UNLABELLED
    assert source.unlabelled_split()[0][1] == -1
    first = np.asarray(train[0][0])  # row-major again: the column-major file was read back right
    assert first.shape == (96, 96, 3) and first[..., 0].mean() > first[..., 1].mean() + 40


def test_both_stages_run_on_stl10_at_96_pixels_with_the_imagenet_stem(stl10, tmp_path, capsys):
    """On the device path (the workers path serves unlabelled images in tests/test_folders.py, and
    STL-10's PIL images in the test above)."""
    run_dir = tmp_path / "run"
    argv = ["--dataset", "stl10", "--data-dir", stl10, "--arch", "resnet18", "--batch-size", 8]
    argv += ["--epochs", 1, "--knn-every", 1, "--data-path", "device", "--run-dir", run_dir]
    code, out, errors = run_main("trainstage1", [*argv, *FAST], capsys)
    assert code == 0, errors
    assert f"4 steps/epoch (with {UNLABELLED} unlabelled images)" in out
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["config"]["image_size"], saved["config"]["stem"]) == (96, "imagenet")
    assert saved["derived"]["unlabelled_images"] == UNLABELLED
    stage2 = ["--run-dir", run_dir, "--epochs", 1, "--batch-size", 8, *FAST]
    code, out, errors = run_main("trainstage2", stage2, capsys)
    assert code == 0, errors
    results = results_of(run_dir)
    assert results["class_names"] == CLASSES and results["training_images"] == 20
    predictions = (run_dir / "stage2_predictions.csv").read_text().splitlines()
    assert len(predictions) == 1 + 10 and "stl10 test #0" in predictions[1]


def test_a_smaller_image_size_takes_the_cifar_stem_unless_told(stl10, tmp_path, capsys):
    argv = ["--dataset", "stl10", "--data-dir", stl10, "--arch", "resnet18", "--batch-size", 16]
    argv += ["--epochs", 1, "--knn-every", 0, "--image-size", 32, *FAST]
    for stem, expected in (([], "cifar"), (["--stem", "imagenet"], "imagenet")):
        run_dir = tmp_path / f"run-{expected}"
        code, _, errors = run_main("trainstage1", [*argv, *stem, "--run-dir", run_dir], capsys)
        assert code == 0, errors
        saved = json.loads((run_dir / "config.json").read_text())["config"]
        assert (saved["image_size"], saved["stem"]) == (32, expected)
