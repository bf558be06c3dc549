"""The plots read what they label from the run, not from constants."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from conftest import load_script  # noqa: E402


def test_stage1_plot_titles_the_knn_panel_with_the_runs_k(tmp_path):
    rows = [
        {"epoch": "1", "loss": "5.0", "lr": "0.5", "pair_accuracy": "3.0", "knn_top1": ""},
        {"epoch": "2", "loss": "4.5", "lr": "0.25", "pair_accuracy": "6.0", "knn_top1": "40.0"},
    ]
    visualization = load_script("visualization")
    figure = visualization.plot_stage1(
        rows, {"batch_size": 64, "knn_k": 20}, tmp_path / "curves.png", plt
    )
    titles = [axes.get_title() for axes in figure.axes]
    assert "kNN top-1 on the test split (k=20)" in titles
    assert (tmp_path / "curves.png").stat().st_size > 0
    plt.close(figure)


def test_confusion_matrix_rows_are_true_classes_and_columns_predictions(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    names = ["cat", "dog", "ship"]
    labels, predictions = [0, 0, 0, 1, 1, 2], [0, 1, 1, 1, 2, 2]
    rows = ["index,label,prediction,label_name,prediction_name"]
    rows += [
        f"{i},{t},{p},{names[t]},{names[p]}" for i, (t, p) in enumerate(zip(labels, predictions))
    ]
    (run_dir / "stage2_predictions.csv").write_text("\n".join(rows) + "\n")
    (run_dir / "results.json").write_text('{"class_names": ["cat", "dog", "ship"]}')
    load_script("confusionMatrix").main(["--run-dir", str(run_dir)])
    matrix = (run_dir / "confusion_matrix.csv").read_text().splitlines()
    assert matrix == ["true_class,cat,dog,ship", "cat,1,2,0", "dog,0,1,1", "ship,0,0,1"]
    printed = capsys.readouterr().out
    assert " 33.33% of 3" in printed and "100.00% of 1" in printed
    assert (run_dir / "confusion_matrix.png").stat().st_size > 0
