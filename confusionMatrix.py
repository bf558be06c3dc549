"""Confusion matrix of the stage-two classifier on the test split.

Reads stage2_predictions.csv and results.json of the newest run (or --run-dir); writes
confusion_matrix.png (counts, and rows normalised per true class) and confusion_matrix.csv into the
run folder and prints the per-class accuracy.

    python confusionMatrix.py --run-dir runs/NAME
"""

import json

import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

import errors
import plotstart
import rundir


def plot(counts, class_names, path, plt):
    normalised = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(6, 0.6 * len(class_names))
    figure, (count_axes, normalised_axes) = plt.subplots(1, 2, figsize=(2 * side + 2, side))
    ConfusionMatrixDisplay(counts, display_labels=class_names).plot(
        ax=count_axes, xticks_rotation=45, colorbar=False, values_format="d"
    )
    count_axes.set_title("Test split: counts")
    ConfusionMatrixDisplay(normalised, display_labels=class_names).plot(
        ax=normalised_axes, xticks_rotation=45, colorbar=False, values_format=".2f"
    )
    normalised_axes.set_title("Normalised per true class (rows sum to 1)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


@errors.one_line_errors
def main(argv=None):
    cfg, plt, run = plotstart.open_plots(argv, __doc__, "stage2_predictions.csv", "trainstage2.py")
    with open(run.path("results.json")) as file:
        class_names = json.load(file)["class_names"]
    rows = rundir.read_csv(run.path("stage2_predictions.csv"))
    labels = [int(row["label"]) for row in rows]
    predictions = [int(row["prediction"]) for row in rows]
    counts = confusion_matrix(labels, predictions, labels=list(range(len(class_names))))
    plot(counts, class_names, run.path("confusion_matrix.png"), plt)
    rundir.write_csv(
        run.path("confusion_matrix.csv"),
        [
            {"true_class": name, **dict(zip(class_names, row.tolist()))}
            for name, row in zip(class_names, counts)
        ],
    )
    print(f"wrote {run.path('confusion_matrix.png')} and confusion_matrix.csv")
    for name, row, correct in zip(class_names, counts, counts.diagonal()):
        print(f"{name:>16}: {100.0 * correct / max(row.sum(), 1):6.2f}% of {row.sum()}")
    if cfg.show:
        plt.show()


if __name__ == "__main__":
    main()
