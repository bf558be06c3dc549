"""The start the plot scripts share: their flags, a headless matplotlib backend, the run folder and
a check that the file they draw exists."""

import os

import matplotlib

import config
import rundir
from errors import InputError


def open_plots(argv, description, needed_file):
    """-> (cfg, pyplot, run). description: the script's own --help text; needed_file: the run
    file it draws."""
    cfg = config.parse(config.Plots, argv, description)
    if not cfg.show:
        matplotlib.use("Agg")  # headless: works over ssh and in CI
    import matplotlib.pyplot as plt  # after the backend is chosen

    run = rundir.Run(rundir.resolve_run_dir(cfg.run_dir, needed_file))
    if not os.path.isfile(run.path(needed_file)):
        made_by = rundir.MADE_BY[needed_file]
        raise InputError(f"{run.path(needed_file)} does not exist: run {made_by} first")
    return cfg, plt, run
