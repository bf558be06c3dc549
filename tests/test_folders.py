"""Image folders of any and mixed sizes (one resize policy, a cache keyed by it) and an unlabeled/
folder that stage one alone trains on."""

import hashlib
import json
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import config
from simclr import augment
from simclr import loaders_device
import loaddataset
from simclr import datasets
from simclr import loaders_workers
from conftest import CLASSES, TRAIN_PER_CLASS, draw, run_main

FAST = ["--device", "cpu", "--workers", "0", "--precision", "fp32"]
SIZES = [(48, 32), (20, 40), (32, 32), (70, 50)]  # (width, height): wide, tall, square, larger


@pytest.fixture
def mixed_folder(tmp_path):
    """DIR/train and DIR/test with three classes of images in four sizes, and DIR/unlabeled/ with
    five images, two of them in a subfolder."""
    rng = np.random.default_rng(0)
    root = tmp_path / "mixed"
    for split, count in (("train", 4), ("test", 2)):
        for class_index, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for number in range(count):
                image = draw(class_index, rng, size=80)
                size = SIZES[(number + class_index) % len(SIZES)]
                image.resize(size).save(root / split / name / f"{number}.png")
    (root / "unlabeled" / "more").mkdir(parents=True)
    for number in range(5):
        folder = root / "unlabeled" / ("more" if number >= 3 else "")
        draw(number % 3, rng, size=80).resize(SIZES[number % 4]).save(folder / f"u{number}.jpg")
    return root


def policy_by_hand(path, side):
    """The shorter side to side pixels (PIL, bilinear; the longer side's length truncated, as
    torchvision does), then the centre square."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    scale = side / min(width, height)
    resized = image.resize((int(width * scale), int(height * scale)), Image.BILINEAR)
    left, top = round((resized.width - side) / 2), round((resized.height - side) / 2)
    square = resized.crop((left, top, left + side, top + side))
    return torch.from_numpy(np.array(square)).permute(2, 0, 1)


def test_every_path_squares_mixed_sizes_by_the_shorter_side_and_the_centre(mixed_folder):
    source = datasets.DataSource("folder", str(mixed_folder))
    images, _ = loaders_device.uint8_split(source, False, 24, workers=0)
    paths = [path for path, _ in source.full_split(False).samples]
    assert images.shape == (len(paths), 3, 24, 24)
    for decoded, path in zip(images, paths):
        assert torch.equal(decoded, policy_by_hand(path, 24)), path
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    plain = datasets.Transformed(source.full_split(False), augment.eval_transform(24, mean, std))
    for index, decoded in enumerate(images):
        torch.testing.assert_close(plain[index][0], decoded.float() / 255, atol=1e-6, rtol=0)


def test_the_cache_is_keyed_by_size_and_resize_policy(mixed_folder, monkeypatch):
    source = datasets.DataSource("folder", str(mixed_folder))
    cache = mixed_folder / loaders_device.CACHE_FOLDER
    first, _ = loaders_device.uint8_split(source, True, 24, workers=0)
    loaders_device.uint8_split(source, True, 24, workers=0)
    assert len(list(cache.iterdir())) == 1
    assert loaders_device.uint8_split(source, True, 16, workers=0)[0].shape[-1] == 16
    assert len(list(cache.iterdir())) == 2
    stretch = "the whole image stretched to a square"
    monkeypatch.setattr(datasets, "RESIZE_POLICY", stretch)
    monkeypatch.setattr(datasets, "square", lambda side: loaders_workers.T.Resize((side, side)))
    stretched, _ = loaders_device.uint8_split(source, True, 24, workers=0)
    assert len(list(cache.iterdir())) == 3 and not torch.equal(stretched, first)


def decoded(folder):
    """{path: uint8 image} of a folder's training split as the device path decodes it."""
    source = datasets.DataSource("folder", str(folder))
    images, _ = loaders_device.uint8_split(source, True, 32, workers=0)
    return dict(zip((path for path, _ in source.full_split(True).samples), images))


def test_a_file_replaced_under_its_name_is_decoded_again(image_folder):
    """The cache must not serve a replaced file's old pixels: neither for a file of another size
    (a PNG of a solid colour) nor for one of the same size (a PPM of the same dimensions)."""
    first = decoded(image_folder)
    replaced_path = next(iter(first))
    Image.new("RGB", (32, 32), (255, 0, 0)).save(replaced_path)
    again = decoded(image_folder)
    assert (again[replaced_path] == torch.tensor([255, 0, 0])[:, None, None]).all()
    assert all(torch.equal(again[path], first[path]) for path in first if path != replaced_path)

    ppm = image_folder / "train" / CLASSES[0] / "z.ppm"
    Image.new("RGB", (32, 32), (0, 0, 255)).save(ppm)
    assert decoded(image_folder)[str(ppm)][2].min() == 255
    size, written = ppm.stat().st_size, ppm.stat().st_mtime_ns
    Image.new("RGB", (32, 32), (0, 255, 0)).save(ppm)
    os.utime(ppm, ns=(written + 10**9, written + 10**9))  # a second later, on any file system
    assert ppm.stat().st_size == size
    assert decoded(image_folder)[str(ppm)][1].min() == 255


@pytest.mark.parametrize("data_path", ["device", "workers"])
def test_stage_one_trains_on_train_and_unlabeled_and_the_knn_on_train_alone(
    mixed_folder, tmp_path, data_path, capsys
):
    run_dir = tmp_path / "run"
    argv = ["--dataset", "folder", "--data-dir", mixed_folder, "--arch", "resnet18", "--epochs", 1]
    argv += ["--batch-size", 4, "--image-size", 24, "--data-path", data_path, "--knn-every", 1]
    code, out, errors = run_main("trainstage1", [*argv, "--run-dir", run_dir, *FAST], capsys)
    assert code == 0 and errors == []
    derived = json.loads((run_dir / "config.json").read_text())["derived"]
    assert derived["unlabelled_images"] == 5 and derived["steps_per_epoch"] == (12 + 5) // 4
    assert "4 steps/epoch (with 5 unlabelled images)" in out
    cfg = config.Pretrain(dataset="folder", data_dir=str(mixed_folder), image_size=24)
    cfg.batch_size, cfg.workers, cfg.data_path = 4, 0, data_path
    data = loaddataset.pretraining_data(config.with_dataset_defaults(cfg), torch.device("cpu"))
    memory_labels = torch.cat([labels for _, labels in data.memory_loader])
    view_labels = torch.cat([labels for _, labels in data.views_loader])
    assert memory_labels.tolist() == sorted(memory_labels.tolist()) and len(memory_labels) == 12
    assert (view_labels == -1).sum() >= 1 and len(
        view_labels
    ) == 16  # 17 images, last batch dropped
    assert data.unlabelled_images == 5


def test_an_empty_unlabeled_folder_is_one_documented_line(image_folder, tmp_path, capsys):
    (image_folder / "unlabeled").mkdir()
    argv = ["--dataset", "folder", "--data-dir", image_folder, "--arch", "resnet18"]
    argv += ["--batch-size", 8, "--run-dir", tmp_path / "run", *FAST]
    code, _, errors = run_main("trainstage1", argv, capsys)
    assert code == 2 and errors == [
        f"error: {image_folder}/unlabeled holds no images: put the unlabelled images in it (any "
        f"depth), or remove it"
    ]
    assert not (tmp_path / "run").exists()
    assert len(datasets.DataSource("folder", str(image_folder)).split(True)) == 3 * TRAIN_PER_CLASS


def readme_cifar10_to_folder_snippet():
    """The Python of docs/datasets.md's `python - <<'EOF' ... EOF` block."""
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "datasets.md")) as file:
        readme = file.read()
    start = readme.index("python - <<'EOF'\n") + len("python - <<'EOF'\n")
    return readme[start : readme.index("\nEOF\n", start)]


def write_cifar10(data_dir, per_class):
    """cifar-10-batches-py as torchvision reads it (five training batches, a test batch, the
    label names), per_class[split] images of each of its ten classes, interleaved as CIFAR's are,
    random pixels."""
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump({"label_names": names}, file)
    rng = np.random.default_rng(0)
    batches = {"train": [f"data_batch_{number}" for number in range(1, 6)], "test": ["test_batch"]}
    for split, batch_names in batches.items():
        labels = [label for _ in range(per_class[split]) for label in range(10)]  # interleaved
        planes = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
        for part, name in enumerate(batch_names):
            rows = slice(part, None, len(batch_names))
            batch = {"data": planes[rows].reshape(-1, 3072), "labels": labels[rows]}
            with open(folder / name, "wb") as file:
                pickle.dump(batch, file)


def test_the_readmes_cifar10_to_folder_snippet_writes_every_image_losslessly_by_class(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    per_class = {"train": 2, "test": 1}
    write_cifar10(tmp_path / "dataset", per_class)
    dataset_class = torchvision.datasets.CIFAR10  # told the stand-in's checksums

    def md5(name):
        path = tmp_path / "dataset" / dataset_class.base_folder / name
        return hashlib.md5(path.read_bytes()).hexdigest()

    monkeypatch.setattr(
        dataset_class, "train_list", [[n, md5(n)] for n, _ in dataset_class.train_list]
    )
    monkeypatch.setattr(
        dataset_class, "test_list", [[n, md5(n)] for n, _ in dataset_class.test_list]
    )
    monkeypatch.setattr(dataset_class, "meta", {**dataset_class.meta, "md5": md5("batches.meta")})
    exec(readme_cifar10_to_folder_snippet(), {})  # noqa: S102 - the docs page's own code
    source = datasets.DataSource("folder", str(tmp_path / "cifar10-folder"))
    for split, train in (("train", True), ("test", False)):
        written = source.full_split(train)
        assert len(written.classes) == 10 and written.classes[3] == "cat"
        assert len(written) == 10 * per_class[split]
        reread = dataset_class(str(tmp_path / "dataset"), train=train)
        expected = sorted((reread.classes[label], image.tobytes()) for image, label in reread)
        found = sorted(
            (written.classes[label], np.asarray(image).tobytes()) for image, label in written
        )
        assert found == expected  # every image, under its class, pixel for pixel
    assert (tmp_path / "cifar10-folder" / "test" / "cat" / "0000.png").is_file()
