"""Plot a run's training curves from its logs.

Reads stage1_log.csv (and stage2_log.csv when stage two has run) of the newest run or --run-dir and
writes stage1_curves.png (loss with the ln(2N-1) chance line, lr, kNN top-1, positive-pair accuracy)
and stage2_curves.png (train and test loss, test top-1 and top-5) into the run folder.

    python visualization.py --run-dir runs/NAME
"""

import json
import math
import os

import errors
import plotstart
import rundir


def column(rows, name):
    """(epochs, values) of a CSV column, skipping rows where it is empty (kNN not measured)."""
    pairs = [(int(row["epoch"]), float(row[name])) for row in rows if row.get(name, "") != ""]
    return [epoch for epoch, _ in pairs], [value for _, value in pairs]


def plot_stage1(rows, run_config, path, plt):
    """run_config: the run's settings from its config.json (batch size, kNN k)."""
    batch_size = run_config["batch_size"]
    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    loss_axes, lr_axes, knn_axes, pair_axes = axes.flat
    loss_axes.plot(*column(rows, "loss"), marker=".", label="NT-Xent loss")
    chance = math.log(2 * batch_size - 1)
    loss_axes.axhline(
        chance,
        linestyle="--",
        color="grey",
        label=f"chance ln(2N-1) = {chance:.2f}, N = {batch_size}",
    )
    loss_axes.set(title="Stage 1 loss", xlabel="epoch", ylabel="loss")
    loss_axes.legend()
    lr_axes.plot(*column(rows, "lr"), marker=".")
    lr_axes.set(title="Learning rate (end of epoch)", xlabel="epoch", ylabel="lr")
    knn_axes.plot(*column(rows, "knn_top1"), marker="o")
    knn_axes.set(
        title=f"kNN top-1 on the test split (k={run_config['knn_k']})",
        xlabel="epoch",
        ylabel="top-1 (%)",
    )
    pair_axes.plot(*column(rows, "pair_accuracy"), marker=".")
    pair_axes.set(
        title="Positive-pair accuracy (positive ranked first of 2N-1)",
        xlabel="epoch",
        ylabel="accuracy (%)",
    )
    for axes_ in axes.flat:
        axes_.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return figure


def plot_stage2(rows, path, plt):
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))
    loss_axes.plot(*column(rows, "train_loss"), marker=".", label="train (augmented)")
    loss_axes.plot(*column(rows, "test_loss"), marker=".", label="test")
    loss_axes.set(title="Stage 2 loss", xlabel="epoch", ylabel="cross-entropy")
    accuracy_axes.plot(*column(rows, "test_top1"), marker=".", label="test top-1")
    accuracy_axes.plot(*column(rows, "test_top5"), marker=".", label="test top-5")
    accuracy_axes.plot(*column(rows, "train_top1"), marker=".", label="train top-1 (augmented)")
    accuracy_axes.set(title="Stage 2 accuracy", xlabel="epoch", ylabel="accuracy (%)")
    for axes_ in (loss_axes, accuracy_axes):
        axes_.legend()
        axes_.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return figure


@errors.one_line_errors
def main(argv=None):
    cfg, plt, run = plotstart.open_plots(argv, __doc__, "stage1_log.csv", "trainstage1.py")
    with open(run.path("config.json")) as file:
        run_config = json.load(file)["config"]
    plot_stage1(
        rundir.read_csv(run.path("stage1_log.csv")), run_config, run.path("stage1_curves.png"), plt
    )
    print(f"wrote {run.path('stage1_curves.png')}")
    if os.path.isfile(run.path("stage2_log.csv")):
        plot_stage2(rundir.read_csv(run.path("stage2_log.csv")), run.path("stage2_curves.png"), plt)
        print(f"wrote {run.path('stage2_curves.png')}")
    else:
        print("no stage2_log.csv yet: run trainstage2.py for the stage-two curves")
    if cfg.show:
        plt.show()


if __name__ == "__main__":
    main()
