"""Plot a run's training curves from its logs.

Reads stage1_log.csv (and stage2_log.csv when stage two has run) of the newest run or --run-dir and
writes stage1_curves.png (loss with the ln(2N-1) chance line, the lr schedule step by step, kNN
top-1, positive-pair accuracy with its chance line; the run's name and key settings on top) and
stage2_curves.png (train and test loss, test top-1 and top-5, chance) into the run folder, or into
the folder of --evaluation. When the run holds stage-two evaluations with few labels or other modes
(trainstage2.py --mode, --labels-per-class), it also writes label_efficiency.png (test top-1 against
labelled images per class for each mode: linear, finetune, scratch, distill, and the modes from a
head layer) and prints the same as a table.

    python visualization.py --run-dir runs/NAME
"""

import math
import os
import typing

import matplotlib.transforms
from matplotlib import ticker

import config
from simclr import checkpoints, errors
from simclr import optimizers
from simclr import plotting
from simclr import rundir

STAGE_ONE_CURVES = "stage1_curves.png"  # in the run folder
LABEL_EFFICIENCY = "label_efficiency.png"  # in the run folder, when it holds evaluations
# The log columns the curves draw (numbers, or empty where not measured that epoch)
STAGE_ONE_COLUMNS = ("epoch", "loss", "lr", "pair_accuracy", "knn_top1")
STAGE_TWO_COLUMNS = ("epoch", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5")


def column(rows, name):
    """(epochs, values) of a CSV column, skipping rows where it is empty (kNN not measured)."""
    pairs = [(int(row["epoch"]), float(row[name])) for row in rows if row.get(name, "") != ""]
    return [epoch for epoch, _ in pairs], [value for _, value in pairs]


def by_whole_epochs(axes, epochs):
    """Integer epoch ticks over the whole run on every panel, so that a panel with one point
    (a kNN measured once) shows it at its epoch instead of spanning 1.9-2.1."""
    for axes_ in axes:
        axes_.set_xlim(0, epochs + 0.5)
        axes_.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        axes_.grid(alpha=0.3)


def plot_stage1(rows, run, run_dir, path, plt):
    """run: the run's config.json (rundir.RunRecord: its settings and the lr schedule's derived
    values); run_dir: its folder."""
    settings, derived = run.config, run.derived
    batch_size, epochs = settings["batch_size"], settings["epochs"]
    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    loss_axes, lr_axes, knn_axes, pair_axes = axes.flat
    loss_axes.plot(*column(rows, "loss"), marker=".", label="NT-Xent loss")
    chance = math.log(2 * batch_size - 1)
    loss_axes.axhline(chance, linestyle="--", color="grey", label=f"chance ln(2N-1) = {chance:.2f}")
    loss_axes.set(title="Stage 1 loss (mean over the epoch)", xlabel="epoch", ylabel="loss")
    loss_axes.legend()
    steps = derived["steps_per_epoch"]
    lr_at = optimizers.schedule(derived["peak_lr"], epochs, steps, derived["warmup_epochs"])
    step_epochs = [(step + 1) / steps for step in range(epochs * steps)]
    lr_axes.plot(step_epochs, [lr_at(step) for step in range(epochs * steps)], label="schedule")
    lr_axes.plot(*column(rows, "lr"), "o", label="logged (last step of the epoch)")
    lr_axes.set(title="Learning rate, every step", xlabel="epoch", ylabel="lr")
    lr_axes.legend()
    knn_axes.plot(*column(rows, "knn_top1"), marker="o", label="kNN top-1")
    knn_chance = 100 / derived["classes"]
    knn_axes.axhline(
        knn_chance, linestyle="--", color="grey", label=f"chance 1/classes = {knn_chance:.3g}%"
    )
    queries = derived["knn_queries"]
    knn_axes.set(
        title=f"kNN top-1 on {queries:,} test images (k={settings['knn_k']})",
        xlabel="epoch",
        ylabel="top-1 (%)",
        ylim=(0, 100),
    )
    knn_axes.legend()
    pair_axes.plot(*column(rows, "pair_accuracy"), marker=".", label="pair accuracy")
    pair_chance = 100 / (2 * batch_size - 1)
    pair_axes.axhline(
        pair_chance, linestyle="--", color="grey", label=f"chance 1/(2N-1) = {pair_chance:.2g}%"
    )
    pair_axes.set(
        title="Positive ranked first of 2N-1",
        xlabel="epoch",
        ylabel="accuracy (%)",
        ylim=(0, 100),
    )
    pair_axes.legend()
    by_whole_epochs(axes.flat, epochs)
    subset = f"{settings['subset']:,} images" if settings["subset"] else "all images"
    plotting.fitted_title(
        figure,
        f"{rundir.run_name(run_dir)}: {settings['arch']} on "
        f"{settings['dataset']} ({subset}), batch N = {batch_size}, {epochs} epochs, "
        f"{settings['optimizer']} peak lr {derived['peak_lr']:.3g}, tau {settings['temperature']}",
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return figure


def shown_checkpoint(path):
    """RUN/FILE: a full path does not fit in a title."""
    return os.path.join(rundir.run_name(os.path.dirname(path)), os.path.basename(path))


def plot_stage2(rows, results, path, plt, teacher_note=""):
    """results: the evaluation's rundir.Results (None while stage two has not finished);
    teacher_note: what a distillation's title adds after its teacher's name
    (checkpoints.teacher_note)."""
    mode = config.STAGE_TWO_MODES[results.mode] if results else None
    augmented = results and (
        results.protocol in ("per-step", "distill") or results.augmented_passes
    )
    train = "train (crop + flip)" if augmented else "train (plain images)"
    train_top1 = f"{train} top-1"
    if mode and mode.from_teacher:  # the student's loss and top-1 are against the teacher
        train, train_top1 = f"{train}: distillation loss", f"{train}: agrees with the teacher"
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4.5))
    loss_axes.plot(*column(rows, "train_loss"), marker=".", label=train)
    validated = any(row.get("val_top1", "") != "" for row in rows)
    if validated:  # the held-out training images, measured through the run; the test split once
        loss_axes.plot(*column(rows, "val_loss"), marker=".", label="validation (held out)")
        accuracy_axes.plot(*column(rows, "val_top1"), marker=".", label="validation top-1")
    # measured once, at the end: a star a reader sees beside the curves, not a dot under them
    test = {"marker": "*", "markersize": 12} if validated else {"marker": "."}
    once = " (once, at the end)" if validated else ""
    loss_axes.plot(*column(rows, "test_loss"), **test, label=f"test{once}")
    loss_axes.set(title="Stage 2 loss", xlabel="epoch", ylabel="cross-entropy")
    accuracy_axes.plot(*column(rows, "test_top1"), **test, label=f"test top-1{once}")
    accuracy_axes.plot(*column(rows, "test_top5"), **test, label=f"test top-5{once}")
    accuracy_axes.plot(*column(rows, "train_top1"), marker=".", label=train_top1)
    if results:
        chance = 100 / len(results.class_names)
        accuracy_axes.axhline(
            chance, linestyle="--", color="grey", label=f"chance top-1 = {chance:.3g}%"
        )
    accuracy_axes.set(
        title="Stage 2 accuracy", xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100)
    )
    for axes_ in (loss_axes, accuracy_axes):
        axes_.legend()
    by_whole_epochs((loss_axes, accuracy_axes), max(int(row["epoch"]) for row in rows))
    if results:
        trained = results.stage1_trained or f"epoch {results.stage1_epoch}"
        source = (
            "from random weights"
            if not mode.pretrained
            else f"of {shown_checkpoint(results.stage1_checkpoint)} ({trained})"
        )
        if results.teacher:
            source += f", taught by {results.teacher}{teacher_note}"
        counted = f", {results.labelled:,} labels" if results.labelled else ""
        plotting.fitted_title(
            figure,
            f"{results.kind} evaluation {source}{counted}: test top-1 {results.top1:.2f}%",
        )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return figure


def stage_one_weights(run):
    """The digest of the run's stage-one weights now, or None where it has no checkpoint."""
    path = run.path(rundir.STAGE_ONE_FILE)
    return checkpoints.read_stage_one(path, run.dir).weights if os.path.isfile(path) else None


class LabelPoint(typing.NamedTuple):
    """One evaluation on label_efficiency.png: what it scored and what makes it comparable."""

    per_class: float  # labelled training images per class
    top1: float
    epochs: int
    steps: int
    all_labels: bool  # trained on every training image of the run's subset


def made_on(result, stage_one_weights):
    """'' where an evaluation (rundir.Results) was made on stage_one_weights, the digest of the
    run's stage-one checkpoint now, or on none (from random weights), or where that is not known
    (stage_one_weights None); else which weights it was made on, in words."""
    if stage_one_weights is None or not config.STAGE_TWO_MODES[result.mode].pretrained:
        return ""
    inputs = (result.provenance or {}).get("inputs", {})
    if "stage1_weights" not in inputs:
        return "stage-one weights not recorded"
    if inputs["stage1_weights"] == stage_one_weights:
        return ""
    return f"on other stage-one weights, {inputs.get('stage1_trained')}"


def label_efficiency(results, stage_one_weights=None):
    """{(mode, schedule, stage one): [LabelPoint, ...]} from evaluations' results.json, one series
    per mode (Results.kind: finetune from head layer 1 is a mode of its own), schedule rule
    (config.stage_two_schedule_rule) and the stage-one weights it was made on (made_on: '' for
    stage_one_weights, those of the run's checkpoint now), in config.MODES order: an evaluation
    trained with --epochs 2, or on a stage one that has trained on since, is never drawn on one
    line with those trained on the mode's own schedule and the run's weights."""
    curves, mode_order = {}, {}
    for result in results:
        if result.labelled is None:  # results.json from before the number of labels was recorded
            continue
        schedule = result.schedule or f"{result.epochs} epochs"  # before the rule was recorded
        point = LabelPoint(
            result.labelled / len(result.class_names),
            result.top1,
            result.epochs,
            result.steps,
            result.labelled == result.training_images,
        )
        mode_order[result.kind] = config.MODES.index(result.mode)
        key = (result.kind, schedule, made_on(result, stage_one_weights))
        curves.setdefault(key, []).append(point)
    order = sorted(curves, key=lambda key: (mode_order[key[0]], *key))
    return {key: sorted(curves[key]) for key in order}


def series_names(curves):
    """{(mode, schedule, stage one): its legend and column name}: the mode, with its schedule
    where it has several, and the stage-one weights where they are not the run's now."""
    schedules = {}
    for mode, schedule, _ in curves:
        schedules.setdefault(mode, set()).add(schedule)
    names = {}
    for mode, schedule, stage_one in curves:
        said = [schedule] * (len(schedules[mode]) > 1) + [stage_one] * bool(stage_one)
        names[(mode, schedule, stage_one)] = f"{mode} ({'; '.join(said)})" if said else mode
    return names


def label_counts(curves):
    """The x positions, each with whether some evaluation there had all the labels."""
    counts = {}
    for points in curves.values():
        for point in points:
            counts[point.per_class] = counts.get(point.per_class, False) or point.all_labels
    return dict(sorted(counts.items()))


# Where a point's number goes, tried in this order (offsets in points, alignment): the first place
# that covers no marker, no other number and stays inside the axes wins.
NUMBER_PLACES = [
    (0, 6, "center", "bottom"), (0, -6, "center", "top"), (7, 0, "left", "center"),
    (-7, 0, "right", "center"), (7, 6, "left", "bottom"), (-7, 6, "right", "bottom"),
    (7, -6, "left", "top"), (-7, -6, "right", "top"), (0, 18, "center", "bottom"),
    (0, -18, "center", "top"), (20, 0, "left", "center"), (-20, 0, "right", "center"),
]  # fmt: skip
MARKER_SIZE = 6  # points, matplotlib's default


def place_numbers(figure, axes, placed_points):
    """Annotate each (x, y, text, colour) beside its marker where it covers no marker and no
    other number (the least covered place where none is free) -> the annotations."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    radius = MARKER_SIZE / 2 * figure.dpi / 72 + 1
    markers = []
    for x, y, _, _ in placed_points:
        centre_x, centre_y = axes.transData.transform((x, y))
        markers.append(
            matplotlib.transforms.Bbox.from_extents(
                centre_x - radius, centre_y - radius, centre_x + radius, centre_y + radius
            )
        )
    inside, taken, annotations = axes.get_window_extent(renderer), [], []

    def covered(box):
        area = sum(overlap(box, other) for other in markers + taken)
        return area + (0 if inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1)
                       else box.width * box.height)  # fmt: skip

    for x, y, text, colour in placed_points:
        best = None
        for dx, dy, ha, va in NUMBER_PLACES:
            annotation = axes.annotate(
                text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va,
                fontsize=7, color=colour,
            )  # fmt: skip
            box = annotation.get_window_extent(renderer)
            cost = covered(box)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, annotation, box)
            else:
                annotation.remove()
            if cost == 0:
                break
        taken.append(best[2])
        annotations.append(best[1])
    return annotations


def overlap(first, second):
    width = min(first.x1, second.x1) - max(first.x0, second.x0)
    height = min(first.y1, second.y1) - max(first.y0, second.y0)
    return max(width, 0) * max(height, 0)


def plot_label_efficiency(curves, classes, title, path, plt):
    """Test top-1 against labelled images per class: a line per mode and schedule, each number
    with its epochs, "all" under a label count where the evaluation had every label."""
    figure, axes = plt.subplots(figsize=(8, 5))
    names, numbers = series_names(curves), []
    for key, points in curves.items():
        xs, ys = [point.per_class for point in points], [point.top1 for point in points]
        line = axes.plot(xs, ys, marker="o", markersize=MARKER_SIZE, label=names[key])[0]
        numbers += [
            (point.per_class, point.top1, f"{point.top1:.1f}, {point.epochs} ep", line.get_color())
            for point in points
        ]
    chance = 100 / classes
    axes.axhline(chance, linestyle="--", color="grey", label=f"chance = {chance:.3g}%")
    axes.set_xscale("log")
    counts = label_counts(curves)
    ticks = [f"{count:g}\n(all)" if every else f"{count:g}" for count, every in counts.items()]
    axes.set_xticks(list(counts), ticks)  # the label counts, not powers of 10
    axes.xaxis.set_minor_formatter(ticker.NullFormatter())
    low, high = min(counts), max(counts)
    axes.set_xlim(low / 1.6, high * 1.6)  # room for the numbers beside the outer points
    axes.set(xlabel="labelled training images per class", ylabel="test top-1 (%)", ylim=(0, 100))
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8, loc="upper left")
    plotting.fitted_title(figure, f"{title}: label efficiency (each number: test top-1 %, epochs)")
    figure.tight_layout()
    place_numbers(figure, axes, numbers)
    figure.savefig(path, dpi=120)
    return figure


def label_efficiency_table(curves):
    """The plot's numbers as text: a row per number of labels ("(all)": every label), a column
    per mode and schedule, each cell the test top-1 with its epochs and steps."""
    names = series_names(curves)
    lines = ["labels per class | " + " | ".join(names[key] for key in curves)]
    for count, every in label_counts(curves).items():
        cells = [
            next(
                (f"{p.top1:.2f} ({p.epochs} ep, {p.steps} steps)" for p in points
                 if p.per_class == count),
                "-",
            )
            for points in curves.values()
        ]  # fmt: skip
        lines.append(f"{count:g}{' (all)' if every else ''} | " + " | ".join(cells))
    return "\n".join(lines)


@errors.one_line_errors
def main(argv=None):
    cfg = config.parse(config.Plots, argv, __doc__)
    plt, run, evaluation = plotting.open_plots(cfg, rundir.STAGE_ONE_LOG)
    stage1_rows = rundir.read_table(run.path(rundir.STAGE_ONE_LOG), STAGE_ONE_COLUMNS)
    plot_stage1(stage1_rows, rundir.read_run(run.dir), run.dir, run.path(STAGE_ONE_CURVES), plt)
    print(f"wrote {run.path(STAGE_ONE_CURVES)}")
    if os.path.isfile(evaluation.path(rundir.STAGE_TWO_LOG)):
        results = rundir.results_in(evaluation.dir)
        stage2_rows = rundir.read_table(evaluation.path(rundir.STAGE_TWO_LOG), STAGE_TWO_COLUMNS)
        note = checkpoints.teacher_note(run.dir, results) if results else ""
        plot_stage2(stage2_rows, results, evaluation.path(rundir.STAGE_TWO_CURVES), plt, note)
        print(f"wrote {evaluation.path(rundir.STAGE_TWO_CURVES)}")
    elif rundir.evaluation_names(run.dir) and not cfg.evaluation:
        names = ", ".join(rundir.evaluation_names(run.dir))
        print(
            f"no {rundir.STAGE_TWO_LOG} in {run.dir}: for the stage-two curves of an evaluation "
            f"in its evaluations/ ({names}), pass --evaluation NAME"
        )
    else:
        print(f"no {rundir.STAGE_TWO_LOG} yet: run trainstage2.py for the stage-two curves")
    results = [results for _, results in rundir.evaluation_results(run.dir)]
    if os.path.isdir(run.path(rundir.EVALUATIONS)) and results:
        curves = label_efficiency(results, stage_one_weights(run))
        path = run.path(LABEL_EFFICIENCY)
        plot_label_efficiency(
            curves, len(results[0].class_names), rundir.run_name(run.dir), path, plt
        )
        print(f"wrote {path}; test top-1 (%):\n{label_efficiency_table(curves)}")
        marked = sorted({stage_one for _, _, stage_one in curves if stage_one})
        if marked:
            print(
                f"note: some evaluations were not made on the run's {rundir.STAGE_ONE_FILE} as it "
                f"is now ({'; '.join(marked)}): drawn as lines of their own"
            )
    if cfg.show:
        plt.show()
    plt.close("all")  # main may be called again in this process (a notebook, the tests)


if __name__ == "__main__":
    main()
