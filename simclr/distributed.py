"""Data parallelism across processes (torchrun): joining the ranks, and the pieces that must see
every rank's batch.

Under torchrun each process (rank) trains on its slice of the global batch. SimCLR's loss compares
every view with every other view of the global batch, so each rank needs all ranks' projections,
with a gradient that reaches the rank that made them (all_gather_with_grad), and BatchNorm needs
the global batch's statistics (CrossRankBatchNorm). Without torchrun (or with one process) every
function here is the one-process identity.
"""

import contextlib
import os
import signal
import sys

import torch
import torch.distributed as dist

from simclr.errors import InputError


def launched_world_size():
    """How many processes torchrun started (WORLD_SIZE); 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def is_main():
    """Whether this process writes the run's files and prints: rank 0, or the only process."""
    return rank() == 0


def rank_device(device):
    """The device this rank trains on: under torchrun, a CUDA device becomes the GPU of the
    process's LOCAL_RANK, one GPU per process."""
    if launched_world_size() == 1 or device.type != "cuda":
        return device
    if device.index is not None:  # refused on every rank alike, so that rank 0 says why
        raise InputError(
            f"under torchrun each process takes the GPU of its LOCAL_RANK, but --device "
            f"{device} names one: pass --device cuda (or leave --device out)",
            on_every_rank=True,
        )
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    return device


def refuse_several_processes(script):
    """For a script that runs in one process: under torchrun with several, say so and stop."""
    if launched_world_size() > 1:
        raise InputError(
            f"{script} runs in one process, not under torchrun: run python {script} with the "
            f"same flags",
            on_every_rank=True,
        )


def batch_share(batch_size):
    """This process's share of a global batch of batch_size images: under torchrun, --batch-size
    is the global batch and each process takes an equal part; a batch that does not divide is
    refused, never rounded down (a smaller batch would train with an lr scaled for the larger)."""
    world = world_size()
    if batch_size % world:
        multiple = max(world, batch_size // world * world)
        raise InputError(
            f"--batch-size {batch_size} (the global batch) does not divide among {world} "
            f"processes: pass a multiple of {world}, such as {multiple}",
            on_every_rank=True,
        )
    return batch_size // world


@contextlib.contextmanager
def process_group(device):
    """Under torchrun with several processes, join them for the block: NCCL on CUDA, Gloo on any
    other device (torchrun's environment says where the others are). Otherwise nothing."""
    if launched_world_size() == 1:
        yield
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def silence_other_ranks():
    """Under torchrun, rank 0 alone prints (progress, notes, results): the other ranks' stdout
    goes nowhere. Their stderr stays, for what a rank meets on its own: an error, a traceback."""
    if not is_main():
        sys.stdout = open(os.devnull, "w")


@contextlib.contextmanager
def main_rank_first():
    """Rank 0 runs the block first (downloads, decoding, caches, the run folder), the other ranks
    after it, so they read what it wrote. If it fails there, rank 0 alone says why and the others
    end quietly (exit status 2), rather than each with a traceback of a lost connection."""
    if world_size() == 1:
        yield
        return
    if is_main():
        try:
            yield
        except BaseException as error:
            if isinstance(error, InputError):
                error.report()  # before the others hear: once they end, torchrun stops this rank
            dist.broadcast_object_list([False], src=0)
            raise
        dist.broadcast_object_list([True], src=0)
        return
    succeeded = [None]
    dist.broadcast_object_list(succeeded, src=0)
    if not succeeded[0]:
        raise InputError("rank 0 stopped during start-up and said why", on_every_rank=True)
    yield


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
        x = input.to(torch.promote_types(input.dtype, torch.float32))  # not in half precision
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


def sync_batchnorm(model, device):
    """model with BatchNorm over the global batch: torch's SyncBatchNorm on CUDA (its fused
    kernels), CrossRankBatchNorm on any other device."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return cross_rank_batchnorm(model)


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


class AgreedStop:
    """A runtime.StopSignal as every rank sees it: received is the signal any rank has received, or
    None, the same on every rank, so all stop at the same step and none waits forever in a
    collective. Each read before a signal is agreed is a collective: every rank must read at the
    same points."""

    def __init__(self, stop, device):
        self.stop, self.device, self.agreed = stop, device, None

    @property
    def received(self):
        if self.agreed is None:
            own = self.stop.received.value if self.stop.received else 0
            number = torch.tensor(own, device=self.device)
            dist.all_reduce(number, op=dist.ReduceOp.MAX)
            self.agreed = signal.Signals(number.item()) if number.item() else None
        return self.agreed


def shard_rows(count):
    """The rows of range(count) this rank works on when the ranks split a pass (kNN, encoding):
    contiguous and of equal length on every rank, so every rank runs the same number of batches;
    the last ranks' shards are padded with -1."""
    per_rank = -(-count // world_size())
    rows = torch.arange(rank() * per_rank, (rank() + 1) * per_rank)
    return torch.where(rows < count, rows, -1)


def gathered(tensor):
    """Every rank's equally long tensor, concatenated in rank order (no gradient)."""
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)
