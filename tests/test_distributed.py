"""Data parallelism on this CPU: two processes joined by the Gloo backend, as torchrun runs them."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import distributed
import errors
import net
from conftest import assert_documented

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


def small_network():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(144, 5),
        nn.BatchNorm1d(5),
    )


def step_on_rank(rank, init_file, images, labels, out_dir):
    """One SGD step of DistributedDataParallel on this rank's half of the batch, with BatchNorm
    across ranks; the weights and running statistics after it saved as RANK.pt."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    model = distributed.cross_rank_batchnorm(small_network())
    parallel = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    optimizer = torch.optim.SGD(parallel.parameters(), lr=0.5)
    n = len(images) // WORLD
    rows = slice(rank * n, (rank + 1) * n)
    F.cross_entropy(parallel(images[rows]), labels[rows]).backward()
    optimizer.step()
    torch.save(model.state_dict(), out_dir / f"{rank}.pt")
    dist.destroy_process_group()


def test_a_step_with_batchnorm_across_two_ranks_is_the_one_process_step_on_the_whole_batch(
    tmp_path,
):
    """Different images on each rank: BatchNorm statistics per rank would normalise each half
    differently and the weights would differ from the one-process step."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 8, 8, generator=generator)
    images[4:] = 3 * images[4:] + 1  # the second rank's half unlike the first
    labels = torch.randint(0, 5, (8,), generator=generator)
    mp.spawn(step_on_rank, args=(tmp_path / "init", images, labels, tmp_path), nprocs=WORLD)
    model = small_network()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    F.cross_entropy(model(images), labels).backward()
    optimizer.step()
    expected = model.state_dict()
    for rank in range(WORLD):
        found = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert found.keys() == expected.keys()  # a plain BatchNorm state_dict
        for name, tensor in expected.items():
            torch.testing.assert_close(found[name], tensor, atol=1e-5, rtol=1e-4, msg=name)


def test_a_named_gpu_under_torchrun_is_refused_alike_on_every_rank(monkeypatch):
    """Refused on rank 1 alone, the error would be printed by no one (rank 0 prints what every
    rank meets) while rank 0 waited for rank 1."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for local_rank in ("0", "1"):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        with pytest.raises(errors.InputError) as raised:
            distributed.rank_device(torch.device("cuda:0"))
        assert raised.value.on_every_rank
        assert_documented(raised.value.line())
