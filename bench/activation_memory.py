"""Peak memory and step time of stage one's training step with and without
--activation-checkpointing, per architecture and batch; on a GPU also the largest batch that fits
under a memory cap that stands for a smaller card.

Every setting runs in a process of its own (this script again, with --one), so that each peak is
that setting's alone: on the CPU the process's peak resident memory (ru_maxrss: weights, optimizer
state, activations, the allocator's slack, and the ~0.5 GiB that importing torch takes), on a GPU
torch.cuda.max_memory_allocated. The step is trainstage1.py's own (both views in one forward, the
NT-Xent loss, LARS), on random 32x32 views (the data path is not measured), fp32 on the CPU, bf16
on a GPU (the recipe's precision there); the time is the median of --steps steps after one
warm-up step.

    python bench/activation_memory.py --archs resnet18 resnet50 --batch-sizes 64 128 256
    python bench/activation_memory.py --archs resnet50 --batch-sizes --caps-gib 16 24 40  # a GPU
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def measure(args):
    """One setting in this process: prints 'PEAK_GIB STEP_S', or 'oom'."""
    import torch

    import config
    import trainstage1
    from simclr import runtime

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda and args.cap_gib:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * 2**30 / total), device)
    cfg = config.with_dataset_defaults(
        config.Pretrain(
            arch=args.arch,
            image_size=32,
            batch_size=args.batch_size,
            epochs=1,
            precision="bf16" if cuda else "fp32",
            activation_checkpointing=args.recompute,
        )
    )
    encoding = runtime.Encoding.of_settings(cfg, device)
    training = trainstage1.start_training(cfg, encoding, lambda step: 0.1)
    generator = torch.Generator().manual_seed(0)
    if args.largest:  # batches doubled in this process until one does not fit under the cap
        largest, batch_size = None, 256
        while batch_size <= 8192:
            try:
                views = torch.rand(2, batch_size, 3, 32, 32, generator=generator).to(device)
                trainstage1.train_step(training, views[0], views[1])[0].item()
            except torch.OutOfMemoryError:
                break
            largest, views = batch_size, None
            torch.cuda.empty_cache()
            batch_size *= 2
        print(largest)
        return
    views = torch.rand(2, args.batch_size, 3, 32, 32, generator=generator).to(device)
    times = []
    try:
        for _ in range(args.steps + 1):
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            loss, _, _ = trainstage1.train_step(training, views[0], views[1])
            loss.item()
            times.append(time.perf_counter() - started)
    except torch.OutOfMemoryError:
        print("oom")
        return
    if cuda:
        peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(f"{peak_gib:.3f} {statistics.median(times[1:]):.4f}")


def run_one(arch, batch_size, recompute, steps, cap_gib=0.0):
    """One setting in a process of its own (batch_size None: the largest under cap_gib)."""
    command = [sys.executable, os.path.abspath(__file__), "--one", "--arch", arch]
    command += ["--steps", str(steps), "--cap-gib", str(cap_gib)]
    command += ["--batch-size", str(batch_size)] if batch_size else ["--largest"]
    command += ["--recompute"] if recompute else []
    found = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    last = (found.stdout.strip().splitlines() or ["failed"])[-1]
    if found.returncode != 0 or last == "failed":
        return "failed: " + found.stderr.strip().splitlines()[-1] if found.stderr else "failed"
    return last


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[64, 128, 256])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument(
        "--caps-gib", type=float, nargs="*", default=[],
        help="on a GPU: the largest batch (256 doubled up to 8192) that fits under each cap",
    )  # fmt: skip
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--arch", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--recompute", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cap-gib", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--largest", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        measure(args)
        return
    import torch

    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"{where}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.caps_gib and not torch.cuda.is_available():
        print("--caps-gib: no GPU here, skipped (a cap stands for a smaller card)")
        args.caps_gib = []
    for arch in args.archs:
        for batch_size in args.batch_sizes:
            found = {}
            for recompute in (False, True):
                found[recompute] = run_one(arch, batch_size, recompute, args.steps)
            line = f"{arch} batch {batch_size}:"
            for recompute, result in found.items():
                name = "recomputed" if recompute else "kept"
                if result.count(" ") == 1 and not result.startswith("failed"):
                    peak, step = map(float, result.split())
                    line += f" {name} {peak:.2f} GiB, {step:.3f} s/step;"
                else:
                    line += f" {name} {result};"
            print(line, flush=True)
        for cap in args.caps_gib:
            kept, recomputed = (run_one(arch, None, flag, 1, cap) for flag in (False, True))
            print(
                f"{arch} under {cap:g} GiB: the largest of batches 256, 512, ... 8192 that fits: "
                f"{kept} with the activations kept, {recomputed} recomputed",
                flush=True,
            )


if __name__ == "__main__":
    main()
