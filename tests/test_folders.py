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
from simclr import datasets
from simclr import loaders_workers
from simclr import rundir
from conftest import (
    CLASSES,
    TRAIN_PER_CLASS,
    assert_documented,
    draw,
    load_script,
    run_main,
    stage_one_data,
)

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
    data = stage_one_data(cfg, torch.device("cpu"))
    memory_labels = torch.cat([labels for _, labels in data.memory_loader])
    view_labels = torch.cat([labels for _, labels in data.views_loader])
    assert memory_labels.tolist() == sorted(memory_labels.tolist()) and len(memory_labels) == 12
    assert (view_labels == -1).sum() >= 1 and len(
        view_labels
    ) == 16  # 17 images, last batch dropped
    assert data.unlabelled_images == 5


def stage_one_on(image_folder, tmp_path, capsys):
    """trainstage1.py on image_folder into tmp_path/run -> (its exit status, its error lines)."""
    argv = ["--dataset", "folder", "--data-dir", image_folder, "--arch", "resnet18"]
    argv += ["--batch-size", 8, "--run-dir", tmp_path / "run", *FAST]
    code, _, errors = run_main("trainstage1", argv, capsys)
    return code, errors


def test_an_empty_unlabeled_folder_is_one_documented_line(image_folder, tmp_path, capsys):
    (image_folder / "unlabeled").mkdir()
    code, errors = stage_one_on(image_folder, tmp_path, capsys)
    assert code == 2 and errors == [
        f"error: {image_folder}/unlabeled holds no images: put the unlabelled images in it (any "
        f"depth), or remove it"
    ]
    assert not (tmp_path / "run").exists()
    assert len(datasets.DataSource("folder", str(image_folder)).split(True)) == 3 * TRAIN_PER_CLASS


def photo_folder(root, layout):
    """A pile of 12 of one's own photos, laid out three ways a user keeps them: unlabeled/ alone;
    flat, at any depth (with a test/ folder beside them, never trained on); train/ and test/
    class folders of one class. -> (the folder, how many images stage one trains on)."""
    rng = np.random.default_rng(0)
    folders = {
        "unlabeled": ["unlabeled"] * 8 + ["unlabeled/2026"] * 4,
        "flat": [""] * 6 + ["holiday/day-1"] * 6 + ["test"] * 3,
        "one class": ["train/cat"] * 12 + ["test/cat"] * 3,
    }[layout]
    for number, folder in enumerate(folders):
        (root / folder).mkdir(parents=True, exist_ok=True)
        draw(number % 3, rng, size=40).save(root / folder / f"photo{number}.jpg")
    return root, 12


@pytest.mark.parametrize("layout", ["unlabeled", "flat", "one class"])
def test_stage_one_trains_on_a_folder_of_photos_without_labels_and_the_later_scripts_say_so(
    layout, tmp_path, capsys
):
    data_dir, images = photo_folder(tmp_path / "photos", layout)
    run_dir = tmp_path / "run"
    argv = ["--dataset", "folder", "--data-dir", data_dir, "--arch", "resnet18", "--epochs", 2]
    argv += ["--batch-size", 4, "--image-size", 8, "--knn-every", 1, "--run-dir", run_dir, *FAST]
    code, out, errors = run_main("trainstage1", argv, capsys)
    assert code == 0 and errors == []
    why = {
        "unlabeled": f"{data_dir} holds unlabeled/ only",
        "flat": f"{data_dir} has no train/ and test/ class folders",
        "one class": f"{data_dir}/train has one class only (cat)",
    }[layout]
    assert (
        f"note: {why}, so stage one trains on its {images} images without labels and the kNN "
        f"monitor is off" in out
    )
    log = rundir.read_csv(run_dir / "stage1_log.csv")
    assert [row["knn_top1"] for row in log] == ["", ""]  # never measured
    checkpoint = torch.load(run_dir / "stage1_last.pth", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["images"]["training"] == images
    assert f"python pictures.py --run-dir {run_dir}" in out.splitlines()[-1]

    code, out, _ = run_main("export", ["--run-dir", run_dir], capsys)
    assert code == 0 and len(list(run_dir.glob("simclr-resnet18-folder-*.pth"))) == 1
    pictures = ["--run-dir", run_dir, "--neighbour-rows", 3, "--neighbours", 4, *FAST[:4]]
    code, out, errors = run_main("pictures", pictures, capsys)
    assert code == 0 and errors == []
    assert f"note: {why}: the pictures show its images, without classes" in out
    assert (run_dir / "tsne.png").stat().st_size and (run_dir / "neighbours.png").stat().st_size

    for script in ("knn", "trainstage2"):
        code, _, errors = run_main(script, ["--run-dir", run_dir, *FAST], capsys)
        assert code == 2 and errors == [
            f"error: {why}: its images have no labels, and this needs them: pass --data-dir of a "
            f"folder with labels ({data_dir}/train/CLASS/* and {data_dir}/test/CLASS/*, two "
            f"classes or more)"
        ]
        assert_documented(errors[0])


def test_a_folder_with_labels_can_be_named_for_the_knn_monitor_of_one_without(
    image_folder, tmp_path, capsys
):
    data_dir, _ = photo_folder(tmp_path / "photos", "unlabeled")
    run_dir = tmp_path / "run"
    argv = ["--dataset", "folder", "--arch", "resnet18", "--epochs", 1, "--batch-size", 4]
    argv += ["--image-size", 8, *FAST]
    photos = ["--data-dir", data_dir, "--knn-data-dir", image_folder, "--run-dir", run_dir]
    code, out, _ = run_main("trainstage1", [*argv, *photos], capsys)
    assert code == 0 and "monitor is off" not in out
    assert "kNN top-1" in out and "(9 test images)" in out  # the labelled folder's 9 test images
    (row,) = rundir.read_csv(run_dir / "stage1_log.csv")
    assert row["knn_top1"] != ""
    derived = json.loads((run_dir / "config.json").read_text())["derived"]
    assert (derived["classes"], derived["knn_queries"]) == (len(CLASSES), 9)
    # its card names the monitor's folder, where check.py measures the figure again
    assert run_main("export", ["--run-dir", run_dir], capsys)[0] == 0
    (card,) = run_dir.glob("simclr-resnet18-folder-*.json")
    monitor = json.loads(card.read_text())["evaluations"][0]
    assert (monitor["kind"], monitor["data_dir"]) == ("knn monitor", str(image_folder))
    code, out, _ = run_main("check", [card, *FAST[:4]], capsys)
    assert code == 0 and "knn monitor top-1 on h (9 queries, k=200): card" in out
    labelled = ["--data-dir", image_folder, "--knn-data-dir", data_dir, "--run-dir", tmp_path / "b"]
    code, _, errors = run_main("trainstage1", [*argv, *labelled], capsys)
    assert code == 2 and errors == [
        f"error: --knn-data-dir is the kNN monitor's folder where --data-dir has no labels, and "
        f"{image_folder} has them: leave out --knn-data-dir"
    ]
    assert_documented(errors[0])


def test_a_neighbour_grid_of_the_memorys_own_images_never_shows_an_image_beside_itself():
    pictures = load_script("pictures")
    memory = torch.eye(5)
    similarities, indices = pictures.nearest(memory[[3, 1]], memory, 2, own=[3, 1])
    assert 3 not in indices[0].tolist() and 1 not in indices[1].tolist()
    assert similarities.max() < 1


def test_a_tiny_image_is_refused_in_one_line_never_upscaled(image_folder, tmp_path, capsys):
    tiny = image_folder / "train" / CLASSES[0] / "tiny.png"
    Image.new("RGB", (1, 1), (255, 0, 0)).save(tiny)
    code, errors = stage_one_on(image_folder, tmp_path, capsys)
    assert code == 2 and errors == [
        f"error: {tiny} is 1x1 pixels, below 8 a side: too small to learn from (it would be "
        f"upscaled into a blur); remove it, or replace it with a larger image"
    ]
    assert_documented(errors[0])
    Image.new("RGB", (8, 30)).save(tiny)  # 8 a side is enough
    assert datasets.rgb_loader(tiny).size == (8, 30)


def test_the_decoded_cache_goes_where_simclr_cache_dir_says(image_folder, tmp_path, monkeypatch):
    cache_dir = tmp_path / "elsewhere"
    monkeypatch.setenv("SIMCLR_CACHE_DIR", str(cache_dir))
    source = datasets.DataSource("folder", str(image_folder))
    images, _ = loaders_device.uint8_split(source, True, 16, workers=0)
    assert len(images) == 3 * TRAIN_PER_CLASS
    assert len(list(cache_dir.iterdir())) == 1
    assert not (image_folder / loaders_device.CACHE_FOLDER).exists()


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
