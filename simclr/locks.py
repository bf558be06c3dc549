"""The lock that lets one stage two at a time run on a run folder: the operating system's lock on a
file in it, which ends with the process that holds it however that process ends, so a stage two
that was killed leaves no lock in the way."""

import contextlib
import datetime
import os
import socket

from simclr.errors import InputError

STAGE_TWO_LOCK = ".stage2.lock"  # in a run folder: held by the stage two that runs on it


@contextlib.contextmanager
def stage_two_lock(run_dir):
    """Hold run_dir's stage-two lock while the block runs: a second stage two on the same run
    folder meanwhile is refused in one line, before it writes anything. The lock is the operating
    system's on a file in the run folder, which ends with the process that holds it however it
    ends: the file a killed stage two leaves is no lock. The file says who holds it, and goes when
    the block ends."""
    path = os.path.join(run_dir, STAGE_TWO_LOCK)
    descriptor = locked_file(path)
    if descriptor is None:
        try:
            with open(path) as file:
                holder = file.read(200).strip()
        except OSError:
            holder = ""
        raise InputError(
            f"{run_dir} is in use by another trainstage2.py ({holder or 'a process'}): one stage "
            f"two runs on a run folder at a time: wait for that one to end, or stop it"
        )
    started = datetime.datetime.now().isoformat(timespec="seconds")
    os.write(descriptor, f"pid {os.getpid()} on {socket.gethostname()}, since {started}".encode())
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # while still held: the next one makes a new file
            os.remove(path)
        os.close(descriptor)  # the lock ends with its file descriptor


def locked_file(path):
    """A descriptor of the file at path, created if need be, holding the operating system's
    exclusive lock on it; None where another process holds it. A file that was removed (its
    holder ended) between opening and locking it is opened again."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not lock(descriptor):
            os.close(descriptor)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                os.ftruncate(descriptor, 0)
                return descriptor
        except FileNotFoundError:
            pass
        os.close(descriptor)  # locked a file no longer at path: try the one there now


def lock(descriptor):
    """Take the operating system's exclusive lock of an open file without waiting -> whether it
    was free."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
