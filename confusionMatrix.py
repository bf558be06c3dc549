"""Confusion matrix of the stage-two classifier on the test split.

Reads stage2_predictions.csv and results.json of the newest run (or --run-dir); writes
confusion_matrix.png (counts, and rows normalised per true class) and confusion_matrix.csv into the
run folder and prints the per-class accuracy.

    python confusionMatrix.py --run-dir runs/NAME
"""

import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

import config
from simclr import errors
from simclr import plotting
from simclr import rundir


def plot(counts, class_names, title, path, plt):
    """Counts beside the rows normalised per true class, with the overall accuracy and the run in
    the title."""
    normalised = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(5, 0.55 * len(class_names) + 2)
    figure, (count_axes, normalised_axes) = plt.subplots(
        1, 2, figsize=(2 * side + 1.5, side + 0.8), layout="constrained"
    )
    ConfusionMatrixDisplay(counts, display_labels=class_names).plot(
        ax=count_axes, colorbar=False, values_format="d"
    )
    count_axes.set_title("Counts")
    display = ConfusionMatrixDisplay(normalised, display_labels=class_names).plot(
        ax=normalised_axes, colorbar=False, values_format=".2f", im_kw={"vmin": 0, "vmax": 1}
    )
    figure.colorbar(display.im_, ax=normalised_axes, shrink=0.8, label="fraction of the true class")
    normalised_axes.set_title("Normalised per true class (rows sum to 1)")
    for axes in (count_axes, normalised_axes):
        # rotated labels anchored at their right end sit under their own column
        plt.setp(axes.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    accuracy = 100.0 * counts.trace() / max(counts.sum(), 1)
    plotting.fitted_title(figure, title, f"test top-1 {accuracy:.2f}% of {counts.sum():,} images")
    figure.savefig(path, dpi=120)
    return figure


@errors.one_line_errors
def main(argv=None):
    cfg = config.parse(config.Plots, argv, __doc__)
    plt, run, evaluation = plotting.open_plots(cfg, rundir.PREDICTIONS_FILE)
    results = rundir.Results.read(evaluation.dir)
    class_names = results.class_names
    predictions_path = evaluation.path(rundir.PREDICTIONS_FILE)
    rows = rundir.read_table(predictions_path, whole_numbers=("label", "prediction"))
    labels = [int(row["label"]) for row in rows]
    predictions = [int(row["prediction"]) for row in rows]
    counts = confusion_matrix(labels, predictions, labels=list(range(len(class_names))))
    title = f"{rundir.run_name(run.dir)}, {results.title}"
    figure_path = evaluation.path(f"{rundir.CONFUSION_MATRIX}.png")
    plot(counts, class_names, title, figure_path, plt)
    rundir.write_csv(
        evaluation.path(f"{rundir.CONFUSION_MATRIX}.csv"),
        [
            {"true_class": name, **dict(zip(class_names, row.tolist()))}
            for name, row in zip(class_names, counts)
        ],
    )
    print(f"wrote {figure_path} and {rundir.CONFUSION_MATRIX}.csv")
    for name, row, correct in zip(class_names, counts, counts.diagonal()):
        print(f"{name:>16}: {100.0 * correct / max(row.sum(), 1):6.2f}% of {row.sum()}")
    if cfg.show:
        plt.show()
    plt.close("all")  # main may be called again in this process (a notebook, the tests)


if __name__ == "__main__":
    main()
