"""One stage-one step of the real network in float64, in one process and in two Gloo processes
(DistributedDataParallel, the loss and BatchNorm across the processes, each process its half of
the batch): prints the largest relative gradient difference. The network in float64 takes most
rounding out of the comparison; the loss stays in float32, as in training (net.contrastive_logits),
so agreement to about float32's precision (1e-7) is the best to expect (BENCHMARKS.md, "One process against two torchrun processes").

    OMP_NUM_THREADS=1 python bench/ddp_float64.py [--arch resnet18] [--batch 8]
"""

import argparse
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simclr import distributed  # noqa: E402
import net  # noqa: E402


def gradients(rank, world, arch, x1, x2, init_file, out_dir):
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group(
            "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
        )
    torch.manual_seed(0)
    model = net.SimCLRNet(arch)
    if world > 1:
        model = distributed.cross_rank_batchnorm(model)
    model = model.double().train()
    forward = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    rows = slice(rank * len(x1) // world, (rank + 1) * len(x1) // world)
    _, z = forward(torch.cat([x1[rows], x2[rows]]))
    logits, targets = net.contrastive_logits(*z.chunk(2), 0.5, across_ranks=world > 1)
    F.cross_entropy(logits, targets).backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    torch.save(grads, os.path.join(out_dir, f"{world}-{rank}.pt"))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    x1 = torch.randn(args.batch, 3, 32, 32, generator=generator, dtype=torch.float64)
    x2 = x1 + 0.5 * torch.randn(x1.shape, generator=generator, dtype=torch.float64)
    with tempfile.TemporaryDirectory() as out_dir:
        gradients(0, 1, args.arch, x1, x2, None, out_dir)
        init_file = os.path.join(out_dir, "init")
        mp.spawn(gradients, args=(2, args.arch, x1, x2, init_file, out_dir), nprocs=2)
        one = torch.load(os.path.join(out_dir, "1-0.pt"))
        two = torch.load(os.path.join(out_dir, "2-0.pt"))
    worst = max(((one[k] - two[k]).abs().max() / one[k].abs().max()).item() for k in one)
    print(
        f"{args.arch}, batch {args.batch}, float64: largest relative gradient difference "
        f"between 1 and 2 processes, over {len(one)} tensors: {worst:.2e}"
    )


if __name__ == "__main__":
    main()
