"""sweep.png in the style of the paper's figures: lines over one numeric setting (temperature,
colour strength), bars for the groups of one or two settings (batch x epochs, the head), a
matrix for pairs of augmentation ops; the paper's numbers beside ours where it gives them. It
reads sweep.csv's rows and draws the points that are done, each with its standard error over its
seeds where it ran at several."""

import numpy as np

from simclr import plotting

PAPER_COLOUR = "0.55"


def is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def number(row, column):
    return float(row[column]) if row.get(column, "") != "" else np.nan


def error(row, column):
    """The standard error of a figure over its seeds: 0 where it ran at one seed."""
    spread = number(row, f"{column}_se")
    return 0.0 if np.isnan(spread) else spread


def draw(pyplot, rows, keys, kind, preset, title, chance=None):
    """-> the figure. rows: sweep.csv's (every point, done or not); keys: the grid's settings in
    order; kind: lines, bars or matrix; preset: its features, paper numbers and finding, or None
    (a --grid); title: the first line (the sweep, the scale, the dataset); chance: the top-1 of
    guessing (%), drawn as a line the axis always reaches, so that a gap of a point or two is
    seen beside the whole range rather than zoomed into a trend."""
    done = [row for row in rows if row["status"] == "done"]
    missing = [row["point"] for row in rows if row["status"] != "done"]
    figure, axes = pyplot.subplots(figsize=(7.5, 4.8))
    features = preset.features if preset else ("h",)
    if kind == "lines":
        draw_lines(axes, rows, keys, features, preset)
    elif kind == "matrix":
        draw_matrix(figure, axes, done, rows)
    else:
        draw_bars(axes, done, keys, features)
    if chance is not None and kind != "matrix":
        axes.axhline(chance, linestyle=":", color="grey", label=f"chance, {chance:.3g}%")
        low, high = axes.get_ylim()
        axes.set_ylim(min(low, chance - 2), max(high, chance + 2))
        axes.legend(fontsize=7)
    lines = [title]
    if preset and preset.finding:
        lines.append(preset.finding)
    if missing:
        shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        lines.append(f"{len(missing)} of {len(rows)} points missing (not drawn): {shown}")
    plotting.fitted_title(figure, *lines, fontsize=10)
    figure.tight_layout()
    return figure


def draw_lines(axes, rows, keys, features, preset):
    """Linear and kNN top-1 over the first key; a point with more settings (colour 1 + blur) as a
    star at its first key's value; the paper's numbers in grey, drawn the same way."""
    key = keys[0]
    done = [row for row in rows if row["status"] == "done"]
    alone = [row for row in done if all(row[other] == "" for other in keys[1:])]
    alone.sort(key=lambda row: float(row[key]))
    starred = [row for row in done if row not in alone]
    for which in features:
        for kind, style in (("linear", "-o"), ("knn", "--s")):
            column, label = f"{kind}_{which}_top1", f"{kind} on {which}"
            line = axes.errorbar(
                [float(r[key]) for r in alone],
                [number(r, column) for r in alone],
                yerr=[error(r, column) for r in alone],
                fmt=style,
                capsize=3,
                label=label,
            )
            for row in starred:
                axes.errorbar(
                    float(row[key]),
                    number(row, column),
                    yerr=error(row, column),
                    fmt="*",
                    capsize=3,
                    color=line.lines[0].get_color(),
                    markersize=12,
                    label=f"{label}, {row['point']}",
                )
    if preset and preset.paper:
        by_name = {row["point"]: row for row in rows}
        named = [(by_name[name], value) for name, value in preset.paper.items()]
        on_line = [(row, value) for row, value in named if all(row[k] == "" for k in keys[1:])]
        axes.plot(
            [float(r[key]) for r, _ in on_line],
            [v for _, v in on_line],
            ":^",
            color=PAPER_COLOUR,
            label=preset.paper_label,
        )
        for row, value in named:
            if (row, value) not in on_line:
                axes.plot(
                    float(row[key]),
                    value,
                    "*",
                    color=PAPER_COLOUR,
                    markersize=12,
                    label=f"{preset.paper_label}, {row['point']}",
                )
    values = sorted({float(row[key]) for row in rows})
    if values and min(values) > 0:
        axes.set_xscale("log")
        axes.set_xticks(values, [f"{value:g}" for value in values])
        axes.minorticks_off()
    axes.set_xlabel(key.replace("_", " "))
    axes.set_ylabel("top-1 (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)


def draw_bars(axes, done, keys, features):
    """One group per value of the first key; in it one bar per value of the second key (linear
    top-1 on h), or with one key one bar per feature (linear top-1) with kNN as dots."""
    groups = list(dict.fromkeys(row[keys[0]] for row in done))
    if len(keys) > 1:
        series = [(value, keys[1], "h") for value in dict.fromkeys(row[keys[1]] for row in done)]
    else:
        series = [(None, None, which) for which in features]
    width = 0.8 / max(1, len(series))
    for index, (value, second_key, which) in enumerate(series):
        heights, errors, knn, knn_errors = [], [], [], []
        for group in groups:
            row = next(
                (
                    r
                    for r in done
                    if r[keys[0]] == group and (value is None or r[second_key] == value)
                ),
                None,
            )
            heights.append(number(row, f"linear_{which}_top1") if row else np.nan)
            errors.append(error(row, f"linear_{which}_top1") if row else 0.0)
            knn.append(number(row, f"knn_{which}_top1") if row else np.nan)
            knn_errors.append(error(row, f"knn_{which}_top1") if row else 0.0)
        xs = np.arange(len(groups)) + (index - (len(series) - 1) / 2) * width
        label = (
            f"{second_key.replace('_', ' ')} {value}" if value is not None else f"linear on {which}"
        )
        bars = axes.bar(xs, heights, width, yerr=errors, capsize=3, label=label)
        axes.bar_label(bars, fmt="%.1f", fontsize=7)
        if value is None:
            marker = "o" if which == "h" else "D"
            axes.errorbar(
                xs, knn, yerr=knn_errors, fmt=marker, color="black", markersize=4, capsize=2,
                label=f"kNN on {which}",
            )  # fmt: skip
    axes.set_xticks(np.arange(len(groups)), groups)
    axes.set_xlabel(keys[0].replace("_", " "))
    axes.set_ylabel("linear top-1 (%)" if len(keys) > 1 else "top-1 (%)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)


def draw_matrix(figure, axes, done, rows):
    """Linear top-1 on h of each pair of ops (the diagonal: one op alone), as Figure 5."""
    ops = list(dict.fromkeys(op for row in rows for op in row["augment"].split("+")))
    cells, errors = np.full((len(ops), len(ops)), np.nan), np.zeros((len(ops), len(ops)))
    for row in done:
        pair = row["augment"].split("+")
        first, second = ops.index(pair[0]), ops.index(pair[-1])
        cells[first, second] = cells[second, first] = number(row, "linear_h_top1")
        errors[first, second] = errors[second, first] = error(row, "linear_h_top1")
    image = axes.imshow(cells, cmap="viridis")
    for i in range(len(ops)):
        for j in range(len(ops)):
            spread = f"\n±{errors[i, j]:.1f}" if errors[i, j] else ""
            text = "missing" if np.isnan(cells[i, j]) else f"{cells[i, j]:.1f}{spread}"
            axes.text(j, i, text, ha="center", va="center", color="white", fontsize=8)
    axes.set_xticks(range(len(ops)), ops)
    axes.set_yticks(range(len(ops)), ops)
    axes.set_xlabel("2nd op (one branch)")
    axes.set_ylabel("1st op")
    figure.colorbar(image, ax=axes, label="linear top-1 on h (%)")
