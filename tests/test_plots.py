"""The plots read what they label from the run, not from constants."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

import json  # noqa: E402

import pytest  # noqa: E402

from conftest import load_script  # noqa: E402

from simclr import rundir  # noqa: E402


def test_stage1_plot_reads_its_labels_and_the_lr_schedule_from_the_run(tmp_path):
    rows = [
        {"epoch": "1", "loss": "5.0", "lr": "0.5", "pair_accuracy": "3.0", "knn_top1": ""},
        {"epoch": "2", "loss": "4.5", "lr": "0.25", "pair_accuracy": "6.0", "knn_top1": "40.0"},
    ]
    settings = {"batch_size": 64, "epochs": 2, "knn_k": 20, "arch": "resnet18", "subset": 500}
    settings |= {"dataset": "folder", "optimizer": "lars", "temperature": 0.5}
    derived = {"peak_lr": 0.25, "warmup_epochs": 0.5, "knn_queries": 1000, "steps_per_epoch": 6}
    derived["classes"] = 10
    run = rundir.RunRecord(config=settings, derived=derived)
    visualization = load_script("visualization")
    figure = visualization.plot_stage1(rows, run, "runs/my-run", tmp_path / "curves.png", plt)
    loss_axes, lr_axes, knn_axes, pair_axes = figure.axes
    assert knn_axes.get_title() == "kNN top-1 on 1,000 test images (k=20)"
    title = figure._suptitle.get_text()
    assert title.startswith("my-run: resnet18 on folder (500 images), batch N = 64, 2 epochs")
    # the schedule at every step: a warm-up of 3 steps (half an epoch of 6) up to the peak
    schedule = lr_axes.get_lines()[0].get_ydata()
    assert len(schedule) == 12 and max(schedule) == pytest.approx(0.25)
    assert list(schedule[:3]) == pytest.approx([0.25 / 3, 0.5 / 3, 0.25])
    chance_lines = [line.get_ydata()[0] for line in pair_axes.get_lines()[1:]]
    assert chance_lines == pytest.approx([100 / 127]) and pair_axes.get_ylim() == (0, 100)
    # one kNN point sits at its whole epoch on an axis of the whole run
    assert knn_axes.get_xlim() == (0, 2.5) and knn_axes.get_ylim() == (0, 100)
    assert knn_axes.get_lines()[1].get_ydata()[0] == pytest.approx(10)  # chance: 1 of 10
    assert all(tick == int(tick) for tick in knn_axes.get_xticks())
    assert (tmp_path / "curves.png").stat().st_size > 0
    plt.close(figure)


def test_stage2_plot_names_what_the_classifier_trained_on_and_draws_chance(tmp_path):
    rows = [{"epoch": "1", "train_loss": "1.0", "test_loss": "1.1", "test_top1": "50"}]
    rows[0] |= {"test_top5": "90", "train_top1": "55"}
    results = {"protocol": "cached", "augmented_passes": 0, "class_names": list("abcd")}
    results |= {"stage1_checkpoint": "runs/x/stage1_last.pth", "stage1_epoch": 3, "top1": 50.0}
    visualization = load_script("visualization")
    figure = visualization.plot_stage2(
        rows, rundir.Results(**results), tmp_path / "curves.png", plt
    )
    labels = [line.get_label() for line in figure.axes[1].get_lines()]
    assert "train (plain images) top-1" in labels and "chance top-1 = 25%" in labels
    plt.close(figure)
    per_step = rundir.Results(**results | {"protocol": "per-step"})
    figure = visualization.plot_stage2(rows, per_step, tmp_path / "curves.png", plt)
    assert "train (crop + flip) top-1" in [line.get_label() for line in figure.axes[1].get_lines()]
    assert figure._suptitle.get_text() == (
        "linear evaluation of x/stage1_last.pth (epoch 3): test top-1 50.00%"
    )
    plt.close(figure)
    few = rundir.Results(**results | {"mode": "scratch", "labels": 40})
    figure = visualization.plot_stage2(rows, few, tmp_path / "curves.png", plt)
    assert figure._suptitle.get_text() == (
        "scratch evaluation from random weights, 40 labels: test top-1 50.00%"
    )
    plt.close(figure)
    # a distillation's training curves are the student against its teacher, on crop + flip views
    distilled = results | {"mode": "distill", "protocol": "distill", "teacher": "finetune-9"}
    figure = visualization.plot_stage2(rows, rundir.Results(**distilled), tmp_path / "c.png", plt)
    accuracy_labels = [line.get_label() for line in figure.axes[1].get_lines()]
    assert "train (crop + flip): agrees with the teacher" in accuracy_labels
    loss_labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert "train (crop + flip): distillation loss" in loss_labels
    assert ", taught by finetune-9:" in figure._suptitle.get_text()
    plt.close(figure)


def write_predictions(folder, names, labels, predictions, results):
    folder.mkdir(parents=True)
    rows = ["index,label,prediction,label_name,prediction_name"]
    rows += [
        f"{i},{t},{p},{names[t]},{names[p]}" for i, (t, p) in enumerate(zip(labels, predictions))
    ]
    (folder / "stage2_predictions.csv").write_text("\n".join(rows) + "\n")
    (folder / "results.json").write_text(json.dumps({"class_names": names, "top1": 0, **results}))


def drawn_confusion_matrix(argv, monkeypatch):
    """confusionMatrix.py's main -> the figure it drew."""
    confusion_matrix, figures = load_script("confusionMatrix"), []
    plot = confusion_matrix.plot
    monkeypatch.setattr(
        confusion_matrix, "plot", lambda *args: figures.append(plot(*args)) or figures[-1]
    )
    confusion_matrix.main([str(arg) for arg in argv])
    FigureCanvasAgg(figures[0])  # main closed it: a canvas again, to measure what it drew
    return figures[0]


def test_confusion_matrix_rows_are_true_classes_and_columns_predictions(
    tmp_path, capsys, monkeypatch
):
    run_dir = tmp_path / "folder-resnet18-20261201-184315"  # a default run name
    names = ["cat", "dog", "ship"]
    labels, predictions = [0, 0, 0, 1, 1, 2], [0, 1, 1, 1, 2, 2]
    write_predictions(run_dir, names, labels, predictions, {"mode": "linear", "labels": 30})
    figure = drawn_confusion_matrix(["--run-dir", run_dir], monkeypatch)
    matrix = (run_dir / "confusion_matrix.csv").read_text().splitlines()
    assert matrix == ["true_class,cat,dog,ship", "cat,1,2,0", "dog,0,1,1", "ship,0,0,1"]
    printed = capsys.readouterr().out
    assert " 33.33% of 3" in printed and "100.00% of 1" in printed
    assert (run_dir / "confusion_matrix.png").stat().st_size > 0
    assert figure._suptitle.get_text() == (
        f"{run_dir.name}, linear on all 30 labels\ntest top-1 50.00% of 6 images"
    )
    assert len(figure.axes) == 3  # both matrices and the colour bar of the normalised one
    plt.close(figure)


def test_an_evaluations_confusion_matrix_names_its_run_mode_and_labels_within_the_figure(
    tmp_path, monkeypatch
):
    run_dir = tmp_path / "folder-resnet18-20261201-184315"
    folder = run_dir / "evaluations" / "finetune-10-per-class"
    names = [f"class{index}" for index in range(10)]
    labels = list(range(10))
    results = {"mode": "finetune", "labels_per_class": 10, "labels": 100}
    write_predictions(folder, names, labels, labels, results)
    (run_dir / "config.json").write_text("{}")
    argv = ["--run-dir", run_dir, "--evaluation", "finetune-10-per-class"]
    figure = drawn_confusion_matrix(argv, monkeypatch)
    title = figure._suptitle.get_text()
    assert title.startswith(f"{run_dir.name}, finetune on 10 labels per class (100)")
    figure.canvas.draw()
    box = figure._suptitle.get_window_extent(figure.canvas.get_renderer())
    assert 0 <= box.x0 and box.x1 <= figure.bbox.width
    plt.close(figure)


def result(mode, labels, top1, epochs, schedule, training_images=300, from_head_layer=0):
    return rundir.Results(
        mode=mode, labels=labels, top1=top1, epochs=epochs, steps=epochs * 2, schedule=schedule,
        training_images=training_images, class_names=list("abc"), from_head_layer=from_head_layer,
    )  # fmt: skip


def test_label_efficiency_keeps_schedules_apart_marks_all_labels_and_no_number_covers_a_marker(
    tmp_path,
):
    visualization = load_script("visualization")
    default = "the paper's epochs, at least 200 steps"
    results = [
        result("linear", 300, 47.8, 100, "linear's 100 epochs"),
        result("linear", 300, 21.1, 2, "--epochs 2"),  # the quick start's: not on the same line
        result("linear", 30, 30.0, 100, "linear's 100 epochs"),
        result("finetune", 30, 30.4, 200, default),  # three modes a hair apart at 10 per class
        result("scratch", 30, 29.8, 200, default),
        result("finetune", 75, 35.9, 60, default),
        result("scratch", 75, 35.5, 60, default),
    ]
    curves = visualization.label_efficiency(results)
    assert list(curves) == [
        ("linear", "--epochs 2", ""), ("linear", "linear's 100 epochs", ""),
        ("finetune", default, ""), ("scratch", default, ""),
    ]  # fmt: skip
    assert [p.per_class for p in curves[("linear", "linear's 100 epochs", "")]] == [10, 100]
    figure = visualization.plot_label_efficiency(curves, 3, "run", tmp_path / "le.png", plt)
    axes = figure.axes[0]
    assert [label.get_text() for label in axes.get_xticklabels()] == ["10", "25", "100\n(all)"]
    assert [text.get_text() for text in axes.get_legend().get_texts()][:4] == [
        "linear (--epochs 2)", "linear (linear's 100 epochs)", "finetune", "scratch",
    ]  # fmt: skip
    numbers = [child for child in axes.texts]
    assert sorted(text.get_text() for text in numbers) == sorted(
        f"{r.top1:.1f}, {r.epochs} ep" for r in results
    )
    renderer = figure.canvas.get_renderer()
    boxes = [text.get_window_extent(renderer) for text in numbers]
    radius = visualization.MARKER_SIZE / 2 * figure.dpi / 72
    for x, y in [(r.labels / 3, r.top1) for r in results]:
        centre_x, centre_y = axes.transData.transform((x, y))
        for box in boxes:  # no number on any marker
            assert not (box.x0 < centre_x + radius and centre_x - radius < box.x1
                        and box.y0 < centre_y + radius and centre_y - radius < box.y1)  # fmt: skip
    for first in range(len(boxes)):  # nor on another number
        for second in range(first):
            assert not boxes[first].overlaps(boxes[second])
    table = visualization.label_efficiency_table(curves).splitlines()
    assert table[0] == (
        "labels per class | linear (--epochs 2) | linear (linear's 100 epochs) | finetune | scratch"
    )
    assert table[3] == "100 (all) | 21.10 (2 ep, 4 steps) | 47.80 (100 ep, 200 steps) | - | -"


def test_label_efficiency_draws_distill_and_the_head_layer_variant_as_modes_of_their_own(tmp_path):
    """Each point says its mode: finetune from head layer 1 and distill get lines and columns of
    their own, in config.MODES order, never folded into finetune's."""
    visualization = load_script("visualization")
    default = "the paper's epochs, at least 200 steps"
    results = [
        result("finetune", 30, 30.4, 200, default),
        result("finetune", 30, 31.9, 200, default, from_head_layer=1),
        result("distill", 30, 33.0, 10, "stage one's epochs", from_head_layer=1),
        result("scratch", 30, 29.8, 200, default),
    ]
    curves = visualization.label_efficiency(results)
    assert list(curves) == [
        ("finetune", default, ""), ("finetune from head layer 1", default, ""),
        ("scratch", default, ""), ("distill from head layer 1", "stage one's epochs", ""),
    ]  # fmt: skip
    figure = visualization.plot_label_efficiency(curves, 3, "run", tmp_path / "le.png", plt)
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend[:4] == [
        "finetune", "finetune from head layer 1", "scratch", "distill from head layer 1",
    ]  # fmt: skip
    table = visualization.label_efficiency_table(curves).splitlines()
    assert table[1] == (
        "10 | 30.40 (200 ep, 400 steps) | 31.90 (200 ep, 400 steps) | 29.80 (200 ep, 400 steps) | "
        "33.00 (10 ep, 20 steps)"
    )
    plt.close(figure)
