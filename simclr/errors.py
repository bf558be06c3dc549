"""The errors a script ends with, and the one place that turns them into a line and an exit status.

Library functions raise; only a script's main, wrapped in one_line_errors, prints and exits. So a
test, a notebook or another script can catch any of these as an ordinary exception.
"""

import errno
import functools
import os
import signal
import sys

from tqdm import tqdm


class InputError(Exception):
    """Bad input or a failure the user can fix (a missing folder, an image that does not decode, a
    loss that became NaN): the script ends with `error: MESSAGE` on stderr and exit status 2.
    May be raised in a DataLoader worker, which re-raises it in the main process."""

    exit_code = 2

    def __init__(self, message, on_every_rank=False):
        """on_every_rank: under torchrun, every rank raises this same error (a setting, a loss
        all ranks share), so only rank 0 prints it."""
        super().__init__(message)
        self.on_every_rank, self.reported = on_every_rank, False

    def report(self):
        """Print the error line now, once: one_line_errors then prints it no more."""
        if not self.reported:
            print_below_progress(self.line(), sys.stderr)
            self.reported = True

    def line(self):
        # A DataLoader worker re-raises it with the worker's traceback in the message: the
        # original message is its last line, after "module.InputError: ".
        message = str(self).strip().splitlines()[-1]
        kind = type(self)
        prefix = f"{kind.__module__}.{kind.__qualname__}: "
        return f"error: {message.removeprefix(prefix)}"


class UsageError(InputError):
    """A bad command-line flag, worded as argparse words it: `PROG: error: ... (see --help)`.
    Every rank parses the same command line."""

    def __init__(self, message):
        super().__init__(message, on_every_rank=True)

    def line(self):
        return str(self)


class Stopped(Exception):
    """A stop signal was honoured: the message goes to stdout, the exit status is 128 + signal,
    the shell's convention for a process ended by a signal."""

    def __init__(self, message, signal_number):
        super().__init__(message)
        self.exit_code = 128 + signal_number


def exit_status(call):
    """call(), a script's main as `python SCRIPT` would run it, in this process -> the exit
    status the process would have ended with (0 when main returns)."""
    try:
        call()
    except SystemExit as exit_info:
        code = exit_info.code
        return code if isinstance(code, int) else int(code is not None)
    return 0


def print_below_progress(line, file):
    tqdm.write(line, file=file)  # on its own line, below any progress bar


def one_line_errors(main):
    """Wrap a script's main: an InputError becomes one `error:` line on stderr and exit status 2,
    a Stopped (or a Ctrl-C outside a stop handler) its message on stdout and exit status
    128 + signal, and a non-zero number that main returns the exit status.

    Under torchrun, what every rank meets alike (a stop, a setting, a Ctrl-C) is printed by rank 0
    alone; an error that one rank meets on its own (an image in its shard) by that rank."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        main_rank = os.environ.get("RANK", "0") == "0"  # torchrun sets RANK
        try:
            exit_code = main(*args, **kwargs)
        except InputError as error:
            if main_rank or not error.on_every_rank:
                error.report()
            # Its traceback is never shown, and one re-raised from a DataLoader worker holds the
            # loader's iterator in a reference cycle: freed by the garbage collector later, its
            # workers wait 5 s each to end (bench/dataloader_error_wait.py), where dropping the
            # traceback here frees the iterator, and ends them, at once.
            error.__traceback__ = None
            raise SystemExit(error.exit_code) from None
        except Stopped as stop:
            if main_rank:
                print_below_progress(f"\n{stop}", sys.stdout)
            raise SystemExit(stop.exit_code) from None
        except OSError as error:
            if error.errno != errno.ENAMETOOLONG:
                raise
            print_below_progress(
                f"error: {error.filename}: a name in this path is longer than the file system "
                f"allows: pass a shorter one",
                sys.stderr,
            )
            raise SystemExit(InputError.exit_code) from None
        except KeyboardInterrupt:  # Ctrl-C where no stop handler runs: start-up, a second Ctrl-C
            if main_rank:
                print_below_progress(
                    "\nstopped by SIGINT at once (during start-up, or a second Ctrl-C): nothing "
                    "new was saved; the files already written are complete",
                    sys.stdout,
                )
            raise SystemExit(128 + signal.SIGINT) from None
        if exit_code:
            raise SystemExit(exit_code)

    return wrapped
