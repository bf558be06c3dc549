"""Data parallelism on this CPU: two processes joined by the Gloo backend, as torchrun runs them."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import net

WORLD = 2


def loss_on_rank(rank, init_file, z1, z2, out_dir):
    """One rank: the loss of its slice of the global batch against every rank's views, and the
    gradient with respect to its own projections, saved as RANK.pt."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    n = len(z1) // WORLD
    mine1 = z1[rank * n : (rank + 1) * n].clone().requires_grad_()
    mine2 = z2[rank * n : (rank + 1) * n].clone().requires_grad_()
    loss = F.cross_entropy(*net.contrastive_logits(mine1, mine2, 0.5, across_ranks=True))
    loss.backward()
    torch.save({"loss": loss.detach(), "z1": mine1.grad, "z2": mine2.grad}, out_dir / f"{rank}.pt")
    dist.destroy_process_group()


def test_the_loss_across_two_ranks_is_the_one_process_loss_with_its_gradient(tmp_path):
    """Each rank holds different images (a symmetric case would hide a gradient that is not summed
    over the ranks). The ranks' mean loss is the one-process loss of the whole batch, and each
    rank's gradient, averaged over the ranks as DistributedDataParallel averages it, is the
    one-process gradient of its rows."""
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(2, 8, 6, generator=generator)
    z2 = z1 + 0.3 * z2  # positives similar to their anchors, as after some training
    mp.spawn(loss_on_rank, args=(tmp_path / "init", z1, z2, tmp_path), nprocs=WORLD)
    whole1, whole2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = net.nt_xent(whole1, whole2, 0.5)
    loss.backward()
    ranks = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in range(WORLD)]
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, loss.detach())
    for rank, saved in enumerate(ranks):
        rows = slice(rank * 4, (rank + 1) * 4)
        torch.testing.assert_close(saved["z1"] / WORLD, whole1.grad[rows], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(saved["z2"] / WORLD, whole2.grad[rows], atol=1e-6, rtol=1e-5)
