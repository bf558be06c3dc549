"""The linear probe's training loss and held-out top-1 with the features raw, centred, centred and
scaled to a mean squared norm (net.FeatureNorm, trainstage2.py's --feature-norm, at each of
--squared-norms) and standardised (BatchNorm without affine), at several lrs, batches and lengths:
the choice of the probe's treatment of its features, made on labelled training images held out
from the probe's, never on the test split (BENCHMARKS.md, "A probe that does not climb").

A run's frozen encoder encodes, once, --labelled training images per count (seeded,
class-balanced) and --held-out others; each probe then trains as trainstage2.py's cached protocol
does (SGD with Nesterov momentum 0.9, a per-step cosine lr from --lr per 256 images, no weight
decay, seeded batches). One line per setting: held-out top-1 and the training loss of the first
epoch, its largest and its last ("climbs" where an epoch's loss rose above the first's).

    python bench/probe_stability.py --run-dir runs/qs --labelled 1000 5000
"""

import argparse
import itertools
import os
import sys
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import net  # noqa: E402
from simclr import datasets, features, optimizers  # noqa: E402


class Centred(net.FeatureNorm):
    """FeatureNorm's centring alone."""

    def forward(self, h):
        super().forward(h)
        return h - self.running_mean


def treatments(squared_norms):
    """name -> a function of the features' width that makes the module the probe reads through."""
    found = {"raw": lambda width: nn.Identity(), "centred": Centred}
    for norm in squared_norms:
        found[f"norm {norm:g}"] = lambda width, norm=norm: net.FeatureNorm(width, norm)
    found["standardised"] = lambda width: nn.BatchNorm1d(width, affine=False, momentum=None)
    return found


def encoded(loaded, source, indices, cfg, what):
    split = torch.utils.data.Subset(source.full_split(True), indices)
    found = features.plain_features(loaded, split, cfg, what)
    return found.h, found.labels


def train_probe(fit, held_out, treatment, lr_per_256, epochs, batch_size):
    """treatment: treatments()'s -> (held-out top-1 %, the training loss of each epoch)."""
    (h, labels), (held_h, held_labels) = fit, held_out
    torch.manual_seed(0)
    probe = nn.Sequential(treatment(h.shape[1]), nn.Linear(h.shape[1], 10))
    peak = optimizers.linearly_scaled(lr_per_256, batch_size)
    optimizer = torch.optim.SGD(probe.parameters(), lr=peak, momentum=0.9, nesterov=True)
    steps = -(-len(h) // batch_size)
    lr_at = optimizers.schedule(peak, epochs, steps)
    order_generator, losses, step = torch.Generator().manual_seed(0), [], 0
    for _ in range(epochs):
        probe.train()
        total = 0.0
        for batch in torch.randperm(len(h), generator=order_generator).split(batch_size):
            optimizers.set_lr(optimizer, lr_at(step))
            loss = F.cross_entropy(probe(h[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            step += 1
        losses.append(total / len(h))
    probe.eval()
    with torch.no_grad():
        top1 = (probe(held_h).argmax(1) == held_labels).float().mean().item() * 100
    return top1, losses


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--labelled", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--held-out", type=int, default=2000)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.1])
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--squared-norms", type=float, nargs="+", default=[10, 20, 50, 100])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cfg = types.SimpleNamespace(
        run_dir=args.run_dir, checkpoint="", random=False, device="cpu", seed=0, dataset="",
        data_dir="", subset=None, channels_last=True, precision="fp32", batch_size=512,
        workers=args.workers,
    )  # fmt: skip
    loaded = features.stage_one(cfg, net.from_stage_one)
    source = features.data_source(cfg, loaded.stage1)
    targets = source.full_split(True).targets
    held_out_indices = datasets.balanced_subset_indices(targets, args.held_out, seed=123)
    others = sorted(set(range(len(targets))) - set(held_out_indices))
    held_out = encoded(loaded, source, held_out_indices, cfg, "held-out images")
    print(f"{loaded.source}; held out: {args.held_out} training images")
    for count in args.labelled:
        chosen = datasets.balanced_subset_indices([targets[i] for i in others], count, seed=7)
        fit = encoded(loaded, source, [others[i] for i in chosen], cfg, "labelled images")
        for name, treatment in treatments(args.squared_norms).items():
            for lr, batch_size, epochs in itertools.product(
                args.lrs, args.batch_sizes, args.epochs
            ):
                top1, losses = train_probe(fit, held_out, treatment, lr, epochs, batch_size)
                climbs = "climbs" if max(losses) > losses[0] else "falls"
                print(
                    f"{count} labelled, {name:12} lr {lr:<5g} batch {batch_size} {epochs:3} epochs: "
                    f"held-out top-1 {top1:5.2f}%; loss first {losses[0]:.3f}, largest "
                    f"{max(losses):.3f}, last {losses[-1]:.3f} ({climbs})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
