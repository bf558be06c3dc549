"""trainstage1.py for torchrun, with one rank interrupting the run when its step STEP begins:
`interrupting_stage1.py RANK STEP ACTION ARGS...`. ACTION sigterm-launcher: send torchrun (the
parent process) SIGTERM, as a cluster's preemption does, and carry on once torchrun has forwarded
it here; kill: die by SIGKILL at once, as a crashed node does. The moment is an event, a step, not
a time: tests/test_torchrun.py runs it."""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simclr import runtime  # noqa: E402
import trainstage1  # noqa: E402

FORWARD_POLL_S = 0.01  # how often to look whether torchrun's forwarded SIGTERM has arrived


def interrupt_at(rank, step, action):
    stop_signals, steps = [], [0]
    enter, train_step = runtime.StopSignal.__enter__, trainstage1.train_step

    def entered(stop):
        stop_signals.append(stop)
        return enter(stop)

    def stepped(*args):
        steps[0] += 1
        if steps[0] == step and int(os.environ["RANK"]) == rank:
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            os.kill(os.getppid(), signal.SIGTERM)
            while stop_signals[-1].received is None:  # torchrun forwards it to every rank
                time.sleep(FORWARD_POLL_S)
        return train_step(*args)

    runtime.StopSignal.__enter__ = entered
    trainstage1.train_step = stepped


if __name__ == "__main__":
    interrupt_at(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
    trainstage1.main(sys.argv[4:])
