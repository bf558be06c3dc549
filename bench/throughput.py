"""Stage-one speed: training images/s (two views each), or augmentation alone, for one setting.

Times a fixed number of steps after warm-up steps, on the real training loop pieces
(trainstage1.train_step, the same data loaders). From the repository root, for example:

    python bench/throughput.py --data-dir cifar10-folder --arch resnet50 --batch-size 128 \\
        --data-path device --precision bf16
    python bench/throughput.py --data-dir cifar10-folder --augment-only --data-path workers
    python bench/throughput.py --data-dir cifar10-folder --arch resnet18 --image-size 96 \
        --stem imagenet

The images are decoded at --image-size whatever their own size (CIFAR's 32 px images upscaled to
96 px stand in for STL-10's: the cost of a step does not depend on what the pixels show).
"""

import argparse
import itertools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import config  # noqa: E402
import loaddataset  # noqa: E402
from simclr import optimizers  # noqa: E402
from simclr import runtime  # noqa: E402
import trainstage1  # noqa: E402


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_batches(batches, warmup_steps, steps, repeats, device, work):
    """Run work(x1, x2) on warmup_steps batches, then `repeats` times on `steps` batches;
    -> images per second of each repeat."""
    batches = itertools.chain.from_iterable(itertools.repeat(batches))
    for (x1, x2), _ in itertools.islice(batches, warmup_steps):
        work(x1, x2)
    rates = []
    for _ in range(repeats):
        synchronize(device)
        started, images = time.perf_counter(), 0
        for (x1, x2), _ in itertools.islice(batches, steps):
            work(x1, x2)
            images += len(x1)
        synchronize(device)
        rates.append(images / (time.perf_counter() - started))
    return rates


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", default="cifar10-folder", help="a folder dataset (docs/datasets.md)"
    )
    parser.add_argument("--subset", type=int, default=5000, help="training images to load")
    parser.add_argument("--arch", default="resnet50", choices=config.ARCHS)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data-path", default="device", choices=("device", "workers"))
    parser.add_argument("--precision", default="bf16", choices=config.PRECISIONS)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compile", action="store_true", help="torch.compile (see config.py)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed blocks of --steps; the median is reported (shared machines are noisy)",
    )
    parser.add_argument("--augment-only", action="store_true", help="time the data path alone")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image-size", type=int, help="default: 32")
    parser.add_argument("--stem", choices=config.STEMS, help="default: by image size (config.py)")
    args = parser.parse_args(argv)
    cfg = config.Pretrain(
        dataset="folder",
        data_dir=args.data_dir,
        subset=args.subset,
        arch=args.arch,
        batch_size=args.batch_size,
        data_path=args.data_path,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        workers=args.workers,
        device=args.device,
        image_size=args.image_size,
        stem=args.stem or "",
    )
    cfg = config.with_dataset_defaults(cfg)
    device = runtime.pick_device(cfg.device)
    sources = loaddataset.pretraining_sources(cfg)
    data = loaddataset.pretraining_data(
        config.stage_one_plan(cfg, sources, device), sources, device
    )
    if args.augment_only:

        def work(x1, x2):  # the views are ready; only the move to the device remains
            x1.to(device, non_blocking=True)
            x2.to(device, non_blocking=True)
    else:
        encoding = runtime.Encoding.of_settings(cfg, device)
        training = trainstage1.start_training(cfg, encoding, lambda step: 0.1)
        optimizers.set_lr(training.optimizer, 0.1)

        def work(x1, x2):
            trainstage1.train_step(training, x1, x2)

    rates = timed_batches(
        data.views_loader, args.warmup_steps, args.steps, args.repeats, device, work
    )
    what = (
        "augmentation only"
        if args.augment_only
        else (
            f"training {cfg.arch}, {cfg.stem} stem, {cfg.image_size} px, {cfg.precision}, {'channels_last' if cfg.channels_last else 'NCHW'}"
        )
    )
    spread = (
        f" (median of {len(rates)}: {min(rates):.1f} to {max(rates):.1f})" if len(rates) > 1 else ""
    )
    print(
        f"{statistics.median(rates):.1f} images/s (two views each){spread} | {what} | data path "
        f"{cfg.data_path} ({cfg.workers} workers) | batch {cfg.batch_size} | {device} | "
        f"{args.steps} steps x {len(rates)} after {args.warmup_steps} warm-up | "
        f"{'torch.compile' if cfg.compile else 'eager'} | torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads"
    )


if __name__ == "__main__":
    main()
