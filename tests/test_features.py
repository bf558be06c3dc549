"""simclr/features.py and the two scripts built on it, knn.py and pictures.py: a stage-one encoder
measured and pictured on any dataset."""

import json
import os
import re
import shutil

import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from simclr import evaluate
import net
import pictures
from conftest import CLASSES, TEST_PER_CLASS, TRAIN_PER_CLASS, run_main

# its module-scoped fixtures run once: every test of the file in one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("inspection")

MEAN, STD = (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run folder holding a ResNet-18 whose BatchNorm running statistics have moved (so eval and
    train mode differ), trained (its config says) on CIFAR-10 in a folder that does not exist:
    every test below points it at another dataset."""
    torch.manual_seed(0)
    model = net.SimCLRNet("resnet18", proj_dim=16)
    for _ in range(3):
        model(torch.randn(16, 3, 32, 32) * 2 + 1)
    settings = {"dataset": "cifar10", "data_dir": "/no/cifar/here", "subset": 0, "seed": 0}
    settings |= {"proj_dim": 16}
    settings |= {"knn_k": 5, "knn_temperature": 0.1}
    checkpoint = {
        "stage": 1, "epoch": 7, "arch": "resnet18", "stem": "cifar", "feature_dim": 512,
        "image_size": 32, "mean": MEAN, "std": STD, "model": model.state_dict(), "config": settings,
    }  # fmt: skip
    run_dir = tmp_path_factory.mktemp("run")
    torch.save(checkpoint, run_dir / "stage1_last.pth")
    (run_dir / "config.json").write_text(json.dumps({"config": settings}))
    return run_dir, model.eval()


def folder_h(model, folder, split):
    """h of a folder split's images in ImageFolder's order, computed here without our loaders."""
    transform = T.Compose([T.Resize((32, 32)), T.ToTensor(), T.Normalize(MEAN, STD)])
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        class_dir = folder / split / name
        for file in sorted(os.listdir(class_dir)):
            images.append(transform(Image.open(class_dir / file).convert("RGB")))
            labels.append(label)
    with torch.no_grad():
        return model.encoder(torch.stack(images)), torch.tensor(labels)


def test_knn_uses_the_checkpoint_in_eval_mode_with_its_normalisation_on_another_dataset(
    trained_run, image_folder, capsys
):
    run_dir, model = trained_run
    data = ["--dataset", "folder", "--data-dir", image_folder, "--workers", 0]
    argv = ["--run-dir", run_dir, *data, "--precision", "fp32", "--no-channels-last"]
    code, out, errors = run_main("knn", argv, capsys)
    assert code == 0 and errors == []
    memory_h, memory_labels = folder_h(model, image_folder, "train")
    query_h, query_labels = folder_h(model, image_folder, "test")
    predictions = evaluate.knn_predict(memory_h, memory_labels, query_h, 3, k=5, temperature=0.1)
    expected = 100.0 * (predictions == query_labels).float().mean().item()
    train, test = len(CLASSES) * TRAIN_PER_CLASS, len(CLASSES) * TEST_PER_CLASS
    assert out == (
        f"kNN top-1 {expected:.2f}% on h | {run_dir}/stage1_last.pth (epoch 7) | folder in "
        f"{image_folder}: memory {train} training images, queries {test} test images, k=5, "
        f"T=0.1; wrote {run_dir}/knn_h.json\n"
    )

    code, out, _ = run_main("knn", [*argv, "--random", "--knn-queries", 6, "--knn-k", 2], capsys)
    assert code == 0
    assert re.fullmatch(
        r"kNN top-1 \d+\.\d\d% on h \| random resnet18 \(seed 0\) \| .* queries 6 test images, "
        r"k=2, T=0.1; wrote .*knn_h_random\.json\n",
        out,
    )


def test_features_match_a_plain_forward_pass_of_the_checkpoint(trained_run, image_folder):
    import config
    import net
    from simclr import features as inspection

    run_dir, model = trained_run
    argv = ["--run-dir", str(run_dir), "--dataset", "folder", "--data-dir", str(image_folder)]
    cfg = config.parse(config.Knn, [*argv, "--workers", "0", "--precision", "fp32"])
    loaded = inspection.stage_one(cfg, net.from_stage_one)
    source = inspection.data_source(cfg, loaded.stage1)
    features = inspection.plain_features(loaded, source.split(train=False), cfg, "test")
    h, labels = folder_h(model, image_folder, "test")
    assert torch.allclose(features.h, h, atol=1e-4) and torch.equal(features.labels, labels)
    with torch.no_grad():
        assert torch.allclose(features.z, model.projector(h), atol=1e-4)


def test_pictures_writes_both_pngs_into_the_run_folder(trained_run, image_folder, capsys):
    run_dir, _ = trained_run
    data = ["--dataset", "folder", "--data-dir", image_folder, "--workers", 0]
    argv = ["--run-dir", run_dir, *data, "--precision", "fp32", "--tsne-images", 0]
    argv += ["--neighbour-rows", 3]
    code, out, errors = run_main("pictures", [*argv, "--neighbours", 4], capsys)
    assert code == 0 and errors == []
    assert out.splitlines() == [f"wrote {run_dir}/tsne.png", f"wrote {run_dir}/neighbours.png"]
    with Image.open(run_dir / "tsne.png") as tsne, Image.open(run_dir / "neighbours.png") as grid:
        assert (tsne.format, tsne.size) == ("PNG", (13 * 110, 6 * 110))
        assert (grid.format, grid.size) == ("PNG", (round(1.3 * 5 * 110), round(1.5 * 3 * 110)))
        assert len(tsne.getcolors(maxcolors=2**16) or range(2**16)) > 10  # drawn, not blank
    before = (run_dir / "tsne.png").read_bytes()
    code, out, _ = run_main("pictures", [*argv, "--random"], capsys)
    assert code == 0 and "tsne_random.png" in out and (run_dir / "neighbours_random.png").exists()
    assert (run_dir / "tsne.png").read_bytes() == before


def assert_title_fits(figure):
    figure.canvas.draw()
    box = figure._suptitle.get_window_extent(figure.canvas.get_renderer())
    assert 0 <= box.x0 and box.x1 <= figure.bbox.width, figure._suptitle.get_text()
    assert box.y1 <= figure.bbox.height, figure._suptitle.get_text()


@pytest.mark.parametrize("neighbours", [8, 2])  # the default grid, and a narrow one
def test_the_pictures_titles_name_the_run_once_and_fit_a_default_run_name(
    trained_run, image_folder, tmp_path, monkeypatch, neighbours
):
    run_dir = tmp_path / "folder-resnet18-20261201-184315"  # as trainstage1.py names a run
    shutil.copytree(trained_run[0], run_dir)
    titles = []

    def check_then_save(figure, path):
        assert_title_fits(figure)
        titles.append(figure._suptitle.get_text())
        save(figure, path)

    save = pictures.save
    monkeypatch.setattr(pictures, "save", check_then_save)
    data = ["--dataset", "folder", "--data-dir", image_folder, "--workers", 0]
    argv = ["--run-dir", run_dir, *data, "--precision", "fp32", "--tsne-images", 0]
    argv += ["--neighbour-rows", 3, "--neighbours", neighbours]
    pictures.main([str(arg) for arg in argv])  # this module, whose save is patched
    assert len(titles) == 2
    for title in titles:
        assert title.count(run_dir.name) == 1 and "stage1_last.pth (epoch 7)" in title
        assert str(tmp_path) not in title  # the run's name, not its path


def test_the_tsne_has_every_test_image_in_both_panels_and_the_classes_in_its_legend():
    torch.manual_seed(0)
    labels = torch.arange(3).repeat(10)
    test = pictures.features.Features(torch.randn(30, 12), torch.randn(30, 4), labels)
    figure = pictures.draw_tsne(test, list(CLASSES), ["title"], seed=0)
    h_panel, z_panel = figure.axes
    for panel in (h_panel, z_panel):
        assert sum(len(points.get_offsets()) for points in panel.collections) == 30
    assert [text.get_text() for text in z_panel.get_legend().get_texts()] == list(CLASSES)
    assert (h_panel.get_title(), z_panel.get_title()) == ("h (12 dimensions)", "z (4 dimensions)")


def test_the_neighbour_grid_is_ordered_by_cosine_similarity_and_marks_wrong_classes():
    memory_h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [10.0, 1.0], [1.0, 1.0]])
    memory = pictures.features.Features(memory_h, memory_h, torch.tensor([0, 1, 1, 0]))
    queries = pictures.features.Features(torch.tensor([[1.0, 0.1]]), None, torch.tensor([0]))
    similarities, indices = pictures.nearest(queries.h, memory.h, 3)
    assert indices.tolist() == [[2, 0, 3]]  # by angle: the length of [10, 1] does not count
    images = [(Image.new("RGB", (8, 8), (40 * index, 0, 0)), None) for index in range(4)]
    neighbours = (similarities, indices)
    figure = pictures.draw_neighbours(
        queries, images, memory, images, ["a", "b"], neighbours, ["title"]
    )
    titles = [(axes.get_title(), axes.title.get_color()) for axes in figure.axes]
    assert [title for title, _ in titles] == [
        "test: a", f"b {similarities[0, 0]:.2f}", f"a {similarities[0, 1]:.2f}",
        f"a {similarities[0, 2]:.2f}",
    ]  # fmt: skip
    assert [colour for _, colour in titles] == ["black", "red", "black", "black"]


@pytest.mark.parametrize("script", ["knn", "pictures"])
def test_a_missing_run_or_dataset_gives_one_documented_line(script, trained_run, tmp_path, capsys):
    code, _, errors = run_main(script, ["--run-dir", tmp_path / "nothing"], capsys)
    assert code == 2 and errors == [
        f"error: --run-dir {tmp_path}/nothing does not exist: pass a folder made by trainstage1.py"
    ]
    argv = ["--run-dir", trained_run[0], "--dataset", "folder", "--data-dir", tmp_path]
    code, _, errors = run_main(script, argv, capsys)
    needed = (
        f"error: {tmp_path}/train does not exist: a folder dataset needs {tmp_path}/train/CLASS/* "
        f"and {tmp_path}/test/CLASS/*"
    )
    if script == "pictures":  # which pictures a folder without labels too
        needed = (
            f"error: {tmp_path} holds no images: put your images in it (any depth; .jpg, .png "
            f"...), or lay it out as {tmp_path}/train/CLASS/* and {tmp_path}/test/CLASS/*"
        )
    assert code == 2 and errors == [needed]
