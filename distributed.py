"""Data parallelism across processes (torchrun): the pieces that must see every rank's batch.

Under torchrun each process trains on its slice of the global batch. SimCLR's loss compares every
view with every other view of the global batch, so each rank needs all ranks' projections, with a
gradient that reaches the rank that made them: all_gather_with_grad.
"""

import torch
import torch.distributed as dist


class AllGatherWithGrad(torch.autograd.Function):
    """Every rank's (n, ...) tensor, concatenated in rank order -> (world * n, ...).

    torch.distributed.all_gather has no gradient. Here the backward sums the incoming gradient
    over the ranks, then keeps this rank's rows: each rank's loss depends on every rank's
    projections, so the gradient of the global loss with respect to this rank's rows is the sum of
    what every rank's loss sends them. Returning this rank's own gradient alone (a bug that once
    hid in a well-known library behind a test whose ranks held the same data) trains each rank's
    projections against its own loss only.
    """

    @staticmethod
    def forward(ctx, tensor):
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows, ctx.rank = len(tensor), dist.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(tensor):
    return AllGatherWithGrad.apply(tensor)
