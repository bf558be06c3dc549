"""Data parallelism across processes (torchrun): the pieces that must see every rank's batch.

Under torchrun each process trains on its slice of the global batch. SimCLR's loss compares every
view with every other view of the global batch, so each rank needs all ranks' projections, with a
gradient that reaches the rank that made them: all_gather_with_grad.
"""

import torch
import torch.distributed as dist


def summed_over_ranks(tensor):
    """A copy of tensor, summed over all ranks."""
    total = tensor.contiguous().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


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
        return summed_over_ranks(grad)[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(tensor):
    return AllGatherWithGrad.apply(tensor)


class AllReduceSum(torch.autograd.Function):
    """The sum of a tensor over the ranks, differentiable: every rank's loss depends on the sum,
    so the gradient each rank's input receives is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, tensor):
        return summed_over_ranks(tensor)

    @staticmethod
    def backward(ctx, grad):
        return summed_over_ranks(grad)


class CrossRankBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (every rank's images),
    so that a data-parallel run normalises as one process does: with statistics per rank, the
    network could tell which images share a rank and cheat on the contrastive task.

    torch.nn.SyncBatchNorm does the same on GPUs only (DistributedDataParallel refuses it on a
    CPU); this one all-reduces a sum, then a sum of squared deviations, per layer, on any device.
    Its state_dict is BatchNorm's, so checkpoints load into a plain network. In eval mode, or in
    one process, it is ordinary BatchNorm.
    """

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D)")

    def forward(self, input):
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        if not (self.affine and self.track_running_stats and self.momentum is not None):
            raise ValueError("CrossRankBatchNorm needs affine=True, running stats and a momentum")
        dims = [d for d in range(input.dim()) if d != 1]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.float()  # statistics in float32, also under autocast
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device)
        sums = AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        total = sums[-1]
        mean = sums[:-1] / total
        # A second pass for the variance: the mean of squares minus the squared mean loses the
        # variance to rounding when activations sit far from zero.
        centred = x - mean.view(shape)
        var = AllReduceSum.apply((centred * centred).sum(dims)) / total  # biased, as BatchNorm
        with torch.no_grad():
            self.num_batches_tracked += 1
            unbiased = var * total / (total - 1).clamp(min=1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(unbiased.detach(), self.momentum)
        normalised = centred / torch.sqrt(var.view(shape) + self.eps)
        return (normalised * self.weight.view(shape) + self.bias.view(shape)).to(input.dtype)


def cross_rank_batchnorm(module):
    """module with every BatchNorm layer replaced by a CrossRankBatchNorm holding its tensors."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
            replacement = CrossRankBatchNorm(child.num_features, child.eps, child.momentum)
            replacement.load_state_dict(child.state_dict())
            replacement.train(child.training)
            setattr(module, name, replacement)
        else:
            cross_rank_batchnorm(child)
    return module
