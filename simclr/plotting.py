"""What the plot scripts share: a headless matplotlib backend, the run folder and a check that the
file they draw exists; titles that fit their figure."""

import os
import textwrap
import types
import typing

import matplotlib

from simclr import rundir
from simclr.errors import InputError


class Plots(typing.NamedTuple):
    pyplot: types.ModuleType  # matplotlib.pyplot, after the backend is chosen
    run: rundir.Run  # the stage-one run folder
    evaluation: rundir.Run  # the stage-two evaluation's folder (--evaluation; else the run's)


def open_plots(cfg, needed_file):
    """-> Plots: pyplot, the run folder and the folder of the stage-two evaluation. cfg: a
    config.Plots; needed_file: the file the script draws, in the run folder for stage one's, in
    the evaluation folder for stage two's."""
    if not cfg.show:
        matplotlib.use("Agg")  # headless: works over ssh and in CI
    import matplotlib.pyplot as plt  # after the backend is chosen

    run = rundir.Run(rundir.resolve_run_dir(cfg.run_dir))
    evaluation = rundir.Run(rundir.evaluation_dir(run.dir, cfg.evaluation))
    holder = run if needed_file.startswith("stage1") else evaluation
    if not os.path.isfile(holder.path(needed_file)):
        made_by = rundir.MADE_BY[needed_file]
        raise InputError(f"{holder.path(needed_file)} does not exist: run {made_by} first")
    return Plots(plt, run, evaluation)


# A character of matplotlib's default font is about this wide, in em (DejaVu Sans averages 0.55).
CHARACTER_WIDTH_EM = 0.6


def fitted_title(figure, *lines, fontsize=12):
    """The figure's title: lines, each wrapped to the figure's width, so that a long run name or
    a narrow figure never cuts it off at both ends."""
    per_line = max(20, int(figure.get_figwidth() * 72 / (CHARACTER_WIDTH_EM * fontsize)))
    text = "\n".join(textwrap.fill(line, per_line, break_on_hyphens=False) for line in lines)
    return figure.suptitle(text, fontsize=fontsize)
