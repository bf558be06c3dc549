"""Where a test's time goes: a pytest plugin that logs, for each test, its wall time, the CPU time
of its process and of the children it waited for, the blocks it wrote and the machine's steal
time, one line per test in SUITE_ACCOUNTING_DIR/WORKER.log (one file per pytest-xdist worker).
A test whose wall time is far above its CPU time was waiting, not working.

    SUITE_ACCOUNTING_DIR=/tmp/accounting PYTHONPATH=bench python -m pytest -q -p suite_accounting tests
"""

import os
import resource
import time

import pytest


def _usage():
    """-> (own CPU s, waited-for children's CPU s, blocks written), blocks of 512 bytes."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return (
        own.ru_utime + own.ru_stime,
        children.ru_utime + children.ru_stime,
        own.ru_oublock + children.ru_oublock,
    )


def _steal_ticks():
    """The machine's steal time so far, in clock ticks (/proc/stat's eighth CPU column)."""
    with open("/proc/stat") as stat:
        return int(stat.readline().split()[8])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Around one test's setup, call and teardown, in the process that runs it."""
    started, usage, steal = time.time(), _usage(), _steal_ticks()
    result = yield
    own, children, blocks = (now - then for now, then in zip(_usage(), usage))
    folder = os.environ.get("SUITE_ACCOUNTING_DIR", "suite-accounting")
    os.makedirs(folder, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(folder, f"{worker}.log"), "a") as log:
        log.write(
            f"{item.nodeid} started={started:.2f} wall={time.time() - started:.2f} "
            f"own_cpu={own:.2f} children_cpu={children:.2f} written_mb={blocks * 512 / 2**20:.0f} "
            f"steal_s={(_steal_ticks() - steal) / os.sysconf('SC_CLK_TCK'):.2f}\n"
        )
    return result
