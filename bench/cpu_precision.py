"""Is half precision worth it on this CPU? One ResNet-18 training step (forward and backward) on
random 32x32 images in plain fp32 and under bf16 autocast, both with channels_last, as the
scripts would run them. Prints the median seconds per step of each, and whether oneDNN reports
native bf16 on this CPU (runtime.autocast_dtype falls back to fp32 where it does not).

    python bench/cpu_precision.py --batch-size 64 --steps 5
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import net  # noqa: E402
from simclr import runtime  # noqa: E402


def seconds_per_step(model, images, dtype, steps):
    times = []
    for step in range(steps + 1):  # the first step builds oneDNN's kernels: not timed
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            model(images).float().sum().backward()
        if step:
            times.append(time.perf_counter() - started)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64, help="images per step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each precision")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = net.resnet_encoder("resnet18").to(memory_format=torch.channels_last)
    images = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    native = runtime.cpu_has_fast_half_precision(torch.bfloat16)
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {native}")
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        times = seconds_per_step(model, images, dtype, args.steps)
        print(
            f"{name}: {statistics.median(times):.3f} s/step (median of {len(times)}, "
            f"{min(times):.3f} to {max(times):.3f}) | resnet18, batch {args.batch_size}, "
            f"channels_last, {torch.get_num_threads()} threads, torch {torch.__version__}"
        )


if __name__ == "__main__":
    main()
