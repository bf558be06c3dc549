"""kNN top-1 of a stage-one checkpoint's encoder, or of a randomly initialised one as the baseline.

Uses the same data, subset, normalisation and kNN settings as trainstage1.py's monitor, so the two
numbers compare. From the repository root:

    python bench/knn.py --checkpoint runs/NAME/stage1_last.pth
    python bench/knn.py --random --arch resnet18 --dataset folder --data-dir /tmp/cifar10-jpeg \\
        --subset 5000
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import config  # noqa: E402
import evaluate  # noqa: E402
import loaddataset  # noqa: E402
import net  # noqa: E402
import rundir  # noqa: E402
import runtime  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--checkpoint", help="a stage1_*.pth file")
    choice.add_argument("--random", action="store_true", help="a randomly initialised encoder")
    args, rest = parser.parse_known_args(argv)
    if args.checkpoint and rest:
        parser.error(f"{' '.join(rest)}: with --checkpoint the settings come from the checkpoint")
    if args.checkpoint:  # the data and kNN settings the checkpoint was trained and monitored with
        checkpoint = rundir.load_checkpoint(args.checkpoint, stage=1)
        cfg = config.Pretrain(**checkpoint["config"])
    else:
        cfg = config.parse(config.Pretrain, rest)
    runtime.seed_everything(cfg.seed)
    device = runtime.pick_device(cfg.device)
    data = loaddataset.pretraining_data(cfg, device)
    model = net.SimCLRNet(cfg.arch, cfg.proj_dim)
    if args.checkpoint:
        rundir.load_strictly(model, checkpoint["model"], args.checkpoint)
    model = model.to(device)
    encoding = evaluate.Encoding(device, runtime.autocast_dtype(cfg.precision, device))
    top1 = evaluate.knn_top1(
        model.encoder,
        data.memory_loader,
        data.test_loader,
        encoding,
        cfg.knn_k,
        cfg.knn_temperature,
    )
    source = args.checkpoint or f"random {cfg.arch} (seed {cfg.seed})"
    print(
        f"kNN top-1 {top1:.2f}% | {source} | memory: {cfg.subset or 'all'} training "
        f"images, queries: {data.knn_queries:,} test images, k={cfg.knn_k}, "
        f"T={cfg.knn_temperature}"
    )


if __name__ == "__main__":
    main()
