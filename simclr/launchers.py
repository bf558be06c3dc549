"""Running a sweep's points as jobs (sweep.py): submitit's local and SLURM launchers, the record of
the job that is making a point and whether it still runs (a process of this machine, or sacct's
state of a SLURM job), and a script run by its own command line with its output in the point's log.
What a job runs is the sweep's (simclr/sweeps.py's run_point), handed to the launchers here.
"""

import contextlib
import dataclasses
import os
import runpy
import shlex
import signal
import socket
import subprocess
import sys

from simclr import errors, rundir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where the scripts are
LAUNCHER_DIR = "submitit"  # the job engine's own files (pickled jobs, their stdout and stderr)
JOB_FILE = "sweep_job.json"  # in a point's run folder: the job that is making it, while it runs
# What to do about a damaged job record (rundir.damaged)
REMAKE_JOB = "remove it once its job has ended, and run the sweep again"

# SLURM's states of a job that is queued or running (sacct's State column)
SLURM_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED"}
SLURM_ACTIVE |= {"RESIZING", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


def record_job(job, launcher, job_id):
    """Note in the point's folder which job is making it and what it makes (job: its Job), so that
    a second call of the sweep neither launches another job on the same folder while this one is
    queued or running, nor takes the point for one of other settings."""
    os.makedirs(job.point.run_dir, exist_ok=True)
    record = {"launcher": launcher, "job_id": str(job_id), "host": socket.gethostname()}
    record |= {"stage_one": job.stage_one, "measure": job.measure}
    rundir.write_json(os.path.join(job.point.run_dir, JOB_FILE), record)


def job_of(point):
    """The point's job record (record_job's), or None; a damaged one is named in one line."""
    path = os.path.join(point.run_dir, JOB_FILE)
    if not os.path.isfile(path):
        return None
    job = rundir.read_json(path, REMAKE_JOB)
    if not all(isinstance(job.get(key), str) for key in ("launcher", "job_id", "host")):
        raise rundir.damaged(path, "its launcher, job_id or host is missing", REMAKE_JOB)
    if not isinstance(job.get("stage_one", {}), dict):
        raise rundir.damaged(path, f"its stage_one is {job['stage_one']!r}", REMAKE_JOB)
    return job


def process_alive(pid):
    """Whether a process of this machine runs (a zombie, finished but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): whether a signal could reach it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def slurm_state(job_id):
    """sacct's state of a SLURM job, or None where sacct cannot tell."""
    try:
        done = subprocess.run(
            ["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    states = done.stdout.split()
    return states[0].split()[0] if done.returncode == 0 and states else None


def running_job(point):
    """-> how the job that is making the point runs ("SLURM job 12 is PENDING"), or None when no
    job of this sweep is queued or running for it. A SLURM job whose state cannot be read counts
    as running: launching a second one on its folder could spoil both."""
    job = job_of(point)
    if job is None:
        return None
    if job["launcher"] == "local":
        here = job["host"] == socket.gethostname()
        alive = here and job["job_id"].isdigit() and process_alive(int(job["job_id"]))
        return f"local job {job['job_id']} is running" if alive else None
    state = slurm_state(job["job_id"])
    if state is None:
        return f"SLURM job {job['job_id']}'s state cannot be read (sacct), so it may still run"
    return f"SLURM job {job['job_id']} is {state}" if state in SLURM_ACTIVE else None


class PointFailed(Exception):
    pass


@contextlib.contextmanager
def output_to(log):
    """This process's stdout and stderr, Python's and the file descriptors' alike, go to log."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        os.close(saved[0]), os.close(saved[1])


def run_script(command, log):
    """run_here(command), its output appended to log -> its exit status. A script imported once
    serves every point: no new interpreter, no second import of torch."""
    with output_to(log):
        return run_here(command)


def run_here(command):
    """python SCRIPT ARGS (command: the script's path and its arguments) in this process, as the
    command line would run it -> its exit status."""
    argv = sys.argv
    sys.argv = list(command)
    try:
        return errors.exit_status(lambda: runpy.run_path(command[0], run_name="__main__"))
    finally:
        sys.argv = argv


def run_process(command, log):
    """command as a process of its own (stage one under torchrun), its output appended to log ->
    its exit status. The signal SLURM sends before a job's time limit (SIGUSR2, as submitit asks
    for it) reaches it as SIGTERM, which torchrun passes to every rank: each saves and stops."""
    started = []
    previous = signal.signal(
        signal.SIGUSR2, lambda *_: [child.send_signal(signal.SIGTERM) for child in started]
    )
    try:
        started.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        return started[0].wait()
    finally:
        signal.signal(signal.SIGUSR2, previous)


def run_logged(command, log, in_process=True):
    """Run a script's command line (run_script, or run_process for a full command) with its
    output appended to log; a non-zero exit -> PointFailed naming the script and its last line of
    output (its error: line, or the line that says where it stopped)."""
    log.write(f"$ {shlex.join(command)}\n")
    log.flush()
    code = run_script(command, log) if in_process else run_process(command, log)
    if code:
        with open(log.name) as written:
            lines = [line.strip() for line in written if line.strip()]
        script = next(os.path.basename(word) for word in command if word.endswith(".py"))
        raise PointFailed(f"{script} exited with {code}: {lines[-1]}")


# Local jobs run until they finish: the time limit of the job engine's local executor, in minutes.
LOCAL_TIMEOUT_MIN = 60 * 24 * 365


def run_local(jobs, job_main, sweep_dir, gpu_ids, finished):
    """job_main(job) for each job through submitit's local executor, which runs it in a process of its
    own: one at a time, or with several GPUs one per GPU at a time (in waves); finished(job,
    record) as each returns."""
    import submitit  # sweep.py's one dependency beyond torch and the plotting packages

    slots = [[gpu] for gpu in gpu_ids] if len(gpu_ids) > 1 else [list(gpu_ids)]
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    for start in range(0, len(jobs), len(slots)):
        running = []
        for job, slot in zip(jobs[start : start + len(slots)], slots):
            executor = submitit.LocalExecutor(folder=os.path.join(sweep_dir, LAUNCHER_DIR))
            executor.update_parameters(
                timeout_min=LOCAL_TIMEOUT_MIN, gpus_per_node=len(slot), visible_gpus=tuple(slot)
            )
            if slot:  # the job sees its one GPU alone, as cuda:0
                job = dataclasses.replace(job, device="cuda")
            handle = executor.submit(job_main, job)
            record_job(job, "local", handle.job_id)
            running.append((job, handle))
        for job, handle in running:
            finished(job, outcome(handle))


def outcome(handle):
    """A submitted job's record, or {"failed": ...} where the job itself failed to run."""
    try:
        return handle.result()
    except Exception as error:  # submitit's: the job's process died or could not start
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        return {"failed": f"the job failed ({first_line}); see {handle.paths.stderr}"}


def slurm_parameters(name, partition, gpus, cpus_per_gpu, minutes):
    """The SLURM resources of each point's job, as submitit's SlurmExecutor takes them: one node,
    one task (torchrun starts the processes), gpus GPUs (0: none asked for, the job runs on its
    CPUs), the repository on the job's PYTHONPATH."""
    parameters = {
        "job_name": name,
        "time": minutes,
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": max(1, gpus) * cpus_per_gpu,
        "stderr_to_stdout": True,
        "setup": [f"export PYTHONPATH={shlex.quote(ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}"],
    }
    if gpus:
        parameters["gpus_per_node"] = gpus
    if partition:
        parameters["partition"] = partition
    return parameters


def slurm_script(sweep_dir, parameters):
    """What each point's job asks SLURM for, as sbatch lines written from parameters (the
    resources and the setup) and a last line saying what the job runs; submitit adds lines of
    its own when it submits (where the job's output goes, the signal before the time limit)."""
    sbatch = [
        f"#SBATCH --{name.replace('_', '-')}={value}"
        for name, value in sorted(parameters.items())
        if name not in ("setup", "stderr_to_stdout")
    ]
    folder = os.path.join(sweep_dir, LAUNCHER_DIR, "%j")
    runs = f"# then submitit runs the point pickled in {folder} under srun"
    return "\n".join(["#!/bin/bash", *sbatch, *parameters.get("setup", ()), runs])


def run_slurm(jobs, job_main, sweep_dir, parameters, finished):
    """job_main(job) for every job, submitted at once, one SLURM job each; then waits for them."""
    import submitit

    executor = submitit.SlurmExecutor(folder=os.path.join(sweep_dir, LAUNCHER_DIR, "%j"))
    executor.update_parameters(**parameters)
    with executor.batch():
        handles = [executor.submit(job_main, job) for job in jobs]
    for job, handle in zip(jobs, handles):
        record_job(job, "slurm", handle.job_id)
        print(f"{job.point.name}: SLURM job {handle.job_id}, log {job.point.log_path}")
    for job, handle in zip(jobs, handles):
        finished(job, outcome(handle))
