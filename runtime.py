"""What a script sets up before it works: seeds, the device, the autocast dtype, the compile check,
and the handler that turns Ctrl-C and SIGTERM into a stop after the current step."""

import os
import random
import shutil
import signal

import numpy as np
import torch

from errors import InputError


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name="auto"):
    """The one place that asks what hardware exists: cuda, else mps, else cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_compile(device):
    """torch.compile on a CPU builds C++: say so now rather than in a trace after the data loads."""
    compilers = (os.environ.get("CXX", ""), "g++", "c++", "clang++")
    if device.type == "cpu" and not any(shutil.which(name) for name in compilers if name):
        raise InputError(
            "--compile on a CPU needs a C++ compiler (g++ or clang++) on PATH: "
            "install one, or drop --compile"
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


def autocast_dtype(precision, device):
    """The autocast dtype for --precision on this device, or None for plain fp32."""
    if precision == "fp32":
        return None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        print("note: this GPU has no bf16; using fp32 (pass --precision fp16 for mixed precision)")
        return None
    if device.type == "cpu" and not cpu_has_fast_half_precision(dtype):
        print(
            f"note: this CPU has no native {precision}, which would be several times slower "
            f"than fp32; using fp32 (--precision fp32 says so and hides this note)"
        )
        return None
    return dtype


class StopSignal:
    """While active, the first SIGINT or SIGTERM asks to stop after the current step (received);
    a second SIGINT interrupts at once, as usual. The previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

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
