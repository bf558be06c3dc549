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
