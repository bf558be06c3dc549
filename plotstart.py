"""The start the plot scripts share: their flags, a headless matplotlib backend, the run folder and
a check that the file they draw exists."""

import os
import textwrap

import matplotlib

import config
import rundir
from errors import InputError


def open_plots(argv, description, needed_file):
    """-> (cfg, pyplot, run, evaluation): the run folder and the folder of the stage-two
    evaluation (--evaluation; by default the run folder too). description: the script's own
    --help text; needed_file: the file it draws, in the run folder for stage one's, in the
    evaluation folder for stage two's."""
    cfg = config.parse(config.Plots, argv, description)
    if not cfg.show:
        matplotlib.use("Agg")  # headless: works over ssh and in CI
    import matplotlib.pyplot as plt  # after the backend is chosen

    run_needs = "config.json" if cfg.evaluation else needed_file
    run = rundir.Run(rundir.resolve_run_dir(cfg.run_dir, run_needs))
    evaluation = rundir.Run(rundir.evaluation_dir(run.dir, cfg.evaluation))
    holder = run if needed_file.startswith("stage1") else evaluation
    if not os.path.isfile(holder.path(needed_file)):
        made_by = rundir.MADE_BY[needed_file]
        raise InputError(f"{holder.path(needed_file)} does not exist: run {made_by} first")
    return cfg, plt, run, evaluation


# A character of matplotlib's default font is about this wide, in em (DejaVu Sans averages 0.55).
CHARACTER_WIDTH_EM = 0.6


def fitted_title(figure, *lines, fontsize=12):
    """The figure's title: lines, each wrapped to the figure's width, so that a long run name or
    a narrow figure never cuts it off at both ends."""
    per_line = max(20, int(figure.get_figwidth() * 72 / (CHARACTER_WIDTH_EM * fontsize)))
    text = "\n".join(textwrap.fill(line, per_line, break_on_hyphens=False) for line in lines)
    return figure.suptitle(text, fontsize=fontsize)
