"""CIFAR-100 through both data paths and both stages, on a tiny stand-in in torchvision's format
(its offline error: tests/test_pipeline.py)."""

import hashlib
import json
import pickle

import numpy as np
import pytest

from simclr import datasets
from conftest import run_main, training_log, results_of

CLASSES = 100
FAST = ["--device", "cpu", "--workers", "0", "--precision", "fp32"]


def write_cifar100(data_dir, train_per_class=1, test_per_class=1):
    """cifar-100-python/{train,test,meta} as torchvision reads them: pickled dicts of uint8 rows
    (3072 values: the red, green, blue planes) and fine labels; each class its own colour mix."""
    folder = data_dir / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = [label for label in range(CLASSES) for _ in range(per_class)]
        planes = rng.integers(0, 80, (len(labels), 3, 32, 32), dtype=np.uint8)
        for row, label in enumerate(labels):
            planes[row, label % 3] += np.uint8(100 + label)  # wraps for the last classes; fine
        data = {"data": planes.reshape(len(labels), -1), "fine_labels": labels}
        data |= {"coarse_labels": [label // 5 for label in labels], "filenames": []}
        with open(folder / name, "wb") as file:
            pickle.dump(data, file)
    meta = {"fine_label_names": [f"class{label:02d}" for label in range(CLASSES)]}
    meta |= {"coarse_label_names": [f"super{label:02d}" for label in range(20)]}
    with open(folder / "meta", "wb") as file:
        pickle.dump(meta, file)
    return data_dir


@pytest.fixture
def cifar100(tmp_path, monkeypatch):
    """The stand-in, with torchvision told its files' checksums in place of the real ones: its
    own integrity checks then run on it."""
    data_dir = write_cifar100(tmp_path / "dataset")
    dataset_class = datasets.torchvision.datasets.CIFAR100

    def md5(name):
        return hashlib.md5((data_dir / dataset_class.base_folder / name).read_bytes()).hexdigest()

    monkeypatch.setattr(dataset_class, "train_list", [["train", md5("train")]])
    monkeypatch.setattr(dataset_class, "test_list", [["test", md5("test")]])
    monkeypatch.setattr(dataset_class, "meta", {**dataset_class.meta, "md5": md5("meta")})
    return data_dir


@pytest.mark.parametrize("data_path", ["device", "workers"])
def test_both_stages_run_on_cifar100_with_its_hundred_classes(
    cifar100, tmp_path, capsys, data_path
):
    run_dir = tmp_path / "run"
    argv = ["--dataset", "cifar100", "--data-dir", cifar100, "--arch", "resnet18"]
    argv += ["--subset", 16, "--batch-size", 8, "--epochs", 1, "--knn-every", 1]
    argv += ["--data-path", data_path, "--run-dir", run_dir, *FAST]
    code, out, errors = run_main("trainstage1", argv, capsys)
    assert code == 0, errors
    assert f"data path: {data_path}" in out and "(100 test images)" in out
    assert len(training_log(run_dir)) == 1
    config = json.loads((run_dir / "config.json").read_text())
    assert config["derived"]["classes"] == CLASSES
    stage2 = ["--run-dir", run_dir, "--epochs", 1, "--batch-size", 8, *FAST]
    code, out, errors = run_main("trainstage2", stage2, capsys)
    assert code == 0, errors
    results = results_of(run_dir)
    assert len(results["class_names"]) == CLASSES and results["class_names"][7] == "class07"
    assert results["training_images"] == 16
    predictions = (run_dir / "stage2_predictions.csv").read_text().splitlines()
    assert len(predictions) == 1 + CLASSES and "cifar100 test #0" in predictions[1]
