"""What a script sets up before it works: seeds, the device, the autocast dtype, the compile check,
the handler that turns Ctrl-C and SIGTERM into a stop after the current step, and progress bars
that also work in a log file."""

import dataclasses
import datetime
import os
import random
import shutil
import signal
import sys
import time
import typing

import numpy as np
import torch
from tqdm import tqdm

from simclr.errors import InputError

# With stderr not a terminal (nohup, a cluster job's log) a pass prints a plain line at every tenth
# of its length and at least this often, so that the log shows the job is alive.
LOG_PROGRESS_EVERY_S = 60


def available_cpus():
    """The CPUs this process may run on (a cluster job's share, not the whole machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def device_memory(device):
    """The total memory of a CUDA device in bytes; None for any other device."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory


def counted(number, noun):
    """'1 step', '2 steps', '1,000 images': the number with its noun in the right number."""
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}s"


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def mps_available():
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pick_device(name="auto"):
    """The one place that asks what hardware exists: cuda, else mps, else cpu for auto; a device
    named with --device must exist here, else one line says what there is."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(
            f"--device {name} is no device: pass cuda, cuda:1, mps or cpu (or leave --device out)"
        ) from None
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and not gpus:
        raise InputError(
            f"--device {name}: torch sees no CUDA GPU on this machine (a CPU-only torch, or no "
            f"driver): pass --device cpu, or leave --device out to use what there is"
        )
    if device.type == "cuda" and (device.index or 0) >= gpus:
        raise InputError(
            f"--device {name}: this machine has {counted(gpus, 'CUDA GPU')} (cuda:0 to "
            f"cuda:{gpus - 1}): pass one of those"
        )
    if device.type == "mps" and not mps_available():
        raise InputError(
            f"--device {name}: torch sees no Apple GPU (MPS) here: pass --device cpu, or leave "
            f"--device out"
        )
    return device


def visible_gpus(name="auto"):
    """The CUDA GPUs that --device name may run on, by index: one per sweep point at a time."""
    device = pick_device(name)
    if device.type != "cuda":
        return []
    return [device.index] if device.index is not None else list(range(torch.cuda.device_count()))


# Before this torch, stages compiled inside their recomputation (net.compile_stages) saved other
# tensors in the recomputation than in the first pass: torch.utils.checkpoint's CheckpointError
# (torch 2.4.1 failed tests/test_activation_checkpointing.py's compiled run, 2.5.1 passed it).
COMPILE_WITH_RECOMPUTATION_SINCE = "2.5"


def check_compile(device, activation_checkpointing=False):
    """torch.compile on a CPU builds C++, and compiled stages recompute only from torch 2.5: say
    so now rather than in a trace after the data loads."""
    compilers = (os.environ.get("CXX", ""), "g++", "c++", "clang++")
    if device.type == "cpu" and not any(shutil.which(name) for name in compilers if name):
        raise InputError(
            "--compile on a CPU needs a C++ compiler (g++ or clang++) on PATH: "
            "install one, or drop --compile"
        )
    if activation_checkpointing and torch.__version__ < COMPILE_WITH_RECOMPUTATION_SINCE:
        raise InputError(
            f"--compile with --activation-checkpointing needs torch "
            f"{COMPILE_WITH_RECOMPUTATION_SINCE} or newer (this is {torch.__version__}): "
            f"upgrade torch, or drop one of the two"
        )


def cpu_has_fast_half_precision(dtype):
    """Whether oneDNN runs dtype convolutions natively on this CPU (AVX-512 or AMX); without, it
    emulates them, several times slower than float32 (13x on a 2-core AVX2 EPYC)."""
    check = (
        torch.ops.mkldnn._is_mkldnn_bf16_supported
        if dtype is torch.bfloat16
        else torch.ops.mkldnn._is_mkldnn_fp16_supported
    )
    try:
        return bool(check())
    except (AttributeError, RuntimeError):  # a private check: if it is gone, trust the flag
        return True


def autocast_choice(precision, device):
    """-> (the autocast dtype for --precision on this device, None for plain fp32; a note where
    that is not what was asked for, else None)."""
    if precision == "fp32":
        return None, None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return (
            None,
            "note: this GPU has no bf16; using fp32 (pass --precision fp16 for mixed precision)",
        )
    if device.type == "cpu" and not cpu_has_fast_half_precision(dtype):
        return None, (
            f"note: this CPU has no native {precision}, which would be several times slower "
            f"than fp32; using fp32 (--precision fp32 says so and hides this note)"
        )
    return dtype, None


def autocast_dtype(precision, device):
    """The autocast dtype for --precision on this device, or None for plain fp32, with a note
    where that is not what was asked for."""
    dtype, note = autocast_choice(precision, device)
    if note:
        print(note)
    return dtype


def precision_in_effect(autocast_dtype):
    """'bf16', 'fp16' or 'fp32': what --precision became on this device (autocast_dtype's)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast_dtype]


@dataclasses.dataclass(frozen=True)
class Encoding:
    """How images go through a network: on which device, under which autocast dtype (None: plain
    float32), in which memory format."""

    device: torch.device
    autocast_dtype: typing.Optional[torch.dtype] = None
    channels_last: bool = False

    @classmethod
    def of_settings(cls, cfg, device):
        """What a script's --precision and --channels-last become on this device (fp32 where the
        device has no native half precision, with a note)."""
        return cls(device, autocast_dtype(cfg.precision, device), cfg.channels_last)

    def inputs(self, images):
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    @property
    def in_effect(self):
        """{'precision': 'bf16' | 'fp16' | 'fp32', 'memory_format': ...}, as the start lines print
        them and config.json and results.json record them."""
        memory_format = "channels_last" if self.channels_last else "contiguous"
        precision = precision_in_effect(self.autocast_dtype)
        return {"precision": precision, "memory_format": memory_format}

    def autocast(self):
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)


class StopSignal:
    """While active, the first SIGINT, SIGTERM or SIGUSR2 asks to stop after the current step
    (received); a second SIGINT interrupts at once, as usual. The previous handlers come back on
    exit. SIGUSR2 is what SLURM sends a submitit job (sweep.py's) before its time limit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM) + (
        (signal.SIGUSR2,) if hasattr(signal, "SIGUSR2") else ()
    )

    def __init__(self):
        self.received = None

    def __enter__(self):
        self.previous = {number: signal.signal(number, self.handle) for number in self.SIGNALS}
        return self

    def __exit__(self, *exception):
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def handle(self, number, frame):
        self.received = signal.Signals(number)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def progress(iterable=None, *, disable=None, **options):
    """A progress bar: tqdm's (with its ETA) on a terminal, LogProgress's lines in a log file;
    disable=True: none (under torchrun, the ranks but rank 0)."""
    if disable or sys.stderr.isatty():
        return tqdm(iterable, disable=bool(disable), **options)
    return LogProgress(iterable, **options)


class LogProgress:
    """The part of tqdm's interface the scripts use, for a log: one line per tenth of the total
    and at least every LOG_PROGRESS_EVERY_S seconds, e.g. `stage 2, epoch 3/30: 120/600 steps
    (20%), 2.1 steps/s, 3:48 left, loss=1.234`, instead of a line redrawn with carriage returns."""

    def __init__(self, iterable=None, total=None, initial=0, desc="", unit="item", **ignored):
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.n, self.desc, self.unit = (
            iterable,
            total,
            initial,
            desc,
            unit,
        )
        self.postfix, self.first_n, self.printed_n = "", initial, initial
        self.started = self.printed_at = time.monotonic()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()

    def set_description(self, desc):
        self.desc = desc

    def set_postfix(self, refresh=True, **values):
        self.postfix = ", ".join(f"{name}={value}" for name, value in values.items())

    def write(self, line):
        print(line, flush=True)

    def update(self, n=1):
        self.n += n
        tenth = self.total and self.n * 10 // self.total > self.printed_n * 10 // self.total
        if tenth or time.monotonic() - self.printed_at >= LOG_PROGRESS_EVERY_S:
            self.print_line()

    def close(self):
        if self.n != self.printed_n:
            self.print_line()

    def print_line(self):
        now = time.monotonic()
        rate = (self.n - self.first_n) / max(now - self.started, 1e-9)
        units = self.unit + ("es" if self.unit.endswith(("s", "ch")) else "s")
        done, left = f"{self.n} {units}", ""
        if self.total:
            done = f"{self.n}/{self.total} {units} ({100 * self.n // self.total}%)"
            if rate > 0:
                left = f", {datetime.timedelta(seconds=round((self.total - self.n) / rate))} left"
        postfix = f", {self.postfix}" if self.postfix else ""
        line = f"{self.desc}: {done}, {rate:.3g} {self.unit}/s{left}{postfix}"
        print(line, file=sys.stderr, flush=True)
        self.printed_n, self.printed_at = self.n, now
